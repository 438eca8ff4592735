"""Names of augmented views: a counter-based hash of (seed, epoch, sample index).

Why: a view that is a pure function of (seed, epoch, sample) can be drawn again anywhere
(another process, a resumed epoch, a DataLoader worker) with no random state to carry, and
can key a store of teacher outputs. The device loader's CIFAR views, the DataLoader path's
per-sample augmentation seed and ImageNet's seeded random-resized crops all use
:func:`view_key`.
"""
from __future__ import annotations

import numpy as np
import torch

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


def num_views(padding: int = 4) -> int:
    """Size of the CIFAR view-id space: (2p+1)^2 crops x 2 flip bits (162 for p=4); without flips
    the ids are the even ones of the same space, so it keeps its size."""
    return (2 * padding + 1) ** 2 * 2
