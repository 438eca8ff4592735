"""Check the project's distillers against reference numbers (``shared/golden/*.pt``).

Usage::

    python -m distillers.golden ../shared/golden/kd.pt [more files ...]

Each file names its ``method``; its entry, declared beside the method with
:func:`distillers.reference.register_golden` (:data:`TABLE` holds them all), says which
registered distiller reproduces it, which tap each input stands for, which of the file's
``hparams`` set which option, and how the reference's parameter names map onto ours. The
distiller is built from the input *shapes* and the file's recorded settings through the
registry, exactly as training builds it from a dry run, its parameters are loaded, one step
is run in float64 and ``loss``, every ``grads`` and ``state_after`` entry, the declared
outputs, ``extra.step2`` and the declared variants (each at its own settings) are compared,
at min(file tolerance, 1e-10) when the file is float64 (an entry may state why its reference
cannot reach that). Nothing is skipped silently: a part of the file the method does not
produce, a part the method produces that the file lacks, a declared variant or output
missing, a key the adapter does not compare (other than a declared diagnostic) and a
recorded setting the method cannot take are each a failure naming it. One ``PASS``/``FAIL``
line per file; the exit status is non-zero if any file fails.

A method that draws random numbers (MGD's masks, FCFD's paths) draws them from torch's global
generator; a file then records ``rng_state`` (``torch.get_rng_state()`` taken right before the
reference's loss call, which drew the same numbers in the same order), set again right before
the method's forward, so the comparison is exact. The run leaves the caller's generator as it was.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from fnmatch import fnmatchcase
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from distillers.base import ShapeSpec, build_distiller
from distillers.reference import GOLDEN, GoldenEntry
from core.taps import GROUPS


# The entries live beside their methods (distillers/reference.py: register_golden); importing the
# method modules, the retrieval functions and DOT registers them all.
import distillers.methods  # noqa: E402,F401
import distillers.optim  # noqa: E402,F401
import distillers.retrieval  # noqa: E402,F401

#: method field of a golden file -> how to reproduce it (the registry of distillers.reference).
TABLE = GOLDEN


# ---------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: bool
    max_err: float
    problems: List[str]


class _Comparer:
    def __init__(self, tol: float):
        self.tol = tol
        self.max_err = 0.0
        self.problems: List[str] = []

    def check(self, what: str, mine: Any, ref: Any) -> None:
        if isinstance(ref, (list, tuple)):
            if not isinstance(mine, (list, tuple)) or len(mine) != len(ref):
                self.problems.append(f"{what}: expected a list of {len(ref)}")
                return
            for i, (m, r) in enumerate(zip(mine, ref)):
                self.check(f"{what}[{i}]", m, r)
            return
        if mine is None:
            self.problems.append(f"{what}: missing (no value / no gradient)")
            return
        mine = mine.detach()
        if mine.numel() != ref.numel():
            self.problems.append(f"{what}: shape {tuple(mine.shape)} vs reference {tuple(ref.shape)}")
            return
        mine = mine.reshape(ref.shape)
        if not ref.is_floating_point():
            if not torch.equal(mine.to(ref.dtype), ref):
                self.problems.append(f"{what}: integer values differ")
            return
        err = (mine.to(ref.dtype) - ref).abs().max().item() if ref.numel() else 0.0
        self.max_err = max(self.max_err, err)
        if not torch.allclose(mine.to(ref.dtype), ref, rtol=self.tol, atol=self.tol):
            self.problems.append(f"{what}: max abs error {err:.3e} > tolerance {self.tol:g}")


def _rename(name: str, renames: Sequence[Tuple[str, str]]) -> str:
    for ref_prefix, ours in renames:
        if name.startswith(ref_prefix):
            return ours + name[len(ref_prefix):]
    return name


def _spread(taps: str, value) -> List[Tuple[str, Any]]:
    """``"stem+stages"`` and a list input -> [(tap, element or sub-list)], in order."""
    names = taps.split("+")
    if len(names) == 1:
        return [(taps, value)]
    rest = len(value) - (len(names) - 1)  # elements left to the group
    pairs, i = [], 0
    for name in names:
        if name in GROUPS:
            pairs.append((name, list(value[i:i + rest])))
            i += rest
        else:
            pairs.append((name, value[i]))
            i += 1
    return pairs


def _shape_of(value):
    if isinstance(value, (list, tuple)):
        return [_shape_of(v) for v in value]
    if isinstance(value, nn.Module):  # a module tap: its weight's shape, as FeatureTaps.shapes gives
        return tuple(value.weight.shape)
    return tuple(value.shape[1:])


def _module_attr(tap: str) -> Tuple[str, str]:
    """``"classifier.weight"`` -> ("classifier", "weight"); ("", "") for a feature tap."""
    owner, _, attr = tap.rpartition(".")
    return (owner, attr) if owner and attr in ("weight", "bias") else ("", "")


def _module_of(tensors: Mapping[str, torch.Tensor], trainable: bool) -> nn.Module:
    """A tapped module rebuilt from its weight (and bias): an ``nn.Linear`` for a 2-D weight
    (classifiers are called), an ``nn.Conv2d`` with stride 1 and 'same' padding for a 4-D one (a
    stage stand-in that FCFD calls), otherwise a module that only carries the tensors (read, not called)."""
    weight = tensors["weight"]
    if weight.dim() in (2, 4):
        if weight.dim() == 2:
            module = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors)
        else:
            module = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]),
                               padding=tuple(k // 2 for k in weight.shape[2:]), bias="bias" in tensors)
        module = module.to(weight.dtype)
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(module, name).copy_(value)
    else:
        module = nn.Module()
        for name, value in tensors.items():
            setattr(module, name, nn.Parameter(value.clone()))
    return module.requires_grad_(trainable)


def record_inputs(entry: "GoldenEntry", s: Mapping[str, Any], t: Mapping[str, Any],
                  batch: Mapping[str, Any]) -> Dict[str, Any]:
    """The golden-format ``inputs`` of a step's tapped features (float64, detached): the inverse
    of :meth:`GoldenCase.features`, for tests that check a training step against this adapter.

    A role ``side:tap`` reads ``batch``, the student's or teacher's taps, a module tap's tensor
    (``classifier.weight``), a second view's taps (``strong_s``/``strong_t``) or several taps
    joined by ``+`` (``_`` is an empty placeholder)."""
    def double(value):
        return [v.detach().double() for v in value] if isinstance(value, list) else value.detach().double()

    inputs: Dict[str, Any] = {}
    for name, role in entry.inputs.items():
        side, _, taps = role.partition(":")
        if side == "batch":
            inputs[name] = batch[taps]
        elif side.startswith("strong_"):  # the second view's taps, as the trainer passes them
            inputs[name] = double(batch["strong"][side[len("strong_"):]][taps])
        elif _module_attr(taps)[0]:  # a module tap's tensor (a classifier's weight, OFD's BatchNorm biases)
            owner, attr = _module_attr(taps)
            module = (s if side == "s" else t)[owner]
            values = [getattr(m, attr) for m in (module if isinstance(module, list) else [module])]
            inputs[name] = double(values if isinstance(module, list) else values[0])
        else:
            feats = s if side == "s" else t
            parts: List[Any] = []
            for tap in taps.split("+"):
                value = torch.zeros(1) if tap == "_" else feats[tap]
                parts += value if isinstance(value, list) else [value]
            inputs[name] = double(parts if ("+" in taps or isinstance(feats.get(taps), list)) else parts[0])
    return inputs


#: Keys of a golden file (shared/golden/README.md "File format"): required, then bookkeeping.
REQUIRED = ("method", "reference", "hparams", "inputs", "params", "trainable", "loss", "grads", "state_after",
            "extra", "tolerance")
BOOKKEEPING = ("dtype", "split", "seed", "torch_version", "notes")
#: What a file of a method that draws random numbers adds: the generator's state before the loss call.
RANDOM_STATE = "rng_state"
#: What ``extra.step2`` may hold (a second call continuing from ``state_after``).
STEP2_KEYS = frozenset({"inputs", "loss", "grads", "state_after", "sgd", "rng_state"})
#: What an ``extra`` variant may hold besides the entry's outputs and diagnostics.
VARIANT_KEYS = frozenset({"loss", "grads", "inputs", "hparams", "params", "state_after"})


def _same(a: Any, b: Any) -> bool:
    """Equality of recorded hparams values (a list equals a tuple, 2 equals 2.0, True is not 1)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def entry_options(entry: GoldenEntry, hparams: Mapping[str, Any], problems: List[str],
                  fixed: Optional[Mapping[str, Any]] = None, own: Optional[Mapping[str, Any]] = None,
                  label: str = "") -> Dict[str, Any]:
    """The options a file's method is built with: the entry's fixed options, then every option the
    file's ``hparams`` record (``hparam_options``). ``fixed``: a variant's own options (they win over
    the file's top-level hparams, which describe the main setting, but not over the variant's ``own``
    hparams). Every hparams key must be known to the entry; a recorded value contradicting a
    built-in one (``hparam_fixed``) or a variant's fixed option is a problem, never overridden."""
    options = dict(entry.options)
    fixed, own = dict(fixed or {}), dict(own or {})
    for opt, key in entry.hparam_options.items():
        if opt in fixed:
            if key in own and not _same(own[key], fixed[opt]):
                problems.append(f"{label}hparams {key}={own[key]!r} contradicts the variant's {opt}={fixed[opt]!r}")
        elif key in hparams:
            options[opt] = hparams[key]
        else:
            problems.append(f"{label}hparams: no '{key}' (sets option {opt})")
    options.update(fixed)
    for key, value in entry.hparam_fixed.items():
        if key in hparams and not _same(hparams[key], value):
            problems.append(f"{label}hparams {key}={hparams[key]!r}: the method has {value!r} built in")
    for key in entry.spec_from_hparams.values():
        if key not in hparams:
            problems.append(f"{label}hparams: no '{key}' (sizes the method's parts)")
    known = {*entry.hparam_options.values(), *entry.spec_from_hparams.values(), *entry.hparam_fixed,
             *entry.hparam_info}
    for key in hparams:
        if key not in known:
            problems.append(f"{label}hparams {key}={hparams[key]!r}: not known to the entry (map, fix or "
                            "document it)")
    return options


class GoldenCase:
    """One golden file reproduced through the registry.

    ``complete`` (default: whether the record has every section of the file format) makes every
    part count: a file's part the method does not produce, a part the method produces that the file
    lacks, a declared output or variant missing, an unknown key, each is a problem. An in-memory
    record without those sections (the training-step tests' loss-only records) is compared on what
    it holds; :func:`check_file` always requires a complete file."""

    def __init__(self, record: Mapping[str, Any], complete: Optional[bool] = None):
        self.record = record
        method = record.get("method")
        if method not in TABLE:
            raise KeyError(f"no mapping for method '{method}' (mapped: {', '.join(sorted(TABLE))})")
        self.entry = TABLE[method]
        self.complete = all(k in record for k in REQUIRED) if complete is None else complete
        self.file_tol = float(record["tolerance"])
        # both sides in float64: the entry's tolerance (1e-10 unless it states why not) caps the file's
        self.tol = min(self.file_tol, self.entry.tolerance) if record.get("dtype") == "float64" else self.file_tol

    # construction --------------------------------------------------------
    def build(self, options: Mapping[str, Any], inputs: Optional[Mapping[str, Any]] = None,
              params: Optional[Mapping[str, Any]] = None):
        entry, hp = self.entry, self.record.get("hparams", {})
        inputs = self.record["inputs"] if inputs is None else inputs
        s, t, _ = self.features(inputs)
        spec = ShapeSpec(
            student={k: _shape_of(v) for k, v in s.items()},
            teacher={k: (tuple(v.weight.shape) if isinstance(v, nn.Module) else _shape_of(v))
                     for k, v in t.items()},
            **{f: int(hp[k]) for f, k in entry.spec_from_hparams.items() if k in hp},  # absent: a problem
        )
        distiller = build_distiller(entry.distiller, spec, **options).double()
        params = self.record["params"] if params is None else params
        state = {_rename(k, entry.renames): v for k, v in params.items() if not self._ignored(k)}
        state.update({k: inputs[name] for k, name in entry.state_from_inputs.items()})
        distiller.load_state_dict(state, strict=True)
        return distiller.train()

    def _ignored(self, key: str) -> bool:
        return any(fnmatchcase(key, p) for p in self.entry.ignore_params)

    def _reference_name(self, ours: str) -> str:
        """Our parameter/buffer name -> the reference's (through the file's ``params``)."""
        for key in self.record.get("params", {}):
            if _rename(key, self.entry.renames) == ours:
                return key
        return ours

    def features(self, inputs: Mapping[str, Any]):
        """Split golden inputs into student features (leaves with grad), teacher features, batch."""
        s: Dict[str, Any] = {}
        t: Dict[str, Any] = {}
        batch: Dict[str, Any] = {}
        modules: Dict[Tuple[str, str], Dict[str, Any]] = {}  # (side, tap) -> {attribute: tensor(s)}
        for name, role in self.entry.inputs.items():
            side, _, taps = role.partition(":")
            if side.startswith("strong_") and name not in inputs:
                continue  # a file of the one-view reference setting: the method uses the first view twice
            for tap, value in _spread(taps, inputs[name]):
                if tap == "_":
                    continue
                if side.startswith("strong_"):  # a further view's taps (an ExtraView request), as the trainer gives them
                    view = batch.setdefault("strong", {"s": {}, "t": {}})[side[len("strong_"):]]
                    view[tap] = value.clone().requires_grad_(side == "strong_s")
                elif side == "batch":
                    batch[tap] = value
                elif _module_attr(tap)[0]:
                    owner, attr = _module_attr(tap)
                    modules.setdefault((side, owner), {})[attr] = value
                elif side == "s":
                    s[tap] = ([v.clone().requires_grad_(True) for v in value]
                              if isinstance(value, (list, tuple)) else value.clone().requires_grad_(True))
                else:
                    t[tap] = list(value) if isinstance(value, (list, tuple)) else value
        for (side, owner), tensors in modules.items():
            trainable = side == "s"
            if isinstance(tensors["weight"], (list, tuple)):  # a group: one module per element
                built: Any = [_module_of({k: v[i] for k, v in tensors.items()}, trainable)
                              for i in range(len(tensors["weight"]))]
            else:
                built = _module_of(tensors, trainable)
            (s if trainable else t)[owner] = built
        return s, t, batch

    # checks of the file's own structure -------------------------------------
    def check_keys(self, cmp: "_Comparer") -> None:
        """Every key of a complete file is one the adapter compares or a documented diagnostic."""
        entry, record = self.entry, self.record
        for key in record:
            if key not in REQUIRED and key not in BOOKKEEPING and key != RANDOM_STATE:
                cmp.problems.append(f"{key}: not a key of the golden file format")
        self.check_inputs(record.get("inputs", {}), cmp)
        extra = record.get("extra", {})
        output_keys = set(entry.outputs.values())
        known = output_keys | set(entry.variants) | set(entry.diagnostics) | {"step2"}
        for key in extra:
            if key not in known:
                cmp.problems.append(f"extra.{key}: neither compared by the adapter nor a documented diagnostic")
        for key in entry.variants:
            if not isinstance(extra.get(key), Mapping):
                cmp.problems.append(f"extra.{key}: a variant the entry declares is missing")
        for out_key, extra_key in entry.outputs.items():
            if extra_key not in extra:
                cmp.problems.append(f"extra.{extra_key}: the declared output {out_key} is missing")
        step2 = extra.get("step2")
        if isinstance(step2, Mapping):
            for key in step2:
                if key not in STEP2_KEYS:
                    cmp.problems.append(f"extra.step2.{key}: not compared by the adapter")
            self.check_inputs(step2.get("inputs", {}), cmp, "extra.step2.")

    def check_inputs(self, inputs: Mapping[str, Any], cmp: "_Comparer", label: str = "") -> None:
        for name in inputs:
            if name not in self.entry.inputs:
                cmp.problems.append(f"{label}inputs.{name}: not an input of the entry")

    # one step --------------------------------------------------------------
    def step(self, distiller, inputs, ref: Mapping[str, Any], cmp: "_Comparer", label: str,
             outputs_from: Optional[Mapping[str, Any]] = None, unchecked: Optional[Mapping[str, str]] = None,
             require_state: bool = True) -> None:
        s, t, batch = self.features(inputs)
        distiller.zero_grad(set_to_none=True)
        if ref.get("rng_state") is not None:  # the generator as the reference's loss call found it
            torch.set_rng_state(ref["rng_state"])
        out = getattr(distiller, self.entry.call)(s, t, batch)
        loss = distiller.total(out)
        cmp.check(f"{label}loss", loss, ref["loss"])
        loss.backward()
        ours = dict(distiller.named_parameters())
        ref_grads, unchecked = ref.get("grads", {}), unchecked or {}
        for key, ref_grad in ref_grads.items():
            if key.startswith("params."):
                name = _rename(key[len("params."):], self.entry.renames)
                if name not in ours:
                    cmp.problems.append(f"{label}grad {key}: the method has no parameter '{name}'")
                elif ours[name].grad is None:
                    cmp.problems.append(f"{label}grad {key}: our '{name}' gets no gradient, the reference's does")
                else:
                    cmp.check(f"{label}grad {key}", ours[name].grad, ref_grad)
            elif key not in self.entry.inputs or self.entry.inputs[key].split(":")[0] not in ("s", "strong_s"):
                cmp.problems.append(f"{label}grad {key}: not a student input of the entry")
            elif key not in inputs:
                cmp.problems.append(f"{label}grad {key}: the input is not given")
            else:
                cmp.check(f"{label}grad {key}", self._input_grad(key, inputs, s, batch), ref_grad)
        if self.complete:  # what the method produces must be in the file
            for name, role in self.entry.inputs.items():
                if role.split(":")[0] in ("s", "strong_s") and name in inputs and name not in ref_grads \
                        and name not in unchecked and self._gets_grad(name, inputs, s, batch):
                    cmp.problems.append(f"{label}grads: no reference gradient for the student input '{name}'")
            for name, param in ours.items():
                key = "params." + self._reference_name(name)
                if param.grad is not None and key not in ref_grads and key not in unchecked:
                    cmp.problems.append(f"{label}grads: no {key}, but our '{name}' gets a gradient")
        state = distiller.state_dict()
        ref_state = ref.get("state_after", {})
        for key, ref_value in ref_state.items():
            if self._ignored(key):
                continue
            name = _rename(key, self.entry.renames)
            if name not in state:
                cmp.problems.append(f"{label}state_after {key}: the method has no buffer '{name}'")
            else:
                cmp.check(f"{label}state_after {key}", state[name], ref_value)
        if self.complete and require_state:  # every buffer of ours is in the file
            params = set(ours) | set(self.entry.state_from_inputs)
            for name in state:
                key = self._reference_name(name)
                if name not in params and key not in ref_state:
                    cmp.problems.append(f"{label}state_after: no '{key}' (our buffer '{name}')")
        for out_key, extra_key in self.entry.outputs.items():
            if outputs_from is not None and extra_key in outputs_from:
                if out_key not in out:
                    cmp.problems.append(f"{label}output {out_key}: the method does not return it")
                else:
                    cmp.check(f"{label}output {out_key}", out[out_key], outputs_from[extra_key])

    def _gets_grad(self, key, inputs, s, batch) -> bool:
        """Whether our step gave the student input ``key`` a gradient (any element of a list)."""
        grad = self._input_grad(key, inputs, s, batch)
        return any(g is not None for g in grad) if isinstance(grad, list) else grad is not None

    def _input_grad(self, key: str, inputs: Mapping[str, Any], s: Dict[str, Any], batch: Mapping[str, Any]):
        side, _, taps = self.entry.inputs[key].partition(":")
        feats = batch["strong"]["s"] if side == "strong_s" else s  # a second view's own leaves
        owner, attr = _module_attr(taps)
        if owner:
            value = feats[owner]
            return [getattr(m, attr).grad for m in value] if isinstance(value, list) else getattr(value, attr).grad
        if "+" not in taps:
            value = feats[taps]
            return [v.grad for v in value] if isinstance(value, list) else value.grad
        grads: List[Any] = []
        for tap, value in _spread(taps, inputs[key]):
            if tap == "_":
                grads.append(torch.zeros_like(value))
            elif isinstance(feats[tap], list):
                grads.extend(v.grad for v in feats[tap])
            else:
                grads.append(feats[tap].grad)
        return grads

    def check_trainable(self, distiller, cmp: "_Comparer") -> None:
        """The file's ``trainable`` names are exactly our trainable parameters."""
        listed = {_rename(k, self.entry.renames) for k in self.record["trainable"] if not self._ignored(k)}
        ours = {n for n, p in distiller.named_parameters() if p.requires_grad}
        for name in sorted(listed - ours):
            cmp.problems.append(f"trainable: '{self._reference_name(name)}' is not a trainable parameter of ours")
        for name in sorted(ours - listed):
            cmp.problems.append(f"trainable: our '{name}' is trainable, the file does not list it")

    def function_step(self, cmp: "_Comparer") -> None:
        """A ``function`` entry: call it on the inputs and compare its result (and gradients)."""
        fn, ref = _resolve(self.entry.function), self.record
        kwargs, leaves = {}, {}
        for name, role in self.entry.inputs.items():
            value = ref["inputs"][name].clone()
            if name in ref.get("grads", {}):
                value.requires_grad_(True)
                leaves[name] = value
            kwargs[role.split(":", 1)[1]] = value
        for name in ref.get("grads", {}):
            if name not in self.entry.inputs:
                cmp.problems.append(f"grad {name}: not an input of the entry")
        options = entry_options(self.entry, ref.get("hparams", {}), cmp.problems)
        result = fn(**kwargs, **options)
        parts = list(result) if isinstance(result, (tuple, list)) else [result]
        cmp.check("loss", parts[0], ref["loss"])
        for position, extra_key in self.entry.outputs.items():
            if extra_key in ref.get("extra", {}):
                cmp.check(f"output {position}", parts[int(position)], ref["extra"][extra_key])
        if leaves:
            parts[0].sum().backward()
            for name, value in leaves.items():
                cmp.check(f"grad {name}", value.grad, ref["grads"][name])

    def variant_step(self, key: str, variant: Mapping[str, Any], cmp: "_Comparer") -> None:
        ref = self.record.get("extra", {}).get(key)
        if not isinstance(ref, Mapping):  # a complete file lacking it failed in check_keys
            return
        label = f"extra.{key} "
        inputs = dict(self.record["inputs"])
        inputs.update(ref.get("inputs", {}))
        allowed = set(VARIANT_KEYS) | set(self.entry.outputs.values()) | set(self.entry.diagnostics)
        if "inputs_from" in variant:
            path, keywords = variant["inputs_from"]
            fn = _resolve(path)
            wanted = inspect.signature(fn).parameters
            produced = fn(**{k: v for k, v in inputs.items() if k in wanted}, **keywords)
            for name, value in produced.items():
                allowed.add(name)
                if name not in ref:
                    cmp.problems.append(f"{label}{name}: missing")
                    continue
                cmp.check(f"{label}{name}", value, ref[name])
                inputs[name] = value
        if self.complete:
            for name in ref:
                if name not in allowed and not name.startswith("grad_"):
                    cmp.problems.append(f"{label}{name}: not compared by the adapter")
            self.check_inputs(ref.get("inputs", {}), cmp, f"extra.{key}.")
        grads = dict(ref.get("grads", {}))
        grads.update({k[len("grad_"):]: v for k, v in ref.items() if k.startswith("grad_")})
        hparams = {**self.record.get("hparams", {}), **ref.get("hparams", {})}
        options = entry_options(self.entry, hparams, cmp.problems, fixed=variant.get("options"),
                                own=ref.get("hparams", {}), label=label)
        distiller = self.build(options, inputs, ref.get("params"))
        for name, value in variant.get("attributes", {}).items():
            if not hasattr(type(distiller), name):
                raise AttributeError(f"variant '{key}': {type(distiller).__name__} has no attribute '{name}'")
            setattr(distiller, name, value)
        step_ref = {"loss": ref["loss"], "grads": grads, "rng_state": ref.get("rng_state")}
        if "state_after" in ref:
            step_ref["state_after"] = ref["state_after"]
        self.step(distiller, inputs, step_ref, cmp, label, outputs_from=ref, unchecked=variant.get("unchecked"),
                  require_state="state_after" in ref)

    def run(self) -> Outcome:
        cmp = _Comparer(self.tol)
        if self.complete:
            self.check_keys(cmp)
        with torch.autograd.set_grad_enabled(True), torch.random.fork_rng(devices=[]):
            if self.entry.function:
                self.function_step(cmp)
            else:
                options = entry_options(self.entry, self.record.get("hparams", {}), cmp.problems)
                distiller = self.build(options)
                if self.complete:
                    self.check_trainable(distiller, cmp)
                self.step(distiller, self.record["inputs"], self.record, cmp, "",
                          outputs_from=self.record.get("extra", {}))
                step2 = self.record.get("extra", {}).get("step2")
                if step2:
                    if "sgd" in step2:  # the reference's optimiser stepped the method's parameters in between
                        torch.optim.SGD(distiller.parameters(), **step2["sgd"]).step()
                    self.step(distiller, step2["inputs"], step2, cmp, "step2 ")
            for key, variant in self.entry.variants.items():
                self.variant_step(key, variant, cmp)
        return Outcome(not cmp.problems, cmp.max_err, cmp.problems)


def _resolve(path: str):
    """``"package.module:attribute"`` -> the attribute."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_file(path: str) -> Outcome:
    """One golden file, complete: every section of the format must be there (see :class:`GoldenCase`)."""
    try:
        record = torch.load(path, weights_only=True)
    except Exception as exc:  # unreadable file: report, don't crash the batch
        return Outcome(False, float("nan"), [f"cannot load: {exc}"])
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return Outcome(False, float("nan"), [f"not a complete golden file: no {', '.join(missing)}"])
    try:
        return GoldenCase(record, complete=True).run()
    except Exception as exc:
        return Outcome(False, float("nan"), [f"{type(exc).__name__}: {exc}"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distillers.golden",
        description="Reproduce golden reference losses, gradients and buffers through the registry.")
    parser.add_argument("files", nargs="+", help="golden .pt files (see shared/golden/README.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every mismatch")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        outcome = check_file(path)
        status = "PASS" if outcome.ok else "FAIL"
        line = f"{status} {path} max_err={outcome.max_err:.3e}"
        if not outcome.ok:
            failed += 1
            shown = outcome.problems if args.verbose else outcome.problems[:3]
            line += " | " + "; ".join(shown)
            if len(outcome.problems) > len(shown):
                line += f" (+{len(outcome.problems) - len(shown)} more, -v lists them)"
        print(line, flush=True)
    print(f"{len(args.files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
