"""Hook-based feature taps: named tensors captured from unmodified models.

Every model family maps standard tap names (``logits``, ``pooled``, ``last_map``,
``stem``, ``stage1..N``, ``stageK_preact``, ``classifier``) to a module path and to
whether the tensor is that module's input or output (:class:`TapPoint`). A
:class:`FeatureTaps` object attaches forward hooks for the names a distiller needs,
runs the model's plain ``forward`` and hands back a ``{name: tensor}`` dict. Models
therefore never grow ``is_feat``/``preact`` flags.

Any module path can be tapped directly too: ``"layer3.1.conv2"`` (its output) or
``"layer3.1.relu:input"``. A standard name followed by ``:module`` is the module at that
tap's path (``"stage2:module"``: the module whose output is ``stage2``), so a method can call a
network's own stages by name (FCFD runs one network's later stages on the other's features).

Inputs of a module are cloned when captured: an in-place ReLU would otherwise
overwrite a pre-activation tensor after the hook ran (the classic pitfall).

A tap may declare a ``transform`` applied when it is captured, so that a name means the
same thing on every family: a ViT block's output (B, prefix + h*w, D) becomes the map
(B, D, h, w) (:class:`TokensToMap`), a Swin stage's (B, H, W, C) becomes (B, C, H, W)
(:class:`ChannelsLastToMap`). The raw tensor stays tappable under another name.
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

IO_KINDS = ("output", "input", "module")

#: Group names that expand to every matching standard tap, in stage order; the
#: captured value of a group is a list (``stages`` = [stage1, stage2, ...]).
GROUPS = {"stages": re.compile(r"stage(\d+)$"), "stages_preact": re.compile(r"stage(\d+)_preact$"),
          "stages_bn": re.compile(r"stage(\d+)_bn$")}


class TapError(ValueError):
    """A tap name or module path that a model cannot provide."""


@dataclass(frozen=True)
class TokensToMap:
    """Token sequence (B, prefix + h*w, D) -> map (B, D, h, w), the ``prefix`` tokens dropped.

    Prefix tokens are the class, distillation and register tokens (timm's ``num_prefix_tokens``).
    ``grid`` is the patch grid of the dry run; a sequence of another length (a model with dynamic
    image size) is taken as a square grid, and anything else is a :class:`TapError`.
    """

    prefix: int
    grid: Tuple[int, int]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise TapError(f"TokensToMap expects tokens (B, N, D), got {tuple(x.shape)}")
        patches = x[:, self.prefix:]
        n = patches.shape[1]
        h, w = self.grid
        if h * w != n:
            side = int(round(n ** 0.5))
            if side * side != n:
                raise TapError(f"{n} patch tokens (after {self.prefix} prefix tokens) make no {h}x{w} "
                               "grid and no square one")
            h = w = side
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


@dataclass(frozen=True)
class ChannelsLastToMap:
    """(B, H, W, C) -> (B, C, H, W): Swin-style NHWC stage outputs as maps."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class PrefixMean:
    """Tokens (B, N, D) -> (B, D): the mean of the first ``count`` tokens (DeiT's class and
    distillation tokens, averaged by its own ``forward_head(pre_logits=True)``)."""

    count: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :self.count].mean(1)


@dataclass(frozen=True)
class TapPoint:
    """Where a named tensor lives: a dotted module path ('' is the model itself).

    io: ``output`` (the module's return value), ``input`` (its first positional
    argument, cloned) or ``module`` (the module object itself, e.g. a classifier).
    When a module runs several times per forward (torchvision's shared ReLU), the
    last call wins. ``transform``: a callable applied to the captured tensor (see
    :class:`TokensToMap`); hashable, so tap maps stay comparable.
    """

    module: str
    io: str = "output"
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self):
        if self.io not in IO_KINDS:
            raise ValueError(f"TapPoint io must be one of {IO_KINDS}, got {self.io!r}")
        if self.transform is not None and self.io == "module":
            raise ValueError("a TapPoint of io='module' captures the module itself: it takes no transform")


TapMap = Mapping[str, TapPoint]


def head_taps(classifier: str, pool: str = "avgpool", pooled_from: str = "") -> Dict[str, TapPoint]:
    """The taps every classifier shares: the pooled map, the penultimate vector, logits, fc."""
    return {"last_map": TapPoint(pool, "input"), "pooled": TapPoint(pooled_from or classifier, "input"),
            "logits": TapPoint("", "output"), "classifier": TapPoint(classifier, "module")}


def residual_stage_taps(stem_relu: str, layers: Iterable[nn.Sequential], bn: str = "") -> Dict[str, TapPoint]:
    """Stem and ``layer{k}`` stages whose last block ends in a ReLU module named ``relu``.

    Pre-activations are that ReLU's inputs (cloned by the taps, so in-place is safe). ``bn``: the
    last block's BatchNorm on the residual branch (``stage{k}_bn``, the module itself: OFD's margins).
    """
    points = {"stem": TapPoint(stem_relu), "stem_preact": TapPoint(stem_relu, "input")}
    for k, layer in enumerate(layers, start=1):
        points[f"stage{k}"] = TapPoint(f"layer{k}")
        points[f"stage{k}_preact"] = TapPoint(f"layer{k}.{len(layer) - 1}.relu", "input")
        if bn:
            points[f"stage{k}_bn"] = TapPoint(f"layer{k}.{len(layer) - 1}.{bn}", "module")
    return points


class _StopForward(Exception):
    """Raised from a hook to end a forward once every needed tensor is captured."""


def tap_points_of(model: nn.Module) -> Dict[str, TapPoint]:
    """The model's standard tap map (a ``tap_points`` method or dict attribute), or, for a classifier
    that declares none (a plugin's model), :func:`fallback_taps`: every logit method runs on it."""
    points = getattr(model, "tap_points", None)
    if points is None:
        return fallback_taps(model)
    return dict(points() if callable(points) else points)


def fallback_taps(model: nn.Module) -> Dict[str, TapPoint]:
    """The taps any classifier has: ``logits`` (its output) and, when it ends in an ``nn.Linear``, ``pooled``
    (that layer's input) and ``classifier`` (the layer). Feature maps need the model's own map."""
    points = {"logits": TapPoint("", "output")}
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]
    if linears:
        points.update(pooled=TapPoint(linears[-1], "input"), classifier=TapPoint(linears[-1], "module"))
    return points


def missing_tap_reason(model: nn.Module, name: str) -> str:
    """Why ``model`` has no tap ``name``, when its tap map says so (``model.unavailable_taps``:
    {tap or group name: one-line reason}, e.g. stage taps of a timm model of unknown layout); else ''."""
    notes = getattr(model, "unavailable_taps", None) or {}
    if name in notes:
        return notes[name]
    for group, pattern in GROUPS.items():
        if pattern.match(name) and group in notes:
            return notes[group]
    return ""


def resolve_tap(model: nn.Module, name: str, points: Optional[TapMap] = None) -> TapPoint:
    """Standard name -> its TapPoint; ``<standard name>:module`` -> the module at that name's path;
    otherwise ``path`` / ``path:input`` / ``path:output`` / ``path:module`` (a standard name wins over a
    module path spelt the same)."""
    if points is None:
        try:
            points = tap_points_of(model)
        except TapError:
            points = {}
    if name in points:
        return points[name]
    path, _, io = name.partition(":")
    io = io or "output"
    if io == "module" and path in points:
        return TapPoint(points[path].module, "module")
    modules = dict(model.named_modules())
    if path in modules and io in IO_KINDS:
        return TapPoint(path, io)
    reason = missing_tap_reason(model, name)
    if reason:
        raise TapError(f"{getattr(model, 'arch', type(model).__name__)} has no tap '{name}': {reason}")
    raise TapError(
        f"Unknown tap '{name}' for {type(model).__name__}. Standard taps: "
        f"{', '.join(sorted(points)) or '(none)'}; or a module path such as "
        f"'{next((n for n in modules if n), 'layer1')}' (optionally ':input'); '<standard tap>:module' is the "
        f"module at that tap's path."
    )


class FeatureTaps:
    """Captures named tensors from a model with forward hooks.

    Use as a context manager (or call :meth:`close`) so the hooks are removed.
    ``forward`` runs the model (default: ``model`` itself; pass a DDP wrapper so
    gradients synchronise while hooks stay on the plain module).
    With ``stop_early=True`` and no ``logits`` requested, the forward is cut after
    the last needed tensor is captured (the teacher of a feature method never runs
    its head). The cut point is learnt from the first forward, which runs whole.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], *, stop_early: bool = False,
                 points: Optional[TapMap] = None, forward: Optional[Callable] = None):
        self.model = model
        self._forward = forward if forward is not None else model  # e.g. the DDP (or compiled) wrapper of ``model``
        try:
            default_points = tap_points_of(model) if points is None else dict(points)
        except TapError:
            default_points = {}
        self.requested: Tuple[str, ...] = tuple(dict.fromkeys(names))
        self.groups = {g: expand_group(g, default_points, missing_tap_reason(model, g))
                       for g in self.requested if g in GROUPS}
        flat = [m for n in self.requested for m in self.groups.get(n, [n])]
        self.names: Tuple[str, ...] = tuple(dict.fromkeys(flat))
        self.points = {n: resolve_tap(model, n, default_points) for n in self.names}
        self.stop_early = stop_early and "logits" not in self.names
        self._modules = dict(model.named_modules())
        self._store: Dict[str, object] = {}
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._calls: Dict[Tuple[str, str], int] = {}
        self._stop_after: Optional[Tuple[Tuple[str, str], int]] = None
        self._calibrated = False
        self._attach()

    # hooks -----------------------------------------------------------------
    def _attach(self) -> None:
        by_site: Dict[Tuple[str, str], List[str]] = {}
        for name, point in self.points.items():
            by_site.setdefault((point.module, point.io), []).append(name)
        for (path, io), names in by_site.items():
            module = self._modules[path]
            if io == "module":
                for n in names:
                    self._store[n] = module
                continue
            hook = self._make_hook((path, io), names)
            if io == "output":
                self._handles.append(module.register_forward_hook(hook))
            else:
                self._handles.append(module.register_forward_pre_hook(hook))

    def _make_hook(self, site: Tuple[str, str], names: List[str]) -> Callable:
        is_input = site[1] == "input"
        transforms = {n: self.points[n].transform for n in names}

        def hook(module, args, output=None):
            tensor = args[0] if is_input else output
            if is_input and isinstance(tensor, torch.Tensor):
                tensor = tensor.clone()
            done = {}
            for n in names:
                transform = transforms[n]
                if transform is None:
                    self._store[n] = tensor
                else:
                    if transform not in done:
                        done[transform] = transform(tensor)
                    self._store[n] = done[transform]
            count = self._calls.get(site, 0) + 1
            self._calls[site] = count
            if self._stop_after is not None and self._stop_after == (site, count):
                raise _StopForward

        return hook

    # running ---------------------------------------------------------------
    def __call__(self, *inputs, **kwargs) -> Dict[str, object]:
        """Run the model and return ``{tap name: tensor}`` (modules for io='module')."""
        self._calls = {}
        order: List[Tuple[str, str]] = []
        if not self._calibrated:
            order = self._run_recording(inputs, kwargs)
        else:
            try:
                self._forward(*inputs, **kwargs)
            except _StopForward:
                pass
        missing = [n for n in self.names if n not in self._store]
        if missing:
            raise TapError(
                f"taps {missing} of {type(self.model).__name__} did not fire during forward "
                f"(their modules were not called)")
        result = {n: self._store[n] for n in self.names}
        for group, members in self.groups.items():
            result[group] = [result[m] for m in members]
        self._store = {n: v for n, v in self._store.items() if isinstance(v, nn.Module)}
        if order:
            self._calibrate(order)
        return result

    def _run_recording(self, inputs, kwargs) -> List[Tuple[str, str]]:
        order: List[Tuple[str, str]] = []
        recorder = []
        for (path, io) in {(p.module, p.io) for p in self.points.values() if p.io != "module"}:
            module = self._modules[path]
            site = (path, io)
            rec = (lambda s: (lambda *a, **k: order.append(s)))(site)
            recorder.append(module.register_forward_pre_hook(rec) if io == "input"
                            else module.register_forward_hook(rec))
        try:
            self._forward(*inputs, **kwargs)
        finally:
            for h in recorder:
                h.remove()
        return order

    def _calibrate(self, order: List[Tuple[str, str]]) -> None:
        self._calibrated = True
        if not self.stop_early or not order:
            return
        last_site = order[-1]
        self._stop_after = (last_site, order.count(last_site))

    def shapes(self, *inputs) -> Dict[str, Tuple[int, ...]]:
        """Dry run (eval mode, no grad): per-sample shape of every tap, batch dim dropped.

        For io='module' taps the shape is that of the module's weight.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                feats = self(*inputs)
        finally:
            self.model.train(was_training)
        return {n: _shape_of(v) for n, v in feats.items()}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._store = {}

    @property
    def num_hooks(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _shape_of(value):
    if isinstance(value, list):
        return [_shape_of(v) for v in value]
    if isinstance(value, nn.Module):
        weight = getattr(value, "weight", None)
        return tuple(weight.shape) if weight is not None else ()
    return tuple(value.shape[1:])


def expand_group(group: str, points: TapMap, reason: str = "") -> List[str]:
    """``stages`` -> ['stage1', 'stage2', ...] as far as the model defines them.

    ``reason``: why the model has none (its ``unavailable_taps``), said instead of the tap list."""
    pattern = GROUPS[group]
    found = sorted((int(m.group(1)), n) for n in points for m in [pattern.match(n)] if m)
    if not found:
        if reason:
            raise TapError(f"tap group '{group}' matches no tap: {reason}")
        raise TapError(f"tap group '{group}' matches no tap; available taps: {', '.join(sorted(points))}")
    return [n for _, n in found]


def standard_taps(model: nn.Module) -> List[str]:
    """Every standard tap name of a model, plus its groups."""
    points = tap_points_of(model)
    return sorted(points) + [g for g in GROUPS if any(GROUPS[g].match(n) for n in points)]


def count_hooks(model: nn.Module) -> int:
    """Number of forward (pre-)hooks still attached anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
