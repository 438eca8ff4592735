"""Generic shape adapters, so a feature method runs on any pair of architectures.

The taps already give maps (C, H, W) on every family (token sequences are reshaped by the
tap map), so what is left between two tapped shapes is: a token <-> map change for methods
that read tokens, a spatial change (parameter-free: pooling down, interpolation up; learnt:
patch merging down, patch expanding up, by integer factors) and a channel projection (1x1
conv on maps, linear on vectors). :func:`map_adapter` picks them from the two shapes.

Under autocast the convolutions run in the autocast dtype as usual; outside it an input of
another floating dtype than the adapter's weights is cast to the weights' dtype (a bfloat16
teacher feature meeting a float32 adapter), so adapters never fail on a dtype mismatch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Option

Shape = Sequence[int]

#: The ``adapter`` option of methods whose reference covers only some shapes (FitNet's and AB's
#: ConvReg size ratios, AB's and ReviewKD's equal stage counts): ``reference`` keeps the
#: reference's error, ``auto`` adapts (:class:`SpatialProjection`, the deepest min(n_s, n_t) stages).
ADAPTER_CHOICES = ("reference", "auto")
ADAPTER_OPTION = Option("reference", "shapes the reference cannot connect: reference (an error) or auto (patch "
                        "merging/expanding or interpolation + 1x1 conv; AB: the deepest min(n_s, n_t) stages)",
                        choices=ADAPTER_CHOICES)


def tokens_to_map(x: torch.Tensor, prefix: int = 0, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """(B, prefix + h*w, D) -> (B, D, h, w), prefix tokens dropped; ``grid`` None: a square grid."""
    patches = x[:, prefix:]
    n = patches.shape[1]
    if grid is None:
        side = int(round(n ** 0.5))
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f"tokens_to_map: {n} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major: the inverse of :func:`tokens_to_map` without prefix."""
    return x.flatten(2).transpose(1, 2)


def resize_map(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Parameter-free spatial matching: adaptive average pooling where the map shrinks in both
    dimensions (the zoo's rule), bilinear interpolation otherwise."""
    size = tuple(int(s) for s in size)
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _weight_dtype(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s weights unless autocast chooses the dtype."""
    weight = next(module.parameters(), None)
    if weight is None or x.dtype == weight.dtype or not x.is_floating_point():
        return x
    if torch.is_autocast_enabled(x.device.type):
        return x
    return x.to(weight.dtype)


class Resize(nn.Module):
    """:func:`resize_map` to a fixed size, as a module (for ``nn.Sequential``)."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_map(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class ChannelProjection(nn.Module):
    """Channel projection: 1x1 conv on maps (B, C, H, W), linear on vectors (B, C) or tokens (B, N, C)."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _weight_dtype(x, self)
        if x.dim() == 4:
            return F.conv2d(x, self.linear.weight[:, :, None, None], self.linear.bias)
        return self.linear(x)


class SpatialProjection(nn.Module):
    """Student map (C_s, H_s, W_s) -> (C_t, H_t, W_t) with learnt spatial matching and projection.

    Integer factor f down in both dimensions: patch merging (each f x f patch concatenated, then
    projected: a conv of kernel and stride f, as Swin's PatchMerging for f = 2). Integer factor up:
    patch expanding (transposed conv of kernel and stride f). Any other pair: interpolate to the
    teacher's size, then a 1x1 conv. ``mode`` names the choice.
    """

    def __init__(self, s_shape: Shape, t_shape: Shape):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = tuple(s_shape), tuple(t_shape)
        self.size = (t_h, t_w)
        down = s_h % t_h == 0 and s_w % t_w == 0 and s_h // t_h == s_w // t_w
        up = t_h % s_h == 0 and t_w % s_w == 0 and t_h // s_h == t_w // s_w
        if (s_h, s_w) == (t_h, t_w):
            self.mode, self.proj = "project", nn.Conv2d(s_c, t_c, 1)
        elif down:
            f = s_h // t_h
            self.mode, self.proj = f"merge{f}", nn.Conv2d(s_c, t_c, f, stride=f)
        elif up:
            f = t_h // s_h
            self.mode, self.proj = f"expand{f}", nn.ConvTranspose2d(s_c, t_c, f, stride=f)
        else:
            self.mode, self.proj = "interpolate", nn.Conv2d(s_c, t_c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _weight_dtype(x, self)
        if self.mode == "interpolate":
            x = resize_map(x, self.size)
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, size={self.size}"


def as_map_shape(shape: Shape) -> Tuple[int, int, int]:
    """A per-sample shape as (C, H, W): vectors are 1x1 maps; tokens (N, D) are not accepted here
    (the tap map turns them into maps; use :func:`tokens_to_map` on raw tokens)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 3:
        return shape
    raise ValueError(f"expected a map (C, H, W) or a vector (C,), got a shape {shape}")


def map_adapter(s_shape: Shape, t_shape: Shape, learnt: bool = True) -> nn.Module:
    """A module taking a student map of ``s_shape`` to ``t_shape``.

    ``learnt``: :class:`SpatialProjection` (patch merging / expanding / interpolation, then
    channels); otherwise parameter-free: :class:`Resize` (channels must already agree).
    """
    s, t = as_map_shape(s_shape), as_map_shape(t_shape)
    if learnt:
        return SpatialProjection(s, t)
    if s[0] != t[0]:
        raise ValueError(f"a parameter-free adapter keeps the channels: student {s[0]} vs teacher {t[0]}")
    return Resize(t[1:])
