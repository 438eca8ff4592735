"""The base of the dataset wrappers: a set that passes its length, labels and epoch through.

Wrappers add to what a dataset serves without copying it: :class:`data.requests.Served`
(named fields for the data requests), :class:`data.seeded_views.WithSeededViews` (replayable
random-resized crops).
"""
from __future__ import annotations

from torch.utils.data import Dataset


class Wrapper(Dataset):
    """Passes length, ``targets``, ``num_classes`` and ``set_epoch`` through to the wrapped dataset."""

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
