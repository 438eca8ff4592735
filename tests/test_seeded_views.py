"""Seeded RandomResizedCrop views (data/seeded_views.py): torchvision's draws and rendering,
replayed exactly across dataset instances, DataLoader workers and batch orders, fresh per epoch."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

import data
from data.view_keys import view_key
from data.imagenet import REFERENCE_RRC, TORCHVISION_RRC
from data.registry import DataError
from data.seeded_views import SeededRandomResizedCrop, WithSeededViews, rrc_params, view_slot
from core.requests import SampleIndex
from data.requests import served_dataset
from engine.distributed import DistInfo
from data.loaders import DataLoaderTrainLoader

CLASSES = ("n01440764", "n01443537", "n01484850")
N_PER_CLASS = 8
#: source image sizes (height, width): wide, tall, square, and one too thin for any draw
SIZES = [(72, 96), (100, 40), (64, 64), (10, 200)]


def _write_jpeg(path, size, rng, rotated=False) -> None:
    """Noise; ``rotated`` tags it EXIF orientation 6, which PIL's loader (so torchvision) ignores."""
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    exif = Image.Exif()
    if rotated:
        exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=90, exif=exif)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` of noise images of varied sizes, the
    first of each class EXIF-rotated."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for wnid in CLASSES:
        for split, count in (("train", N_PER_CLASS), ("val", 2)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                _write_jpeg(folder / f"{wnid}_{i}.JPEG", rng.integers(40, 90, 2), rng, rotated=i == 0)
    return root


def seeded_set(tree, seed=7, **options):
    train = data.build_dataset("imagenet", str(tree), "train", crop=32, seeded_views=True, **options)
    return WithSeededViews(train, seed)


def _items(dataset, epoch):
    """(image, label, index, view id) of every sample in ``epoch``."""
    dataset.set_epoch(epoch)
    return [(*dataset[i], i, view_slot(epoch)) for i in range(len(dataset))]


def _torchvision_view(seed, epoch, index, image, size, scale, ratio):
    """torchvision's RandomResizedCrop then RandomHorizontalFlip, the global RNG seeded with the key."""
    with torch.random.fork_rng():
        torch.manual_seed(int(view_key(seed, epoch, index).item()))
        return T.Compose([T.RandomResizedCrop(size, scale, ratio), T.RandomHorizontalFlip()])(image)


@pytest.mark.parametrize("scale, ratio", [TORCHVISION_RRC, REFERENCE_RRC])
def test_params_are_torchvisions_draws_on_the_seeded_generator(scale, ratio):
    for height, width in SIZES:
        image = torch.empty(3, height, width)
        for index in range(40):
            with torch.random.fork_rng():
                torch.manual_seed(int(view_key(5, 2, index).item()))
                expected = T.RandomResizedCrop.get_params(image, list(scale), list(ratio))
                flip = bool(torch.rand(1) < 0.5)
            assert rrc_params(5, 2, index, height, width, scale, ratio) == (*expected, flip)
    # a 10 x 200 image admits no draw: every view is the centre fallback, clamped to the widest ratio
    top, left, h, w, _ = rrc_params(5, 2, 0, 10, 200, scale, ratio)
    assert (h, w) == (10, round(10 * max(ratio))) and (top, left) == (0, (200 - w) // 2)


def test_rendered_view_equals_torchvision_pipeline_and_resized_crop():
    rng = np.random.default_rng(1)
    crop = SeededRandomResizedCrop(24)
    flips = 0
    for index, (height, width) in enumerate(SIZES * 5):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        view = crop.params(3, 4, index, image)
        top, left, h, w, flip = view
        ours = np.asarray(crop(image, view))
        direct = TF.resized_crop(image, top, left, h, w, [24, 24])
        assert np.array_equal(ours, np.asarray(TF.hflip(direct) if flip else direct))
        assert np.array_equal(ours, np.asarray(_torchvision_view(3, 4, index, image, 24, *TORCHVISION_RRC)))
        flips += flip
    assert 0 < flips < 20
    tensor = torch.from_numpy(rng.integers(0, 256, (3, 50, 70), dtype=np.uint8))
    view = crop.params(3, 4, 0, tensor)
    expected = TF.resized_crop(tensor, *view[:4], [24, 24], antialias=True)
    assert torch.equal(crop(tensor, view), TF.hflip(expected) if view[4] else expected)


def test_params_are_distributed_like_torchvisions():
    """2000 samples' views vs 2000 draws of torchvision's own get_params, on a wide image where
    rejection skews the aspect ratio (a swapped height/width or a uniform ratio fails)."""
    height, width = 200, 300
    ours = np.array([rrc_params(0, 1, i, height, width) for i in range(2000)], dtype=float)
    image = torch.empty(3, height, width)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = np.array([T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(2000)],
                          dtype=float)

    def area_and_log_aspect(views):
        return views[:, 2] * views[:, 3] / (height * width), np.log(views[:, 3] / views[:, 2])

    (area, log_aspect), (tv_area, tv_log_aspect) = area_and_log_aspect(ours), area_and_log_aspect(theirs)
    assert area.min() >= 0.08 * 0.99 and area.max() <= 1.0  # rounding to pixels may shave a hair
    assert abs(area.mean() - tv_area.mean()) < 0.02  # standard error of the difference: 0.006
    assert abs(area.std() - tv_area.std()) < 0.02
    assert abs(log_aspect.mean() - tv_log_aspect.mean()) < 0.015  # s.e. 0.005; the skew itself is 0.03
    assert 0.45 < ours[:, 4].mean() < 0.55
    assert len({tuple(v) for v in ours[:, :4]}) > 1900  # distinct samples draw independently


def test_same_views_from_two_instances_fresh_views_each_epoch(tree):
    first, second = seeded_set(tree), seeded_set(tree)
    epoch3, again = _items(first, 3), _items(second, 3)
    for (image, label, index, view), (image2, label2, index2, view2) in zip(epoch3, again):
        assert torch.equal(image, image2) and (label, index, view) == (label2, index2, view2)
    assert {view for *_, view in epoch3} == {2}
    assert epoch3[0][0].shape == (3, 32, 32)
    epoch4 = _items(first, 4)
    assert {view for *_, view in epoch4} == {3}
    changed = sum(not torch.equal(a[0], b[0]) for a, b in zip(epoch3, epoch4))
    assert changed >= 0.9 * len(epoch3)
    other_seed = _items(seeded_set(tree, seed=8), 3)
    assert sum(not torch.equal(a[0], b[0]) for a, b in zip(epoch3, other_seed)) >= 0.9 * len(epoch3)


def _by_index(loader, epoch):
    loader.set_epoch(epoch)
    seen = {}
    for batch in loader:
        for image, label, i in zip(batch.images, batch.labels, batch.index.tolist()):
            seen[i] = (image, int(label), view_slot(loader.dataset.dataset.epoch))
    return seen


def test_dataloader_workers_and_batch_orders_replay_the_same_views(tree):
    """The DataLoader path sets the epoch before each fresh (non-persistent) iterator, so its worker
    processes render the epoch's views; the order of batches does not matter."""
    reference = seeded_set(tree)
    loaders = [DataLoaderTrainLoader(served_dataset(seeded_set(tree), [SampleIndex()], order), 0, 1, batch_size=4,
                                     num_workers=workers, seed=order) for workers, order in ((0, 1), (2, 2))]
    for epoch in (2, 5):
        expected = {i: item for i, item in enumerate(_items(reference, epoch))}
        runs = [_by_index(loader, epoch) for loader in loaders]
        assert len(runs[0]) == len(runs[1]) == len(reference)  # 24 samples, 6 full batches
        for run in runs:
            for i, (image, label, view) in run.items():
                assert torch.equal(image, expected[i][0]) and label == expected[i][1] and view == epoch - 1
    assert list(loaders[0].sampler) != list(loaders[1].sampler)  # the two loaders batch differently


def test_default_pipeline_unchanged_and_misuse_is_refused(tree):
    default = data.build_dataset("imagenet", str(tree), "train", crop=32)
    assert [type(s) for s in default.transform.transforms[:2]] == [T.RandomResizedCrop, T.RandomHorizontalFlip]
    with pytest.raises(DataError, match="SeededRandomResizedCrop"):
        WithSeededViews(default, seed=0)
    seeded = data.build_dataset("imagenet", str(tree), "train", crop=32, seeded_views=True)
    steps = seeded.transform.transforms
    assert isinstance(steps[0], SeededRandomResizedCrop)
    assert [type(s) for s in steps[1:]] == [T.ToTensor, T.Normalize]
    with pytest.raises(DataError, match="WithSeededViews"):
        seeded[0]  # the crop needs a view
    test = data.build_dataset("imagenet", str(tree), "test", crop=32, val_resize=36, seeded_views=True)
    assert [type(s) for s in test.transform.transforms[:2]] == [T.Resize, T.CenterCrop]


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_dali(), reason="NVIDIA DALI is not installed (the optional [dali] extra)")
def test_dali_renders_the_torchvision_paths_views_with_any_threads_batching_or_resume(tree):
    from data.dali_seeded import seeded_dali_loaders

    train = data.build_dataset("imagenet", str(tree), "train", crop=32)
    test = data.build_dataset("imagenet", str(tree), "test", crop=32, val_resize=36)

    def run(threads, batch_size, skip=0):
        loader, _ = seeded_dali_loaders("cpu", threads, 7, DistInfo(), batch_size,
                                        served_dataset(train, [SampleIndex()], 7), test)
        loader.set_epoch(3, skip)
        return {i: (image, int(label)) for b in loader
                for image, label, i in zip(b.images, b.labels, b.index.tolist())}

    full = run(threads=1, batch_size=4)
    assert len(full) == len(train)
    for other in (run(threads=2, batch_size=6), run(threads=2, batch_size=4, skip=2)):
        assert other and all(torch.equal(image, full[i][0]) for i, (image, _) in other.items())
    epoch3, epoch4 = _items(seeded_set(tree), 3), _items(seeded_set(tree), 4)
    for i, (image, label) in full.items():
        assert label == epoch3[i][1]
        # same window and flip, another decoder and resampler: ~0.005 apart in normalised units
        assert (image - epoch3[i][0]).abs().mean() < 0.02
    moved = sum(float((image - epoch4[i][0]).abs().mean()) > 0.1 for i, (image, _) in full.items())
    assert moved >= 0.9 * len(full)
