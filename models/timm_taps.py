"""Tap maps of unmodified timm models, derived from one dry run instead of a per-model table.

Every family gets the same names with the same meaning: ``stage1..4`` and ``last_map`` are
(C, H, W) maps, ``pooled`` is the vector the model's own classifier reads (its pooling: class
token or average), ``logits`` its output, ``classifier`` its head. Where the model's tensors are
not maps, the taps declare a transform (:mod:`core.taps`): ViT/DeiT/Mixer token sequences lose
their prefix tokens (class, distillation, register) and become (D, h, w); Swin's NHWC stages are
permuted. ``stageK_tokens`` keeps the raw block output (B, prefix + h*w, D) of token models.

Stages: ``feature_info`` where it has several reductions (CNNs, ConvNeXt, Swin); an isotropic
model (one reduction: ViT, DeiT, Mixer, ResMLP) gets four blocks split 1:1:3:1 over its depth,
Swin-T's stage layout, which is OFA-KD's blocks 1, 3, 9, 11 of 12. ``stageK_preact`` is the input
of the activation that produces the stage output (timm ResNets), or the stage output itself when
no activation ends the stage (residual streams: ViT, ConvNeXt, Swin). What cannot be derived is
left out with a one-line reason in ``unavailable_taps``, never an error at build time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from core.taps import ChannelsLastToMap, PrefixMean, TapPoint, TokensToMap

#: Cumulative twelfths of the depth at which isotropic stages end: Swin-T's (2, 2, 6, 2) blocks.
STAGE_SPLIT = (2, 4, 10, 12)
#: Input side of the dry run for models without a fixed image size (CNNs); the pretrained
#: config's size is tried when a model refuses it.
PROBE_SIDE = 64
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU,
                nn.Hardtanh, nn.CELU, nn.SELU, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid)


@dataclass
class TimmTaps:
    """A derived tap map and the taps it could not provide, with why."""

    points: Dict[str, TapPoint]
    unavailable: Dict[str, str] = field(default_factory=dict)


def isotropic_stage_blocks(depth: int) -> List[int]:
    """Zero-based block indices of the four stages of a ``depth``-block isotropic model.

    12 -> [1, 3, 9, 11] (OFA-KD's); 24 -> [3, 7, 19, 23]; 4 -> [0, 1, 2, 3]; fewer blocks, one each.
    """
    if depth <= len(STAGE_SPLIT):
        return list(range(depth))
    picked: List[int] = []
    for k, cum in enumerate(STAGE_SPLIT):
        index = (depth * cum + 6) // 12 - 1  # rounded half up
        low = picked[-1] + 1 if picked else 0
        high = depth - (len(STAGE_SPLIT) - k)
        picked.append(min(max(index, low), high))
    return picked


def _module_path(model: nn.Module, target: nn.Module) -> Optional[str]:
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, _ACTIVATIONS) or type(module).__module__.startswith("timm.layers.activations")


def _probe_sizes(model: nn.Module) -> List[Tuple[int, int]]:
    """Input sizes to try: a patch embedding's fixed size, else a small one, else the pretrained one."""
    for module in model.modules():
        size = getattr(module, "img_size", None)
        if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
            return [tuple(size)]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    sizes = [(PROBE_SIDE, PROBE_SIDE)]
    if cfg.get("input_size"):
        sizes.append(tuple(cfg["input_size"][-2:]))
    return sizes


def _in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return int(getattr(model, "in_chans", 3))


class _DryRun:
    """One eval-mode, no-grad forward of a batch of one recording what the tap map is made from:
    the output and first input of ``watch`` modules, and the call order of the leaves under ``leaves_of``."""

    def __init__(self, model: nn.Module, watch: List[str], leaves_of: List[str]):
        self.outputs: Dict[str, object] = {}
        self.inputs: Dict[str, object] = {}
        self.leaf_calls: List[Tuple[str, object]] = []
        self.size: Tuple[int, int] = (0, 0)
        self.error = ""
        modules = dict(model.named_modules())
        handles = []
        for path in dict.fromkeys(watch):
            handles.append(modules[path].register_forward_hook(self._watcher(path)))
        prefixes = tuple(p + "." for p in leaves_of)
        for path, module in modules.items():
            if path.startswith(prefixes) and not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(self._leaf(path)))
        was_training = model.training
        model.eval()
        try:
            for size in _probe_sizes(model):
                generator = torch.Generator().manual_seed(0)
                x = torch.randn(1, _in_channels(model), *size, generator=generator)
                try:
                    with torch.no_grad():
                        model(x)
                except Exception as err:  # noqa: BLE001  (any model error: say it, try the next size)
                    self.error = f"{type(err).__name__}: {err}".splitlines()[0]
                    self.outputs, self.inputs, self.leaf_calls = {}, {}, []
                    continue
                self.size, self.error = size, ""
                break
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()

    def _watcher(self, path):
        def hook(module, args, output):
            self.outputs[path] = output
            self.inputs[path] = args[0] if args else None
        return hook

    def _leaf(self, path):
        def hook(module, args, output):
            self.leaf_calls.append((path, output))
        return hook

    def producer(self, stage: str) -> Optional[str]:
        """The last leaf under ``stage`` whose output object is the stage's output."""
        out = self.outputs.get(stage)
        found = None
        for path, value in self.leaf_calls:
            if path.startswith(stage + ".") and value is out:
                found = path
        return found


class _Layout:
    """Turns a dry-run tensor into a map transform (or a reason it is no map)."""

    def __init__(self, model: nn.Module, run: _DryRun):
        self.model = model
        self.size = run.size
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def grids(self, reduction: Optional[int]) -> List[Tuple[int, int]]:
        """Candidate patch grids: the input size over the reduction, then the patch embedding's own."""
        out = []
        if reduction:
            out.append((-(-self.size[0] // reduction), -(-self.size[1] // reduction)))
        embed = getattr(self.model, "patch_embed", None)
        if embed is not None and getattr(embed, "grid_size", None):
            out.append(tuple(embed.grid_size))
        return out

    def to_map(self, value, channels: Optional[int], reduction: Optional[int], what: str):
        """(transform or None, reason): how ``value`` becomes a (B, C, H, W) map."""
        if not isinstance(value, torch.Tensor):
            return None, f"{what} is a {type(value).__name__}, not a tensor"
        shape = tuple(value.shape)
        if value.dim() == 4:
            if channels is None:
                return (ChannelsLastToMap(), "") if self.channels_last else (None, "")
            first, last = shape[1] == channels, shape[-1] == channels
            if last and (self.channels_last or not first):
                return ChannelsLastToMap(), ""
            if first:
                return None, ""
        elif value.dim() == 3 and channels in (None, shape[-1]):
            n = shape[1]
            declared = getattr(self.model, "num_prefix_tokens", None)
            for h, w in self.grids(reduction):
                prefix = n - h * w
                if prefix >= 0 and (declared is None or prefix in (0, declared)):
                    return TokensToMap(prefix, (h, w)), ""
            prefix = int(declared or 0)
            side = int(round(max(n - prefix, 0) ** 0.5))
            if side and side * side == n - prefix:
                return TokensToMap(prefix, (side, side)), ""
        return None, f"{what} has shape {shape[1:]}, neither a (C, H, W) map nor a token sequence"


def _classifier(model: nn.Module):
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    heads = tuple(head) if isinstance(head, (tuple, list)) else (head,)
    heads = tuple(h for h in heads if isinstance(h, nn.Module) and any(p.numel() for p in h.parameters()))
    return heads


def _pool_module(model: nn.Module) -> Optional[nn.Module]:
    for owner in (model, getattr(model, "head", None)):
        pool = getattr(owner, "global_pool", None) if owner is not None else None
        if isinstance(pool, nn.Module):
            return pool
    return None


def derive_timm_taps(model: nn.Module) -> TimmTaps:
    """The tap map of a timm model (any family), from its ``feature_info``, head and one dry run."""
    name = getattr(model, "arch", None) or type(model).__name__
    info = list(getattr(model, "feature_info", None) or [])
    modules = dict(model.named_modules())
    info = [f for f in info if f.get("module") in modules]
    reductions = {f.get("reduction") for f in info}
    isotropic = len(info) > 1 and len(reductions) == 1
    if isotropic:
        stems, stages = [], [info[i] for i in isotropic_stage_blocks(len(info))]
    else:
        stems = [f for f in info if f.get("reduction", 4) <= 2]
        stages = [f for f in info if f.get("reduction", 4) > 2]
    heads = _classifier(model)
    head_paths = [p for p in (_module_path(model, h) for h in heads) if p is not None]
    pool = _pool_module(model)
    pool_path = _module_path(model, pool) if pool is not None else None
    norm = getattr(model, "norm", None)
    norm_path = "norm" if isinstance(norm, nn.Module) and modules.get("norm") is norm else None
    stem_path = None
    if stems:
        stem_path = stems[-1]["module"]
    else:
        stem_path = next((p for p in ("patch_embed", "stem") if p in modules and p), None)
    stage_paths = [f["module"] for f in stages]
    watch = stage_paths + head_paths + [p for p in (pool_path, norm_path, stem_path) if p]
    run = _DryRun(model, watch, stage_paths)

    out = TimmTaps({"logits": TapPoint("", "output")})
    if heads and head_paths:
        out.points["classifier"] = TapPoint(head_paths[0], "module")
        out.points["pooled"] = TapPoint(head_paths[0], "input")
    if run.error:
        reason = f"its dry run failed ({run.error}); tap module paths directly"
        out.unavailable.update({k: reason for k in ("stages", "stages_preact", "last_map", "stem")})
        return out
    layout = _Layout(model, run)
    if len(head_paths) > 1:
        _pooled_of_several_heads(out, run, head_paths, norm_path)

    if not info:
        reason = f"timm model {name} declares no feature_info; tap module paths directly (e.g. 'blocks.3')"
        out.unavailable.update({"stages": reason, "stages_preact": reason})
    for k, feat in enumerate(stages, start=1):
        path = feat["module"]
        transform, reason = layout.to_map(run.outputs.get(path), feat.get("num_chs"), feat.get("reduction"),
                                          f"stage {path}'s output")
        if reason:
            out.unavailable.update({f"stage{k}": reason, "stages": reason, "stages_preact": reason})
            break
        out.points[f"stage{k}"] = TapPoint(path, "output", transform)
        if isinstance(transform, TokensToMap):
            out.points[f"stage{k}_tokens"] = TapPoint(path, "output")
        producer = run.producer(path)
        if producer is not None and _is_activation(modules[producer]):
            out.points[f"stage{k}_preact"] = TapPoint(producer, "input", transform)
        else:  # no activation ends the stage: its output is the pre-activation
            out.points[f"stage{k}_preact"] = TapPoint(path, "output", transform)

    if stem_path is not None:
        reduction = stems[-1].get("reduction") if stems else None
        # a patch embedding outside feature_info has the first stage's width (ViT, Swin, ConvNeXt, Mixer)
        width = stems[-1].get("num_chs") if stems else (stages[0].get("num_chs") if stages else None)
        transform, reason = layout.to_map(run.outputs.get(stem_path), width,
                                          reduction or (stages[0].get("reduction") if stages else None),
                                          f"stem {stem_path}'s output")
        if reason:
            out.unavailable["stem"] = reason
        else:
            out.points["stem"] = TapPoint(stem_path, "output", transform)

    channels = getattr(model, "num_features", None)
    last_reduction = stages[-1].get("reduction") if stages else None
    if pool_path is not None and pool_path in run.inputs:
        transform, reason = layout.to_map(run.inputs[pool_path], channels, last_reduction, "the pooled map")
        point = TapPoint(pool_path, "input", transform)
    elif norm_path is not None and isinstance(run.outputs.get(norm_path), torch.Tensor) \
            and run.outputs[norm_path].dim() == 3:
        transform, reason = layout.to_map(run.outputs[norm_path], channels, last_reduction, "the final norm")
        point = TapPoint(norm_path, "output", transform)
    elif stages and "stage%d" % len(stages) in out.points:
        point, reason = out.points["stage%d" % len(stages)], ""
    else:
        point, reason = None, "no pooling module, token norm or stage to take the last map from"
    if reason:
        out.unavailable["last_map"] = reason
    elif point is not None:
        out.points["last_map"] = point
    return out


def _pooled_of_several_heads(out: TimmTaps, run: _DryRun, head_paths: List[str], norm_path: Optional[str]) -> None:
    """DeiT-distilled style heads: when they read different prefix tokens, ``pooled`` is their mean
    (the model's own ``forward_head(pre_logits=True)``); when they read one vector, that vector."""
    inputs = [run.inputs.get(p) for p in head_paths]
    if all(isinstance(x, torch.Tensor) for x in inputs) and all(torch.equal(x, inputs[0]) for x in inputs):
        return
    tokens = run.outputs.get(norm_path) if norm_path else None
    if isinstance(tokens, torch.Tensor) and tokens.dim() == 3 and all(
            isinstance(x, torch.Tensor) and torch.equal(x, tokens[:, i]) for i, x in enumerate(inputs)):
        out.points["pooled"] = TapPoint(norm_path, "output", PrefixMean(len(inputs)))
        return
    out.unavailable["pooled"] = "its classifier heads read different vectors that are not prefix tokens"
    out.points.pop("pooled", None)
