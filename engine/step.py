"""One training step: forward, objective, backward, optimiser.

The student is tapped with forward hooks (:class:`core.taps.FeatureTaps`); the teacher runs
under ``no_grad``, or its stored outputs are read (:class:`engine.teacher_store.StoredTeacher`);
a batch's further views go through the same forward as its first one. The objective gives the
loss and its named terms; mixed precision (:mod:`engine.precision`), a non-finite-loss record
(:mod:`engine.finite_watch`) and, for an optimiser that takes two gradients (DOT), the task's
and the distillation's gradients apart, happen here and nowhere else.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from core.batch import Batch
from distillers import Distiller, FeatureTaps, NotApplicable
from engine.distributed import average_gradients, average_tensor
from engine.errors import ConfigError, TrainingError
from engine.finite_watch import FiniteWatch, NonFiniteLoss
from engine.teacher_store import StoredTeacher


class StepResult(NamedTuple):
    """What a step gives back: the total loss, the student's prediction and the weighted terms."""

    loss: torch.Tensor
    prediction: torch.Tensor
    terms: Dict[str, torch.Tensor]


def split_views(taps: Dict[str, Any], views: int):
    """Taps of one forward over [view 0; view 1; ...] -> one taps dict per view."""
    out = [dict() for _ in range(views)]
    for name, value in taps.items():
        if isinstance(value, torch.Tensor):
            parts = value.chunk(views)
        elif isinstance(value, list):
            chunks = [v.chunk(views) if isinstance(v, torch.Tensor) else (v,) * views for v in value]
            parts = [[c[i] for c in chunks] for i in range(views)]
        else:  # a module tap (a classifier): the same for every view
            parts = [value] * views
        for i in range(views):
            out[i][name] = parts[i]
    return out


class Stepper:
    """The step of a :class:`~engine.assembly.Run`: its taps, the teacher (or its store), the objective."""

    def __init__(self, run):
        self.run = run
        self.model, self.teacher, self.objective, self.method = run.model, run.teacher, run.objective, run.method
        self.precision, self.device, self.info = run.precision, run.info.device, run.info
        # reading a device flag costs nothing on the CPU; on a GPU it waits for the device
        self.watch = FiniteWatch(every=1 if self.device.type == "cpu" else 25)
        self.s_taps = self.t_taps = None
        self.stored_teacher = None
        self.compiled_once = False
        self.gradients_checked = False
        self.epoch = 1  # the loop's current epoch, for a method's warm-up (``batch["epoch"]``)

    # ------------------------------------------------------------------ stages
    def enter(self, stage=None) -> None:
        """Tap the student and the teacher for ``stage`` (an initialisation stage, or None: the main one)."""
        s_names = ["logits"] + list(stage.student_taps) if stage else self.objective.student_taps
        t_names = list(stage.teacher_taps) if stage else self.objective.teacher_taps
        forward = self.model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=ids)
        self.ddp = forward
        self.close()
        if self.run.settings.compile:  # compiled with the hooks in place; failures surface at the first step
            forward = torch.compile(forward)
        self.s_taps = FeatureTaps(self.model, s_names, forward=forward)
        self.t_taps = FeatureTaps(self.teacher, t_names, stop_early=True) if t_names else None
        store = self.run.store
        self.stored_teacher = StoredTeacher(lambda x: self.t_taps(x), store, self.objective.teacher_taps,
                                            log=self.run.log) if store is not None and stage is None else None

    def close(self) -> None:
        for taps in (self.s_taps, self.t_taps):
            if taps is not None:
                taps.close()

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch, stage=None) -> StepResult:
        """One forward of the student (every view of the batch at once) and the teacher, then the loss."""
        names = list(batch.views) if stage is None else []
        x = torch.cat([batch.images] + [batch.views[n] for n in names]) if names else batch.images
        x = self.precision.prepare_input(x)
        with self.precision.autocast():
            s = self._student(x)
            t = {}
            if self.stored_teacher is not None and self.stored_teacher.active and batch.keys is not None:
                with torch.autocast(self.device.type, enabled=False):  # stored outputs are float32 outputs
                    t = self.stored_teacher(x, *batch.keys)
            elif self.t_taps is not None:
                with torch.no_grad():
                    t = self.t_taps(x)
            inputs = {**batch.named_fields(), "epoch": self.epoch}
            if names:
                s_views, t_views = split_views(s, 1 + len(names)), split_views(t, 1 + len(names))
                s, t = s_views[0], t_views[0]
                for i, name in enumerate(names, start=1):
                    inputs[name] = {"s": s_views[i], "t": t_views[i]}
                inputs["views"] = tuple(names)
            try:
                if stage is not None:
                    terms = self.method.init_forward(s, t, inputs)
                    return StepResult(Distiller.total(terms), s["logits"], terms)
                return StepResult(*self.objective(s, t, inputs))
            except NotApplicable as err:  # what the shapes could not tell, said as a build-time refusal is
                extra = self.run.spec.extra
                raise ConfigError(f"--distill {self.run.settings.method_name} with teacher {extra.get('teacher_arch')} "
                                  f"and student {extra.get('student_arch')}: {err}") from None

    def _student(self, x: torch.Tensor) -> Dict[str, Any]:
        if not self.run.settings.compile or self.compiled_once:
            return self.s_taps(x)
        try:  # the first compiled forward compiles: say in one line when a model cannot be
            taps = self.s_taps(x)
        except Exception as err:  # noqa: BLE001 - torch.compile raises many kinds
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"--compile: torch.compile cannot compile {getattr(self.model, 'arch', 'the student')} "
                              f"({type(err).__name__}: {first}); run without --compile") from None
        self.compiled_once = True
        return taps

    # ------------------------------------------------------------------ the step
    def step(self, batch: Batch, optimizer, stage=None, where: str = "") -> StepResult:
        """Forward, a finiteness record, backward, the optimiser step (``batch`` on the run's device)."""
        two = stage is None and self.run.two_gradients  # DOT: task and distillation gradients apart
        with self.ddp.no_sync() if two and self.info.distributed else contextlib.nullcontext():
            result = self.forward(batch, stage)
            self.watch.record(result.loss, result.terms, where)
            if self.watch.due():
                self.check_finite()
            if two:
                self._two_gradient_step(result.terms, optimizer)
                self._follow()
                return result
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward(result.loss)
        if stage is None and not self.gradients_checked:
            self._warn_untrained_parameters()
        if self.method is not None:
            average_gradients([p for p in self.method.parameters() if p.requires_grad])
        self.precision.step(optimizer, self.run.settings.clip_grad)
        self._follow()
        return result

    def _follow(self) -> None:
        """After an optimiser step: the weights' moving average (``--ema``, engine/ema.py) follows them."""
        if self.run.ema is not None:
            self.run.ema.update(self.model)

    def _two_gradient_step(self, terms: Dict[str, torch.Tensor], optimizer) -> None:
        """DOT: the gradients of the task's own terms and of the distillation terms, each averaged
        over ranks, handed to the optimiser separately (DDP's own reduction is off for this step)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        own = set(self.objective.task_terms)
        parts = {"task": [v for k, v in terms.items() if k in own], "distill": [v for k, v in terms.items() if k not in own]}
        grads = {}
        for name, values in parts.items():
            if not values:
                grads[name] = [None] * len(params)
                continue
            total = torch.stack(values).sum()
            got = torch.autograd.grad(total, params, retain_graph=name == "task", allow_unused=True)
            grads[name] = [average_tensor(g) if g is not None else None for g in got]
        optimizer.step_with(grads["task"], grads["distill"])

    def check_finite(self) -> None:
        """Read the non-finite-loss record (a host sync): stop, naming the first bad step, before it
        reaches a checkpoint; the last checkpoint stays the last finite state."""
        try:
            self.watch.check()
        except NonFiniteLoss as bad:
            values = ", ".join(f"{k} {v:.4g}" for k, v in bad.terms.items())
            saved = os.path.join(self.run.run_dir, "latest.pth")
            kept = (f"'{saved}' (the last finite state) is kept" if os.path.isfile(saved)
                    else "no checkpoint was written yet")
            when = "before the bad step" if not bad.steps_after else f"{bad.steps_after} step(s) later, at the check"
            raise TrainingError(f"the loss is {bad.loss} at {bad.where} (terms: {values}); stopped {when}, "
                                f"{kept}. Lower --learning_rate or check the data and the loss weights") from None

    def _warn_untrained_parameters(self) -> None:
        """After the first backward: say which student parameters no loss term reaches (e.g. an
        embedding head when only stage features are distilled): they would only decay."""
        self.gradients_checked = True
        missed = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        if missed:
            warnings.warn(f"no loss term reaches {len(missed)} student parameter(s) ({', '.join(missed[:4])}"
                          f"{', ...' if len(missed) > 4 else ''}): they get no gradient and only decay under "
                          f"weight decay. Loss = {self.objective.describe()}; add a term that reads them "
                          "(e.g. the task's own loss or, in metric learning, --triplet_ratio 1)")

