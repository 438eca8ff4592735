"""The one training loop, for teachers and students, on one process or many.

A teacher run is a student run without a teacher and without a distiller. A
student step taps the student (and, under ``no_grad``, the teacher) with forward
hooks and minimises the run's :class:`~engine.objective.Objective`
(``gamma * CE + alpha * KD + beta * method``). Initialisation stages (AB, FT, FSP)
run first through the same epoch loop. What the run is made of is built by
:mod:`engine.build`; its checkpoints are taken and continued by :mod:`engine.resume`.

Nothing is lost and nothing is trained twice: SIGINT and SIGTERM are deferred to the
next safe point (:mod:`engine.interrupts`): after an optimizer step, or after an epoch's
evaluation and checkpoint. There ``latest.pth`` is written, holding every rank's RNG
state, the per-rank buffers that differ from rank 0's and the epoch's running train
metrics, and the run stops. ``--resume`` continues from it bit for bit on CPU, on one
process or K (the same K). Mid-epoch that needs ``--num_workers 0``: worker processes
draw augmentations from per-worker streams that a resume cannot line up again.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data as datasets
from distillers import Distiller, FeatureTaps, ShapeSpec
from engine.checkpoint import save_atomic
from engine.build import (build_distillation, build_loaders, check_names, check_run_folder, load_teacher,
                          open_teacher_store, run_name, seed_everything, shape_spec, wrap_train_set)
from engine.config import ConfigError, apply_recipe, validate_numbers
from engine.distributed import (DistInfo, all_reduce_sum, average_gradients, average_tensor, barrier,
                                broadcast_buffers, broadcast_result)
from engine.finite_watch import FiniteWatch, NonFiniteLoss
from engine.interrupts import STOP, RunInterrupted, fault_point
from engine.precision import Precision
from engine.objective import Objective
from engine.resume import restore, resume_path, snapshot
from engine.run_folder import RunFolder
from engine.run_log import EpochTotals, Logger
from engine.tasks import TASKS, unpack
from engine.teacher_store import StoredTeacher
from models import create_model


class TrainingError(ValueError):
    """The run cannot go on (a non-finite loss); the message says where and what to do."""


def _split_views(taps: Dict[str, Any], views: int):
    """Taps of a forward over [view 1; view 2; ...] -> (first view's taps, second view's taps)."""
    first, second = {}, {}
    for name, value in taps.items():
        if isinstance(value, torch.Tensor):
            parts = value.chunk(views)
            first[name], second[name] = parts[0], parts[1]
        elif isinstance(value, list):
            pairs = [v.chunk(views) if isinstance(v, torch.Tensor) else (v, v) for v in value]
            first[name], second[name] = [p[0] for p in pairs], [p[1] for p in pairs]
        else:  # a module tap (a classifier): the same for every view
            first[name] = second[name] = value
    return first, second


class Trainer:
    """Builds everything from the parsed flags and runs the epochs."""

    def __init__(self, args, info: DistInfo, kind: str):
        self.args, self.info, self.kind = args, info, kind
        self.device = info.device
        self.epoch = 1          # next epoch to run (1-based)
        self.step_in_epoch = 0  # batches of that epoch already done (mid-epoch resume)
        self.phase = "main"
        self.init_done = 0      # init-stage epochs completed
        self.best_acc = 0.0
        self.last_acc = float("nan")  # score of the last evaluation (recorded in checkpoints)
        self.epoch_totals = EpochTotals()
        self.saved_any = False  # whether this run wrote a checkpoint (else its new folder is removed)
        self.gradients_checked = False
        self.compiled_once = False
        self.log = Logger(info, None, False)
        self._build()

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        """Everything the run needs, from the flags (engine/build.py), before any step."""
        args = self.args
        seed_everything(args.seed)  # same initial weights on every rank
        meta = datasets.dataset_info(args.dataset)
        self.task = TASKS.build(meta.get("task", "classification"))
        self.task.configure(args, self.kind, log=self.log)  # task defaults (metric: model, method, recipe)
        check_names(args, self.kind)
        self.family = meta["family"]
        model_name = args.model if self.kind == "teacher" else args.model_s
        apply_recipe(args, self.family, model_name, log=self.log)
        validate_numbers(args, self.info.world_size, log=self.log)  # before any data is read or folder made
        self.batch_per_rank = args.batch_size // self.info.world_size
        root = args.data_root or datasets.default_data_root()
        self.train_set = datasets.build_dataset(args.dataset, root, "train", **args.data_opts)
        self.test_set = datasets.build_dataset(args.dataset, root, "test", **args.data_opts)
        self.num_classes = self.train_set.num_classes
        self.precision = Precision(getattr(args, "amp", None), self.device, getattr(args, "channels_last", False))
        self.model = create_model(model_name, num_classes=self.num_classes,
                                  **self.task.model_kwargs(args, "student" if self.kind == "student" else "model"),
                                  family=None if ":" in model_name else self.family).to(self.device)
        self._build_objective(torch.zeros((2,) + tuple(self.test_set[0][0].shape)))
        if self.precision.amp == "fp16" and getattr(args, "dot", False):
            raise ConfigError("--dot hands two gradients to its optimiser, which a float16 gradient scaler does "
                              "not support: use --amp bf16 (no scaling) with --dot, or drop --dot")
        for network in (self.model, self.teacher):
            if network is not None:
                self.precision.prepare_model(network)
        self.run_dir = args.save_dir or os.path.join(
            args.save_root, f"{self.kind}s", run_name(args, self.kind, getattr(self.teacher, "arch", ""), self.weights))
        check_run_folder(self.run_dir, args)
        self.log = Logger(self.info, self.run_dir, not args.no_tensorboard)
        needs = self.objective.batch_needs()
        self.train_served = wrap_train_set(self.train_set, needs, args.seed, dali=bool(args.dali))
        self.train_loader, self.test_loader = build_loaders(
            args, self.info, self.task, self.train_served, self.test_set, self.batch_per_rank, needs, self.device)
        self._build_taps()
        self.store, self.store_off = None, ""
        if self.kind == "student":
            self.store, self.store_off = open_teacher_store(args, self.teacher, self.spec, self.objective,
                                                            self.train_loader, self.train_served)
        self.stored_teacher = StoredTeacher(lambda x: self.t_taps(x), self.store, self.objective.teacher_taps) \
            if self.store is not None else None
        # reading a device flag costs nothing on the CPU; on a GPU it waits for the device
        self.watch = FiniteWatch(every=1 if self.device.type == "cpu" else 25)
        self.optimizer, self.scheduler = self.task.optimizer(args, self.main_parameters(), args.learning_rate)
        seed_everything(args.seed + self.info.rank)  # distinct augmentation streams per rank

    def _build_objective(self, example: torch.Tensor) -> None:
        """Teacher, shapes, method, KD term, weights and the objective (a teacher run: the task's
        own terms, and in metric learning the task's teacher method)."""
        args = self.args
        self.teacher = self.method = self.added_term = None
        self.weights = {"gamma": 1.0, "alpha": 0.0, "beta": 0.0}
        if self.kind == "student":
            if not args.path_t:
                raise ConfigError("train_student.py needs a teacher checkpoint: --path_t PATH")
            self.teacher = load_teacher(args.path_t, args.model_t, self.family, self.num_classes,
                                        **self.task.model_kwargs(args, "teacher"))
            self.teacher.to(self.device).eval().requires_grad_(False)
        self.spec = ShapeSpec(
            student=shape_spec(self.model, example.to(self.device)),
            teacher=shape_spec(self.teacher, example.to(self.device)) if self.teacher is not None else {},
            num_classes=self.num_classes, num_data=len(self.train_set), batch_size=self.batch_per_rank,
            extra={"student_arch": args.model if self.kind == "teacher" else args.model_s,
                   "teacher_arch": getattr(self.teacher, "arch", "")})
        if self.kind == "teacher":
            own = self.task.teacher_objective(args, self.spec)  # metric learning: the triplet objective
            self.objective = Objective([(1.0, own.to(self.device))] if own is not None else [],
                                       self.task.own_terms(self.weights))
            return
        self.method, self.added_term, self.weights, self.objective = build_distillation(
            args, self.task, self.spec, self.device)
        if self.method.init_stage() is not None:
            self.phase = "init"

    @property
    def gamma(self) -> float:
        return self.weights["gamma"]

    @property
    def alpha(self) -> float:
        return self.weights["alpha"]

    @property
    def beta(self) -> float:
        return self.weights["beta"]

    def _build_taps(self, stage=None) -> None:
        """Taps for the main stage, or for an initialisation stage when ``stage`` is given."""
        s_names = ["logits"] + list(stage.student_taps) if stage else self.objective.student_taps
        t_names = list(stage.teacher_taps) if stage else self.objective.teacher_taps
        self.ddp = self.model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        for old in ("s_taps", "t_taps"):
            if getattr(self, old, None) is not None:
                getattr(self, old).close()
        forward = self.ddp
        if getattr(self.args, "compile", False):  # compiled with the hooks in place; failures surface at the first step
            forward = torch.compile(self.ddp)
        self.s_taps = FeatureTaps(self.model, s_names, forward=forward)
        self.t_taps = FeatureTaps(self.teacher, t_names, stop_early=True) if t_names else None

    def main_parameters(self) -> List[nn.Parameter]:
        params = list(self.model.parameters())
        if self.method is not None:
            params += [p for p in self.method.parameters() if p.requires_grad]
        return params

    # ------------------------------------------------------------------ steps
    def losses(self, x, y, extras, stage=None,
               views=None) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One forward: (total loss, the student's prediction, named terms). ``views`` (index, view
        id) name the batch's augmented views for the teacher store."""
        n_views = x.shape[1] if stage is None and x.dim() == 5 else 1  # [B, views, C, H, W] (BatchNeeds.views)
        if n_views > 1:  # one forward over all views (one DDP forward per step), split back per view
            x = x.transpose(0, 1).reshape(-1, *x.shape[2:])
        x = self.precision.prepare_input(x)
        with self.precision.autocast():
            s = self._student_forward(x)
            t = {}
            if stage is None and self.stored_teacher is not None and views is not None:
                with torch.autocast(self.device.type, enabled=False):  # stored outputs are float32 outputs
                    t = self.stored_teacher(x, *views)
            elif self.t_taps is not None:
                with torch.no_grad():
                    t = self.t_taps(x)
            batch = {"labels": y, "epoch": self.epoch, **extras}
            if n_views > 1:
                s, s_strong = _split_views(s, n_views)
                t, t_strong = _split_views(t, n_views)
                batch["strong"] = {"s": s_strong, "t": t_strong}
            if stage is not None:
                terms = self.method.init_forward(s, t, batch)
                return Distiller.total(terms), s["logits"], terms
            return self.objective(s, t, batch)

    def _student_forward(self, x: torch.Tensor) -> Dict[str, Any]:
        if not getattr(self.args, "compile", False) or self.compiled_once:
            return self.s_taps(x)
        try:  # the first compiled forward compiles: say in one line when a model cannot be
            taps = self.s_taps(x)
        except Exception as err:  # noqa: BLE001 - torch.compile raises many kinds
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"--compile: torch.compile cannot compile {getattr(self.model, 'arch', 'the student')} "
                              f"({type(err).__name__}: {first}); run without --compile") from None
        self.compiled_once = True
        return taps

    def _check_finite(self) -> None:
        """Read the non-finite-loss record (a host sync): stop, naming the first bad step, before it
        reaches a checkpoint; the last checkpoint stays the last finite state."""
        try:
            self.watch.check()
        except NonFiniteLoss as bad:
            values = ", ".join(f"{k} {v:.4g}" for k, v in bad.terms.items())
            saved = os.path.join(self.run_dir, "latest.pth")
            kept = (f"'{saved}' (the last finite state) is kept" if os.path.isfile(saved)
                    else "no checkpoint was written yet")
            when = "before the bad step" if not bad.steps_after else f"{bad.steps_after} step(s) later, at the check"
            raise TrainingError(f"the loss is {bad.loss} at {bad.where} (terms: {values}); stopped {when}, "
                                f"{kept}. Lower --learning_rate or check the data and the loss weights") from None

    def train_step(self, batch, optimizer, stage=None, views=None):
        """One step of the loop: forward through the objective (or an init stage's loss), a
        finiteness record, backward, the optimizer step. Returns (loss, prediction, terms).
        Public: the smoke matrix and the cost table run exactly this."""
        x, y, extras = unpack(batch, self.device)
        return self._step(x, y, extras, optimizer, stage, views)

    def _step(self, x, y, extras, optimizer, stage=None, views=None):
        where = f"{'init ' if stage else ''}epoch {self.epoch}, batch {self.step_in_epoch + 1}"
        dot = stage is None and hasattr(optimizer, "step_with")  # DOT: task and distillation gradients apart
        with self.ddp.no_sync() if dot and self.info.distributed else contextlib.nullcontext():
            loss, prediction, terms = self.losses(x, y, extras, stage, views)
            self.watch.record(loss, terms, where)
            if self.watch.due():
                self._check_finite()
            if dot:
                self._two_gradient_step(terms, optimizer)
                return loss, prediction, terms
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        if stage is None and not self.gradients_checked:
            self._warn_untrained_parameters()
        if self.method is not None:
            average_gradients([p for p in self.method.parameters() if p.requires_grad])
        self.precision.step(optimizer)
        return loss, prediction, terms

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

    def enter_stage(self, stage=None):
        """Make ``stage`` (an init stage, or None: the main stage) the current one: its taps, and
        its optimizer, which is returned. The main stage after an init stage freezes the stage's
        parts (``finish_init_stage``) and builds the main optimizer anew."""
        if stage is not None:
            params = list(stage.parameters) + (list(self.model.parameters()) if stage.trains_student else [])
            lr = stage.lr if stage.lr is not None else self.args.learning_rate
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=self.args.momentum,
                                             weight_decay=self.args.weight_decay)
            self.phase = "init"
        else:
            if self.phase == "init":
                self.method.finish_init_stage()
                self.optimizer, self.scheduler = self.task.optimizer(self.args, self.main_parameters(),
                                                                     self.args.learning_rate)
            self.phase = "main"
        self._build_taps(stage)
        return self.optimizer

    def train_epoch(self, optimizer, stage=None) -> Dict[str, float]:
        """The rest of the current epoch (from ``step_in_epoch``), stopping at a safe point on request."""
        self.model.train()
        if self.method is not None:
            self.method.train()
        # an initialisation epoch gets its own shuffle (negative epoch ids)
        self.train_loader.set_epoch(self.epoch if stage is None else -self.epoch, skip=self.step_in_epoch)
        totals = self.epoch_totals
        show = self.info.is_main and sys.stderr.isatty()
        name = f"init {self.epoch}/{stage.epochs}" if stage else f"epoch {self.epoch}/{self.args.epochs}"
        bar = tqdm(self.train_loader, desc=name, disable=not show, leave=False, dynamic_ncols=True,
                   initial=self.step_in_epoch, total=self.step_in_epoch + len(self.train_loader))
        per_epoch = self.step_in_epoch + len(self.train_loader)
        window = [0.0, 0.0]  # seconds waited for data, seconds in all, since the last --log_every point
        started = time.perf_counter()
        for batch in bar:
            arrived = time.perf_counter()
            views = self._batch_views(batch) if stage is None and self.stored_teacher is not None else None
            x, y, extras = unpack(batch, self.device)
            loss, prediction, terms = self._step(x, y, extras, optimizer, stage, views)
            self.step_in_epoch += 1
            now = time.perf_counter()
            # running sums stay on the device: read at log points and at the end of the epoch
            totals.add(y.shape[0], self.task.train_correct(prediction.detach(), y), loss.detach(),
                       {k: v.detach() for k, v in terms.items()}, now - started, arrived - started)
            window = [window[0] + arrived - started, window[1] + now - started]
            started = now
            step = (abs(self.epoch) - 1) * per_epoch + self.step_in_epoch
            if self.args.log_every and step % self.args.log_every == 0:  # curves within the epoch
                self.log.scalars("init_step" if stage else "train_step",
                                 {"loss": loss.item(), **{k: float(v.detach()) for k, v in terms.items()},
                                  "lr": optimizer.param_groups[0]["lr"],
                                  "data_wait": window[0] / max(window[1], 1e-9)}, step)
                window = [0.0, 0.0]
            if show and (self.watch.every == 1 or self.args.log_every and step % self.args.log_every == 0):
                bar.set_postfix(loss=f"{loss.item():.3f}")
            fault_point("init_step" if stage else "train_step", self.epoch, self.step_in_epoch, self.info.rank)
            if STOP.agreed():  # a safe point: the step is complete
                self._stop(f"{'init ' if stage else ''}epoch {self.epoch}, batch {self.step_in_epoch}")
        bar.close()
        self._check_finite()
        return totals.metrics(self.task.train_accuracy)

    def _batch_views(self, batch):
        """(sample index, view id) of this batch on the host, the store's keys: the device loader's
        planned views, or a seeded-views set's epoch slot (its index as the loader served it)."""
        keys = getattr(self.train_loader, "last_keys", None)
        if keys is not None:
            return keys
        index = batch[2]
        return index, torch.full_like(index, self.epoch - 1)

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

    def evaluate(self, model: Optional[nn.Module] = None, head: Optional[nn.Module] = None) -> Dict[str, float]:
        model = model or self.model
        if model is self.model:  # every rank evaluates with rank 0's BatchNorm statistics
            broadcast_buffers(self.model)
        with self.precision.autocast():
            return self.task.evaluate(model, self.test_loader, self.device, head)

    # ------------------------------------------------------------- checkpoints
    def state(self, acc: float) -> Dict[str, Any]:
        """This moment of the run as one checkpoint dict (:func:`engine.resume.snapshot`; a collective)."""
        return snapshot(self, acc)

    def save(self, name: str, acc: float) -> str:
        """Write a checkpoint (every rank must call: the per-rank state is gathered)."""
        path = os.path.join(self.run_dir, name)
        self._check_finite()  # a non-finite step never reaches a checkpoint
        state = self.state(acc)
        if self.info.is_main:
            save_atomic(state, path)
        self.saved_any = True
        return path

    def _stop(self, where: str) -> None:
        """Write ``latest.pth`` at this safe point and end the run with a one-line message."""
        path = self.save("latest.pth", self.last_acc)
        barrier()  # every rank leaves together, after rank 0 wrote the file
        raise RunInterrupted(f"stopped by {STOP.signal} at {where}: state saved to {path}; "
                             "continue with --resume", STOP.signal)

    def resume(self, path: str) -> None:
        """Continue from checkpoint ``path`` (:func:`engine.resume.restore`)."""
        self._resume_state = restore(self, path)

    # -------------------------------------------------------------------- run
    def fit(self) -> Dict[str, float]:
        """Run (or continue) the run in its locked folder; see the module docstring for interrupts."""
        folder = RunFolder(self.run_dir, log=self.log) if self.info.is_main else None
        broadcast_result(folder.acquire if folder else None)  # every rank fails if the folder is taken
        self._resume_state = None
        try:
            fault_point("start", rank=self.info.rank)
            if self.args.overwrite and folder is not None:
                folder.start_over()
            path = resume_path(self.args, self.run_dir, self.log)
            if path:
                self.resume(path)
                if self.phase == "main" and self.epoch > self.args.epochs:
                    return self._finished()
            self.describe()
            if STOP.agreed():  # asked to stop before the first step: nothing to save
                raise RunInterrupted(f"stopped by {STOP.signal} before the first step; nothing was trained",
                                     STOP.signal)
            if self.phase == "init":
                self._run_init_stage()
            return self._run_main()
        except KeyboardInterrupt:  # a second Ctrl-C: out at once, the last checkpoint stays valid
            self.log("\ninterrupted immediately: nothing was written; the last checkpoint on disk is intact")
            raise
        finally:
            self.log.close()
            for taps in (self.s_taps, self.t_taps):
                if taps is not None:
                    taps.close()
            if folder is not None:
                folder.release(keep=self.saved_any)

    def _finished(self) -> Dict[str, float]:
        key = self.task.score_key
        self.log(f"the run in {self.run_dir} is finished ({self.args.epochs} epochs): final test {key} "
                 f"{self.last_acc:.2f} (best {self.best_acc:.2f}); nothing to do (raise --epochs to train longer)")
        return {key: self.last_acc, f"best_{key}": self.best_acc}

    def describe(self) -> None:
        a = self.args
        self.log(f"run folder: {self.run_dir}")
        loader = ("device (augmented a batch at a time on the device; --loader dataloader for PIL)"
                  if hasattr(self.train_loader, "last_views") else "DALI" if a.dali else "DataLoader")
        self.log(f"dataset {a.dataset}: {len(self.train_set)} train / {len(self.test_set)} test, "
                 f"{self.num_classes} classes; processes {self.info.world_size} on {self.device}; loader {loader}")
        self.log(f"batch {a.batch_size} ({self.batch_per_rank} per process; last partial batch dropped), "
                 f"lr {a.learning_rate}, decay x{a.lr_decay_rate} after epochs {a.lr_decay_epochs}, "
                 f"wd {a.weight_decay}, momentum {a.momentum}, {a.epochs} epochs")
        self.log(f"loss = {self.objective.describe()}")
        compute = [f"--amp {self.precision.amp}" if self.precision.amp else "",
                   "--channels_last" if self.precision.channels_last else "",
                   "--compile" if getattr(a, "compile", False) else ""]
        if any(compute):
            self.log("compute: " + " ".join(c for c in compute if c))
        if self.store is not None:
            filled = min(self.store.filled_fraction(t) for t in self.objective.teacher_taps)
            self.log(f"teacher store {self.store.directory} ({', '.join(self.objective.teacher_taps)}, "
                     f"{self.args.teacher_store_dtype}): {filled:.1%} of the views filled; the teacher runs on "
                     "the others")
        elif self.store_off:
            self.log(f"teacher store {self.store_off}")
        if self.kind == "student":
            extra = sum(p.numel() for p in self.method.parameters() if p.requires_grad)
            self.log(f"{extra} extra trainable parameters (weights: command line, else the method's reference values)")
            if self._resume_state is None:  # a fresh start (a resumed run showed it when it started)
                fault_point("teacher_eval", rank=self.info.rank)
                acc = self.evaluate(self.teacher)
                self.log(f"teacher {getattr(self.teacher, 'arch', '')} test {self.task.describe(acc)}")

    def _run_init_stage(self) -> None:
        stage = self.method.init_stage()
        optimizer = self.enter_stage(stage)
        if self._resume_state is not None and self._resume_state.get("phase") == "init":
            optimizer.load_state_dict(self._resume_state["optimizer"])
        self.log(f"initialisation stage of {self.args.distill}: {stage.epochs} epochs at lr "
                 f"{optimizer.param_groups[0]['lr']}{' (student backbone trained too)' if stage.trains_student else ''}")
        self.epoch = self.init_done + 1
        while self.init_done < stage.epochs:
            metrics = self.train_epoch(optimizer, stage)
            self.init_done += 1
            self.log(f"init epoch {self.init_done}/{stage.epochs}: loss {metrics['loss']:.4f}")
            self.log.scalars("init", metrics, self.init_done)
            self.epoch, self.step_in_epoch, self.epoch_totals = self.init_done + 1, 0, EpochTotals()
            self.save("latest.pth", float("nan"))
            if STOP.agreed():
                self._stop(f"the end of init epoch {self.init_done}")
        self.enter_stage(None)
        self.epoch = 1

    def _run_main(self) -> Dict[str, float]:
        args, key = self.args, self.task.score_key
        acc = {key: self.last_acc}
        while self.epoch <= args.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            resumed_at_end = self.step_in_epoch == len(self.train_loader) and self.step_in_epoch > 0
            metrics = self.train_epoch(self.optimizer)
            # From here to the checkpoint the epoch ends as one unit: a signal waits for it.
            with warnings.catch_warnings():
                if resumed_at_end:  # no step in this process yet; torch would warn about the order
                    warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            metrics["lr"] = lr
            if self.store is not None:
                metrics.update(self._store_metrics())
            self.log.scalars("train", metrics, self.epoch)
            evaluated = self.epoch % args.eval_freq == 0 or self.epoch == args.epochs
            if evaluated:
                fault_point("eval", self.epoch, rank=self.info.rank)
                acc = self.evaluate(head=self._inference_head())
                self.last_acc = acc[key]
                self.log.scalars("test", acc, self.epoch)
                train = " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                 if k not in ("images_per_s", "lr", "data_wait") and not k.startswith("teacher_store"))
                self.log(f"epoch {self.epoch}/{args.epochs} lr {lr:.4g} | train {train} | test "
                         f"{self.task.describe(acc)} | {metrics['images_per_s']:.0f} img/s, "
                         f"{metrics['data_wait']:.0%} of step time waiting for data"
                         + (f" | teacher store {metrics['teacher_store_hits']:.0%} hits, "
                            f"{metrics['teacher_store_gb']:.2f} GB" if self.store is not None else ""))
            improved = evaluated and acc[key] > self.best_acc
            if improved:
                self.best_acc = acc[key]
            self.epoch, self.step_in_epoch, self.epoch_totals = self.epoch + 1, 0, EpochTotals()
            if improved:
                self.save("best.pth", acc[key])
            self.save("latest.pth", acc[key])
            fault_point("epoch_end", self.epoch - 1, rank=self.info.rank)
            if STOP.agreed() and self.epoch <= args.epochs:
                self._stop(f"the end of epoch {self.epoch - 1}")
        self.log(f"final test {key} {acc[key]:.2f} (best {self.best_acc:.2f}), checkpoints in {self.run_dir}")
        self._report_skipped_images()
        return {**acc, f"best_{key}": self.best_acc}

    def _store_metrics(self) -> Dict[str, float]:
        """The epoch's teacher-store hit rate over every rank, and the store's size on disk."""
        counts = all_reduce_sum(torch.tensor([self.store.hits, self.store.lookups], dtype=torch.float64))
        self.store.reset_counters()
        return {"teacher_store_hits": counts[0].item() / max(counts[1].item(), 1.0),
                "teacher_store_gb": self.store.size_on_disk() / 1e9}

    def _report_skipped_images(self) -> None:
        """--skip_bad_images: say at the end how many unreadable files were replaced (this process's)."""
        skipped = sorted({*getattr(self.train_set, "bad_images", ()), *getattr(self.test_set, "bad_images", ())})
        if skipped:
            self.log(f"skipped {len(skipped)} unreadable image file(s) (--skip_bad_images): "
                     f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")

    def _inference_head(self) -> Optional[nn.Module]:
        return self.method.inference_head() if self.method is not None else None
