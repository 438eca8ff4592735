"""A training loader that augments in-memory uint8 image sets on the training device.

Why: CIFAR-sized sets (cifar10/100, ``synthetic``) are at most 150 MB of uint8, so the
whole training split fits on the device as one tensor. The DataLoader path pays, per
sample, a PIL image, four transforms and a collate in worker processes; here a batch is
a handful of tensor ops on the device: gather, zero-pad, crop (one indexing op on a
strided view), flip, normalise. No PIL, no worker processes.

The augmentation is the train half of ``data.transforms.cifar_transform``:
RandomCrop(H, padding=4) with zero fill, RandomHorizontalFlip(0.5), ToTensor, Normalize.
For the same crop offsets and flip the output equals the PIL path's bit for bit (the
normalisation runs the same float32 ops in the same order); tests/test_device_loader.py
checks it against ``TF.pad``/``TF.crop``/``TF.hflip``/``TF.to_tensor``/``TF.normalize``.

Views. A sample's augmentation is one of (2p+1)^2 * 2 views (162 for CIFAR's p=4): the
crop's left and top offsets ``dx``, ``dy`` in the padded image (torchvision's ``j``, ``i``)
and a flip bit. The view is a pure function of (seed, epoch, sample index): a
counter-based hash (splitmix64), not a random stream. It does not depend on the batch,
the rank, the number of processes or how far the epoch got, so a resumed epoch
(``set_epoch(e, skip)``) replays its remaining batches exactly with no loader RNG state
to save, and the global RNG is never touched. Each batch's views are in ``last_views``
([B, 3]: dx, dy, flip) beside ``last_index``, and :func:`view_ids` gives them for any
sample, e.g. for a store of teacher outputs keyed by (index, view id).

Order: :class:`data.samplers.EpochSampler` with the last partial batch dropped, as
``engine.loaders.TrainLoader``; switching loaders changes only the augmentation draws.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from data.registry import DataError
from data.samplers import EpochSampler
from data.wrappers import WithContrast, WithIndex

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 array ``x``: a bijection whose output bits look independent."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def view_key(seed: int, epoch: int, index) -> np.ndarray:
    """uint64 hash of (seed, epoch, each sample ``index``): the counter behind a sample's
    augmentation in ``epoch``, here and in :mod:`data.seeded_views` (which seeds a generator
    with it). Pure numpy on unsigned integers, so the same on every machine and torch
    version; negative epochs (the trainer's initialisation stage) are fine."""
    key = _splitmix(_splitmix(np.array([seed % 2**64], np.uint64)) ^ np.uint64(epoch % 2**64))
    return _splitmix(key ^ np.asarray(index, np.int64).astype(np.uint64))


def view_ids(seed: int, epoch: int, index, padding: int = 4, flip: bool = True) -> np.ndarray:
    """The view id of each sample ``index`` in ``epoch``: ``(dy * (2p+1) + dx) * 2 + flip``.

    Uniform over the (2p+1)^2 * 2 views (the flip bit is 0 when ``flip`` is off): the
    :func:`view_key` modulo the number of views.
    """
    side = 2 * padding + 1
    ids = (view_key(seed, epoch, index) % np.uint64(side * side * 2)).astype(np.int64)
    return ids if flip else ids & ~1


def decode_views(ids, padding: int = 4):
    """View ids -> [..., 3] of (dx, dy, flip), for numpy arrays or tensors."""
    side = 2 * padding + 1
    flip, cell = ids % 2, ids // 2
    parts = (cell % side, cell // side, flip)
    return torch.stack(parts, -1) if isinstance(ids, torch.Tensor) else np.stack(parts, -1)


def encode_views(views, padding: int = 4):
    """[..., 3] of (dx, dy, flip) -> view ids, the inverse of :func:`decode_views`
    (``DeviceTrainLoader.last_keys`` holds them for the batch just served)."""
    dx, dy, flip = views[..., 0], views[..., 1], views[..., 2]
    return (dy * (2 * padding + 1) + dx) * 2 + flip


def crop_flip_normalize(images: torch.Tensor, index: torch.Tensor, views: torch.Tensor,
                        mean: torch.Tensor, std: torch.Tensor, padding: int) -> torch.Tensor:
    """Float32 [B, C, H, W]: images ``index`` of uint8 ``images`` [N, C, H, W], each zero-padded
    by ``padding``, cropped at its (dx, dy), flipped if its flip bit is set, then
    ``(x / 255 - mean) / std``. Runs on ``images``' device; ``mean``/``std`` are [C, 1, 1]."""
    x = images[index]
    n, _, h, w = x.shape
    x = F.pad(x, (padding,) * 4)  # fill 0 in uint8, as RandomCrop's default fill
    dx, dy, flip = views.unbind(1)
    # every crop of a padded image is a strided view: windows[b, :, dy, dx] is the crop at (dx, dy)
    windows = x.unfold(2, h, 1).unfold(3, w, 1)  # [B, C, 2p+1, 2p+1, H, W], no copy
    crop = windows[torch.arange(n, device=x.device), :, dy, dx]
    crop = torch.where(flip.bool()[:, None, None, None], crop.flip(-1), crop)  # no host sync on a GPU
    # ToTensor then Normalize, op for op, so the result equals the PIL path's exactly
    return crop.float().div_(255).sub_(mean).div_(std)


def _nchw(images) -> torch.Tensor:
    """uint8 images [N, H, W, C] or [N, C, H, W] (numpy or torch) as a [N, C, H, W] tensor,
    without a copy when the memory already is NCHW (CifarPickles' and synthetic's ``data``)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise DataError(f"the device loader needs uint8 images [N, H, W, C] or [N, C, H, W], "
                        f"got {x.dtype} {list(x.shape)}")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[3] in (1, 3):
        return x.permute(0, 3, 1, 2)
    raise DataError(f"cannot tell the channel axis of images {list(x.shape)}: expected 1 or 3 "
                    f"channels first or last")


class DeviceTrainLoader:
    """The trainer's train-loader protocol (engine/loaders.py) over an in-memory uint8 set.

    Yields ``(images, labels[, index[, contrast_idx]])``, all on ``device``: ``index``
    when ``needs.index`` or ``contrast`` is given, ``contrast_idx`` [B, k+1] from
    ``contrast.contrast_indices(i)`` (the trainer's :class:`~data.wrappers.WithContrast`,
    drawn on the host as in the DALI loader). ``needs`` is a ``BatchNeeds`` or anything
    with ``index`` and ``contrast_k``. After each batch, ``last_index`` [B] and
    ``last_views`` [B, 3] (dx, dy, flip) say which views it holds, on the device, and
    ``last_keys`` gives (index, view id) on the host, as planned (the teacher store's keys,
    read without waiting for the device). The whole set sits on
    ``device`` as uint8 (CIFAR: 150 MB); on the CPU it shares the dataset's memory.
    """

    def __init__(self, images, labels, mean: Sequence[float], std: Sequence[float], rank: int,
                 world_size: int, batch_size: int, seed: int, device, padding: int = 4,
                 flip: bool = True, needs=None, contrast=None):
        self.device = torch.device(device)
        self.images = _nchw(images).to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        channels = self.images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(channels, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(channels, 1, 1)
        if getattr(needs, "contrast_k", 0) and contrast is None:
            raise ValueError(f"the batches need {needs.contrast_k} contrast indices per sample: pass the "
                             f"trainer's WithContrast wrapper as contrast=")
        self.contrast = contrast
        self.serve_index = contrast is not None or bool(getattr(needs, "index", False))
        self.batch_size, self.seed, self.padding, self.flip = batch_size, seed, padding, flip
        self.sampler = EpochSampler(range(len(self.labels)), rank, world_size, seed=seed)
        self.last_index = self.last_views = self.last_keys = None
        self.set_epoch(0)

    @staticmethod
    def serves(dataset, padding: int = 4) -> bool:
        """Whether ``dataset`` (or the WithIndex/WithContrast around it) is an in-memory set
        whose own augmentation is exactly this loader's: uint8 ``data`` and ``targets``
        (CifarPickles, ``synthetic``) and a train transform of RandomCrop(padding=4),
        RandomHorizontalFlip and the tensor conversion and normalisation, nothing else random."""
        base = dataset.dataset if isinstance(dataset, (WithIndex, WithContrast)) else dataset
        data = getattr(base, "data", None)
        if not (hasattr(base, "targets") and getattr(data, "dtype", None) in (np.uint8, torch.uint8)
                and getattr(data, "ndim", 0) == 4):
            return False
        steps = list(getattr(getattr(base, "transform", None), "transforms", ()))
        kinds = [type(step) for step in steps]
        return (kinds[:2] == [T.RandomCrop, T.RandomHorizontalFlip] and steps[0].padding == padding
                and set(kinds[2:]) <= {T.ToTensor, T.ConvertImageDtype, T.Normalize})

    @classmethod
    def from_dataset(cls, dataset, mean, std, rank: int, world_size: int, batch_size: int, seed: int,
                     device, **options) -> "DeviceTrainLoader":
        """Over a set holding uint8 ``data`` [N, H, W, C] and ``targets`` (CifarPickles,
        ``synthetic``), or the trainer's WithIndex/WithContrast around one (index and
        contrast indices are then served as that wrapper would)."""
        wrapped = isinstance(dataset, (WithIndex, WithContrast))
        base = dataset.dataset if wrapped else dataset
        if not hasattr(base, "data") or not hasattr(base, "targets"):
            raise DataError(f"the device loader serves in-memory sets with uint8 'data' and 'targets' "
                            f"(cifar10, cifar100, synthetic), not {type(base).__name__}")
        return cls(base.data, base.targets, mean, std, rank, world_size, batch_size, seed, device,
                   needs=SimpleNamespace(index=wrapped, contrast_k=0),
                   contrast=dataset if isinstance(dataset, WithContrast) else None, **options)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch ``epoch``'s order and views, starting after its first ``skip`` batches."""
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        self.sampler.start = skip * self.batch_size
        if hasattr(self.contrast, "set_epoch"):  # fresh contrast draws per epoch
            self.contrast.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def views(self, index, epoch: Optional[int] = None) -> torch.Tensor:
        """[K, 3] (dx, dy, flip) of samples ``index`` in ``epoch`` (default: the current one),
        on the host, whether or not this rank serves them."""
        epoch = self.epoch if epoch is None else epoch
        ids = view_ids(self.seed, epoch, torch.as_tensor(index).cpu().numpy(), self.padding, self.flip)
        return torch.from_numpy(decode_views(ids, self.padding))

    def __iter__(self):
        """Plans the pass (order and views, one host-to-device copy), then serves its batches."""
        batches, size = len(self), self.batch_size
        order = np.fromiter(self.sampler, dtype=np.int64, count=len(self.sampler))[:batches * size]
        ids = view_ids(self.seed, self.epoch, order, self.padding, self.flip)
        plan = torch.from_numpy(np.concatenate([order[:, None], decode_views(ids, self.padding)], 1)).to(self.device)
        return self._serve(plan.view(batches, size, 4), order.reshape(batches, size), ids.reshape(batches, size))

    def _serve(self, plan: torch.Tensor, order: np.ndarray, ids: np.ndarray):
        for rows, host_index, host_ids in zip(plan, order, ids):
            index, views = rows[:, 0], rows[:, 1:]
            self.last_index, self.last_views = index, views
            self.last_keys = (torch.from_numpy(host_index), torch.from_numpy(host_ids))  # no device read
            batch = (crop_flip_normalize(self.images, index, views, self.mean, self.std, self.padding),
                     self.labels[index])
            if self.serve_index:
                batch += (index,)
            if self.contrast is not None:
                batch += (torch.stack([self.contrast.contrast_indices(i) for i in host_index]).to(self.device),)
            yield batch
