"""The ``imagenet`` plugin on generated JPEG trees: torchvision and DALI CPU loaders, val sorting,
the ImageNet zoo, and one distillation run through ``train_student.py --dali cpu``."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from core.requests import ContrastSampling, SampleIndex
from data.requests import served_dataset
from data.imagenet import ImageNetFolder, geometry
from engine import cli
from data.registry import DataError
from data.samplers import EpochSampler
from engine.distributed import DistInfo
from models import create_model, list_models

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"n01440764": (200, 40, 40), "n01443537": (40, 180, 60), "n01484850": (50, 70, 210)}
MEAN, STD = np.array(data.dataset_info("imagenet")["mean"]), np.array(data.dataset_info("imagenet")["std"])
GRAY = "gray.JPEG"  # one grayscale file per class: decoders must give 3 channels


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


needs_dali = pytest.mark.skipif(not _has_dali(), reason="NVIDIA DALI is not installed (the optional [dali] "
                                "extra: pip install -c constraints.txt -e \".[dali]\"; CI installs it)")


def _jpeg(path: Path, colour, size, rng, gray=False) -> None:
    """A class-coloured image with a unique wave pattern, so every file is identifiable."""
    h, w = size
    wave = 14 * np.sin(np.arange(w) / rng.uniform(3, 9) + rng.uniform(0, 6))[None, :, None]
    pixels = np.clip(np.array(colour, float)[None, None] + wave + rng.normal(0, 3, (h, w, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    (image.convert("L") if gray else image).save(path, quality=95)


def make_tree(root: Path, n_train=8, n_val=5, flat_val=False) -> Path:
    """train/<wnid>/ (the first class one level deeper, as Tiny-ImageNet) and val/<wnid>/ of 72x72
    files, or a flat val/images/ with Tiny-ImageNet's val_annotations.txt."""
    rng = np.random.default_rng(0)
    lines = []
    for c, (wnid, colour) in enumerate(COLOURS.items()):
        train = root / "train" / wnid / ("images" if c == 0 else "")
        train.mkdir(parents=True)
        for i in range(n_train):
            name = GRAY if i == 0 else f"{wnid}_{i}.JPEG"
            _jpeg(train / name, colour, rng.integers(40, 100, 2), rng, gray=i == 0)
        val = root / "val" / ("images" if flat_val else wnid)
        val.mkdir(parents=True, exist_ok=True)
        for i in range(n_val):
            name = f"val_{c * n_val + i}.JPEG"
            _jpeg(val / name, colour, (72, 72), rng)
            lines.append(f"{name}\t{wnid}\t0\t0\t71\t71")
    if flat_val:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("imagenet"))


#: dali_loaders' mode, DALI threads and seed
DALI = ("cpu", 1, 3)


def build(tree, split, **options):
    return data.build_dataset("imagenet", str(tree), split, **{"crop": 64, "val_resize": 72, **options})


def nearest_class(images: torch.Tensor) -> np.ndarray:
    """Class whose colour is closest to each normalised image's mean colour."""
    rgb = images.mean(dim=(2, 3)).numpy() * STD + MEAN
    colours = np.array(list(COLOURS.values())) / 255
    return np.argmin(((rgb[:, None] - colours[None]) ** 2).sum(-1), axis=1)


# ------------------------------------------------------------------ torchvision path
def test_torchvision_path_shapes_normalisation_and_labels(tree):
    train, test = build(tree, "train", crop=32), build(tree, "test")
    assert (len(train), len(test), train.num_classes, test.num_classes) == (24, 15, 3, 3)
    assert sum(GRAY in p for p, _ in train.samples) == 3  # the nested class folder is found too
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    images = torch.stack([test[i][0] for i in range(len(test))])
    assert images.shape == (15, 3, 64, 64)
    assert (nearest_class(images) == np.array(test.targets)).all()


def test_geometry_options():
    assert geometry() == geometry(crop=224, val_resize=256)
    tiny = geometry(crop=64)
    assert (tiny.crop, tiny.val_resize, tiny.rrc_scale) == (64, 73, (0.08, 1.0))
    ref = geometry(reference_rrc=True)
    assert (ref.rrc_scale, ref.rrc_ratio) == ((0.1, 1.0), (0.8, 1.25))
    assert geometry(reference_rrc=True, rrc_scale=[0.2, 1]).rrc_scale == (0.2, 1.0)
    with pytest.raises(ValueError, match="val_resize"):
        geometry(crop=64, val_resize=32)


def test_flat_or_missing_val_is_a_clear_error(tmp_path):
    root = make_tree(tmp_path / "flat", n_train=2, n_val=1, flat_val=True)
    with pytest.raises(FileNotFoundError, match="scripts/sort_val.py"):
        ImageNetFolder(str(root), "test", False)
    assert len(ImageNetFolder(str(root), "train", True)) == 6  # the train split alone is fine
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no 'val/' folder"):
        ImageNetFolder(str(tmp_path / "noval"), "test", False)


def test_test_split_reads_val_even_next_to_an_unlabelled_test_folder(tmp_path):
    root = make_tree(tmp_path / "t", n_train=2, n_val=2)
    (root / "test" / "images").mkdir(parents=True)  # Tiny-ImageNet's unlabelled test/images
    assert len(build(root, "test")) == 6



def indexed(dataset):
    """The training set serving sample indices (what the trainer builds for a method that asks)."""
    return served_dataset(dataset, [SampleIndex()], 3)


# ------------------------------------------------------------------ DALI CPU path
@needs_dali
def test_dali_cpu_train_batches_follow_the_sampler_with_right_labels(tree):
    from data.dali import dali_loaders

    train_set = indexed(build(tree, "train", crop=32))
    train, _ = dali_loaders(*DALI, DistInfo(), 5, train_set, build(tree, "test"))
    assert len(train) == 4  # 24 samples, batch 5: the last partial batch is dropped
    train.set_epoch(2)
    batches = [(b.images, b.labels, b.index) for b in train]
    sampler = EpochSampler(train_set, 0, 1, seed=3)
    sampler.set_epoch(2)
    assert torch.cat([b[2] for b in batches]).tolist() == list(sampler)[:20]
    for x, y, index in batches:
        assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.shape == (5,) and index.dtype == torch.int64
        assert y.tolist() == [train_set.targets[i] for i in index.tolist()]
        colour = np.array([GRAY not in train_set.dataset.samples[i][0] for i in index.tolist()])
        assert (nearest_class(x)[colour] == y.numpy()[colour]).all()
        rgb = x[torch.from_numpy(~colour)] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
        assert (rgb.amax(1) - rgb.amin(1) < 0.03).all()  # grayscale files come out as 3 equal channels
        assert -2.2 < x.min() and x.max() < 2.7  # ImageNet-normalised, not 0..255
    # the same epoch replays identically; a skip resumes at the next batch
    again = list(train)
    assert all(torch.equal(a[0], b.images) for a, b in zip(batches, again))
    train.set_epoch(2, skip=1)
    assert len(train) == 3 and torch.equal(next(iter(train)).index, batches[1][2])


@needs_dali
def test_dali_cpu_eval_matches_torchvision(tree):
    from data.dali import dali_loaders

    test_set = build(tree, "test")
    _, test = dali_loaders(*DALI, DistInfo(), 4, build(tree, "train"), test_set)
    images, labels = map(torch.cat, zip(*[(b.images, b.labels) for b in test]))
    reference = torch.stack([test_set[i][0] for i in range(len(test_set))])
    assert images.shape == reference.shape == (15, 3, 64, 64)
    assert labels.tolist() == test_set.targets
    diff = (images - reference).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.25  # JPEG decoders differ by a grey level or two


@needs_dali
def test_dali_two_ranks_shard_train_and_see_every_test_sample_once(tree):
    from data.dali import dali_loaders

    train_set, test_set = indexed(build(tree, "train", crop=32)), build(tree, "test")
    reference = torch.stack([test_set[i][0] for i in range(len(test_set))]).flatten(1)
    seen, trained = [], []
    for rank in (0, 1):
        info = DistInfo(rank=rank, world_size=2)
        train, test = dali_loaders(*DALI, info, 4, train_set, test_set)
        train.set_epoch(1)
        trained.append({i for b in train for i in b.index.tolist()})
        for x, y in ((b.images, b.labels) for b in test):  # identify each image by its nearest torchvision one
            found = torch.cdist(x.flatten(1), reference).argmin(dim=1)
            assert y.tolist() == [test_set.targets[i] for i in found.tolist()]
            seen += found.tolist()
    assert sorted(seen) == list(range(15))  # 15 samples over 2 ranks: none missing, none twice
    assert not trained[0] & trained[1] and len(trained[0]) == len(trained[1]) == 12


@needs_dali
def test_dali_contrast_indices_are_valid(tree):
    from data.dali import dali_loaders

    train_set = served_dataset(build(tree, "train", crop=32), [ContrastSampling(6)], 1)
    train, _ = dali_loaders(*DALI, DistInfo(), 8, train_set, build(tree, "test"))
    train.set_epoch(1)
    labels = torch.tensor(train_set.targets)
    for batch in train:
        y, index, contrast = batch.labels, batch.index, batch.contrast_idx
        assert contrast.shape == (8, 7) and contrast.dtype == torch.int64
        assert torch.equal(contrast[:, 0], index)  # exact mode: the positive is the sample
        assert (labels[contrast[:, 1:]] != y[:, None]).all()  # negatives from other classes
        assert torch.equal(contrast, torch.stack([train_set[int(i)]["contrast_idx"] for i in index]))  # as torchvision


@needs_dali
def test_dali_gpu_on_a_cpu_process_is_a_clear_error(tree):
    from data.dali import dali_loaders

    with pytest.raises(DataError, match="--dali cpu"):
        dali_loaders("gpu", 1, 3, DistInfo(), 4, build(tree, "train"), build(tree, "test"))


def test_missing_dali_names_the_install_command(tree, monkeypatch):
    from data.dali import dali_loaders

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if not installed
    with pytest.raises(DataError, match=r"pip install -e \.\[dali\]"):
        dali_loaders(*DALI, DistInfo(), 4, build(tree, "train"), build(tree, "test"))


@needs_dali
def test_train_student_with_dali_timm_student_torchvision_teacher(tree, tmp_path):
    teacher = create_model("torchvision:resnet18", num_classes=3)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    code = cli.student([
        "--dataset", "imagenet", "--data-root", str(tree), "--dali", "cpu", "--data_opt", "crop=32",
        "--path_t", str(tmp_path / "teacher.pth"), "--model_t", "torchvision:resnet18",
        "--model_s", "timm:resnet10t", "--distill", "crd", "--nce_k", "16", "-a", "0.5",
        "--epochs", "1", "--batch_size", "8", "--num_workers", "1", "--device", "cpu",
        "--no_tensorboard", "--save_dir", str(tmp_path / "run")])
    assert code == 0
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["arch"] == "timm:resnet10t" and state["epoch"] == 2


@needs_dali
def test_launcher_script_spawn_form(tree, tmp_path):
    env = {**os.environ, "DATA_ROOT": str(tree), "LAUNCHER": "spawn", "GPUS": "1", "DALI": "cpu", "WORKERS": "1",
           "MASTER_PORT": "29613", "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "imagenet_launch.sh"), "train_teacher.py", "--model", "MobileNetV1",
         "--data_opt", "crop=32", "--epochs", "1", "--batch_size", "8", "--device", "cpu", "--no_tensorboard",
         "--save_dir", str(tmp_path / "run")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "processes 1 on cpu" in result.stdout and (tmp_path / "run" / "latest.pth").exists()


# ------------------------------------------------------------------ val sorting
def sort_val(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "sort_val.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_sort_val_tiny_imagenet_format_in_place_and_idempotent(tmp_path):
    root = make_tree(tmp_path / "tiny", n_train=2, n_val=2, flat_val=True)
    first = sort_val(root)
    assert first.returncode == 0 and "moved 6 images" in first.stdout
    assert not (root / "val" / "images").exists()
    again = sort_val(root)
    assert again.returncode == 0 and "moved 0 images" in again.stdout and "6 already" in again.stdout
    test = build(root, "test")
    assert len(test) == 6 and (nearest_class(torch.stack([test[i][0] for i in range(6)])) == test.targets).all()


def test_sort_val_imagenet_csv_and_devkit_formats_and_symlinks(tmp_path):
    from scipy.io import savemat

    wnids = list(COLOURS)
    for kind in ("csv", "devkit"):
        root = tmp_path / kind
        make_tree(root, n_train=1, n_val=1)
        for i, wnid in enumerate(wnids):  # flatten val/ the way ILSVRC2012 ships it
            (root / "val" / wnid / f"val_{i}.JPEG").rename(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
            (root / "val" / wnid).rmdir()
        if kind == "csv":
            rows = [f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 30 40 {w} 5 6 7 8" for i, w in enumerate(wnids)]
            annotations = tmp_path / "LOC_val_solution.csv"
            annotations.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
            extra = []
        else:
            ids = [3, 1, 2]  # devkit class ids, mapped to wnids by meta.mat
            annotations = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
            annotations.write_text("\n".join(str(ids[i]) for i in range(3)) + "\n")
            synsets = np.array([(ids[i], w) for i, w in enumerate(wnids)],
                               dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
            savemat(tmp_path / "meta.mat", {"synsets": synsets})
            extra = ["--meta", tmp_path / "meta.mat"]
            assert "--meta" in sort_val(root, "--annotations", annotations).stderr
        linked = tmp_path / f"{kind}_linked"
        result = sort_val(root, "--annotations", annotations, "--symlink-to", linked, *extra)
        assert result.returncode == 0, result.stderr
        assert (linked / "train").is_symlink() and (root / "val" / "ILSVRC2012_val_00000001.JPEG").exists()
        test = build(linked, "test")
        assert [os.path.basename(p) for p, _ in test.samples] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
        assert test.targets == [0, 1, 2]


def test_sort_val_errors_are_one_line_and_move_nothing(tmp_path):
    root = make_tree(tmp_path / "bad", n_train=1, n_val=1, flat_val=True)
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "missing.JPEG\tn01440764\n")
    result = sort_val(root)
    assert result.returncode == 2 and "1 annotated images" in result.stderr
    assert len(list((root / "val" / "images").iterdir())) == 3
    annotations.write_text("val_0.JPEG\tn99999999\n")
    assert "not folders of" in sort_val(root).stderr
    assert "no annotation file" in sort_val(make_tree(tmp_path / "none", 1, 1), "--symlink-to", tmp_path / "x").stderr


# ------------------------------------------------------------------ models
def test_imagenet_zoo_names_and_mobilenet_v1():
    assert set(list_models("imagenet")) >= {"ResNet18", "ResNet34", "ResNet50", "MobileNetV1",
                                            "MobileNetV2", "ShuffleV2", "MobileNetV2_Imagenet"}
    from core.taps import FeatureTaps

    model = create_model("MobileNetV1", num_classes=1000, family="imagenet")
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    with FeatureTaps(model, ["stem", "stages", "stage4_preact", "last_map", "pooled", "logits"]) as taps:
        out = taps(torch.randn(2, 3, 64, 64))  # the adaptive pool takes Tiny-ImageNet's 64 px
    assert [tuple(s.shape[1:]) for s in out["stages"]] == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (1024, 2, 2)]
    assert out["stem"].shape[1:] == (64, 32, 32) and out["pooled"].shape == (2, 1024)
    assert (out["stage4_preact"] < 0).any() and (out["stage4"] >= 0).all()
    with pytest.raises(ValueError, match="timm:mobilenetv1_100"):
        create_model("MobileNetV1", pretrained=True)


def test_pretrained_weights_offline_is_a_clear_error(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(RuntimeError, match="offline"):
        create_model("ResNet34", num_classes=1000, pretrained=True)


def _subset(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "subset_folder.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_subset_folder_links_the_first_classes_and_images_and_trains_as_an_imagefolder(tmp_path):
    """scripts/subset_folder.py on a Tiny-ImageNet-style tree (flat val/ sorted first): the first
    classes and files in sorted order, as links, read by ``imagefolder`` with their own labels."""
    root = make_tree(tmp_path / "tiny", n_train=6, n_val=4, flat_val=True)
    unsorted = _subset(root, tmp_path / "early", "--classes", 2)
    assert unsorted.returncode != 0 and "scripts/sort_val.py" in unsorted.stderr
    assert sort_val(root).returncode == 0
    dest = tmp_path / "sub"
    done = _subset(root, dest, "--classes", 2, "--train-per-class", 3, "--test-per-class", 2)
    assert done.returncode == 0 and "2 classes, 6 train images, 4 val images" in done.stdout
    wnids = sorted(COLOURS)[:2]
    assert sorted(os.listdir(dest / "train")) == wnids
    first = sorted(os.listdir(dest / "train" / wnids[0]))
    assert first == sorted(p.name for p in (root / "train" / wnids[0]).rglob("*.JPEG"))[:3]
    assert all((dest / "train" / wnids[0] / f).is_symlink() for f in first)
    test = data.build_dataset("imagefolder", str(dest), "test")
    assert (len(test), test.num_classes) == (4, 2)
    images = torch.stack([test[i][0] for i in range(4)])
    assert list(COLOURS)[:2] == wnids  # so a label id is its colour's index
    assert (nearest_class(images) == np.array(test.targets)).all()
    again = _subset(root, dest, "--classes", 2)
    assert again.returncode != 0 and "is not empty" in again.stderr
    too_many = _subset(root, tmp_path / "big", "--classes", 9)
    assert too_many.returncode != 0 and "--classes 9" in too_many.stderr and "only 3 classes" in too_many.stderr



# ------------------------------------------------------------------ the ViT recipes' augmentations (timm's)
DEIT_AUG = {"rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "interpolation": "bicubic"}


def test_deit_augmentations_are_timms_and_replay_per_sample_with_any_workers(tree):
    """rand_augment / random_erasing / interpolation build timm's train transform, and each sample's
    draws (timm's use Python's random and NumPy's generator, not torch's) come from (seed, epoch, index):
    the same item twice, the same batches with 0 and 2 workers, other draws in another epoch."""
    import random
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from torch.utils.data import DataLoader

    from data.loaders import collate

    train = build(tree, "train", crop=32, **DEIT_AUG)
    kinds = [type(t) for t in train.transform.transforms]
    assert RandAugment in kinds and RandomErasing in kinds
    assert build(tree, "test", interpolation="bicubic").transform.transforms[0].interpolation.value == "bicubic"
    served = indexed(train)
    served.set_epoch(1)
    first = served[5]["images"]
    random.random(), np.random.rand(), torch.rand(1)  # the caller's streams move on ...
    assert torch.equal(served[5]["images"], first)  # ... the sample's draws do not
    state = random.getstate()
    served[6]
    assert random.getstate() == state  # and the caller's stream is given back
    served.set_epoch(2)
    assert not torch.equal(served[5]["images"], first)
    served.set_epoch(1)
    order = list(range(len(served)))

    def batches(workers):
        loader = DataLoader(served, batch_size=6, sampler=order, num_workers=workers, collate_fn=collate)
        return [b.images for b in loader]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2)))


@pytest.mark.parametrize("options, match", [
    ({"rand_augment": "augmix-m3"}, r"rand_augment must be a timm RandAugment string such as rand-m9-mstd0.5-inc1"),
    ({"rand_augment": "rand-q9"}, r"rand_augment 'rand-q9' is not a timm RandAugment string"),
    ({"random_erasing": 1.5}, r"random_erasing is a probability in \[0, 1\], got 1.5"),
    ({"interpolation": "nearest"}, r"interpolation must be one of bilinear, bicubic; got 'nearest'"),
    ({"seeded_views": True, "random_erasing": 0.25}, r"seeded_views .* cannot be combined with random_erasing=0.25"),
])
def test_bad_deit_augmentation_options_are_named(tree, options, match):
    with pytest.raises(ValueError, match=match):
        build(tree, "train", **options)


@needs_dali
def test_dali_refuses_the_deit_augmentations_in_one_line(tree):
    from data.dali import dali_loaders

    with pytest.raises(DataError, match=r"--dali renders the crop and flip only, not rand_augment=rand-m9"):
        dali_loaders(*DALI, DistInfo(), 4, build(tree, "train", **DEIT_AUG), build(tree, "test"))


def test_a_vit_student_trains_with_the_deit_augmentations_from_the_command_line(tree, tmp_path, capsys):
    """The options as a user passes them (--data_opt), on the DataLoader path; a bad one is one line."""
    argv = ["--dataset", "imagenet", "--data-root", str(tree), "--data_opt", "crop=32",
            "--model", "timm:vit_tiny_patch16_224", "--model_opt", "img_size=32", "--model_opt", "patch_size=8",
            "--epochs", "1", "--batch_size", "8", "--num_workers", "1", "--device", "cpu", "--no_tensorboard"]
    deit = [a for k, v in DEIT_AUG.items() for a in ("--data_opt", f"{k}={v}")]
    assert cli.teacher(argv + deit + ["--save_dir", str(tmp_path / "run")]) == 0
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    capsys.readouterr()
    assert cli.teacher(argv + ["--data_opt", "random_erasing=2", "--save_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "random_erasing is a probability in [0, 1], got 2.0" in err[0]


def test_the_vitkd_config_trains_on_image_files_with_its_whole_recipe(tree, tmp_path):
    """configs/vit/vitkd_deit_tiny.yaml as published (DeiT III-Small -> DeiT-Tiny, RandAugment, random erasing,
    bicubic, no decay on biases and norms, mixup/cutmix, clipping, warm-up), shrunk to 32 px with 8 px patches
    on the generated JPEG tree: the teacher from train_teacher.py, then one epoch of the student."""
    small = ["--data-root", str(tree), "--data_opt", "crop=32", "--batch_size", "8", "--num_workers", "0",
             "--device", "cpu", "--no_tensorboard", "--epochs", "1"]
    patches = ["--model_opt", "img_size=32", "--model_opt", "patch_size=8"]
    assert cli.teacher(["--dataset", "imagenet", "--model", "timm:deit3_small_patch16_224"] + patches + small
                       + ["--save_dir", str(tmp_path / "teacher")]) == 0
    config_file = str(REPO / "configs" / "vit" / "vitkd_deit_tiny.yaml")
    assert cli.student(["--config", config_file, "--path_t", str(tmp_path / "teacher")] + patches + small
                       + ["--warmup_epochs", "0", "--save_dir", str(tmp_path / "student")]) == 0
    state = torch.load(tmp_path / "student" / "latest.pth", weights_only=True)
    assert state["arch"] == "timm:deit_tiny_patch16_224" and state["distiller_name"] == "vitkd"
    assert state["config"]["data_opts"] == {**DEIT_AUG, "crop": 32}  # the config's options and the command line's
    groups = state["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.05]
    assert all(torch.isfinite(v).all() for v in state["model"].values())
