"""The device-side CIFAR loader (data/device_loader.py): equal to the PIL path view for view,
same order as the DataLoader path, views a pure function of (seed, epoch, index)."""
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from core.requests import ContrastSampling, ExtraView, SampleIndex
from data import build_dataset, dataset_info
from data.device_loader import DeviceTrainLoader, crop_flip_normalize
from data.loaders import DataLoaderTrainLoader
from data.requests import served_dataset
from data.view_keys import decode_views, encode_views, view_ids

MEAN, STD = dataset_info("cifar10")["mean"], dataset_info("cifar10")["std"]
N = 200  # 5 CIFAR-10 batch files of 40 random images


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A real CifarPickles train split (the PIL path) read from generated files."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (N // 5, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, N // 5)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return build_dataset("cifar10", str(root), "train", download=False)


def loader(dataset, rank=0, world=1, batch=16, seed=3, **options):
    return DeviceTrainLoader.from_dataset(dataset, MEAN, STD, rank, world, batch, seed, "cpu", **options)


def indexed(dataset, seed=3):
    """The training set serving sample indices, as the trainer builds it for a method that asks."""
    return served_dataset(dataset, [SampleIndex()], seed)


def pil_view(hwc, dx, dy, flip, mean=MEAN, std=STD, padding=4):
    """The PIL train path built by hand for one crop offset and flip: RandomCrop(padding=4)
    pads with fill 0, crops at top=dy, left=dx, then RandomHorizontalFlip, ToTensor, Normalize."""
    img = TF.pad(Image.fromarray(np.asarray(hwc)), padding)
    img = TF.crop(img, int(dy), int(dx), hwc.shape[0], hwc.shape[1])
    if flip:
        img = TF.hflip(img)
    return TF.normalize(TF.to_tensor(img), mean, std)


def passes(loader_, epoch, skip=0):
    """Every batch of one pass, with the views it reports."""
    loader_.set_epoch(epoch, skip)
    return [(b.images, b.labels, b.index, loader_.last_views.clone()) for b in loader_]


def per_sample(batches):
    """{index: (view, image)} over the batches of a pass."""
    return {int(i): (tuple(v.tolist()), x) for b in batches for x, i, v in zip(b[0], b[2], b[-1])}


# ------------------------------------------------------------------ equality with the PIL path
def test_every_view_equals_the_pil_pieces(cifar):
    """All 162 views of a few images, bit for bit."""
    views = decode_views(torch.arange(162))
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    images = torch.from_numpy(cifar.data).permute(0, 3, 1, 2)
    for i in (0, 7, N - 1):
        out = crop_flip_normalize(images, torch.full((162,), i), views, mean, std, padding=4)
        expected = torch.stack([pil_view(cifar.data[i], *v) for v in views.tolist()])
        assert torch.equal(out, expected)
    assert set(map(tuple, views[:, :2].tolist())) == {(x, y) for x in range(9) for y in range(9)}


@pytest.mark.parametrize("name", ["cifar10", "synthetic"])
def test_device_view_is_the_dataset_transform_for_the_same_draws(name, cifar):
    """The datasets' own train transforms (PIL for CIFAR, uint8 tensors for synthetic), with
    torchvision's draws replayed (RandomCrop: top i, then left j; then the flip): the hand-built
    pieces above mean what torchvision does, and the device output equals it."""
    ds = cifar if name == "cifar10" else build_dataset("synthetic", "", "train", train_size=64)
    meta = dataset_info(name)
    dev = DeviceTrainLoader.from_dataset(ds, meta["mean"], meta["std"], 0, 1, 8, 0, "cpu")
    flips = set()
    for s in range(24):
        i = s % 8
        torch.manual_seed(s)
        expected = ds[i][0]
        torch.manual_seed(s)
        dy, dx = torch.randint(0, 9, (1,)).item(), torch.randint(0, 9, (1,)).item()
        flip = int(torch.rand(1) < 0.5)
        flips.add(flip)
        out = crop_flip_normalize(dev.images, torch.tensor([i]), torch.tensor([[dx, dy, flip]]),
                                  dev.mean, dev.std, 4)
        assert torch.equal(out[0], expected), (s, dx, dy, flip)
    assert flips == {0, 1}


def test_loader_batches_equal_the_pil_path_and_labels_line_up(cifar):
    dev = loader(indexed(cifar))
    batches = passes(dev, epoch=3)
    assert len(batches) == len(dev) == N // 16
    for images, labels, index, views in batches:
        assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32)
        assert labels.tolist() == [cifar.targets[i] for i in index.tolist()]
        expected = torch.stack([pil_view(cifar.data[i], *v) for i, v in zip(index.tolist(), views.tolist())])
        assert torch.equal(images, expected)


# ------------------------------------------------------------------ order, resume, ranks, epochs
@pytest.mark.parametrize("rank,world,epoch,skip", [(0, 1, 0, 0), (0, 1, 2, 3), (1, 2, 5, 0), (0, 2, 1, 2)])
def test_order_is_the_dataloader_paths(cifar, rank, world, epoch, skip):
    """Same samples in the same batches as the DataLoader path: switching loaders changes only
    the augmentation draws."""
    reference = DataLoaderTrainLoader(indexed(cifar), rank, world, 16, 0, seed=3)
    reference.set_epoch(epoch, skip)
    dev = loader(indexed(cifar), rank, world)
    dev.set_epoch(epoch, skip)
    assert len(dev) == len(reference)
    got = [(b.labels.tolist(), b.index.tolist()) for b in dev]
    assert got == [(b.labels.tolist(), b.index.tolist()) for b in reference]


def test_resume_replays_the_remaining_batches(cifar):
    dev = loader(indexed(cifar))
    full = passes(dev, epoch=4)
    rest = passes(loader(indexed(cifar)), epoch=4, skip=5)  # a fresh loader: nothing carried over
    assert len(rest) == len(full) - 5
    for a, b in zip(full[5:], rest):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_views_do_not_depend_on_the_number_of_processes(cifar):
    """Rank 0 and rank 1 of 2 together serve each sample with the view (and image) that one
    process serves it with; a different batch size changes nothing either."""
    one = per_sample(passes(loader(indexed(cifar), batch=10), epoch=2))
    two = {}
    for rank in (0, 1):
        two.update(per_sample(passes(loader(indexed(cifar), rank, 2, batch=10), epoch=2)))
    assert sorted(one) == sorted(two) == list(range(N))
    for i in one:
        assert one[i][0] == two[i][0] and torch.equal(one[i][1], two[i][1])
    odd = per_sample(passes(loader(indexed(cifar), 1, 2, batch=7), epoch=2))
    assert len(odd) == 98 and all(odd[i][0] == one[i][0] for i in odd)


def test_views_differ_across_epochs_and_seeds():
    index = np.arange(20000)
    base = view_ids(0, 0, index)
    for other in (view_ids(0, 1, index), view_ids(1, 0, index), view_ids(0, -1, index)):
        assert np.mean(base == other) < 0.02  # independent draws agree 1/162 of the time
    assert np.array_equal(view_ids(0, 0, index), base)  # and a pure function
    assert np.array_equal(view_ids(0, 0, [17, 3]), base[[17, 3]])


def test_view_space_is_covered_evenly():
    """100,000 draws (fixed seed, so deterministic) hit every one of the 162 views, each
    within 20% of its expected 617 (about 5 standard deviations)."""
    ids = np.concatenate([view_ids(7, epoch, np.arange(10000)) for epoch in range(10)])
    counts = np.bincount(ids, minlength=162)
    assert len(counts) == 162 and counts.min() > 0.8 * 617 and counts.max() < 1.2 * 617
    dx, dy, flip = decode_views(ids).T
    assert set(dx) == set(dy) == set(range(9)) and set(flip) == {0, 1}


def test_loader_reports_its_views(cifar):
    dev = loader(indexed(cifar))
    batches = passes(dev, epoch=6)
    views = torch.cat([b[-1] for b in batches])
    assert set(views[:, 0].tolist()) == set(range(9)) and set(views[:, 2].tolist()) == {0, 1}
    index = torch.cat([b[2] for b in batches])
    assert torch.equal(dev.views(index, epoch=6), views)
    assert torch.equal(encode_views(views), torch.from_numpy(view_ids(3, 6, index.numpy())))
    assert torch.equal(decode_views(encode_views(views)), views)
    dev.set_epoch(6)
    keys = [b.keys for b in dev]  # the store's keys: (index, view id) on the host, as served
    assert torch.equal(torch.cat([k[0] for k in keys]), index)
    assert torch.equal(torch.cat([k[1] for k in keys]), encode_views(views))


# ------------------------------------------------------------------ what the batches carry
def test_index_and_contrast_as_asked(cifar):
    images = torch.from_numpy(cifar.data)
    plain = next(iter(DeviceTrainLoader(images, cifar.targets, MEAN, STD, 0, 1, 16, 3, "cpu")))
    assert plain.index is None and plain.contrast_idx is None and plain.keys is not None
    assert next(iter(loader(indexed(cifar)))).index.shape == (16,)
    served = served_dataset(cifar, [ContrastSampling(4, "relax")], 3)
    server = served.servers[0]
    dev = loader(served)
    dev.set_epoch(2, skip=1)
    batch = next(iter(dev))
    assert batch.contrast_idx.shape == (16, 5)
    assert torch.equal(batch.contrast_idx, torch.stack([server.contrast_indices(i) for i in batch.index.tolist()]))
    assert int(server._epoch) == 2  # the server's draws follow the loader's epoch
    with pytest.raises(Exception, match="needs the image"):  # a second view needs the image: not served here
        loader(served_dataset(cifar, [ExtraView("strong")], 3))


def test_layouts_and_options(cifar):
    nhwc = DeviceTrainLoader(cifar.data, cifar.targets, MEAN, STD, 0, 1, 16, 3, "cpu")
    nchw = DeviceTrainLoader(torch.from_numpy(cifar.data).permute(0, 3, 1, 2).contiguous(),
                             torch.tensor(cifar.targets), MEAN, STD, 0, 1, 16, 3, "cpu")
    a, b = next(iter(nhwc)), next(iter(nchw))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    still = loader(indexed(cifar), flip=False)
    for images, _, index, views in passes(still, epoch=1)[:3]:
        assert views[:, 2].eq(0).all()
        assert torch.equal(images, torch.stack([pil_view(cifar.data[i], *v)
                                                for i, v in zip(index.tolist(), views.tolist())]))
    uncropped = loader(indexed(cifar), padding=0)
    images, _, index, views = passes(uncropped, epoch=1)[0]
    assert views[:, :2].eq(0).all()
    assert torch.equal(images, torch.stack([pil_view(cifar.data[i], 0, 0, f, padding=0)
                                            for i, f in zip(index.tolist(), views[:, 2].tolist())]))
    with pytest.raises(Exception, match="uint8"):
        DeviceTrainLoader(cifar.data.astype(np.float32), cifar.targets, MEAN, STD, 0, 1, 16, 3, "cpu")


def test_synthetic_exposes_its_uint8_images():
    ds = build_dataset("synthetic", "", "train", train_size=32)
    assert ds.data.shape == (32, 32, 32, 3) and ds.data.dtype == torch.uint8
    assert ds.data.data_ptr() == ds.images.data_ptr()  # a view, no copy


def test_global_rng_untouched(cifar):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    passes(loader(served_dataset(cifar, [ContrastSampling(4)], 3)), epoch=1, skip=2)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu(cifar):
    cpu = passes(loader(indexed(cifar)), epoch=1)
    gpu = passes(DeviceTrainLoader.from_dataset(indexed(cifar), MEAN, STD, 0, 1, 16, 3, "cuda"), epoch=1)
    for a, b in zip(cpu, gpu):
        assert all(x.is_cuda for x in b)
        assert all(torch.allclose(x.cpu(), y) if x.is_floating_point() else torch.equal(x.cpu(), y)
                   for x, y in zip(b, a))


def test_the_default_loader_is_the_device_loader_where_it_reproduces_the_augmentation(cifar, tmp_path):
    """--loader auto: in-memory sets whose own train transform is exactly RandomCrop(padding 4) +
    flip get the device loader; anything else (no augmentation, two views, DALI, files on disk)
    keeps the DataLoader. Both reach the same accuracy (README, Loaders)."""
    from types import SimpleNamespace

    from engine.data_setup import loader_kind

    def kind(dataset, requests=(), dali=None, loader="auto"):
        served = served_dataset(dataset, list(requests), 0)
        return loader_kind(SimpleNamespace(loader=loader, dali=dali), served, requests)

    synthetic = build_dataset("synthetic", str(tmp_path), "train", train_size=64, test_size=8)
    assert kind(synthetic) == kind(synthetic, [SampleIndex()]) == kind(cifar) == "device"
    assert kind(build_dataset("synthetic", str(tmp_path), "train", train_size=64, test_size=8,
                              augment=False)) == "dataloader"
    assert kind(synthetic, [ExtraView("strong")]) == "dataloader" and kind(synthetic, dali="cpu") == "dali"
    assert kind(synthetic, loader="dataloader") == "dataloader"
    folder = tmp_path / "folder" / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "0.png")
    (tmp_path / "folder" / "test" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "folder" / "test" / "a" / "0.png")
    assert kind(build_dataset("imagefolder", str(tmp_path / "folder"), "train")) == "dataloader"
