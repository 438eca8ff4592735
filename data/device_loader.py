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
to save, and the global RNG is never touched. Each batch carries its (index, view id) pairs
as ``keys`` (on the host, as planned: a teacher-output store reads them without waiting for
the device); ``last_views`` ([B, 3]: dx, dy, flip) holds the last batch's views on the device.

Order: :class:`data.samplers.EpochSampler` with the last partial batch dropped, as the
DataLoader path (:mod:`data.loaders`); switching loaders changes only the augmentation draws.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from core.batch import Batch
from data.loaders import EpochPlan, ViewScheme
from data.registry import DataError
from data.requests import RequestServer, host_fields, index_servers, unwrap
from data.samplers import EpochSampler
from data.view_keys import decode_views, num_views, view_ids

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


class DeviceTrainLoader(EpochPlan):
    """The training-loader protocol (:mod:`data.loaders`) over an in-memory uint8 set.

    Yields :class:`Batch` on ``device``, with the fields of the request ``servers`` whose fields
    come from the sample index (``index``, ``contrast_idx``, a plugin's ``extras``), drawn on
    the host; a request that needs the image itself (an extra view) is refused by name. The
    whole set sits on ``device`` as uint8 (CIFAR: 150 MB); on the CPU it shares the dataset's
    memory.
    """

    def __init__(self, images, labels, mean: Sequence[float], std: Sequence[float], rank: int,
                 world_size: int, batch_size: int, seed: int, device, padding: int = 4,
                 flip: bool = True, servers: Sequence[RequestServer] = (), keep_last: bool = False):
        self.device = torch.device(device)
        self.images = _nchw(images).to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        channels = self.images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(channels, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(channels, 1, 1)
        self.servers = index_servers(servers, "--loader device")
        self.seed, self.padding, self.flip = seed, padding, flip
        super().__init__(EpochSampler(range(len(self.labels)), rank, world_size, seed=seed, keep_last=keep_last),
                         batch_size, self.servers)
        self.view_scheme = ViewScheme(num_views(padding), {"padding": int(padding), "size": int(self.images.shape[-1]),
                                                           "flip": bool(flip)})
        self.last_views = None
        self.set_epoch(0)

    @staticmethod
    def serves(dataset, padding: int = 4) -> bool:
        """Whether ``dataset`` (or the :class:`~data.requests.Served` around it) is an in-memory set
        whose own augmentation is exactly this loader's: uint8 ``data`` and ``targets``
        (CifarPickles, ``synthetic``) and a train transform of RandomCrop(padding=4),
        RandomHorizontalFlip and the tensor conversion and normalisation, nothing else random."""
        base, _ = unwrap(dataset)
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
        ``synthetic``), or the :class:`~data.requests.Served` around one (its request servers then
        add their fields, as on the DataLoader path)."""
        base, servers = unwrap(dataset)
        if not hasattr(base, "data") or not hasattr(base, "targets"):
            raise DataError(f"the device loader serves in-memory sets with uint8 'data' and 'targets' "
                            f"(cifar10, cifar100, synthetic), not {type(base).__name__}")
        return cls(base.data, base.targets, mean, std, rank, world_size, batch_size, seed, device,
                   servers=servers, **options)

    def views(self, index, epoch: Optional[int] = None) -> torch.Tensor:
        """[K, 3] (dx, dy, flip) of samples ``index`` in ``epoch`` (default: the current one),
        on the host, whether or not this rank serves them."""
        epoch = self.epoch if epoch is None else epoch
        ids = view_ids(self.seed, epoch, torch.as_tensor(index).cpu().numpy(), self.padding, self.flip)
        return torch.from_numpy(decode_views(ids, self.padding))

    def __iter__(self):
        """Plans the pass (order and views, one host-to-device copy), then serves its batches."""
        order = np.fromiter(self.sampler, dtype=np.int64, count=len(self.sampler))[:len(self) * self.batch_size]
        ids = view_ids(self.seed, self.epoch, order, self.padding, self.flip)
        plan = torch.from_numpy(np.concatenate([order[:, None], decode_views(ids, self.padding)], 1)).to(self.device)
        return self._serve(self.batches_of(plan), self.batches_of(order), self.batches_of(ids))

    def _serve(self, plan: torch.Tensor, order: np.ndarray, ids: np.ndarray):
        for rows, host_index, host_ids in zip(plan, order, ids):
            index, views = rows[:, 0], rows[:, 1:]
            self.last_views = views
            fields = host_fields(self.servers, host_index)
            batch = Batch(images=crop_flip_normalize(self.images, index, views, self.mean, self.std, self.padding),
                          labels=self.labels[index],
                          keys=(torch.from_numpy(host_index), torch.from_numpy(host_ids)))  # no device read
            if "index" in fields:
                batch.index = index
            if "contrast_idx" in fields:
                batch.contrast_idx = fields["contrast_idx"].to(self.device)
            if "extras" in fields:
                batch.extras = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                                for k, v in fields["extras"].items()}
            yield batch
