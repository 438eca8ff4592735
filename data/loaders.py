"""Training and evaluation loaders behind one protocol, and the collate that makes a :class:`Batch`.

The trainer needs a training loader with ``set_epoch(epoch, skip=0)`` (the epoch's order and
draws; ``skip`` batches already done, for a mid-epoch resume), ``__len__``, ``__iter__``
yielding :class:`core.batch.Batch`, and ``view_scheme`` (how its augmented views are named, for
the teacher-output store; None when views are drawn at random). Implementations: the torch
DataLoader path here, :class:`data.device_loader.DeviceTrainLoader`,
:class:`data.dali.DaliTrainLoader` and :class:`data.metric_learning.MetricTrainLoader`; they
share the epoch bookkeeping of :class:`EpochPlan`. Evaluation loaders show every test sample
exactly once over all ranks.

DataLoader workers ignore SIGINT and SIGTERM: a scheduler signals the whole process group,
and the main process, which defers the signal to a safe point, ends its workers itself.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from core.batch import Batch
from data.samplers import EpochSampler, ShardSampler


@dataclass(frozen=True)
class ViewScheme:
    """How a loader names each sample's augmented view: ``num_views`` ids per sample, and the
    ``description`` that a store of teacher outputs puts in its key (what a view id means)."""

    num_views: int
    description: Dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TrainLoader(Protocol):
    """What the trainer reads from a training loader (module docstring)."""

    batch_size: int
    view_scheme: Optional[ViewScheme]

    def set_epoch(self, epoch: int, skip: int = 0) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


class EpochPlan:
    """The epoch bookkeeping of every training loader, written once: the sampler's (seed, epoch)
    order, the first ``skip`` batches left out when an epoch resumes in the middle, and a new
    epoch for everything that draws per epoch (``draws``: the dataset, the request servers).

    The last partial batch of an epoch is dropped (equal batches on every rank), unless the
    sampler keeps every sample (``--keep_last_batch``, one process: RepDistiller's and mdistiller's
    CIFAR loaders train on it)."""

    view_scheme: Optional[ViewScheme] = None

    def __init__(self, sampler: EpochSampler, batch_size: int, draws: Sequence[Any] = ()):
        self.sampler, self.batch_size, self.draws, self.epoch = sampler, int(batch_size), list(draws), 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        self.sampler.start = skip * self.batch_size
        for thing in self.draws:
            if hasattr(thing, "set_epoch"):
                thing.set_epoch(epoch)

    @property
    def keep_last(self) -> bool:
        return not self.sampler.drop_last

    def __len__(self) -> int:
        if self.keep_last:
            return -(-len(self.sampler) // self.batch_size)
        return len(self.sampler) // self.batch_size

    def batches_of(self, order):
        """The epoch's remaining ``order`` (sample indices) cut into this plan's batches."""
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]


def collate(items) -> Batch:
    """A list of dataset items (dicts of named fields, or ``(image, label)`` pairs) as one Batch."""
    if isinstance(items[0], dict):
        merged = default_collate(items)
        return Batch(images=merged.pop("images"), labels=merged.pop("labels"), index=merged.pop("index", None),
                     contrast_idx=merged.pop("contrast_idx", None), views=merged.pop("views", {}),
                     extras=merged.pop("extras", {}))
    images, labels = default_collate([tuple(item)[:2] for item in items])
    return Batch(images=images, labels=labels)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker outlives SIGINT/SIGTERM sent to the process group; the
    main process stops at its next safe point and shuts its workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class DataLoaderTrainLoader(EpochPlan):
    """The torch DataLoader path: a rank-sharded :class:`EpochSampler`, the last partial batch
    dropped (or kept: :class:`EpochPlan`), items served by :class:`data.requests.Served` (named
    fields, augmentations drawn from (seed, epoch, sample)), so a resumed epoch replays its
    remaining batches exactly with any number of workers. With a ``view_scheme`` of one view per
    epoch (seeded ImageNet views) each batch carries its store keys (sample index, epoch slot)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int, batch_size: int, num_workers: int,
                 seed: int, pin_memory: bool = False, view_scheme: Optional[ViewScheme] = None,
                 keep_last: bool = False):
        super().__init__(EpochSampler(dataset, rank, world_size, seed=seed, keep_last=keep_last), batch_size,
                         [dataset])
        self.dataset, self.seed, self.rank, self.view_scheme = dataset, seed, rank, view_scheme
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, drop_last=not keep_last, generator=self.generator,
                                 collate_fn=collate, worker_init_fn=ignore_stop_signals)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch, skip)
        self.generator.manual_seed(self.seed * 100003 + epoch * 1009 + self.rank)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        slot = self.epoch - 1
        for batch in self.loader:
            if self.view_scheme is not None:  # one seeded view per sample and epoch: its id is the epoch's slot
                batch.keys = (batch.index, torch.full_like(batch.index, slot))
            yield batch


def eval_loader(dataset: Dataset, rank: int, world_size: int, batch_size: int, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    """Unshuffled shard ``rank::world`` of the test set yielding Batches: no padding, no sample twice."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(dataset, rank, world_size),
                      num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate,
                      worker_init_fn=ignore_stop_signals)
