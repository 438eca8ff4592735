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

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from distillers.base import PREDICTION, BatchNeeds, Distiller
from engine.config import ConfigError

#: A task's own term: (prediction, batch) -> scalar loss.
TaskLoss = Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]


class Objective:
    """``objective(s, t, batch) -> (total, prediction, {term: weighted value})``.

    ``distillers`` are (weight, distiller) pairs in call order; ``task_terms`` maps a term
    name to (weight, loss of the prediction). The trainer only calls this, logs the terms
    and steps.
    """

    def __init__(self, distillers: Sequence[Tuple[float, Distiller]] = (),
                 task_terms: Optional[Mapping[str, Tuple[float, TaskLoss]]] = None):
        self.distillers: List[Tuple[float, Distiller]] = [(float(w), d) for w, d in distillers if w]
        self.task_terms: Dict[str, Tuple[float, TaskLoss]] = {
            name: (float(w), fn) for name, (w, fn) in (task_terms or {}).items() if w}
        if not self.distillers and not self.task_terms:
            raise ConfigError("every loss weight is 0: nothing to train (set -r/--gamma, -a/--alpha or -b/--beta)")

    @property
    def student_taps(self) -> List[str]:
        """Student taps every term reads (the prediction included)."""
        names = ["logits"] + [n for _, d in self.distillers for n in d.student_taps]
        return list(dict.fromkeys(names))

    @property
    def teacher_taps(self) -> List[str]:
        return list(dict.fromkeys(n for _, d in self.distillers for n in d.teacher_taps))

    def batch_needs(self) -> BatchNeeds:
        """What the data path must serve for every term together (indices, contrast samples)."""
        needs = BatchNeeds()
        for _, distiller in self.distillers:
            needs = needs.merged(distiller.batch_needs())
        return needs

    def __call__(self, s: Dict[str, Any], t: Dict[str, Any], batch: Dict[str, Any]):
        prediction = s["logits"]
        terms: Dict[str, torch.Tensor] = {}
        for weight, distiller in self.distillers:
            out = dict(distiller({**s, "logits": prediction}, t, batch))
            prediction = out.pop(PREDICTION, prediction)
            for name, value in out.items():
                value = weight * value.reshape(()).to(prediction.device)
                terms[name] = terms[name] + value if name in terms else value
        strong = batch.get("strong")  # a second augmented view (BatchNeeds.views): the task's terms see both
        for name, (weight, loss) in self.task_terms.items():
            value = loss(prediction, batch)
            if strong is not None:
                value = value + loss(strong["s"]["logits"], batch)
            terms[name] = weight * value
        # no term (e.g. a main stage whose method acts only in its init stage, with -r 0): a zero with a graph
        total = torch.stack(list(terms.values())).sum() if terms else prediction.sum() * 0
        return total, prediction, terms
