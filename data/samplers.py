"""Rank-sharded samplers: a training order that can resume mid-epoch, an evaluation shard.

Both depend only on (rank, world size, seed, epoch), so every loader (torch's DataLoader,
the DALI pipelines) serves the same samples to the same rank.
"""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import DistributedSampler, Sampler


class EpochSampler(DistributedSampler):
    """DistributedSampler (also on one process) that can resume in the middle of an epoch.

    The order of an epoch depends only on (seed, epoch), so skipping the first
    ``start`` indices after a resume replays exactly the rest of the epoch. ``keep_last``
    (one process only) keeps every sample, so the loaders can serve a last partial batch.
    """

    def __init__(self, dataset, rank: int, world_size: int, seed: int, shuffle: bool = True,
                 keep_last: bool = False):
        if keep_last and world_size != 1:
            raise ValueError(f"keep_last serves an epoch's partial batch on one process, not {world_size}")
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=not keep_last)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler):
    """Evaluation shard ``rank::world``: every sample seen exactly once over all ranks, no padding."""

    def __init__(self, dataset, rank: int, world_size: int):
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
