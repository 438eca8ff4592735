"""Training and evaluation loaders behind one small protocol.

The trainer only needs a training loader with ``set_epoch(epoch, skip=0)`` (a new
shuffle per epoch; ``skip`` batches already done, for a mid-epoch resume),
``__len__`` and ``__iter__`` yielding ``(images, labels[, index[, contrast_idx]])``,
and an evaluation loader that shows every test sample exactly once over all ranks.
:class:`TrainLoader` is the torch DataLoader implementation; the DALI plugin
provides the same protocol.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from data.samplers import EpochSampler, ShardSampler
from engine.distributed import DistInfo


class TrainLoader:
    """DataLoader over a rank-sharded :class:`EpochSampler`, dropping the last partial batch.

    The loader's own generator is re-seeded every epoch, so starting (or resuming)
    an epoch draws nothing from the global RNG that augmentations use.
    """

    def __init__(self, dataset: Dataset, info: DistInfo, batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False):
        self.dataset, self.batch_size, self.seed, self.rank = dataset, batch_size, seed, info.rank
        self.sampler = EpochSampler(dataset, info.rank, info.world_size, seed=seed)
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, drop_last=True, generator=self.generator)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.sampler.start = skip * self.batch_size
        self.generator.manual_seed(self.seed * 100003 + epoch * 1009 + self.rank)
        if hasattr(self.dataset, "set_epoch"):  # fresh contrast draws per epoch
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def eval_loader(dataset: Dataset, info: DistInfo, batch_size: int, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    """Unshuffled shard ``rank::world`` of the test set: no padding, no sample twice."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(dataset, info.rank, info.world_size),
                      num_workers=num_workers, pin_memory=pin_memory)
