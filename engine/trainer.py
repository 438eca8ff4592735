"""The one training loop, for teachers and students, on one process or many.

A teacher run is a student run without a teacher and without a distiller. A
student step taps the student (and, under ``no_grad``, the teacher) with forward
hooks, hands the features to the distiller, and minimises
``gamma * CE + alpha * KD + beta * method``. Initialisation stages (AB, FT, FSP)
run first through the same epoch loop.

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
import random
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data as datasets
from distillers import Distiller, FeatureTaps, ShapeSpec, build_distiller
from distillers.base import ADDED_TERM, DISTILLERS
from core.taps import standard_taps
from engine import checkpoint as ckpt
from engine.config import ConfigError, apply_recipe, method_options, resume_conflicts, validate_numbers
from engine.distributed import (DistInfo, average_gradients, average_tensor, barrier,
                                broadcast_buffers, broadcast_result, gather_to_main, rank_differences)
from engine.interrupts import STOP, RunInterrupted, fault_point
from engine.objective import Objective
from engine.run_folder import RunFolder
from engine.run_log import EpochTotals, Logger
from engine.loaders import eval_loader
from engine.tasks import TASKS, unpack
from models import create_model
from models.registry import resolve_model


class TrainingError(ValueError):
    """The run cannot go on (a non-finite loss); the message says where and what to do."""


def shape_spec(model: nn.Module, example: torch.Tensor) -> Dict[str, Any]:
    with FeatureTaps(model, standard_taps(model)) as taps:
        return taps.shapes(example)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def load_teacher(path: str, model_t: Optional[str], family: str, num_classes: int, **model_kwargs) -> nn.Module:
    """Teacher from our checkpoint or a RepDistiller one; architecture recorded, given or parsed."""
    state = ckpt.load(path)
    arch = model_t or state.get("arch") or ckpt.arch_from_path(path)
    try:
        model = create_model(arch, num_classes=num_classes,
                             family=None if ":" in str(arch) else family, **model_kwargs)
    except KeyError as err:
        raise ckpt.CheckpointError(
            f"cannot tell the teacher's architecture from '{path}' (got '{arch}'): pass --model_t. {err}"
        ) from None
    ckpt.load_weights(model, ckpt.model_state(state), f"teacher checkpoint '{path}'")
    return model


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
        self.log = Logger(info, None, False)
        self._build()

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        args = self.args
        seed_everything(args.seed)  # same initial weights on every rank
        meta = datasets.dataset_info(args.dataset)
        self.task = TASKS.build(meta.get("task", "classification"))
        self.task.configure(args, self.kind, log=self.log)  # task defaults (metric: model, method, recipe)
        self._check_names()
        self.family = meta["family"]
        model_name = args.model if self.kind == "teacher" else args.model_s
        apply_recipe(args, self.family, model_name, log=self.log)
        validate_numbers(args, self.info.world_size, log=self.log)  # before any data is read or folder made
        self.batch_per_rank = args.batch_size // self.info.world_size
        root = args.data_root or datasets.default_data_root()
        self.train_set = datasets.build_dataset(args.dataset, root, "train", **args.data_opts)
        self.test_set = datasets.build_dataset(args.dataset, root, "test", **args.data_opts)
        self.num_classes = self.train_set.num_classes
        example = torch.zeros((2,) + tuple(self.test_set[0][0].shape))

        self.model = create_model(model_name, num_classes=self.num_classes,
                                  **self.task.model_kwargs(args, "student" if self.kind == "student" else "model"),
                                  family=None if ":" in model_name else self.family).to(self.device)
        self.teacher = self.method = self.added_term = None
        self.gamma, self.alpha, self.beta = 1.0, 0.0, 0.0
        self._build_distillation(example)
        self.run_dir = args.save_dir or os.path.join(args.save_root, f"{self.kind}s", self.run_name())
        self._check_run_folder()
        self.log = Logger(self.info, self.run_dir, not args.no_tensorboard)
        self._build_loaders()
        self._build_taps()
        self.optimizer, self.scheduler = self._optimizer(self._main_parameters(), args.learning_rate)
        seed_everything(args.seed + self.info.rank)  # distinct augmentation streams per rank

    def _check_run_folder(self) -> None:
        """Refuse, before any data loader starts, a folder that cannot take this run."""
        RunFolder.check_writable(self.run_dir)
        holds_run = os.path.isfile(os.path.join(self.run_dir, "latest.pth"))
        if holds_run and not self.args.resume and not self.args.overwrite:
            raise ConfigError(f"run folder '{self.run_dir}' already holds a run (latest.pth): continue it with "
                              "--resume, start it over with --overwrite, or choose another --save_dir / --trial")
        if self.args.resume and self.args.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: continue the run, or start it over")

    def _check_names(self) -> None:
        """Fail on an unknown method, model or dataset before any data is read."""
        args = self.args
        family = datasets.dataset_info(args.dataset)["family"]
        names = [args.model] if self.kind == "teacher" else [args.model_s] + ([args.model_t] if args.model_t else [])
        for name in names:
            if ":" not in name:
                resolve_model(name, family)
        if self.kind == "student":
            DISTILLERS.get(args.distill)

    def _build_distillation(self, example: torch.Tensor) -> None:
        """Teacher, method, KD term and their weights (a teacher run: the task's own terms only)."""
        args = self.args
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
                                       self.task.own_terms({"gamma": 1.0}))
            return
        cls = DISTILLERS.get(args.distill)
        weights = dict(cls.default_weights)
        weights.update({k: getattr(args, k) for k in ("gamma", "alpha", "beta") if getattr(args, k) is not None})
        self.task.check_weights(weights)
        self.gamma, self.alpha, self.beta = weights["gamma"], weights["alpha"], weights["beta"]
        options = method_options(args)
        kd_names = set(DISTILLERS.get(ADDED_TERM).option_names())
        stray = sorted(set(options) - set(cls.option_names()) - kd_names)
        if stray:
            raise ConfigError(f"option(s) {', '.join('--' + s for s in stray)} do not apply to --distill "
                              f"{args.distill}; its options: {', '.join(cls.option_names()) or 'none'}")
        self.method = self._build_method(args.distill, {k: v for k, v in options.items() if k in cls.option_names()})
        if self.alpha:  # the KD term any method can add; --kd_T and --logit_std are its options too
            self.added_term = self._build_method(ADDED_TERM, {k: v for k, v in options.items() if k in kd_names})
        self.objective = Objective([(self.beta, self.method), (self.alpha, self.added_term)],
                                   self.task.own_terms(weights))
        if self.method.init_stage() is not None:
            self.phase = "init"
            if not self.method.student_taps and self.beta:
                warnings.warn(f"--distill {args.distill} has no main-stage loss: -b {self.beta} has no effect "
                              "(its loss acts in the initialisation stage)")

    def _build_method(self, name: str, options: Dict[str, Any]) -> Distiller:
        try:
            return build_distiller(name, self.spec, **options).to(self.device)
        except (ValueError, TypeError) as err:  # the method's own message says why
            raise ConfigError(f"--distill {name} with teacher {self.spec.extra['teacher_arch']} and "
                              f"student {self.spec.extra['student_arch']}: {err}") from None

    def _wrap_train_set(self):
        """The training set serving what the objective's terms declared (:class:`BatchNeeds`)."""
        needs = self.objective.batch_needs()
        train = datasets.WithViews(self.train_set) if needs.views > 1 else self.train_set
        if needs.contrast_k:
            return datasets.WithContrast(train, k=needs.contrast_k, mode=needs.contrast_mode, seed=self.args.seed)
        if needs.index:
            return datasets.WithIndex(train)
        return train

    def _build_loaders(self) -> None:
        args = self.args
        train = self._wrap_train_set()
        pin = self.device.type == "cuda"
        if args.dali and self.objective.batch_needs().views > 1:
            raise ConfigError(f"--dali serves one augmented view per image; --distill {args.distill} reads "
                              f"{self.objective.batch_needs().views}: drop --dali for it")
        if args.loader == "device":
            self._device_loaders(train)
        elif args.dali:
            from data.dali import dali_loaders  # lazily: CIFAR runs never import DALI
            self.train_loader, self.test_loader = dali_loaders(args.dali, args.num_workers, args.seed, self.info,
                                                               self.batch_per_rank, train, self.test_set)
        else:
            self.train_loader = self.task.train_loader(args, self.info, train, self.batch_per_rank, pin)
            self.test_loader = eval_loader(self.test_set, self.info, max(1, self.batch_per_rank // 2),
                                           max(0, args.num_workers // 2), pin)
        if len(self.train_loader) == 0:
            raise ConfigError(f"the training set ({len(train)} samples) is smaller than one batch "
                              f"({self.batch_per_rank} per process)")

    def _device_loaders(self, train) -> None:
        """--loader device: batches augmented on the training device (data/device_loader.py)."""
        from data.device_loader import DeviceTrainLoader

        if self.args.dali or self.objective.batch_needs().views > 1:
            raise ConfigError("--loader device serves one view of in-memory sets; it does not combine with "
                              "--dali or a method that reads two views")
        meta = datasets.dataset_info(self.args.dataset)
        self.train_loader = DeviceTrainLoader.from_dataset(train, meta["mean"], meta["std"], self.info.rank,
                                                           self.info.world_size, self.batch_per_rank, self.args.seed,
                                                           self.device)
        self.test_loader = eval_loader(self.test_set, self.info, max(1, self.batch_per_rank // 2),
                                       max(0, self.args.num_workers // 2), self.device.type == "cuda")

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
        self.s_taps = FeatureTaps(self.model, s_names, forward=self.ddp)
        self.t_taps = FeatureTaps(self.teacher, t_names, stop_early=True) if t_names else None

    def _main_parameters(self) -> List[nn.Parameter]:
        params = list(self.model.parameters())
        if self.method is not None:
            params += [p for p in self.method.parameters() if p.requires_grad]
        return params

    def _optimizer(self, params, lr: float):
        return self.task.optimizer(self.args, params, lr)

    def run_name(self) -> str:
        a = self.args
        clean = lambda s: str(s).replace(":", "-").replace("/", "-")  # noqa: E731
        seed = "" if str(a.seed) == str(a.trial) else f"_seed_{a.seed}"  # two seeds, two folders
        if self.kind == "teacher":
            return clean(f"{a.model}_{a.dataset}_lr_{a.learning_rate}_decay_{a.weight_decay}_trial_{a.trial}{seed}")
        t_arch = getattr(self.teacher, "arch", "teacher")
        return clean(f"S_{a.model_s}_T_{t_arch}_{a.dataset}_{a.distill}_r_{self.gamma}_a_{self.alpha}"
                     f"_b_{self.beta}_trial_{a.trial}{seed}")

    # ------------------------------------------------------------------ steps
    def losses(self, x, y, extras, stage=None) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One forward: (total loss, the student's prediction, named terms)."""
        views = x.shape[1] if stage is None and x.dim() == 5 else 1  # [B, views, C, H, W] (BatchNeeds.views)
        if views > 1:  # one forward over all views (one DDP forward per step), split back per view
            x = x.transpose(0, 1).reshape(-1, *x.shape[2:])
        s = self.s_taps(x)
        t = {}
        if self.t_taps is not None:
            with torch.no_grad():
                t = self.t_taps(x)
        batch = {"labels": y, "epoch": self.epoch, **extras}
        if views > 1:
            s, s_strong = _split_views(s, views)
            t, t_strong = _split_views(t, views)
            batch["strong"] = {"s": s_strong, "t": t_strong}
        if stage is not None:
            terms = self.method.init_forward(s, t, batch)
            return Distiller.total(terms), s["logits"], terms
        return self.objective(s, t, batch)

    def _check_finite(self, loss: torch.Tensor, terms: Dict[str, torch.Tensor], stage) -> None:
        """Stop before a non-finite loss reaches the weights; the last checkpoint stays the last good one."""
        if torch.isfinite(loss):
            return
        where = f"{'init ' if stage else ''}epoch {self.epoch}, batch {self.step_in_epoch + 1}"
        values = ", ".join(f"{k} {float(v):.4g}" for k, v in terms.items() if k != "logits")
        saved = os.path.join(self.run_dir, "latest.pth")
        kept = (f"'{saved}' (the last finite state) is kept" if os.path.isfile(saved)
                else "no checkpoint was written yet")
        raise TrainingError(f"the loss is {float(loss)} at {where} (terms: {values}); stopped before the bad step, "
                            f"{kept}. Lower --learning_rate or check the data and the loss weights")

    def train_step(self, batch, optimizer, stage=None):
        """One step of the loop: forward through the objective (or an init stage's loss), a
        finiteness check, backward, the optimizer step. Returns (loss, prediction, terms).
        Public: the smoke matrix and the cost table run exactly this."""
        x, y, extras = unpack(batch, self.device)
        if stage is None and hasattr(optimizer, "step_with"):  # DOT: task and distillation gradients apart
            with self.ddp.no_sync() if self.info.distributed else contextlib.nullcontext():
                loss, prediction, terms = self.losses(x, y, extras, stage)
                self._check_finite(loss, terms, stage)
                self._two_gradient_step(terms, optimizer)
            return loss, prediction, terms
        loss, prediction, terms = self.losses(x, y, extras, stage)
        self._check_finite(loss, terms, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if stage is None and not self.gradients_checked:
            self._warn_untrained_parameters()
        if self.method is not None:
            average_gradients([p for p in self.method.parameters() if p.requires_grad])
        optimizer.step()
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
                self.optimizer, self.scheduler = self._optimizer(self._main_parameters(), self.args.learning_rate)
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
            loss, prediction, terms = self.train_step(batch, optimizer, stage)
            self.step_in_epoch += 1
            now = time.perf_counter()
            labels = batch[1].to(self.device)
            values = {k: float(v.detach()) for k, v in terms.items()}
            totals.add(labels.shape[0], self.task.train_correct(prediction.detach(), labels), loss.item(),
                       values, now - started, arrived - started)
            window = [window[0] + arrived - started, window[1] + now - started]
            started = now
            step = (abs(self.epoch) - 1) * per_epoch + self.step_in_epoch
            if self.args.log_every and step % self.args.log_every == 0:  # curves within the epoch
                self.log.scalars("init_step" if stage else "train_step",
                                 {"loss": loss.item(), **values, "lr": optimizer.param_groups[0]["lr"],
                                  "data_wait": window[0] / max(window[1], 1e-9)}, step)
                window = [0.0, 0.0]
            bar.set_postfix(loss=f"{loss.item():.3f}")
            fault_point("init_step" if stage else "train_step", self.epoch, self.step_in_epoch, self.info.rank)
            if STOP.agreed():  # a safe point: the step is complete
                self._stop(f"{'init ' if stage else ''}epoch {self.epoch}, batch {self.step_in_epoch}")
        bar.close()
        return totals.metrics(self.task.train_accuracy)

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
        return self.task.evaluate(model, self.test_loader, self.device, head)

    # ------------------------------------------------------------- checkpoints
    def state(self, acc: float) -> Dict[str, Any]:
        """This moment of the run as one checkpoint dict (a collective under DDP: every rank
        contributes its RNG state, its running train metrics and the buffers it holds alone)."""
        a = self.args
        own = self.method.state_dict() if self.method is not None else {}
        per_rank = gather_to_main({"rng": ckpt.rng_state(), "epoch_totals": dict(self.epoch_totals.values),
                                   "buffers": rank_differences(own)})
        if not self.info.is_main:
            return {}
        return {
            "format": ckpt.FORMAT, "arch": getattr(self.model, "arch", a.model if self.kind == "teacher" else a.model_s),
            "num_classes": self.num_classes, "dataset": a.dataset, "model": self.model.state_dict(),
            "epoch": self.epoch, "step": self.step_in_epoch, "phase": self.phase, "init_done": self.init_done,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "distiller": own,
            "distiller_name": a.distill if self.kind == "student" else "",
            "distiller_options": {k: v for k, v in vars(self.method).items() if k in type(self.method).option_names()}
            if self.method is not None else {},
            "shape_spec": ckpt.spec_to_dict(self.spec) if self.method is not None else {},
            "world_size": self.info.world_size, "ranks": per_rank, "rng": per_rank[0]["rng"],
            "config": {k: v for k, v in vars(a).items()},
            "weights": {"gamma": self.gamma, "alpha": self.alpha, "beta": self.beta},
            "code_version": ckpt.code_version(), "acc": acc, "best_acc": self.best_acc,
            "finished": self.phase == "main" and self.epoch > a.epochs,
        }

    def save(self, name: str, acc: float) -> str:
        """Write a checkpoint (every rank must call: the per-rank state is gathered)."""
        path = os.path.join(self.run_dir, name)
        state = self.state(acc)
        if self.info.is_main:
            ckpt.save_atomic(state, path)
        self.saved_any = True
        return path

    def _stop(self, where: str) -> None:
        """Write ``latest.pth`` at this safe point and end the run with a one-line message."""
        path = self.save("latest.pth", self.last_acc)
        barrier()  # every rank leaves together, after rank 0 wrote the file
        raise RunInterrupted(f"stopped by {STOP.signal} at {where}: state saved to {path}; "
                             "continue with --resume", STOP.signal)

    def _resume_path(self) -> Optional[str]:
        """The checkpoint to continue from, or None for a fresh start (said when --resume finds none)."""
        if not self.args.resume:
            return None
        if self.args.resume != "auto":
            return self.args.resume
        path = os.path.join(self.run_dir, "latest.pth")
        if not os.path.isfile(path):
            self.log(f"--resume: no latest.pth in {self.run_dir} yet: starting the run from the beginning")
            return None
        return path

    def resume(self, path: str) -> None:
        state = ckpt.load(path)
        if state.get("format") != ckpt.FORMAT:
            raise ckpt.CheckpointError(f"'{path}' is not a distillers training checkpoint")
        ckpt.require(state, path, ("model", "epoch", "step", "phase", "init_done", "best_acc", "optimizer",
                                   "scheduler", "distiller", "rng", "config"))
        arch = getattr(self.model, "arch", None)
        if state.get("arch") != arch:
            raise ckpt.CheckpointError(f"'{path}' was trained as '{state.get('arch')}', this run builds '{arch}'")
        name = self.args.distill if self.kind == "student" else ""
        if state.get("distiller_name", "") != name:
            raise ckpt.CheckpointError(f"'{path}' is a {state.get('distiller_name') or 'teacher/vanilla'} run, "
                                       f"this run is {name or 'a teacher/vanilla run'}: resume it with its own "
                                       "method, or start a new run")
        recorded_world = int(state.get("world_size", 1))
        if recorded_world != self.info.world_size:
            raise ckpt.CheckpointError(
                f"'{path}' was written by {recorded_world} process(es), this run has {self.info.world_size}: "
                f"every rank's data shard and random streams belong to that count; resume with "
                f"{recorded_world} process(es)")
        changed, warnings_ = resume_conflicts(state["config"], vars(self.args))
        if changed:
            raise ConfigError(f"--resume: {'; '.join(changed)}. A resumed run keeps the values it started with "
                              "(drop these flags), or start a new run (--overwrite or another --save_dir)")
        for text in warnings_:
            self.log(f"warning: --resume: {text}")
        ckpt.load_weights(self.model, state["model"], f"checkpoint '{path}'")
        self.epoch, self.step_in_epoch = state["epoch"], state["step"]
        self.phase, self.init_done, self.best_acc = state["phase"], state["init_done"], state["best_acc"]
        self.last_acc = state.get("acc", float("nan"))
        if self.method is not None:
            stage = self.method.init_stage()
            if stage is not None and self.phase == "main":
                self.method.finish_init_stage()
                self.optimizer, self.scheduler = self._optimizer(self._main_parameters(), self.args.learning_rate)
            try:
                self.method.load_state_dict(state["distiller"])
            except RuntimeError as err:
                raise ckpt.CheckpointError(f"'{path}': the {name} parts do not fit this run: "
                                           f"{str(err).splitlines()[0]}") from None
        if self.phase == "main":
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        mine = (state.get("ranks") or [{"rng": state["rng"]}])[self.info.rank]
        if self.method is not None and mine.get("buffers"):
            self.method.load_state_dict({**self.method.state_dict(), **mine["buffers"]})
        self.epoch_totals = EpochTotals(mine.get("epoch_totals"))
        ckpt.set_rng_state(mine["rng"])
        self._resume_state = state
        self.log.purge_step = self.epoch  # TensorBoard drops events written after this checkpoint
        self.log(f"resumed from {path}: {self.phase} epoch {self.epoch}, batch {self.step_in_epoch}")

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
            path = self._resume_path()
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
        self.log(f"dataset {a.dataset}: {len(self.train_set)} train / {len(self.test_set)} test, "
                 f"{self.num_classes} classes; processes {self.info.world_size} on {self.device}")
        self.log(f"batch {a.batch_size} ({self.batch_per_rank} per process; last partial batch dropped), "
                 f"lr {a.learning_rate}, decay x{a.lr_decay_rate} after epochs {a.lr_decay_epochs}, "
                 f"wd {a.weight_decay}, momentum {a.momentum}, {a.epochs} epochs")
        self.log(f"loss = {self.objective.describe()}")
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
            self.log.scalars("train", metrics, self.epoch)
            evaluated = self.epoch % args.eval_freq == 0 or self.epoch == args.epochs
            if evaluated:
                fault_point("eval", self.epoch, rank=self.info.rank)
                acc = self.evaluate(head=self._inference_head())
                self.last_acc = acc[key]
                self.log.scalars("test", acc, self.epoch)
                train = " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                 if k not in ("images_per_s", "lr", "data_wait"))
                self.log(f"epoch {self.epoch}/{args.epochs} lr {lr:.4g} | train {train} | test "
                         f"{self.task.describe(acc)} | {metrics['images_per_s']:.0f} img/s, "
                         f"{metrics['data_wait']:.0%} of step time waiting for data")
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

    def _report_skipped_images(self) -> None:
        """--skip_bad_images: say at the end how many unreadable files were replaced (this process's)."""
        skipped = sorted({*getattr(self.train_set, "bad_images", ()), *getattr(self.test_set, "bad_images", ())})
        if skipped:
            self.log(f"skipped {len(skipped)} unreadable image file(s) (--skip_bad_images): "
                     f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")

    def _inference_head(self) -> Optional[nn.Module]:
        return self.method.inference_head() if self.method is not None else None
