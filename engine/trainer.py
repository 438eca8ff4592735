"""The one training loop, for teachers and students, on one process or many.

A teacher run is a student run without a teacher and without a distiller. A
student step taps the student (and, under ``no_grad``, the teacher) with forward
hooks, hands the features to the distiller, and minimises
``gamma * CE + alpha * KD + beta * method``. Initialisation stages (AB, FT, FSP)
run first through the same epoch loop. Every epoch ends with ``latest.pth`` (and
``best.pth``); Ctrl-C writes ``latest.pth`` at the exact batch reached, and
``--resume`` continues from it bit for bit on CPU (mid-epoch: with ``--num_workers 0``,
since worker processes draw their augmentation from per-epoch seeds).
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data as datasets
from distillers import Distiller, FeatureTaps, ShapeSpec, build_distiller
from distillers.base import DISTILLERS
from distillers.taps import standard_taps
from engine import checkpoint as ckpt
from engine.config import ConfigError, apply_recipe, method_options
from engine.distributed import DistInfo, all_reduce_sum, average_gradients
from engine.loaders import eval_loader
from engine.tasks import TASKS, unpack
from models import create_model
from models.registry import resolve_model


class Logger:
    """Rank-0 printing and TensorBoard scalars; silent on other ranks."""

    def __init__(self, info: DistInfo, run_dir: Optional[str], tensorboard: bool):
        self.info = info
        self.writer = None
        if info.is_main and run_dir and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run_dir, "tb"))

    def __call__(self, *msg: Any) -> None:
        if self.info.is_main:
            print(*msg, flush=True)

    def scalars(self, prefix: str, values: Dict[str, float], step: int) -> None:
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def spec_to_dict(spec: ShapeSpec) -> Dict[str, Any]:
    out = asdict(spec)
    out["extra"] = {k: v for k, v in spec.extra.items() if isinstance(v, (str, int, float, bool))}
    return out


def spec_from_dict(values: Dict[str, Any]) -> ShapeSpec:
    def fix(shapes):
        return {k: ([tuple(s) for s in v] if v and isinstance(v[0], (list, tuple)) else tuple(v))
                for k, v in shapes.items()}
    return ShapeSpec(**{**values, "student": fix(values["student"]), "teacher": fix(values["teacher"])})


def shape_spec(model: nn.Module, example: torch.Tensor) -> Dict[str, Any]:
    with FeatureTaps(model, standard_taps(model)) as taps:
        return taps.shapes(example)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        self._rng_at_step = None  # RNG state after the last optimizer step (mid-epoch saves)
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
        root = args.data_root or datasets.default_data_root()
        self.train_set = datasets.build_dataset(args.dataset, root, "train", **args.data_opts)
        self.test_set = datasets.build_dataset(args.dataset, root, "test", **args.data_opts)
        self.num_classes = self.train_set.num_classes
        model_name = args.model if self.kind == "teacher" else args.model_s
        apply_recipe(args, self.family, model_name, log=self.log)
        if args.batch_size % self.info.world_size:
            raise ConfigError(f"--batch_size {args.batch_size} is not divisible by the "
                              f"{self.info.world_size} processes")
        self.batch_per_rank = args.batch_size // self.info.world_size
        example = torch.zeros((2,) + tuple(self.test_set[0][0].shape))

        self.model = create_model(model_name, num_classes=self.num_classes,
                                  **self.task.model_kwargs(args, "student" if self.kind == "student" else "model"),
                                  family=None if ":" in model_name else self.family).to(self.device)
        self.teacher = self.method = self.kd = None
        self.gamma, self.alpha, self.beta = 1.0, 0.0, 0.0
        if self.kind == "student":
            self._build_distillation(example)
        self.run_dir = args.save_dir or os.path.join(args.save_root, f"{self.kind}s", self.run_name())
        self.log = Logger(self.info, self.run_dir, not args.no_tensorboard)
        self._build_loaders()
        self._build_taps()
        self.optimizer, self.scheduler = self._optimizer(self._main_parameters(), args.learning_rate)
        seed_everything(args.seed + self.info.rank)  # distinct augmentation streams per rank

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
        args = self.args
        if not args.path_t:
            raise ConfigError("train_student.py needs a teacher checkpoint: --path_t PATH")
        self.teacher = load_teacher(args.path_t, args.model_t, self.family, self.num_classes,
                                    **self.task.model_kwargs(args, "teacher"))
        self.teacher.to(self.device).eval().requires_grad_(False)
        cls = DISTILLERS.get(args.distill)
        weights = dict(cls.default_weights)
        for key in ("gamma", "alpha", "beta"):
            if getattr(args, key) is not None:
                weights[key] = getattr(args, key)
        self.gamma, self.alpha, self.beta = weights["gamma"], weights["alpha"], weights["beta"]
        options = method_options(args)
        stray = sorted(set(options) - set(cls.option_names()))
        if stray:
            raise ConfigError(f"option(s) {', '.join('--' + s for s in stray)} do not apply to --distill "
                              f"{args.distill}; its options: {', '.join(cls.option_names()) or 'none'}")
        if "kd_T" in cls.option_names():
            options.setdefault("kd_T", args.kd_T)
        spec = ShapeSpec(student=shape_spec(self.model, example.to(self.device)),
                         teacher=shape_spec(self.teacher, example.to(self.device)),
                         num_classes=self.num_classes, num_data=len(self.train_set),
                         batch_size=self.batch_per_rank,
                         extra={"student_arch": args.model_s, "teacher_arch": getattr(self.teacher, "arch", "")})
        self.spec = spec
        if args.distill == "kd":
            if self.beta:
                raise ConfigError("--distill kd has no method term: -b/--beta must be 0 "
                                  "(KD is weighted by -a/--alpha)")
            self.alpha = weights["alpha"]
        else:
            try:
                self.method = build_distiller(args.distill, spec, **options).to(self.device)
            except (ValueError, TypeError) as err:  # the method's own message says why
                raise ConfigError(f"--distill {args.distill} with teacher {spec.extra['teacher_arch']} and "
                                  f"student {args.model_s}: {err}") from None
        if self.alpha:
            self.kd = build_distiller("kd", spec, kd_T=args.kd_T).to(self.device)
        if self.method is not None and self.method.init_stage() is not None:
            self.phase = "init"
        if self.method is not None and self.method.init_stage() is not None and not self.method.student_taps \
                and self.beta:
            warnings.warn(f"--distill {args.distill} has no main-stage loss: -b {self.beta} has no effect "
                          "(its loss acts in the initialisation stage)")

    def _wrap_train_set(self):
        keys = set(self.method.batch_keys) if self.method is not None else set()
        if "contrast_idx" in keys:
            return datasets.WithContrast(self.train_set, k=int(self.method.nce_k),
                                         mode=getattr(self.method, "mode", "exact"), seed=self.args.seed)
        if "index" in keys:
            return datasets.WithIndex(self.train_set)
        return self.train_set

    def _build_loaders(self) -> None:
        args = self.args
        train = self._wrap_train_set()
        pin = self.device.type == "cuda"
        if args.dali:
            from data.dali import dali_loaders  # lazily: CIFAR runs never import DALI
            self.train_loader, self.test_loader = dali_loaders(args, self.info, self.batch_per_rank, train,
                                                               self.test_set)
        else:
            self.train_loader = self.task.train_loader(args, self.info, train, self.batch_per_rank, pin)
            self.test_loader = eval_loader(self.test_set, self.info, max(1, self.batch_per_rank // 2),
                                           max(0, args.num_workers // 2), pin)
        if len(self.train_loader) == 0:
            raise ConfigError(f"the training set ({len(train)} samples) is smaller than one batch "
                              f"({self.batch_per_rank} per process)")

    def _build_taps(self, stage=None) -> None:
        """Taps for the main stage, or for an initialisation stage when ``stage`` is given."""
        method = self.method
        s_names = ["logits"] + list(stage.student_taps if stage else (method.student_taps if method else []))
        t_names = list(stage.teacher_taps if stage else (method.teacher_taps if method else []))
        if self.kd is not None and not stage:
            t_names.append("logits")
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
        if self.kind == "teacher":
            return clean(f"{a.model}_{a.dataset}_lr_{a.learning_rate}_decay_{a.weight_decay}_trial_{a.trial}")
        t_arch = getattr(self.teacher, "arch", "teacher")
        return clean(f"S_{a.model_s}_T_{t_arch}_{a.dataset}_{a.distill}_r_{self.gamma}_a_{self.alpha}"
                     f"_b_{self.beta}_trial_{a.trial}")

    # ------------------------------------------------------------------ steps
    def losses(self, x, y, extras, stage=None) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One forward: (total loss, the student's prediction, named terms)."""
        s = self.s_taps(x)
        t = {}
        if self.t_taps is not None:
            with torch.no_grad():
                t = self.t_taps(x)
        batch = {"labels": y, "epoch": self.epoch, **extras}
        if stage is not None:
            terms = self.method.init_forward(s, t, batch)
            return Distiller.total(terms), s["logits"], terms
        out = self.method(s, t, batch) if self.method is not None else {}
        return self.task.combine(self, s, t, y, out)

    def _train_epoch(self, optimizer, stage=None) -> Dict[str, float]:
        self.model.train()
        if self.method is not None:
            self.method.train()
        # an initialisation epoch gets its own shuffle (negative epoch ids)
        self.train_loader.set_epoch(self.epoch if stage is None else -self.epoch, skip=self.step_in_epoch)
        sums: Dict[str, float] = {}
        seen = correct = 0
        started = time.perf_counter()
        show = self.info.is_main and sys.stderr.isatty()
        name = f"init {self.epoch}/{stage.epochs}" if stage else f"epoch {self.epoch}/{self.args.epochs}"
        bar = tqdm(self.train_loader, desc=name, disable=not show, leave=False, dynamic_ncols=True)
        extra_params = [p for p in self.method.parameters() if p.requires_grad] if self.method else []
        for batch in bar:
            x, y, extras = unpack(batch, self.device)
            loss, logits, terms = self.losses(x, y, extras, stage)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch}: "
                                         f"terms {({k: float(v) for k, v in terms.items()})}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(extra_params)
            optimizer.step()
            self.step_in_epoch += 1
            self._rng_at_step = ckpt.rng_state()  # before the next batch draws its augmentation
            n = y.shape[0]
            seen += n
            correct += self.task.train_correct(logits.detach(), y)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * n
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elapsed = time.perf_counter() - started
        totals = all_reduce_sum(torch.tensor([seen, correct] + list(sums.values()), dtype=torch.float64))
        seen_all = max(totals[0].item(), 1.0)
        metrics = {k: totals[i + 2].item() / seen_all for i, k in enumerate(sums)}
        if self.task.train_accuracy:
            metrics["top1"] = 100.0 * totals[1].item() / seen_all
        metrics["images_per_s"] = totals[0].item() / max(elapsed, 1e-9)
        self.step_in_epoch = 0
        return metrics

    def evaluate(self, model: Optional[nn.Module] = None, head: Optional[nn.Module] = None) -> Dict[str, float]:
        return self.task.evaluate(model or self.model, self.test_loader, self.device, head)

    # ------------------------------------------------------------- checkpoints
    def state(self, acc: float) -> Dict[str, Any]:
        a = self.args
        return {
            "format": ckpt.FORMAT, "arch": getattr(self.model, "arch", a.model if self.kind == "teacher" else a.model_s),
            "num_classes": self.num_classes, "dataset": a.dataset, "model": self.model.state_dict(),
            "epoch": self.epoch, "step": self.step_in_epoch, "phase": self.phase, "init_done": self.init_done,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "distiller": self.method.state_dict() if self.method is not None else {},
            "distiller_name": a.distill if self.kind == "student" else "",
            "distiller_options": {k: v for k, v in vars(self.method).items() if k in type(self.method).option_names()}
            if self.method is not None else {},
            "shape_spec": spec_to_dict(self.spec) if self.method is not None else {},
            "rng": self._rng_at_step if self.step_in_epoch else ckpt.rng_state(), "config": {k: v for k, v in vars(a).items()},
            "weights": {"gamma": self.gamma, "alpha": self.alpha, "beta": self.beta},
            "code_version": ckpt.code_version(), "acc": acc, "best_acc": self.best_acc,
        }

    def save(self, name: str, acc: float) -> str:
        path = os.path.join(self.run_dir, name)
        if self.info.is_main:
            ckpt.save_atomic(self.state(acc), path)
        return path

    def resume(self, path: str) -> None:
        state = ckpt.load(path)
        if state.get("format") != ckpt.FORMAT:
            raise ckpt.CheckpointError(f"'{path}' is not a distillers training checkpoint")
        arch = getattr(self.model, "arch", None)
        if state.get("arch") != arch:
            raise ckpt.CheckpointError(f"'{path}' was trained as '{state.get('arch')}', this run builds '{arch}'")
        self.model.load_state_dict(state["model"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step"]
        self.phase, self.init_done, self.best_acc = state["phase"], state["init_done"], state["best_acc"]
        if self.method is not None:
            stage = self.method.init_stage()
            if stage is not None and self.phase == "main":
                self.method.finish_init_stage()
                self.optimizer, self.scheduler = self._optimizer(self._main_parameters(), self.args.learning_rate)
            self.method.load_state_dict(state["distiller"])
        if self.phase == "main":
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self._resume_state = state
        ckpt.set_rng_state(state["rng"])
        self.log(f"resumed from {path}: {self.phase} epoch {self.epoch}, batch {self.step_in_epoch}")

    # -------------------------------------------------------------------- run
    def fit(self) -> Dict[str, float]:
        args = self.args
        if self.info.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
        self._resume_state = None
        if args.resume:
            self.resume(os.path.join(self.run_dir, "latest.pth") if args.resume == "auto" else args.resume)
        self.describe()
        try:
            if self.phase == "init":
                self._run_init_stage()
            result = self._run_main()
        except KeyboardInterrupt:
            path = self.save("latest.pth", float("nan"))
            self.log(f"\ninterrupted: state saved to {path}; continue with --resume")
            raise
        finally:
            self.log.close()
            for taps in (self.s_taps, self.t_taps):
                if taps is not None:
                    taps.close()
        return result

    def describe(self) -> None:
        a = self.args
        self.log(f"run folder: {self.run_dir}")
        self.log(f"dataset {a.dataset}: {len(self.train_set)} train / {len(self.test_set)} test, "
                 f"{self.num_classes} classes; processes {self.info.world_size} on {self.device}")
        self.log(f"batch {a.batch_size} ({self.batch_per_rank} per process; last partial batch dropped), "
                 f"lr {a.learning_rate}, decay x{a.lr_decay_rate} after epochs {a.lr_decay_epochs}, "
                 f"wd {a.weight_decay}, momentum {a.momentum}, {a.epochs} epochs")
        if self.kind == "student":
            extra = sum(p.numel() for p in self.method.parameters() if p.requires_grad) if self.method else 0
            method = f" + {self.beta} * {a.distill}" if self.method is not None else ""
            self.log(f"distill {a.distill}: loss = {self.gamma} * CE + {self.alpha} * KD(T={a.kd_T}){method}; "
                     f"{extra} extra trainable parameters (weights: command line, else the reference's)")
            if self.epoch == 1 and self.step_in_epoch == 0:
                acc = self.evaluate(self.teacher)
                self.log(f"teacher {getattr(self.teacher, 'arch', '')} test {self.task.describe(acc)}")

    def _run_init_stage(self) -> None:
        stage = self.method.init_stage()
        self.phase = "init"
        params = list(stage.parameters) + (list(self.model.parameters()) if stage.trains_student else [])
        lr = stage.lr if stage.lr is not None else self.args.learning_rate
        optimizer = torch.optim.SGD(params, lr=lr, momentum=self.args.momentum,
                                    weight_decay=self.args.weight_decay)
        if self._resume_state is not None and self._resume_state.get("phase") == "init":
            optimizer.load_state_dict(self._resume_state["optimizer"])
        self._build_taps(stage)
        main_optimizer, self.optimizer = self.optimizer, optimizer
        self.log(f"initialisation stage of {self.args.distill}: {stage.epochs} epochs at lr {lr}"
                 f"{' (student backbone trained too)' if stage.trains_student else ''}")
        self.epoch = self.init_done + 1
        while self.init_done < stage.epochs:
            metrics = self._train_epoch(optimizer, stage)
            self.init_done += 1
            self.log(f"init epoch {self.init_done}/{stage.epochs}: loss {metrics['loss']:.4f}")
            self.log.scalars("init", metrics, self.init_done)
            self.epoch = self.init_done + 1
            self.save("latest.pth", float("nan"))
        self.method.finish_init_stage()
        self.phase, self.epoch = "main", 1
        self.optimizer, self.scheduler = self._optimizer(self._main_parameters(), self.args.learning_rate)
        del main_optimizer
        self._build_taps()

    def _run_main(self) -> Dict[str, float]:
        args, key = self.args, self.task.score_key
        acc = {key: float("nan")}
        while self.epoch <= args.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            metrics = self._train_epoch(self.optimizer)
            self.scheduler.step()
            metrics["lr"] = lr
            self.log.scalars("train", metrics, self.epoch)
            evaluated = self.epoch % args.eval_freq == 0 or self.epoch == args.epochs
            if evaluated:
                acc = self.evaluate(head=self._inference_head())
                self.log.scalars("test", acc, self.epoch)
                train = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("images_per_s", "lr"))
                self.log(f"epoch {self.epoch}/{args.epochs} lr {lr:.4g} | train {train} | test "
                         f"{self.task.describe(acc)} | {metrics['images_per_s']:.0f} img/s")
            improved = evaluated and acc[key] > self.best_acc
            if improved:
                self.best_acc = acc[key]
            self.epoch += 1
            if improved:
                self.save("best.pth", acc[key])
            self.save("latest.pth", acc[key])
        self.log(f"final test {key} {acc[key]:.2f} (best {self.best_acc:.2f}), checkpoints in {self.run_dir}")
        return {**acc, f"best_{key}": self.best_acc}

    def _inference_head(self) -> Optional[nn.Module]:
        return self.method.inference_head() if self.method is not None else None


def evaluate_checkpoint(args, info: DistInfo) -> Dict[str, float]:
    """``train_student.py --evaluate --path_s CKPT``: the saved student alone, no teacher."""
    state = ckpt.load(args.path_s)
    if state.get("format") != ckpt.FORMAT:
        raise ckpt.CheckpointError(f"'{args.path_s}' is not a distillers checkpoint")
    dataset = args.dataset if args.dataset != "cifar100" or "dataset" not in state else state["dataset"]
    meta = datasets.dataset_info(dataset)
    task = TASKS.build(meta.get("task", "classification"))
    task.configure(args, "eval")
    test_set = datasets.build_dataset(dataset, args.data_root or datasets.default_data_root(), "test",
                                      **(args.data_opts or state["config"].get("data_opts", {})))
    arch = state["arch"]
    model = create_model(arch, num_classes=state["num_classes"], family=None if ":" in arch else meta["family"],
                         **task.eval_model_kwargs(args, state)).to(info.device)
    ckpt.load_weights(model, state["model"], f"student checkpoint '{args.path_s}'")
    head = None
    if state.get("distiller_name") and state.get("shape_spec"):
        method = build_distiller(state["distiller_name"], spec_from_dict(state["shape_spec"]),
                                 **state.get("distiller_options", {}))
        method.load_state_dict(state["distiller"])
        head = method.inference_head()
        if head is not None:
            head.to(info.device)
    loader = eval_loader(test_set, info, max(1, (args.batch_size or 64) // 2), max(0, args.num_workers // 2))
    acc = task.evaluate(model, loader, info.device, head)
    if info.is_main:
        recorded = state.get("acc")
        print(f"{arch} ({args.path_s}): test {task.describe(acc)}"
              + (f" (recorded at training time: {recorded:.2f}%)" if isinstance(recorded, float)
                 and not math.isnan(recorded) else ""), flush=True)
    return acc

