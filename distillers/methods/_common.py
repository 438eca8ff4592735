"""Building blocks several methods share (kept here so no method file repeats them)."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the spatially larger of two maps to the other's size (both to the
    smaller height and the smaller width when each is larger in one dimension)."""
    ha, hb = a.shape[-2:], b.shape[-2:]
    if ha == hb:
        return a, b
    if ha[0] >= hb[0] and ha[1] >= hb[1]:
        return F.adaptive_avg_pool2d(a, hb), b
    if hb[0] >= ha[0] and hb[1] >= ha[1]:
        return a, F.adaptive_avg_pool2d(b, ha)
    size = (min(ha[0], hb[0]), min(ha[1], hb[1]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


class LinearEmbed(nn.Module):
    """Flatten, then Linear to ``dim``; L2-normalised when ``normalize`` (CRD family)."""

    def __init__(self, in_dim: int, dim: int = 128, normalize: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return F.normalize(x, dim=1) if self.normalize else x


def flat_dim(shape) -> int:
    """Number of features of a per-sample shape such as (C,) or (C, H, W)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n
