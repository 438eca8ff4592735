"""The reference training recipes and the checks on the optimisation flags.

Recipe values left unset on the command line (learning rate, epochs, schedule, weight decay,
batch) come from the dataset family's recipe; the run prints where its learning rate came from.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

from engine.errors import ConfigError

RECIPES: Dict[str, Dict[str, Any]] = {
    # RepDistiller's CIFAR-100 protocol (mdistiller and GD cifar/ are identical)
    "cifar": dict(epochs=240, learning_rate=0.05, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1,
                  weight_decay=5e-4, momentum=0.9, batch_size=64),
    # SimKD / GD imagenet/ (lr 0.1 for a global batch of 256)
    "imagenet": dict(epochs=120, learning_rate=0.1, lr_decay_epochs=[30, 60, 90], lr_decay_rate=0.1,
                     weight_decay=1e-4, momentum=0.9, batch_size=256),
    # metric learning: the seeds' recipes (engine.metric_learning_flags.METRIC_RECIPES), filled in by
    # the metric task before this table is read
    "metric": {},
}
#: Students the references train at lr 0.01 on CIFAR (they override the flag silently; we print it).
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
SMALL_LR = 0.01


def apply_recipe(args: argparse.Namespace, family: str, model_name: str, log=print) -> None:
    """Fill unset optimisation values from the family's recipe, saying where lr came from."""
    recipe = RECIPES.get(family, RECIPES["cifar"])
    lr_was_set = args.learning_rate is not None
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not lr_was_set and family == "cifar" and model_name in SMALL_LR_MODELS:
        args.learning_rate = SMALL_LR
        log(f"learning rate {SMALL_LR} for {model_name} (the reference recipe for MobileNet/ShuffleNet "
            "students; set --learning_rate to override)")


def validate_numbers(args: argparse.Namespace, world_size: int = 1, log=print) -> None:
    """The optimisation flags (after the recipe) make sense, before any data is read or folder made."""
    def bad(flag: str, value, accepted: str) -> ConfigError:
        return ConfigError(f"{flag} {value}: {accepted}")

    if not isinstance(args.batch_size, int) or args.batch_size < 1:
        raise bad("--batch_size", args.batch_size, "must be a positive integer (the global batch)")
    if args.batch_size % world_size:
        raise ConfigError(f"--batch_size {args.batch_size} is not divisible by the {world_size} processes")
    if not isinstance(args.epochs, int) or args.epochs < 1:
        raise bad("--epochs", args.epochs, "must be a positive integer")
    if not args.learning_rate > 0:
        raise bad("--learning_rate", args.learning_rate, "must be positive")
    if not args.lr_decay_rate > 0:
        raise bad("--lr_decay_rate", args.lr_decay_rate, "must be positive (the lr is multiplied by it)")
    if args.weight_decay < 0:
        raise bad("--weight_decay", args.weight_decay, "must be 0 or positive")
    if not 0 <= args.momentum < 1:
        raise bad("--momentum", args.momentum, "must be in [0, 1)")
    if args.eval_freq < 1:
        raise bad("--eval_freq", args.eval_freq, "must be a positive integer")
    if getattr(args, "log_every", 0) < 0:
        raise bad("--log_every", args.log_every, "must be 0 (per epoch only) or a positive number of steps")
    if args.num_workers < 0:
        raise bad("--num_workers", args.num_workers, "must be 0 (load in the main process) or more")
    if getattr(args, "nprocs", None) is not None and args.nprocs < 1:
        raise bad("--nprocs", args.nprocs, "must be a positive integer")
    check_vit_recipe(args, bad)
    milestones = list(args.lr_decay_epochs or [])
    if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise bad("--lr_decay_epochs", ",".join(map(str, milestones)),
                  "must be increasing positive epoch numbers, e.g. 150,180,210")
    late = [m for m in milestones if m > args.epochs]
    if late and getattr(args, "scheduler", "step") == "step":
        log(f"note: lr decay epochs {late} lie beyond --epochs {args.epochs} and are never reached")


def check_vit_recipe(args: argparse.Namespace, bad) -> None:
    """The ViT recipe's flags (``--mixup``, ``--cutmix``, ``--ema``, ...): each in its range, one line if not."""
    for flag in ("mixup", "cutmix"):
        if not getattr(args, flag, 0.0) >= 0:
            raise bad(f"--{flag}", getattr(args, flag), "must be 0 (off) or a positive Beta alpha, e.g. 0.8 or 1.0")
    if not 0 <= getattr(args, "mixup_switch_prob", 0.5) <= 1:
        raise bad("--mixup_switch_prob", args.mixup_switch_prob, "must be a probability in [0, 1]")
    if not 0 <= getattr(args, "label_smoothing", 0.0) < 1:
        raise bad("--label_smoothing", args.label_smoothing, "must be in [0, 1), e.g. 0.1")
    ema = getattr(args, "ema", None)
    if ema is not None and not 0 < ema < 1:
        raise bad("--ema", ema, "must be a decay in (0, 1), e.g. 0.9999 (leave it out for no EMA)")
    drop = getattr(args, "drop_path", None)
    if drop is not None and not 0 <= drop < 1:
        raise bad("--drop_path", drop, "must be a rate in [0, 1), e.g. 0.1")
    clip = getattr(args, "clip_grad", None)
    if clip is not None and not clip > 0:
        raise bad("--clip_grad", clip, "must be a positive gradient norm, e.g. 1.0 (leave it out for no clipping)")
    if clip is not None and (args.optimizer == "dot" or getattr(args, "dot", False)):
        raise ConfigError(f"--clip_grad {clip} and --dot: DOT steps with the task's and the distillation's gradients "
                          "apart, and clipping their sum is not DOT's step; drop one of the two")


def apply_drop_path(args: argparse.Namespace) -> None:
    """``--drop_path RATE`` is ``--model_opt drop_path_rate=RATE`` of the trained network (recorded with it)."""
    rate = getattr(args, "drop_path", None)
    if rate is None:
        return
    given = args.model_opts.get("drop_path_rate")
    if given is not None and given != rate:
        raise ConfigError(f"--drop_path {rate} and --model_opt drop_path_rate={given} contradict each other: "
                          "give one of them")
    args.model_opts["drop_path_rate"] = rate


LR_RULES = ("keep", "linear")


def apply_lr_rule(args: argparse.Namespace, family: str, world_size: int) -> str:
    """Apply ``--lr_rule`` and say what it did, for the log and the run's record.

    ``keep`` (the references' behaviour): the learning rate is used as given, whatever the global batch
    and the number of processes. ``linear``: it is scaled by global batch / the recipe's batch (Goyal et
    al.), so a run on more GPUs with a larger global batch keeps the per-sample step.
    """
    rule = getattr(args, "lr_rule", "keep") or "keep"
    base = RECIPES.get(family, {}).get("batch_size")
    if rule == "keep":
        return (f"kept: lr {args.learning_rate:g} at the global batch {args.batch_size} ({world_size} process(es) x "
                f"{args.batch_size // world_size}; --lr_rule linear scales it with the batch)")
    if rule != "linear":
        raise ConfigError(f"--lr_rule {rule}: expected one of {', '.join(LR_RULES)}")
    if not base:
        raise ConfigError(f"--lr_rule linear needs the recipe's batch to scale from; the {family} recipe has none: "
                          "set --learning_rate for your batch and use --lr_rule keep")
    given = args.learning_rate
    args.learning_rate = given * args.batch_size / base
    return (f"linear: lr {args.learning_rate:g} = {given:g} x global batch {args.batch_size} / the recipe's "
            f"{base} ({world_size} process(es) x {args.batch_size // world_size})")
