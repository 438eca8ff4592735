"""CIFAR-style transforms (models-and-data.md §3.1), built from torchvision.

Train: RandomCrop(size, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize.
Test:  ToTensor -> Normalize. The same pipelines work on PIL images (files) and on
uint8 CHW tensors (the in-memory synthetic set), so every dataset augments alike.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torchvision import transforms as T


def cifar_transform(mean: Sequence[float], std: Sequence[float], augment: bool, *,
                    size: int = 32, resize: bool = False,
                    tensor_input: bool = False) -> T.Compose:
    """The train (``augment=True``) or test pipeline.

    ``resize`` first scales the shorter side to ``size`` and centre-crops a
    square (for image folders whose files are not ``size`` pixels; a no-op copy
    for files already that size);
    ``tensor_input`` takes uint8 CHW tensors instead of PIL images.
    """
    steps: List = []
    if resize:
        steps += [T.Resize(size), T.CenterCrop(size)]
    if augment:
        steps += [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
    steps.append(T.ConvertImageDtype(torch.float) if tensor_input else T.ToTensor())
    steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def with_strong_augment(transform: T.Compose) -> T.Compose:
    """The same pipeline with RandAugment(2, 10) before the tensor conversion: the strong view of
    MLKD's weak/strong pair (its reference inserts RandAugment(2, 10) after crop and flip; this is
    torchvision's RandAugment, whose op list has no Cutout, unlike the reference's own copy)."""
    steps = list(transform.transforms)
    at = next(i for i, step in enumerate(steps) if isinstance(step, (T.ToTensor, T.ConvertImageDtype)))
    return T.Compose(steps[:at] + [T.RandAugment(num_ops=2, magnitude=10)] + steps[at:])
