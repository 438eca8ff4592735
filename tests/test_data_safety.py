"""Untrusted data files: crafted CIFAR pickles and checkpoints run no code; unreadable images
fail with their path, or are skipped and counted with --skip_bad_images; verify_images.py."""
import io
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import BadImageError, DataError, build_dataset
from data import cifar as cifar_mod
from engine import checkpoint, cli, config

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- CIFAR pickles
def _official_pickle(obj) -> bytes:
    """``obj`` pickled as the official files were: Python 2, protocol 2. Python 3's protocol 2
    gives the same opcodes except for bytes (``_codecs.encode``) and numpy's module name, which
    is put back to the ``numpy.core`` the Python 2 files name."""
    return pickle.dumps(obj, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar100_tree(root, n=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        labels = [int(v) for v in rng.integers(0, 100, n)]
        (folder / split).write_bytes(_official_pickle({
            "filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{split} batch 1 of 1",
            "fine_labels": labels, "coarse_labels": [v // 5 for v in labels],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}))
    (folder / "meta").write_bytes(_official_pickle({"fine_label_names": [f"c{i}" for i in range(100)],
                                                    "coarse_label_names": [f"s{i}" for i in range(20)]}))
    return folder


class _Payload:
    """Unpickling this calls ``action(*args)``: what a crafted file can do to plain pickle.load."""

    def __init__(self, action, *args):
        self.action, self.args = action, args

    def __reduce__(self):
        return self.action, self.args


def test_cifar_pickles_load_without_running_code(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_mod, "download_and_extract_archive", lambda *a, **k: None)
    folder = _cifar100_tree(tmp_path / "data")
    train = build_dataset("cifar100", str(tmp_path / "data"), "train")  # the official format loads
    assert len(train) == 20 and train.classes[7] == "c7" and train[0][0].shape == (3, 32, 32)
    x = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for protocol in (2, 4, 5):  # and so do re-packs made with Python 3 and numpy 2
        (folder / "test").write_bytes(pickle.dumps({"data": x, "fine_labels": [3, 4]}, protocol=protocol))
        test = build_dataset("cifar100", str(tmp_path / "data"), "test")
        assert test.targets == [3, 4] and np.array_equal(test.data[1], x[1].reshape(3, 32, 32).transpose(1, 2, 0))

    marker = tmp_path / "pwned"
    for payload in (_Payload(open, str(marker), "w"), _Payload(os.system, f"touch '{marker}'")):
        (folder / "train").write_bytes(pickle.dumps({"data": payload, "fine_labels": [0]}, protocol=2))
        with pytest.raises(ValueError, match=r"cifar-100-python.train.* is malformed.*not allowed"):
            build_dataset("cifar100", str(tmp_path / "data"), "train")
        assert not marker.exists()

        # checkpoints already load with weights_only=True: the same payload is refused there too
        torch.save({"model": payload, "epoch": 1}, tmp_path / "evil.pth")
        with pytest.raises(checkpoint.CheckpointError, match="evil.pth"):
            checkpoint.load(str(tmp_path / "evil.pth"))
        assert not marker.exists()


# ---------------------------------------------------------------- unreadable images
def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """train/{a,b}/ of real JPEGs plus a text file named .jpg (in a/) and a truncated JPEG (in b/);
    val/ (which imagefolder and imagenet both read) holds good JPEGs only."""
    root = tmp_path / "images"
    for i in range(3):
        _write(root / "train" / "a" / f"{i}.jpg", _jpeg(i))
        _write(root / "train" / "b" / f"{i}.jpg", _jpeg(10 + i))
        _write(root / "val" / "ab"[i % 2] / f"{i}.jpg", _jpeg(20 + i))
    fake = _write(root / "train" / "a" / "fake.jpg", b"this is not an image\n")
    truncated = _write(root / "train" / "b" / "truncated.jpg", _jpeg(99)[:400])
    return root, [fake, truncated]


# name, root below the tree, options: every dataset that reads image folders
FOLDER_DATASETS = [("imagefolder", "", {}), ("imagenet", "", {"crop": 32}),
                   ("metric_folder", "train", {"train_classes": 1})]


def _dataset(tree, name, sub, opts, **extra):
    import data.metric_learning  # noqa: F401  (registers metric_folder)
    root, _ = tree
    return build_dataset(name, str(root / sub), "train", augment=False, **opts, **extra)


@pytest.mark.parametrize("name,sub,opts", FOLDER_DATASETS)
def test_bad_image_error_names_the_file(tree, name, sub, opts):
    ds = _dataset(tree, name, sub, opts)
    paths = [p for p, _ in ds.samples]
    bad = [p for p in tree[1] if p in paths]
    assert bad, "the split holds a bad file"
    for path in bad:
        with pytest.raises(BadImageError) as err:
            ds[paths.index(path)]
        message = str(err.value)
        assert path in message and "--skip_bad_images" in message and "\n" not in message
    # through DataLoader workers the message is still the one line naming the file
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    with pytest.raises(BadImageError) as err:
        list(loader)
    assert any(p in str(err.value) for p in bad) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,sub,opts", FOLDER_DATASETS)
def test_skip_bad_images_replaces_counts_and_warns_once(tree, name, sub, opts):
    ds = _dataset(tree, name, sub, opts, skip_bad_images=True)
    paths = [p for p, _ in ds.samples]
    bad = [p for p in tree[1] if p in paths]
    good = [i for i, p in enumerate(paths) if p not in bad]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            items = [ds[i] for i in range(len(ds))]
    assert ds.bad_images == bad
    for path in bad:  # warned once each, though read twice
        assert sum(path in str(w.message) for w in caught) == 1
    for i, path in enumerate(paths):  # a bad file's stand-in: the next readable sample, wrapping
        j = i if i in good else next((k for k in good if k > i), good[0])
        assert torch.equal(items[i][0], items[j][0]) and items[i][1] == items[j][1]
    assert len(ds) == len(paths)

    # files found bad in DataLoader workers are counted in the main process
    fresh = _dataset(tree, name, sub, opts, skip_bad_images=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(torch.utils.data.DataLoader(fresh, batch_size=2, num_workers=2))
    assert sum(len(b[1]) for b in batches) == len(fresh) and fresh.bad_images == bad


def test_skip_bad_images_is_refused_where_no_image_files_are_read():
    opts = dict(train_size=10, test_size=10, num_classes=2)
    with pytest.raises(DataError, match="skip_bad_images.*'synthetic'"):
        build_dataset("synthetic", "", "train", skip_bad_images=True, **opts)
    assert len(build_dataset("synthetic", "", "train", skip_bad_images=False, **opts)) == 10
    with pytest.raises(DataError, match="'cifar100'"):
        build_dataset("cifar100", "/nowhere", "train", skip_bad_images=True)


def test_cli_bad_image_fails_with_its_path_or_is_skipped(tree, tmp_path, capsys):
    root, bad = tree
    argv = ["--dataset", "imagefolder", "--data-root", str(root), "--model", "resnet8", "--epochs", "1",
            "--batch_size", "2", "--num_workers", "0", "--no_tensorboard"]
    assert config.parse(config.teacher_parser(), argv).data_opts == {}
    assert config.parse(config.teacher_parser(), argv + ["--skip_bad_images"]).data_opts == {"skip_bad_images": True}

    code = cli.teacher(argv + ["--save_dir", str(tmp_path / "strict")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and any(p in errors[0] for p in bad), errors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.teacher(argv + ["--save_dir", str(tmp_path / "skip"), "--skip_bad_images", "--epochs", "2"])
    assert code == 0 and os.path.isfile(tmp_path / "skip" / "latest.pth")
    assert f"skipped {len(bad)} unreadable image file(s) (--skip_bad_images)" in capsys.readouterr().out
    for path in bad:  # two epochs, one warning per file
        assert sum(path in str(w.message) for w in caught) == 1


# ---------------------------------------------------------------- scripts/verify_images.py
def _verify(root, *extra):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "verify_images.py"), str(root), *extra],
                          capture_output=True, text=True, timeout=300)


def test_verify_images(tree):
    root, bad = tree
    run = _verify(root, "--workers", "2")
    assert run.returncode == 1, run.stderr
    flagged = [line for line in run.stdout.splitlines() if line.startswith("BAD ")]
    assert len(flagged) == 2
    for path in bad:
        assert any(path in line for line in flagged)
    assert "11 image files" in run.stdout and "2 cannot be read" in run.stdout

    for path in bad:
        os.remove(path)
    run = _verify(root, "--workers", "1")
    assert run.returncode == 0 and "9 image files" in run.stdout and "all decode" in run.stdout
    assert _verify(root / "nowhere").returncode == 2


def test_cli_malformed_cifar_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar_mod, "download_and_extract_archive", lambda *a, **k: None)
    folder = _cifar100_tree(tmp_path / "data")
    (folder / "train").write_bytes(b"\x80\x02}q\x00(truncated")
    code = cli.teacher(["--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--model", "resnet8",
                        "--save_dir", str(tmp_path / "run"), "--num_workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cifar-100-python/train' is malformed" in err[0]
    assert not (tmp_path / "run").exists()
