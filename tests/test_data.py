"""Data plugins on generated files: CIFAR pickles, image folders, synthetic, wrappers."""
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

import data
from core.requests import ContrastSampling, SampleIndex
from data import build_dataset, dataset_info
from data.loaders import collate
from data.requests import ContrastServer, Served, served_dataset
from data import cifar as cifar_mod
from core.registry import UnknownNameError


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar100_tree(root, n_train=60, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 100, n)]
        _dump(folder / split, {"data": x, "fine_labels": y, "coarse_labels": [0] * n})
        arrays[split] = (x, y)
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    return arrays


def _cifar10_tree(root, per_batch=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        _dump(folder / name, {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                              "labels": y})
        labels.append(y)
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return labels


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


# ---------------------------------------------------------------- registry
def test_registry_and_info():
    assert {"cifar10", "cifar100", "imagefolder", "synthetic"} <= set(data.DATASETS.names())
    info = dataset_info("cifar100")
    assert info["num_classes"] == 100 and info["family"] == "cifar" and info["input_size"] == 32
    assert dataset_info("cifar10")["mean"] != info["mean"]  # §3.1: CIFAR-10 has its own stats
    with pytest.raises(UnknownNameError, match="cifar100"):
        build_dataset("cifar1000", "/nowhere", "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic", "", "val", train_size=10, test_size=10)


def test_default_data_root(monkeypatch):
    monkeypatch.setenv("DISTILLERS_DATA", "/data/here")
    assert data.default_data_root() == "/data/here"
    monkeypatch.delenv("DISTILLERS_DATA")
    assert data.default_data_root().endswith(os.path.join(".cache", "distillers", "data"))


# ---------------------------------------------------------------- CIFAR
def test_cifar100_loads_and_normalises(tmp_path):
    arrays = _cifar100_tree(tmp_path)
    train = build_dataset("cifar100", str(tmp_path), "train")
    test = build_dataset("cifar100", str(tmp_path), "test")
    assert len(train) == 60 and len(test) == 40 and train.num_classes == 100
    assert list(train.targets) == arrays["train"][1] and train.classes[3] == "c3"
    img, y = test[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and y == arrays["test"][1][5]

    info = dataset_info("cifar100")
    raw = arrays["test"][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255
    expected = (raw.mean(axis=(0, 2, 3)) - np.array(info["mean"])) / np.array(info["std"])
    got = torch.stack([test[i][0] for i in range(len(test))]).double().mean((0, 2, 3))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # pixel (0, 0, 0) of image 5: channel-major order of the pickle rows
    assert img[0, 0, 0].item() == pytest.approx(
        (arrays["test"][0][5, 0] / 255 - info["mean"][0]) / info["std"][0], abs=1e-5)


def test_augmentation_only_when_asked(tmp_path):
    _cifar100_tree(tmp_path)
    test = build_dataset("cifar100", str(tmp_path), "test")
    assert torch.equal(test[0][0], test[0][0])
    train = build_dataset("cifar100", str(tmp_path), "train")
    torch.manual_seed(0)
    views = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(views[0], v) for v in views[1:])
    plain = build_dataset("cifar100", str(tmp_path), "train", augment=False)
    assert torch.equal(plain[0][0], plain[0][0])


def test_cifar10_loads_with_its_own_constants(tmp_path):
    labels = _cifar10_tree(tmp_path)
    train = build_dataset("cifar10", str(tmp_path), "train")
    test = build_dataset("cifar10", str(tmp_path), "test")
    assert len(train) == 50 and len(test) == 10 and test.num_classes == 10
    assert list(train.targets) == sum(labels[:5], []) and list(test.targets) == labels[5]
    x = test.data[0].astype(np.float64) / 255  # HWC
    mean, std = dataset_info("cifar10")["mean"], dataset_info("cifar10")["std"]
    np.testing.assert_allclose(test[0][0].permute(1, 2, 0).numpy(),
                               (x - np.array(mean)) / np.array(std), atol=1e-5)


def test_missing_cifar_offline_names_expected_files(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_mod, "download_and_extract_archive", _offline)
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("cifar100", str(tmp_path), "train")
    msg = str(err.value)
    for part in (str(tmp_path), "cifar-100-python", "train", "meta", "cifar-100-python.tar.gz",
                 "download failed", "DISTILLERS_DATA"):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="data_batch_5.*test_batch.*batches.meta"):
        build_dataset("cifar10", str(tmp_path), "test", download=False)


def test_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    """torchvision's real download path creates the root first; a failed attempt must not leave
    an empty data folder that looks like a dataset the next time."""
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(FileNotFoundError, match="download failed"):
        build_dataset("cifar100", str(tmp_path / "new" / "deeper"), "train")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="download failed"):
        build_dataset("cifar100", str(kept), "train")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_malformed_cifar_is_a_value_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_mod, "download_and_extract_archive", _offline)
    _cifar100_tree(tmp_path)
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cifar-100-python.train.* malformed"):
        build_dataset("cifar100", str(tmp_path), "train")
    _dump(tmp_path / "cifar-100-python" / "test",
          {"data": np.zeros((3, 100), np.uint8), "fine_labels": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"uint8 \[N, 3072\]"):
        build_dataset("cifar100", str(tmp_path), "test")


# ---------------------------------------------------------------- image folders
def _image(path, size=40, mode="RGB", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def test_imagefolder_nested_gray_and_val(tmp_path):
    # Tiny-ImageNet style train tree (images/ one level down), a flat class, a grayscale JPEG
    _image(tmp_path / "train" / "n01" / "images" / "a.JPEG")
    _image(tmp_path / "train" / "n01" / "images" / "b.png", value=1)
    _image(tmp_path / "train" / "n02" / "c.jpg", mode="L", value=2)
    (tmp_path / "train" / "n02" / "notes.txt").write_text("not an image")
    _image(tmp_path / "val" / "n02" / "d.jpg", size=64, value=3)  # no test/: val/ is used
    train = build_dataset("imagefolder", str(tmp_path), "train")
    test = build_dataset("imagefolder", str(tmp_path), "test")
    assert len(train) == 3 and train.num_classes == 2 and list(train.targets) == [0, 0, 1]
    assert len(test) == 1 and list(test.targets) == [1] and test.num_classes == 2
    for ds in (train, test):
        for i in range(len(ds)):
            assert ds[i][0].shape == (3, 32, 32)
    big = build_dataset("imagefolder", str(tmp_path), "test", image_size=48)
    assert big[0][0].shape == (3, 48, 48)


def test_imagefolder_layout_errors(tmp_path):
    _image(tmp_path / "train" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="no class sub-folders.*expected layout"):
        build_dataset("imagefolder", str(tmp_path), "train")
    _image(tmp_path / "train" / "cat" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="'test/' or 'val/'"):
        build_dataset("imagefolder", str(tmp_path), "test")
    _image(tmp_path / "val" / "images" / "v.jpg")  # unsorted Tiny-ImageNet val/
    with pytest.raises(ValueError, match="val_annotations"):
        build_dataset("imagefolder", str(tmp_path), "test")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no image files"):
        build_dataset("imagefolder", str(tmp_path / "empty"), "train")


# ---------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_configurable():
    opts = dict(num_classes=7, train_size=140, test_size=70)
    a = build_dataset("synthetic", "", "train", **opts)
    b = build_dataset("synthetic", "", "train", **opts)
    c = build_dataset("synthetic", "", "train", seed=1, **opts)
    test = build_dataset("synthetic", "", "test", **opts)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)
    assert len(a) == 140 and len(test) == 70 and a.num_classes == 7
    assert torch.bincount(a.targets, minlength=7).tolist() == [20] * 7
    assert not any(torch.equal(test.images[0], x) for x in a.images)  # disjoint draws
    img, y = test[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= y < 7
    assert torch.equal(test[0][0], test[0][0])


def test_synthetic_default_size_and_stats():
    info = dataset_info("synthetic")
    ds = build_dataset("synthetic", "", "train")
    assert len(ds) == 10000 and ds.num_classes == info["num_classes"] == 10
    counts = torch.bincount(ds.targets, minlength=10)
    assert counts.min() == counts.max() == 1000
    x = ds.images[:2000].float() / 255
    # the registered mean/std describe the data closely enough to normalise it
    np.testing.assert_allclose(x.mean((0, 2, 3)).numpy(), info["mean"], atol=0.03)
    np.testing.assert_allclose(x.std((0, 2, 3)).numpy(), info["std"], atol=0.03)


# ---------------------------------------------------------------- wrappers
class _Toy(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.targets = torch.tensor(labels)
        self.num_classes = int(max(labels)) + 1

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.zeros(1), int(self.targets[i])


LABELS = [i % 4 for i in range(40)] + [4] * 5  # 4 classes of 10, one of 5


def indexed(dataset):
    return served_dataset(dataset, [SampleIndex()], 0)


def contrast(k, mode="exact", seed=0, percent=1.0):
    """The contrast server over the toy labels, and the served set (items: dicts of named fields)."""
    server = ContrastServer(ContrastSampling(k, mode), _Toy(LABELS), seed, percent=percent)
    return server, Served(_Toy(LABELS), [server], seed)


def test_sample_index_request():
    ds = indexed(_Toy(LABELS))
    assert ds[7]["index"] == 7 and ds[7]["labels"] == 3 and len(ds) == 45
    assert ds.num_classes == 5 and ds.targets is ds.dataset.targets


def test_contrast_sampling_exact_and_relax():
    labels = np.array(LABELS)
    _, exact = contrast(8, "exact")
    _, relax = contrast(8, "relax")
    for i in range(len(labels)):
        item = exact[i]
        c, y = item["contrast_idx"], item["labels"]
        assert item["index"] == i and c.dtype == torch.long and c.shape == (9,) and c[0] == i
        assert (labels[c[1:]] != y).all() and len(set(c[1:].tolist())) == 8
        c = relax[i]["contrast_idx"]
        assert labels[c[0]] == labels[i] and (labels[c[1:]] != labels[i]).all()
    assert len({contrast(8, "relax", seed=s)[0].contrast_indices(0)[0].item() for s in range(20)}) > 1


def test_contrast_sampling_pool_edges_and_determinism():
    labels = np.array(LABELS)
    big, _ = contrast(100)  # pool of class 0 is 35: with replacement
    c = big.contrast_indices(0)
    assert c.shape == (101,) and (labels[c[1:]] != 0).all()
    small, _ = contrast(50, percent=0.2)  # 2 per class of 10, 1 of class 4
    pools = {}
    for i in range(len(labels)):
        negs = small.contrast_indices(i)[1:]
        assert (labels[negs] != labels[i]).all()
        for j in negs.tolist():
            pools.setdefault(labels[j], set()).add(j)
    assert {k: len(v) for k, v in pools.items()} == {0: 2, 1: 2, 2: 2, 3: 2, 4: 1}

    a, b = contrast(5, seed=3)[0], contrast(5, seed=3)[0]
    assert torch.equal(a.contrast_indices(11), b.contrast_indices(11))
    assert torch.equal(a.contrast_indices(11), a.contrast_indices(11))
    other = contrast(5, seed=4)[0]
    assert not all(torch.equal(a.contrast_indices(i), other.contrast_indices(i)) for i in range(10))
    before = [a.contrast_indices(i) for i in range(10)]
    a.set_epoch(1)
    assert not all(torch.equal(x, a.contrast_indices(i)) for i, x in enumerate(before))
    with pytest.raises(ValueError, match="positive"):
        ContrastSampling(5, positive="soft")


def test_contrast_sampling_same_in_workers():
    _, ds = contrast(6, "relax", seed=1)
    ds.set_epoch(2)
    direct = torch.stack([ds[i]["contrast_idx"] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate)
    via_workers = torch.cat([batch.contrast_idx for batch in loader])
    assert torch.equal(direct, via_workers)


# ------------------------------------------------------------------ --keep_last_batch
@pytest.mark.parametrize("kind", ["dataloader", "device"])
def test_keep_last_serves_the_partial_batch_and_resumes_into_it(kind):
    """With keep_last an epoch of 70 samples at batch 16 is 4 full batches and one of 6, every sample once;
    a resume that skips k batches serves exactly the epoch's remaining batches, the partial one last."""
    from data.device_loader import DeviceTrainLoader
    from data.loaders import DataLoaderTrainLoader

    dataset = served_dataset(build_dataset("synthetic", "", "train", train_size=70), [SampleIndex()], 5)

    def loader(keep):
        if kind == "device":
            return DeviceTrainLoader.from_dataset(dataset, (0.5,) * 3, (0.25,) * 3, 0, 1, 16, 5, "cpu", keep_last=keep)
        return DataLoaderTrainLoader(dataset, 0, 1, 16, 0, 5, keep_last=keep)

    dropping, keeping = loader(False), loader(True)
    for plan in (dropping, keeping):
        plan.set_epoch(3)
    assert (len(dropping), len(keeping)) == (4, 5)
    whole = list(keeping)
    assert [len(b) for b in whole] == [16, 16, 16, 16, 6]
    assert sorted(torch.cat([b.index for b in whole]).tolist()) == list(range(70))
    assert all(torch.equal(a.images, b.images) for a, b in zip(list(dropping), whole))  # the same first four
    for skip in (2, 4):
        keeping.set_epoch(3, skip=skip)
        rest = list(keeping)
        assert len(keeping) == len(rest) == 5 - skip
        assert all(torch.equal(a.index, b.index) and torch.equal(a.images, b.images)
                   for a, b in zip(rest, whole[skip:]))


def test_keep_last_is_refused_where_it_cannot_hold():
    from argparse import Namespace

    from engine.data_setup import check_keep_last
    from engine.distributed import DistInfo
    from engine.errors import ConfigError
    from engine.metric_learning_task import MetricTask
    from engine.tasks import ClassificationTask

    args = Namespace(keep_last_batch=True, mixup=0.0, cutmix=0.0, dataset="cifar100")
    one, two = DistInfo(), DistInfo(rank=0, world_size=2)
    assert check_keep_last(args, one, ClassificationTask(), 70, 16) is True
    assert check_keep_last(Namespace(keep_last_batch=False), two, ClassificationTask(), 70, 16) is False
    with pytest.raises(ConfigError, match="on one process; this run has 2"):
        check_keep_last(args, two, ClassificationTask(), 70, 16)
    with pytest.raises(ConfigError, match="the cub200 task's sampler builds its own batches"):
        check_keep_last(Namespace(**{**vars(args), "dataset": "cub200"}), one, MetricTask(), 70, 16)
    args.mixup = 0.8
    assert check_keep_last(args, one, ClassificationTask(), 70, 16)  # a last batch of 6: even, mixing pairs it
    with pytest.raises(ConfigError, match=r"the last batch holds 5 samples \(69 % 16\)"):
        check_keep_last(args, one, ClassificationTask(), 69, 16)


def test_keep_last_batch_from_the_command_line_says_what_it_does(tmp_path, capsys):
    """train_teacher.py with and without --keep_last_batch (70 samples at batch 16): the log says whether the
    partial batch is kept, as the run's loader does (5 batches against 4: the loader tests above)."""
    from engine import cli

    argv = ["--dataset", "synthetic", "--data_opt", "train_size=70", "--data_opt", "test_size=8", "--batch_size", "16",
            "--num_workers", "0", "--no_tensorboard", "--model", "resnet8", "--epochs", "1"]
    for flag, word in ((["--keep_last_batch"], "kept (--keep_last_batch)"), ([], "dropped")):
        assert cli.teacher(argv + flag + ["--save_dir", str(tmp_path / word[:4])]) == 0
        assert f"last partial batch {word}" in capsys.readouterr().out
        assert (tmp_path / word[:4] / "latest.pth").exists()
