"""The one loss of a run, built once: named, weighted terms.

A run minimises ``gamma * task term + beta * method terms + alpha * KD``: the task's own
term (cross-entropy for classification; none for metric learning, whose losses are
methods), the chosen method's terms, and the KD term that any method can add. KD is an
ordinary registered method; ``--distill kd`` is KD weighted by its own default weights.
Every piece is a term with a weight; a term whose weight is 0 is not computed.

The method runs first: a method that predicts (SimKD, through the teacher's classifier)
hands its prediction to the terms after it, so KD and cross-entropy see that prediction.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from core.requests import DataRequest, merge_requests
from distillers.base import ADDED_TERM, DISTILLERS, PREDICTION, Distiller, ShapeSpec, build_distiller
from engine.errors import ConfigError, TrainingError
from engine.options import term_options

#: A task's own term: (prediction, batch) -> scalar loss.
TaskLoss = Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]


class Term(NamedTuple):
    """A weighted method of the objective; ``name`` (a part of a composed method) sums its terms
    into one term of that name, else the method's own term names are kept."""

    weight: float
    distiller: Distiller
    name: Optional[str] = None


class Objective:
    """``objective(s, t, batch) -> (total, prediction, {term: weighted value})``.

    ``distillers`` are (weight, distiller) pairs in call order (a composed method, one with
    :meth:`~distillers.base.Distiller.parts`, becomes one :class:`Term` per part, its weight
    times the part's); ``task_terms`` maps a term name to (weight, loss of the prediction).
    The trainer only calls this, logs the terms and steps.
    """

    def __init__(self, distillers: Sequence[Tuple[float, Distiller]] = (),
                 task_terms: Optional[Mapping[str, Tuple[float, TaskLoss]]] = None):
        self.terms: List[Term] = []
        for weight, distiller in distillers:
            parts = distiller.parts() if weight else ()
            if parts:  # a composed method: each part is a term of its own, weighted here
                self.terms += [Term(float(weight * w), part, name) for name, w, part in parts if w]
            elif weight:
                self.terms.append(Term(float(weight), distiller))
        self.task_terms: Dict[str, Tuple[float, TaskLoss]] = {
            name: (float(w), fn) for name, (w, fn) in (task_terms or {}).items() if w}
        if not self.terms and not self.task_terms:
            raise ConfigError("every loss weight is 0: nothing to train (set -r/--gamma, -a/--alpha or -b/--beta)")

    @property
    def student_taps(self) -> List[str]:
        """Student taps every term reads (the prediction included)."""
        names = ["logits"] + [n for term in self.terms for n in term.distiller.student_taps]
        return list(dict.fromkeys(names))

    @property
    def teacher_taps(self) -> List[str]:
        return list(dict.fromkeys(n for term in self.terms for n in term.distiller.teacher_taps))

    def data_requests(self) -> List[DataRequest]:
        """What the data path must serve for every term together (indices, contrast samples, views)."""
        try:
            return merge_requests(r for term in self.terms for r in term.distiller.data_requests())
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def describe(self) -> str:
        """``0.1 * ce + 0.9 * kd(kd_T=4.0, logit_std=False)``: every term with its weight and options
        (a part of a composed method as ``name=method(...)``)."""
        parts = []
        for term in self.terms:
            options = ", ".join(f"{k}={getattr(term.distiller, k)!r}" for k in type(term.distiller).option_names())
            label = f"{term.name}=" if term.name is not None else ""
            parts.append(f"{term.weight:g} * {label}{term.distiller.registry_name}({options})")
        parts += [f"{weight:g} * {name}" for name, (weight, _) in self.task_terms.items()]
        return " + ".join(parts)

    def __call__(self, s: Dict[str, Any], t: Dict[str, Any], batch: Dict[str, Any]):
        prediction = s["logits"]
        terms: Dict[str, torch.Tensor] = {}
        for term in self.terms:
            out = term.distiller({**s, "logits": prediction}, t, batch)
            if not isinstance(out, Mapping):
                raise TrainingError(f"--distill {term.distiller.registry_name}: forward returned a "
                                    f"{type(out).__name__}, not a dict of named loss terms ({{'name': tensor}}); "
                                    "see the README's Adding a distiller")
            out = dict(out)
            prediction = out.pop(PREDICTION, prediction)
            if term.name is not None:  # a part of a composed method: its terms summed under its name
                out = {term.name: Distiller.total(out)}
            for name, value in out.items():
                value = term.weight * value.reshape(()).to(prediction.device)
                terms[name] = terms[name] + value if name in terms else value
        views = [batch[name] for name in batch.get("views", ())]  # further augmented views: the task's terms see each
        for name, (weight, loss) in self.task_terms.items():
            value = loss(prediction, batch)
            for view in views:
                value = value + loss(view["s"]["logits"], batch)
            terms[name] = weight * value
        # no term (e.g. a main stage whose method acts only in its init stage, with -r 0): a zero with a graph
        total = torch.stack(list(terms.values())).sum() if terms else prediction.sum() * 0
        return total, prediction, terms


class Distillation(NamedTuple):
    """A student run's loss: the chosen method, the KD term ``-a`` adds (or None), the weights
    and the objective made of them."""

    method: Distiller
    added_term: Optional[Distiller]
    weights: Dict[str, float]
    objective: Objective


def build_method(name: str, spec: ShapeSpec, options: Dict[str, Any], device) -> Distiller:
    pair = f"--distill {name} with teacher {spec.extra['teacher_arch']} and student {spec.extra['student_arch']}"
    try:
        method = build_distiller(name, spec, **options).to(device)
    except (ValueError, TypeError) as err:  # the method's own message says why
        raise ConfigError(f"{pair}: {err}") from None
    except KeyError as err:  # it read a tap the dry run did not find
        raise ConfigError(f"{pair}: {missing_taps(name, method_taps(name), spec) or err}") from None
    said = missing_taps(name, (tuple(method.student_taps), tuple(method.teacher_taps)), spec)
    if said:
        raise ConfigError(f"{pair}: {said}")
    return method


def method_taps(name: str):
    cls = DISTILLERS.get(name)
    return tuple(cls.student_taps), tuple(cls.teacher_taps)


def missing_taps(name: str, taps, spec: ShapeSpec) -> str:
    """Which standard taps a method reads that a network's dry run did not give, and the taps it has
    (module-path taps such as ``layer3.1.relu:input`` or ``head:output`` are resolved on the model later)."""
    for side, wanted, have in (("student", taps[0], spec.student), ("teacher", taps[1], spec.teacher)):
        missing = [t for t in wanted if ":" not in t and "." not in t and t not in have]
        if missing and have:
            return (f"{name} reads the {side}'s tap(s) {', '.join(missing)}, which the {side} does not have; its "
                    f"taps: {', '.join(sorted(have))}")
    return ""


def build_distillation(args, task, spec: ShapeSpec, device) -> Distillation:
    """The method with its options, the weights (command line, else the method's reference
    values), the KD term when ``alpha`` is not 0, and the task's own terms: one objective."""
    cls = DISTILLERS.get(args.distill)
    weights = dict(cls.default_weights)
    weights.update({k: getattr(args, k) for k in ("gamma", "alpha", "beta") if getattr(args, k) is not None})
    task.check_weights(weights)
    mine, theirs = term_options(args, args.distill, ADDED_TERM if weights["alpha"] else None)
    method = build_method(args.distill, spec, mine, device)
    added = build_method(ADDED_TERM, spec, theirs, device) if weights["alpha"] else None  # -a: the KD term
    objective = Objective([(weights["beta"], method), (weights["alpha"], added)], task.own_terms(weights))
    if method.init_stage() is not None and not method.student_taps and weights["beta"]:
        warnings.warn(f"--distill {args.distill} has no main-stage loss: -b {weights['beta']} has no effect "
                      "(its loss acts in the initialisation stage)")
    return Distillation(method, added, weights, objective)
