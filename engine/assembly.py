"""What a run is made of, assembled once from the parsed flags: the :class:`Run`.

The flags (an argparse namespace) stop here: the run's parts (models, teacher, objective,
data, loaders, teacher store, optimiser, schedule) are built from them in one fixed order,
and what the step and the loop need afterwards are typed values (:class:`RunSettings`). Each
check fails early with one line naming the bad value (an unknown method or model, a teacher
checkpoint that does not fit, an option of another method, a folder that holds a run).
Nothing here trains or writes a checkpoint.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

import data as datasets
from core.requests import SampleIndex, merge_requests, views_of
from core.taps import standard_taps
from data.requests import served_dataset
from distillers import DISTILLERS, Distiller, FeatureTaps, ShapeSpec
from engine import checkpoint as ckpt
from engine.data_setup import (loader_kind, mixing_requests, open_teacher_store, seeded_views_of, train_loader,
                               with_seeded_views)
from engine.distributed import DistInfo
from engine.ema import ModelEma
from engine.errors import ConfigError
from engine.objective import Objective, build_distillation
from engine.optim import (OPTIMIZERS, SCHEDULERS, OptimizerSettings, ScheduleSettings, build_optimizer,
                          build_schedule, takes_two_gradients, trainable_groups)
from engine.precision import Precision
from engine.recipes import apply_drop_path, apply_recipe, validate_numbers
from engine.run_folder import check_run_folder, run_name
from engine.run_log import Logger
from engine.recipes import apply_lr_rule
from engine.run_state import Part
from engine.tasks import TASKS
from engine.teacher_store import teacher_fingerprint
from engine.teachers.loading import build_teacher, find_teacher, teacher_arch, teacher_card, teacher_input
from models import create_model
from models.registry import resolve_model


@dataclass(frozen=True)
class RunSettings:
    """The typed values the step and the loop read (never the flags themselves)."""

    kind: str               # teacher or student
    epochs: int
    eval_freq: int
    log_every: int
    seed: int
    batch_size: int          # global
    batch_per_rank: int
    compile: bool
    method_name: str         # --distill (students), for messages
    dataset: str
    loader: str              # device, dataloader or dali
    store_dtype: str
    lr_decay_rate: float
    lr_decay_epochs: tuple
    overwrite: bool
    resume: Optional[str]
    clip_grad: Optional[float] = None  # --clip_grad: the global gradient norm before each optimiser step


@dataclass
class Run:
    """Every part of one run (module docstring); :meth:`parts` lists the ones a checkpoint holds."""

    info: DistInfo
    settings: RunSettings
    task: Any
    config: Dict[str, Any]          # the resolved flags, recorded in checkpoints and compared on resume
    train_set: Any
    test_set: Any
    num_classes: int
    model: nn.Module
    teacher: Optional[nn.Module]
    spec: ShapeSpec
    method: Optional[Distiller]
    added_term: Optional[Distiller]
    weights: Dict[str, float]
    objective: Objective
    train_loader: Any
    test_loader: Any
    store: Any
    store_off: str
    precision: Precision
    optimizer_settings: OptimizerSettings
    schedule_settings: ScheduleSettings
    optimizer: torch.optim.Optimizer
    scheduler: Any
    run_dir: str
    log: Logger
    teacher_card: Optional[Dict[str, Any]] = None  # what the teacher is (engine/teachers/card.py)
    teacher_note: str = ""                          # the teacher's own input, when it is not the run's
    lr_rule: str = ""                               # how the learning rate follows the global batch
    code_version: str = ""                          # read once at start (never a subprocess at stop time)

    teacher_sha256: str = ""                        # the loaded teacher's weights (engine.teacher_store.teacher_fingerprint)
    ema: Optional[ModelEma] = None                  # --ema: the weights' moving average (engine/ema.py)

    @property
    def two_gradients(self) -> bool:
        """Whether the optimiser takes the task's and the distillation's gradients apart (DOT)."""
        return takes_two_gradients(self.optimizer_settings.name)

    def main_parameters(self):
        """What the main stage's optimiser trains: the student and the method's own trainable parts."""
        return trainable_groups([self.model, self.method], self.optimizer_settings)

    def main_optimizer(self):
        """(optimiser, schedule) of the main stage, built anew (after an initialisation stage, over the
        parameters that stage left trainable)."""
        optimizer = build_optimizer(self.main_parameters(), self.optimizer_settings)
        return optimizer, build_schedule(optimizer, self.schedule_settings)

    def stage_optimizer(self, stage):
        """SGD of an initialisation stage over its parts (and the student's when it trains it too)."""
        params = list(stage.parameters) + (list(self.model.parameters()) if stage.trains_student else [])
        base = self.optimizer_settings
        lr = stage.lr if stage.lr is not None else base.lr
        return build_optimizer(params, OptimizerSettings("sgd", lr, base.momentum, base.weight_decay))

    def parts(self) -> List[Part]:
        """The stateful parts a checkpoint holds, by key (the optimiser and schedule of the current stage)."""
        parts = [Part("model", self.model.state_dict, self._load_model),
                 Part("optimizer", lambda: self.optimizer.state_dict(), lambda s: self.optimizer.load_state_dict(s)),
                 Part("scheduler", lambda: self.scheduler.state_dict(), lambda s: self.scheduler.load_state_dict(s)),
                 Part("scaler", self.precision.state_dict, self.precision.load_state_dict)]
        if self.method is not None:
            parts.append(Part("distiller", self.method.state_dict, self.method.load_state_dict))
        if self.ema is not None:
            parts.append(Part("ema", self.ema.state_dict, self.ema.load_state_dict))
        return parts

    def _load_model(self, weights: Dict[str, torch.Tensor]) -> None:
        ckpt.load_weights(self.model, weights, "the checkpoint's model")


def assemble(args, info: DistInfo, kind: str) -> Run:
    """Build the run of ``args`` in a fixed order (the same random draws for the same seed)."""
    log = Logger(info, None, False)
    seed_everything(args.seed)  # same initial weights on every rank
    meta = datasets.dataset_info(args.dataset)
    task = TASKS.build(meta.get("task", "classification"))
    task.configure(args, kind, log=log)  # task defaults (metric: model, method, recipe)
    check_names(args, kind)
    family = meta["family"]
    model_name = args.model if kind == "teacher" else args.model_s
    apply_recipe(args, family, model_name, log=log)
    optimizer_name = args.optimizer or task.default_optimizer
    _check_optimiser(args, kind, optimizer_name)
    notes: List[str] = []  # said once the run is built: never before another error
    validate_numbers(args, info.world_size, log=notes.append)  # before any data is read or folder made
    lr_rule = apply_lr_rule(args, family, info.world_size)
    batch_per_rank = args.batch_size // info.world_size
    args.data_opts = datasets.check_data_options(args.dataset, args.data_opts)  # typed, one line if bad
    apply_drop_path(args)  # --drop_path: a model option of the trained network
    found = None
    if kind == "student":  # the teacher's file is found and read before any data is (zoo names download)
        if not args.path_t:
            raise ConfigError("train_student.py needs a teacher: --path_t PATH, a run folder or a zoo name "
                              "such as resnet32x4@cifar100")
        found = find_teacher(args.path_t, log=log)
        args.path_t = found.path
    root = args.data_root or datasets.default_data_root()
    train_set = datasets.build_dataset(args.dataset, root, "train", **args.data_opts)
    test_set = datasets.build_dataset(args.dataset, root, "test", **args.data_opts)
    num_classes = train_set.num_classes
    precision = Precision(args.amp, info.device, args.channels_last)
    try:
        model = create_model(model_name, num_classes=num_classes,
                             **task.model_kwargs(args, "student" if kind == "student" else "model"),
                             **args.model_opts, family=None if ":" in model_name else family).to(info.device)
    except ValueError as err:  # an option the architecture does not take (models.options.ModelOptionError)
        flag = f"--drop_path {args.drop_path}" if "'drop_path_rate'" in str(err) else "--model_opt"
        raise ConfigError(f"{flag}: {err}") from None
    example = torch.zeros((2,) + tuple(test_set[0][0].shape))
    teacher = teacher_card = None
    teacher_note = teacher_sha256 = ""
    if kind == "student":
        teacher, teacher_card, teacher_note = _teacher(args, found, task, meta, family, num_classes, info, log)
        teacher_sha256 = teacher_fingerprint(teacher)
    spec, method, added, weights, objective = _objective(args, kind, task, num_classes, model, teacher, example,
                                                         len(train_set), batch_per_rank, info)
    if precision.amp == "fp16" and takes_two_gradients(optimizer_name):
        raise ConfigError("--dot hands two gradients to its optimiser, which a float16 gradient scaler does "
                          "not support: use --amp bf16 (no scaling) with --dot, or drop --dot")
    for network in (model, teacher):
        if network is not None:
            precision.prepare_model(network)
    run_dir = args.save_dir or os.path.join(
        args.save_root, f"{kind}s", run_name(args, kind, getattr(teacher, "arch", ""), weights))
    check_run_folder(run_dir, args.resume, args.overwrite)
    log = Logger(info, run_dir, not args.no_tensorboard)
    requests = merge_requests(objective.data_requests() + ([SampleIndex()] if seeded_views_of(train_set) else [])
                              + mixing_requests(args, task))
    served = served_dataset(with_seeded_views(train_set, views_of(requests), args.seed, args.dali), requests,
                            args.seed)
    kind_of_loader = loader_kind(args, served, requests)
    train, test = train_loader(args, info, task, kind_of_loader, served, test_set, batch_per_rank)
    store, store_off = (None, "")
    if kind == "student":
        store, store_off = open_teacher_store(args, teacher, spec, objective, train, served, len(train_set),
                                              teacher_note)
    optimizer_settings = OptimizerSettings(optimizer_name, args.learning_rate, args.momentum, args.weight_decay,
                                           {"delta": args.dot_delta} if optimizer_name == "dot" else {},
                                           bool(getattr(args, "no_wd_bias_norm", False)))
    schedule_settings = ScheduleSettings(args.scheduler, args.epochs, task.milestones(args.lr_decay_epochs or ()),
                                         args.lr_decay_rate, args.warmup_epochs, args.min_lr)
    optimizer = build_optimizer(trainable_groups([model, method], optimizer_settings), optimizer_settings)
    scheduler = build_schedule(optimizer, schedule_settings)
    seed_everything(args.seed + info.rank)  # distinct augmentation streams per rank
    settings = RunSettings(kind, args.epochs, args.eval_freq, args.log_every, args.seed, args.batch_size,
                           batch_per_rank, bool(args.compile), args.distill if kind == "student" else "",
                           args.dataset, kind_of_loader, getattr(args, "teacher_store_dtype", "float32"),
                           args.lr_decay_rate, tuple(args.lr_decay_epochs or ()), bool(args.overwrite), args.resume,
                           getattr(args, "clip_grad", None))
    for note in notes:
        log(note)
    return Run(info, settings, task, dict(vars(args)), train_set, test_set, num_classes, model, teacher, spec,
               method, added, weights, objective, train, test, store, store_off, precision, optimizer_settings,
               schedule_settings, optimizer, scheduler, run_dir, log, teacher_card=teacher_card,
               teacher_note=teacher_note, lr_rule=lr_rule, code_version=ckpt.code_version(),
               teacher_sha256=teacher_sha256,
               ema=ModelEma(model, args.ema) if getattr(args, "ema", None) is not None else None)


def _check_optimiser(args, kind: str, name: str) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError(OPTIMIZERS.unknown_message(name).replace("Unknown optimizer", "--optimizer: unknown"))
    if args.scheduler not in SCHEDULERS:
        raise ConfigError(SCHEDULERS.unknown_message(args.scheduler).replace("Unknown scheduler", "--scheduler: unknown"))
    if takes_two_gradients(name) and kind != "student":
        raise ConfigError(f"--optimizer {name} takes the task's and the distillation's gradients apart: a "
                          "teacher run has no distillation term")


def _teacher(args, found, task, meta, family, num_classes, info, log):
    """(the frozen teacher on the device, its card, how its input is made): built from its checkpoint,
    given its own normalisation and size when its card says it was trained on other ones."""
    source = "from --config" if args.config and args.model_t else ""
    teacher = build_teacher(found, teacher_arch(found, args.model_t, source), family, num_classes, create_model,
                            args.model_t_opts, **task.model_kwargs(args, "teacher"))
    teacher.to(info.device).eval().requires_grad_(False)
    card = teacher_card(found, getattr(teacher, "arch", args.model_t or ""), args.dataset)
    crop = int(args.data_opts.get("crop") or meta["input_size"])
    note, _ = teacher_input(teacher, card, meta["mean"], meta["std"], crop, log=log)  # a hook: kept for the run
    return teacher, card, note if note != "the run's input" else ""



def _objective(args, kind, task, num_classes, model, teacher, example, num_data, batch_per_rank, info):
    """Shapes, method, KD term, weights and the objective (a teacher run: the task's own terms, and in
    metric learning the task's teacher method)."""
    method = added = None
    weights = {"gamma": 1.0, "alpha": 0.0, "beta": 0.0}
    spec = ShapeSpec(
        student=shape_spec(model, example.to(info.device)),
        teacher=shape_spec(teacher, example.to(info.device)) if teacher is not None else {},
        num_classes=num_classes, num_data=num_data, batch_size=batch_per_rank,
        extra={"student_arch": args.model if kind == "teacher" else args.model_s,
               "teacher_arch": getattr(teacher, "arch", "")})
    if kind == "teacher":
        own = task.teacher_objective(args, spec)  # metric learning: the triplet objective
        objective = Objective([(1.0, own.to(info.device))] if own is not None else [], task.own_terms(weights))
        return spec, method, added, weights, objective
    method, added, weights, objective = build_distillation(args, task, spec, info.device)
    return spec, method, added, weights, objective


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shape_spec(model: nn.Module, example: torch.Tensor) -> Dict[str, Any]:
    """Per-sample shapes of every standard tap of ``model``, from one dry-run forward."""
    with FeatureTaps(model, standard_taps(model)) as taps:
        return taps.shapes(example)


def check_names(args, kind: str) -> None:
    """Fail on an unknown method, model or dataset before any data is read."""
    family = datasets.dataset_info(args.dataset)["family"]
    names = [args.model] if kind == "teacher" else [args.model_s] + ([args.model_t] if args.model_t else [])
    for name in names:
        if ":" not in name:
            resolve_model(name, family)
    if kind == "student":
        DISTILLERS.get(args.distill)
