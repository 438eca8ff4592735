"""The dataset registry: name -> factory ``f(root, split, augment, **options) -> Dataset``.

Each entry carries the metadata a trainer needs before it opens any file:
``family`` (which model zoo fits), ``num_classes``, ``input_size`` and the
normalisation ``mean``/``std``.
"""
from __future__ import annotations

from typing import Optional, Sequence

from distillers.registry import Registry

DATASETS = Registry("dataset")
SPLITS = ("train", "test")


def register_dataset(name: str, *, family: str, num_classes: Optional[int], input_size: int,
                     mean: Sequence[float], std: Sequence[float]):
    """Register a dataset factory with the metadata listed in the module docstring.

    ``num_classes`` is None when only the data on disk can tell (``imagefolder``).
    """
    return DATASETS.register(name, family=family, num_classes=num_classes,
                             input_size=input_size, mean=tuple(mean), std=tuple(std))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
