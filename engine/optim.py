"""Optimisers and learning-rate schedules as registries: ``--optimizer`` and ``--scheduler``.

Each entry is built from typed values (:class:`OptimizerSettings`, :class:`ScheduleSettings`),
never from the command line's namespace. An optimiser that takes the task's and the
distillation's gradients apart declares it (``two_gradients``: DOT), so the step asks the
registry instead of probing the optimiser object.

The reference recipes stay the defaults: SGD with a step schedule (CIFAR, ImageNet), Adam
with a step schedule (metric learning). ``--optimizer adamw --scheduler cosine
--warmup_epochs 5`` is the ViT recipe. The schedule is stepped once per epoch, after it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from core.registry import Registry
from distillers.optim import DistillationOrientedTrainer

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")


@dataclass(frozen=True)
class OptimizerSettings:
    """What an optimiser is built from: its name, the learning rate and its own values."""

    name: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    options: Dict[str, Any] = field(default_factory=dict)  # e.g. DOT's delta, AdamW's betas
    no_wd_bias_norm: bool = False  # --no_wd_bias_norm: timm's filter_bias_and_bn (trainable_groups)


@dataclass(frozen=True)
class ScheduleSettings:
    """What a schedule is built from: its name, the run's length and its own values."""

    name: str
    epochs: int
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    min_lr: float = 0.0


def register_optimizer(name: str, *, two_gradients: bool = False, help: str = ""):  # noqa: A002
    """Register ``fn(params, settings) -> torch.optim.Optimizer``; ``two_gradients``: its step takes the
    task's and the distillation's gradients apart (``step_with(task, distill)``)."""
    return OPTIMIZERS.register(name, two_gradients=two_gradients, help=help)


def register_scheduler(name: str, *, help: str = ""):  # noqa: A002
    """Register ``fn(optimizer, settings) -> torch.optim.lr_scheduler.LRScheduler`` (stepped per epoch)."""
    return SCHEDULERS.register(name, help=help)


@register_optimizer("sgd", help="SGD with momentum and L2 weight decay (the CIFAR and ImageNet recipes)")
def _sgd(params, s: OptimizerSettings):
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                           nesterov=bool(s.options.get("nesterov", False)))


@register_optimizer("adam", help="Adam with L2-style weight decay (the metric-learning seeds' recipe)")
def _adam(params, s: OptimizerSettings):
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


@register_optimizer("adamw", help="AdamW, decoupled weight decay (the ViT recipes: DeiT, OFA-KD)")
def _adamw(params, s: OptimizerSettings):
    betas = tuple(s.options.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=betas,
                             eps=float(s.options.get("eps", 1e-8)))


@register_optimizer("dot", two_gradients=True,
                    help="DOT (Zhao et al. 2023): SGD with momentum - delta for the task's gradients and "
                         "momentum + delta for the distillation gradients")
def _dot(params, s: OptimizerSettings):
    return DistillationOrientedTrainer(params, lr=s.lr, momentum=s.momentum, delta=float(s.options.get("delta", 0.075)),
                                       weight_decay=s.weight_decay)


@register_scheduler("step", help="multiply the lr by --lr_decay_rate after each of --lr_decay_epochs")
def _step(optimizer, s: ScheduleSettings):
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(s.milestones), gamma=s.gamma)


@register_scheduler("cosine", help="linear warm-up over --warmup_epochs, then cosine decay to --min_lr")
def _cosine(optimizer, s: ScheduleSettings):
    base = [group["lr"] for group in optimizer.param_groups]

    def multiplier(epoch: int, base_lr: float) -> float:
        if epoch < s.warmup_epochs:
            return (epoch + 1) / (s.warmup_epochs + 1)
        span = max(1, s.epochs - s.warmup_epochs)
        progress = min(1.0, (epoch - s.warmup_epochs) / span)
        floor = s.min_lr / base_lr if base_lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    rules: List[Callable[[int], float]] = [lambda e, b=b: multiplier(e, b) for b in base]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rules)


def trainable_groups(modules: Sequence[Optional[torch.nn.Module]], settings: OptimizerSettings):
    """The trainable parameters of ``modules`` (the student, the method's own parts): one list, or with
    ``no_wd_bias_norm`` two param groups split by timm's rule (biases, 1-d weights such as norms, and a
    model's ``no_weight_decay()`` names such as a ViT's pos_embed and cls_token get no weight decay), as
    DeiT's and mmcls's ViT recipes train."""
    modules = [m for m in modules if m is not None]
    if not settings.no_wd_bias_norm:
        return [p for m in modules for p in m.parameters() if p.requires_grad]
    from timm.optim import param_groups_weight_decay

    merged = [{"params": [], "weight_decay": 0.0}, {"params": [], "weight_decay": settings.weight_decay}]
    for module in modules:
        skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else ()
        for group in param_groups_weight_decay(module, settings.weight_decay, no_weight_decay_list=skip):
            merged[1 if group["weight_decay"] else 0]["params"] += group["params"]
    return [g for g in merged if g["params"]]


def build_optimizer(params: Sequence[torch.nn.Parameter], settings: OptimizerSettings):
    return OPTIMIZERS.get(settings.name)(list(params), settings)


def build_schedule(optimizer, settings: ScheduleSettings):
    return SCHEDULERS.get(settings.name)(optimizer, settings)


def takes_two_gradients(name: str) -> bool:
    """Whether optimiser ``name`` takes the task's and the distillation's gradients apart."""
    return bool(OPTIMIZERS.meta(name).get("two_gradients"))
