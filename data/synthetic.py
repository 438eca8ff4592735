"""``synthetic``: a download-free 32x32 RGB classification set (quick start, smoke tests).

Procedure. Every class is a template of three coloured parts (shapes such as
disk, ring, bar, cross, triangle) at fixed offsets from an object centre. All
classes share the same three parts (drawn from ``seed``), so only their spatial
layout tells the classes apart: a bag of local features does not suffice, which
is what lets a deeper network (resnet20) clearly beat a shallow one (resnet8).
Each image draws its class template under nuisance transforms -- translation,
scale, rotation -- over a random two-grating texture background with three
distractor parts from the same shape and colour pools, then gets a per-image
colour gain jitter and pixel noise. Templates come from a numpy generator seeded
by ``seed`` and images from one seeded by (``seed``, split), so train and test are
disjoint draws from one distribution, identical on every run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from data.registry import check_split, register_dataset
from data.transforms import cifar_transform

SIZE = 32


@dataclass(frozen=True)
class Recipe:
    """Difficulty knobs; the defaults are the tuned quick-start setting."""

    parts: int = 3            # parts per class template
    shapes: int = 8           # shape pool size (at most len(_SHAPES))
    colours: int = 6          # colour pool size
    spread: float = 7.0       # part offsets from the object centre, pixels
    radius: Tuple[float, float] = (3.0, 5.0)  # part radius range, pixels
    shift: float = 6.0        # object translation, +- pixels
    scale: float = 0.2        # object scale jitter, +- fraction
    rotate: float = 0.5       # object rotation, +- radians
    clutter: int = 3          # distractor parts per image
    texture: float = 0.25     # background grating amplitude
    jitter: float = 0.2       # per-channel gain jitter, +- fraction
    noise: float = 0.06       # pixel noise std
    shared: bool = True       # all classes use the same parts; only the layout differs


def _disk(u, v):
    return np.sqrt(u * u + v * v)


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) / 0.8


def _diamond(u, v):
    return (np.abs(u) + np.abs(v)) / 1.15


def _ring(u, v):
    return np.abs(np.sqrt(u * u + v * v) - 0.72) / 0.28


def _hbar(u, v):
    return np.maximum(np.abs(u) / 1.1, np.abs(v) / 0.35)


def _vbar(u, v):
    return _hbar(v, u)


def _cross(u, v):
    return np.minimum(_hbar(u, v), _vbar(u, v))


def _triangle(u, v):
    return np.maximum(-v / 0.6, (v + 2 * np.abs(u)) / 1.2)


_SHAPES = (_disk, _square, _diamond, _ring, _hbar, _vbar, _cross, _triangle)


def _palette(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` saturated colours spread around the hue circle."""
    hue = (np.arange(n) / n + rng.random()) % 1.0
    k = (np.array([5.0, 3.0, 1.0])[None] + 6 * hue[:, None]) % 6
    return (1 - np.clip(np.minimum(k, 4 - k), 0, 1) * 0.8).astype(np.float32)


def _templates(num_classes: int, recipe: Recipe, rng: np.random.Generator) -> dict:
    """The colour palette, and per class: shape id, colour id, (dx, dy) offset and
    radius of each part."""
    c, p = num_classes, recipe.parts
    angle = rng.uniform(0, 2 * math.pi, (c, p))
    dist = recipe.spread * np.sqrt(rng.uniform(0.15, 1, (c, p)))
    looks = (1 if recipe.shared else c, p)
    return dict(palette=_palette(recipe.colours, rng),
                shape=np.broadcast_to(rng.integers(0, recipe.shapes, looks), (c, p)),
                colour=np.broadcast_to(rng.integers(0, recipe.colours, looks), (c, p)),
                radius=np.broadcast_to(rng.uniform(*recipe.radius, looks), (c, p)),
                dx=dist * np.cos(angle), dy=dist * np.sin(angle))


def _paint(img: np.ndarray, cx, cy, radius, rot, shape, colour) -> None:
    """Alpha-blend one part per image (1-D arrays over images) into ``img`` [N,3,H,W]."""
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    for s in np.unique(shape):
        sel = np.flatnonzero(shape == s)
        t = lambda a: np.asarray(a, np.float32)[sel, None, None]  # noqa: E731
        x, y = grid[None, None, :] - t(cx), grid[None, :, None] - t(cy)
        cos, sin, r = t(np.cos(rot)), t(np.sin(rot)), t(radius)
        u, v = (cos * x + sin * y) / r, (cos * y - sin * x) / r
        alpha = np.clip((1 - _SHAPES[s](u, v)) * r + 0.5, 0, 1)[:, None]
        img[sel] += alpha * (colour[sel, :, None, None] - img[sel])


def generate(labels: np.ndarray, templates: dict, recipe: Recipe,
             rng: np.random.Generator) -> torch.Tensor:
    """Render one uint8 image [N, 3, 32, 32] per label (numpy: single-threaded, so
    it stays fast on a crowded machine where torch's thread pool stalls)."""
    n = len(labels)
    palette = templates["palette"]
    grid = np.arange(SIZE, dtype=np.float32)
    img = np.repeat(rng.uniform(0.2, 0.8, (n, 3, 1, 1)).astype(np.float32), SIZE * SIZE,
                    axis=2).reshape(n, 3, SIZE, SIZE)
    for _ in range(2):  # background: two random oriented gratings
        th, f, ph = (rng.uniform(0, 2 * math.pi, n), rng.uniform(0.1, 0.5, n),
                     rng.uniform(0, 2 * math.pi, n))
        t = lambda a: a.astype(np.float32)[:, None, None]  # noqa: E731
        wave = np.sin(t(f) * (t(np.cos(th)) * grid[None, None] + t(np.sin(th)) * grid[None, :, None])
                      + t(ph))
        amp = rng.uniform(-recipe.texture, recipe.texture, (n, 3)).astype(np.float32)
        img += amp[:, :, None, None] * wave[:, None]
    np.clip(img, 0, 1, out=img)
    for _ in range(recipe.clutter):
        _paint(img, rng.uniform(0, SIZE, n), rng.uniform(0, SIZE, n),
               rng.uniform(*recipe.radius, n), rng.uniform(0, 2 * math.pi, n),
               rng.integers(0, recipe.shapes, n), palette[rng.integers(0, recipe.colours, n)])
    centre = SIZE / 2 + rng.uniform(-recipe.shift, recipe.shift, (2, n))
    scale = 1 + rng.uniform(-recipe.scale, recipe.scale, n)
    rot = rng.uniform(-recipe.rotate, recipe.rotate, n)
    cos, sin = np.cos(rot), np.sin(rot)
    for j in range(recipe.parts):
        dx, dy = templates["dx"][labels, j] * scale, templates["dy"][labels, j] * scale
        _paint(img, centre[0] + cos * dx - sin * dy, centre[1] + sin * dx + cos * dy,
               templates["radius"][labels, j] * scale, rot, templates["shape"][labels, j],
               palette[templates["colour"][labels, j]])
    img *= 1 + rng.uniform(-recipe.jitter, recipe.jitter, (n, 3, 1, 1)).astype(np.float32)
    img += recipe.noise * rng.standard_normal(img.shape, dtype=np.float32)
    return torch.from_numpy(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))


def make_split(seed: int, num_classes: int, size: int, split: str,
               recipe: Recipe = Recipe()) -> Tuple[torch.Tensor, np.ndarray]:
    """(images, labels) of one split: templates from ``seed``, images from (seed, split)."""
    templates = _templates(num_classes, recipe, np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = rng.permutation(np.arange(size) % num_classes)
    return generate(labels, templates, recipe, rng), labels


class SyntheticDataset(Dataset):
    """In-memory uint8 images; CIFAR augmentation and normalisation per item."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, num_classes: int,
                 augment: bool, mean, std):
        self.images, self.targets, self.num_classes = images, torch.from_numpy(labels), num_classes
        self.transform = cifar_transform(mean, std, augment, tensor_input=True)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.targets[i])

    @property
    def data(self) -> torch.Tensor:
        """The images as uint8 [N, 32, 32, 3] (a view, no copy): the layout of CifarPickles'
        ``data``, so in-memory loaders (data/device_loader.py) read either set alike."""
        return self.images.permute(0, 2, 3, 1)


# measured on the default set; other seeds draw other palettes and land within ~0.02
MEAN, STD = (0.52, 0.50, 0.52), (0.25, 0.25, 0.24)


@register_dataset("synthetic", family="cifar", num_classes=10, input_size=32, mean=MEAN, std=STD)
def synthetic(root: str, split: str, augment: bool, *, seed: int = 0, num_classes: int = 10,
              train_size: int = 10000, test_size: int = 2000) -> SyntheticDataset:
    """``root`` is unused: nothing is read or written."""
    check_split(split)
    size = train_size if split == "train" else test_size
    images, labels = make_split(seed, num_classes, size, split)
    return SyntheticDataset(images, labels, num_classes, augment, MEAN, STD)
