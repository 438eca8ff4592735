"""Dataset-agnostic wrappers for instance-level distillers (CRD, RRD and kin).

``WithViews`` gives two augmented views of each image (MLKD's weak and strong);
``WithIndex`` adds the sample index (memory-bank methods); ``WithContrast`` adds
a positive and k negative indices (models-and-data.md §3.2). Negatives are drawn
without a per-class index table: one label sort and class offsets (O(n) memory)
let a uniform draw over the n - n_c other-class positions skip the class's own
block. Each draw comes from a generator seeded by (seed, epoch, idx), so it is the
same in any DataLoader worker, with any number of workers, in any order.
"""
from __future__ import annotations

import copy
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from data.registry import DataError
from data.transforms import with_strong_augment


class _Wrapper(Dataset):
    """Passes length, ``targets`` and ``num_classes`` through to the wrapped dataset."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def targets(self):
        return self.dataset.targets

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to a wrapped set that draws per epoch (seeded views)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class WithViews(_Wrapper):
    """Items ``(views, y)`` with ``views`` = [weak, strong] stacked on a new first dim: the
    dataset's own augmentation, and the same followed by RandAugment (MLKD's pair). The strong
    view is drawn by a shallow copy of the dataset whose ``transform`` is the strong pipeline."""

    def __init__(self, dataset: Dataset):
        super().__init__(dataset)
        if not isinstance(getattr(dataset, "transform", None), T.Compose):
            raise DataError(f"two augmented views need a dataset with a torchvision Compose 'transform'; "
                            f"{type(dataset).__name__} has none")
        self.strong = copy.copy(dataset)
        self.strong.transform = with_strong_augment(dataset.transform)

    def __getitem__(self, idx: int) -> Tuple:
        weak, y = self.dataset[idx]
        strong, _ = self.strong[idx]
        return torch.stack([weak, strong]), y


class WithIndex(_Wrapper):
    """Items ``(img, y, idx)``."""

    def __getitem__(self, idx: int) -> Tuple:
        img, y = self.dataset[idx]
        return img, y, idx


class WithContrast(_Wrapper):
    """Items ``(img, y, idx, contrast_idx)``, ``contrast_idx`` a LongTensor [k + 1].

    Column 0 is the positive: ``idx`` itself (``mode="exact"``) or a random index
    of the same class (``"relax"``). Columns 1..k are negatives from the other
    classes, without replacement unless k exceeds the pool. ``percent`` < 1 keeps
    a fixed random share (rounded up) of every class as the negative pool.
    Call :meth:`set_epoch` each epoch for fresh draws; the epoch lives in shared
    memory, so persistent workers see it too.
    """

    def __init__(self, dataset: Dataset, k: int, mode: str = "exact", percent: float = 1.0,
                 seed: int = 0):
        super().__init__(dataset)
        if mode not in ("exact", "relax"):
            raise ValueError(f"mode must be 'exact' or 'relax', got {mode!r}")
        if not 0.0 < percent <= 1.0:
            raise ValueError(f"percent must be in (0, 1], got {percent}")
        labels = np.asarray(dataset.targets, dtype=np.int64)
        if len(np.unique(labels)) < 2:
            raise ValueError("WithContrast needs at least two classes to draw negatives from")
        self.negatives, self.positive, self.seed = int(k), mode, int(seed)
        self._labels = labels
        counts = np.bincount(labels)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        # sorted by class, random order inside each class block
        perm = np.random.default_rng(self.seed).permutation(len(labels))
        self._order = perm[np.argsort(labels[perm], kind="stable")]
        keep = np.ceil(percent * counts).astype(np.int64)
        rank = np.arange(len(labels)) - self._starts[labels[self._order]]
        self._pool = self._order[rank < keep[labels[self._order]]]
        self._pool_starts = np.concatenate([[0], np.cumsum(keep)])
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)
        super().set_epoch(epoch)

    def __getitem__(self, idx: int) -> Tuple:
        img, y = self.dataset[idx]
        return img, y, int(idx), self.contrast_indices(idx)

    def contrast_indices(self, idx: int) -> torch.Tensor:
        """Sample ``idx``'s positive and negatives this epoch, without loading its image
        (loaders that decode elsewhere, such as DALI's, draw them here)."""
        idx = int(idx)
        c = self._labels[idx]
        rng = np.random.default_rng([self.seed, int(self._epoch), idx])
        if self.positive == "exact":
            pos = idx
        else:
            pos = self._order[self._starts[c] + rng.integers(self._starts[c + 1] - self._starts[c])]
        lo, hi = self._pool_starts[c], self._pool_starts[c + 1]
        m = len(self._pool) - (hi - lo)
        draws = rng.choice(m, self.negatives, replace=False) if self.negatives <= m else rng.integers(0, m, self.negatives)
        draws = draws + (draws >= lo) * (hi - lo)  # skip the own class's block
        contrast = np.concatenate([[pos], self._pool[draws]])
        return torch.from_numpy(contrast).long()
