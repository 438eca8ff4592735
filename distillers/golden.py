"""Check the project's distillers against reference numbers (``shared/golden/*.pt``).

Usage::

    python -m distillers.golden ../shared/golden/kd.pt [more files ...]

Each file names its ``method``; its entry, declared beside the method with
:func:`distillers.reference.register_golden` (:data:`TABLE` holds them all), says which
registered distiller and options reproduce it, which tap each input stands for, and
how the reference's parameter names map onto ours. The distiller is built from the
input *shapes* through the registry, exactly as training builds it from a dry run,
its parameters are loaded, one step is run in float64 and ``loss``, ``grads``,
``state_after`` and ``extra.step2`` are compared at the file's tolerance. One
``PASS``/``FAIL`` line per file; the exit status is non-zero if any file fails.

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


class GoldenCase:
    """One golden file reproduced through the registry."""

    def __init__(self, record: Mapping[str, Any]):
        self.record = record
        method = record.get("method")
        if method not in TABLE:
            raise KeyError(f"no mapping for method '{method}' (mapped: {', '.join(sorted(TABLE))})")
        self.entry = TABLE[method]
        self.tol = float(record["tolerance"])

    # construction --------------------------------------------------------
    def build(self, overrides: Optional[Mapping[str, Any]] = None):
        entry, hp = self.entry, self.record.get("hparams", {})
        s, t, _ = self.features(self.record["inputs"])
        spec = ShapeSpec(
            student={k: _shape_of(v) for k, v in s.items()},
            teacher={k: (tuple(v.weight.shape) if isinstance(v, nn.Module) else _shape_of(v))
                     for k, v in t.items()},
            **{f: int(hp[k]) for f, k in entry.spec_from_hparams.items()},
        )
        options = dict(entry.options)
        options.update({opt: hp[key] for opt, key in entry.hparam_options.items()})
        options.update(overrides or {})
        distiller = build_distiller(entry.distiller, spec, **options).double()
        params = {_rename(k, entry.renames): v for k, v in self.record["params"].items()
                  if not any(fnmatchcase(k, p) for p in entry.ignore_params)}
        params.update({k: self.record["inputs"][name] for k, name in entry.state_from_inputs.items()})
        distiller.load_state_dict(params, strict=True)
        return distiller.train()

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
                if side.startswith("strong_"):  # a second view's taps (BatchNeeds.views), as the trainer gives them
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

    # one step --------------------------------------------------------------
    def step(self, distiller, inputs, ref: Mapping[str, Any], cmp: _Comparer, label: str) -> None:
        s, t, batch = self.features(inputs)
        distiller.zero_grad(set_to_none=True)
        if ref.get("rng_state") is not None:  # the generator as the reference's loss call found it
            torch.set_rng_state(ref["rng_state"])
        out = getattr(distiller, self.entry.call)(s, t, batch)
        loss = distiller.total(out)
        cmp.check(f"{label}loss", loss, ref["loss"])
        loss.backward()
        ours = dict(distiller.named_parameters())
        for key, ref_grad in ref.get("grads", {}).items():
            if key.startswith("params."):
                name = _rename(key[len("params."):], self.entry.renames)
                param = ours.get(name)
                cmp.check(f"{label}grad {key}", None if param is None else param.grad, ref_grad)
            else:
                cmp.check(f"{label}grad {key}", self._input_grad(key, inputs, s), ref_grad)
        state = distiller.state_dict()
        for key, ref_value in ref.get("state_after", {}).items():
            if any(fnmatchcase(key, p) for p in self.entry.ignore_params):
                continue
            cmp.check(f"{label}state_after {key}", state.get(_rename(key, self.entry.renames)), ref_value)
        for out_key, extra_key in self.entry.outputs.items():
            if extra_key in ref.get("extra", {}):
                cmp.check(f"{label}output {out_key}", out.get(out_key), ref["extra"][extra_key])

    def _input_grad(self, key: str, inputs: Mapping[str, Any], s: Dict[str, Any]):
        taps = self.entry.inputs[key].split(":", 1)[1]
        owner, attr = _module_attr(taps)
        if owner:
            value = s[owner]
            return [getattr(m, attr).grad for m in value] if isinstance(value, list) else getattr(value, attr).grad
        if "+" not in taps:
            value = s[taps]
            return [v.grad for v in value] if isinstance(value, list) else value.grad
        grads: List[Any] = []
        for tap, value in _spread(taps, inputs[key]):
            if tap == "_":
                grads.append(torch.zeros_like(value))
            elif isinstance(s[tap], list):
                grads.extend(v.grad for v in s[tap])
            else:
                grads.append(s[tap].grad)
        return grads

    def function_step(self, cmp: _Comparer) -> None:
        """A ``function`` entry: call it on the inputs and compare its result (and gradients)."""
        fn, ref = _resolve(self.entry.function), self.record
        kwargs, leaves = {}, {}
        for name, role in self.entry.inputs.items():
            value = ref["inputs"][name].clone()
            if name in ref.get("grads", {}):
                value.requires_grad_(True)
                leaves[name] = value
            kwargs[role.split(":", 1)[1]] = value
        hp = ref.get("hparams", {})
        options = {**self.entry.options, **{opt: hp[key] for opt, key in self.entry.hparam_options.items()}}
        result = fn(**kwargs, **options)
        parts = list(result) if isinstance(result, (tuple, list)) else [result]
        cmp.check("loss", parts[0], ref["loss"])
        for position, extra_key in self.entry.outputs.items():
            cmp.check(f"output {position}", parts[int(position)], ref.get("extra", {}).get(extra_key))
        if leaves:
            parts[0].sum().backward()
            for name, value in leaves.items():
                cmp.check(f"grad {name}", value.grad, ref["grads"][name])

    def variant_step(self, key: str, variant: Mapping[str, Any], cmp: _Comparer) -> None:
        ref = self.record.get("extra", {}).get(key)
        if not isinstance(ref, Mapping):  # like step2: checked where the file has it
            return
        inputs = dict(self.record["inputs"])
        label = f"extra.{key} "
        if "inputs_from" in variant:
            path, keywords = variant["inputs_from"]
            fn = _resolve(path)
            wanted = inspect.signature(fn).parameters
            produced = fn(**{k: v for k, v in inputs.items() if k in wanted}, **keywords)
            for name, value in produced.items():
                cmp.check(f"{label}{name}", value, ref[name])
                inputs[name] = value
        grads = dict(ref.get("grads", {}))
        grads.update({k[len("grad_"):]: v for k, v in ref.items() if k.startswith("grad_")})
        distiller = self.build(variant.get("options"))
        self.step(distiller, inputs, {"loss": ref["loss"], "grads": grads, "rng_state": ref.get("rng_state")},
                  cmp, label)

    def run(self) -> Outcome:
        cmp = _Comparer(self.tol)
        with torch.autograd.set_grad_enabled(True), torch.random.fork_rng(devices=[]):
            if self.entry.function:
                self.function_step(cmp)
            else:
                distiller = self.build()
                self.step(distiller, self.record["inputs"], self.record, cmp, "")
                step2 = self.record.get("extra", {}).get("step2")
                if step2:
                    if "sgd" in step2:  # the reference's optimiser stepped the method's parameters in between
                        torch.optim.SGD(distiller.parameters(), **step2["sgd"]).step()
                    self.step(distiller, step2["inputs"], {**step2, "extra": {}}, cmp, "step2 ")
            for key, variant in self.entry.variants.items():
                self.variant_step(key, variant, cmp)
        return Outcome(not cmp.problems, cmp.max_err, cmp.problems)


def _resolve(path: str):
    """``"package.module:attribute"`` -> the attribute."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_file(path: str) -> Outcome:
    try:
        record = torch.load(path, weights_only=True)
    except Exception as exc:  # unreadable file: report, don't crash the batch
        return Outcome(False, float("nan"), [f"cannot load: {exc}"])
    try:
        return GoldenCase(record).run()
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
