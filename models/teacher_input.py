"""The teacher's own input: its normalisation and image size, applied on the device by a hook.

A teacher trained elsewhere (a timm ``pretrained_cfg``, or what its checkpoint records) may
expect another mean/std or size than the student's data. :func:`attach_teacher_input` puts a
forward pre-hook on the unmodified teacher that maps the student's batch to it, as timm's
distillation task does with ``normalize_input``: x_t = resize((x * std_d + mean_d - mean_t) / std_t).
The per-channel affine map commutes with the resize (linear, weights summing to one), so the
order does not change the result; it is applied first.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

MODES = ("bilinear", "bicubic", "nearest", "area")
Size = Union[int, Sequence[int]]


def _vector(name: str, values: Sequence[float]) -> torch.Tensor:
    try:
        vector = torch.tensor([float(v) for v in values], dtype=torch.float64)
    except (TypeError, ValueError):
        raise ValueError(f"attach_teacher_input: {name}={values!r} must be a list of numbers, one per channel") \
            from None
    if vector.dim() != 1 or not len(vector):
        raise ValueError(f"attach_teacher_input: {name}={values!r} must be a list of numbers, one per channel")
    return vector


def _size(size: Optional[Size]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"attach_teacher_input: teacher_size={size!r} must be a positive int or (H, W)")
    return pair


class TeacherInput:
    """The hook: a per-channel affine map (cached per device and dtype), then a resize."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, size: Optional[Tuple[int, int]], mode: str):
        self.scale, self.shift, self.size, self.mode = scale, shift, size, mode
        self._cache: Dict[Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != len(self.scale):
            raise ValueError(f"teacher input: expected images (B, {len(self.scale)}, H, W), got {tuple(x.shape)}")
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = (self.scale.to(x.device, x.dtype).view(1, -1, 1, 1),
                                self.shift.to(x.device, x.dtype).view(1, -1, 1, 1))
        scale, shift = self._cache[key]
        x = torch.addcmul(shift, x, scale)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            smaller = self.size[0] < x.shape[-2] or self.size[1] < x.shape[-1]
            kwargs = {} if self.mode in ("nearest", "area") else {"align_corners": False,
                                                                   "antialias": smaller}
            dtype = x.dtype  # resized in float32: antialiased kernels have no half-precision CPU version
            x = F.interpolate(x.float(), size=self.size, mode=self.mode, **kwargs).to(dtype)
        return x

    def __call__(self, module: nn.Module, args: Tuple[Any, ...]):
        return (self.transform(args[0]),) + tuple(args[1:])


def attach_teacher_input(teacher: nn.Module, data_mean: Sequence[float], data_std: Sequence[float],
                         teacher_mean: Sequence[float], teacher_std: Sequence[float],
                         teacher_size: Optional[Size] = None, interpolation: str = "bilinear") -> RemovableHandle:
    """Re-normalise the teacher's input from the data's mean/std to its own and resize it to
    ``teacher_size`` (None: keep the size), in a forward pre-hook; returns the hook's handle.

    Register it before :class:`core.taps.FeatureTaps` runs the teacher (hooks on submodules are
    unaffected; the pre-hook sits on the teacher itself).
    """
    vectors = {n: _vector(n, v) for n, v in (("data_mean", data_mean), ("data_std", data_std),
                                             ("teacher_mean", teacher_mean), ("teacher_std", teacher_std))}
    lengths = {n: len(v) for n, v in vectors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"attach_teacher_input: mean and std need one value per channel; got lengths {lengths}")
    for n in ("data_std", "teacher_std"):
        if not bool((vectors[n] > 0).all()):
            raise ValueError(f"attach_teacher_input: {n}={list(map(float, vectors[n]))} must be positive")
    if interpolation not in MODES:
        raise ValueError(f"attach_teacher_input: interpolation={interpolation!r}; accepted: {', '.join(MODES)}")
    scale = vectors["data_std"] / vectors["teacher_std"]
    shift = (vectors["data_mean"] - vectors["teacher_mean"]) / vectors["teacher_std"]
    hook = TeacherInput(scale.float(), shift.float(), _size(teacher_size), interpolation)
    return teacher.register_forward_pre_hook(hook)


def timm_input_config(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The input a timm model's pretrained weights expect (mean, std, size (H, W), interpolation), from
    its ``pretrained_cfg``; None for a model without one. Use it only for timm-pretrained weights: a
    teacher trained by this project expects the normalisation its checkpoint records."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not (cfg.get("mean") and cfg.get("std") and cfg.get("input_size")):
        return None
    mode = cfg.get("interpolation", "bilinear")
    size = tuple(cfg["input_size"][-2:])
    for module in model.modules():  # a patch embedding built for another size (img_size=...) takes only that
        fixed = getattr(module, "img_size", None)
        if isinstance(fixed, (tuple, list)) and len(fixed) == 2 and getattr(module, "strict_img_size", True):
            size = tuple(fixed)
            break
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "size": size,
            "interpolation": mode if mode in MODES else "bilinear"}
