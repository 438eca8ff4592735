"""What a run says about itself: the lines printed at its start and after each evaluated epoch.

Kept apart from the loop so that the loop reads as the order of events, and the wording of the
log lives in one place. Everything here reads a :class:`~engine.assembly.Run`; nothing trains.
"""
from __future__ import annotations

from typing import Callable, Dict

from engine.interrupts import fault_point
from engine.teachers.loading import check_teacher

LOADERS = {"device": "device (augmented a batch at a time on the device; --loader dataloader for PIL)",
           "dali": "DALI", "dataloader": "DataLoader"}


def describe_run(run, state, fresh: bool, evaluate: Callable) -> None:
    """The run's folder, data, recipe, loss, compute flags and teacher store; on a fresh student run,
    the teacher's own test score."""
    s = run.settings
    log = run.log
    log(f"run folder: {run.run_dir}")
    log(f"dataset {s.dataset}: {len(run.train_set)} train / {len(run.test_set)} test, {run.num_classes} classes; "
        f"processes {run.info.world_size} on {run.info.device}; loader {LOADERS[s.loader]}")
    schedule = (f"decay x{s.lr_decay_rate} after epochs {list(s.lr_decay_epochs)}" if run.schedule_settings.name == "step"
                else f"{run.schedule_settings.name} schedule, {run.schedule_settings.warmup_epochs} warm-up epochs")
    log(f"learning rate {run.lr_rule}")
    tail = "kept (--keep_last_batch)" if run.config.get("keep_last_batch") else "dropped"
    log(f"batch {s.batch_size} ({s.batch_per_rank} per process; last partial batch {tail}), "
        f"{run.optimizer_settings.name} lr {run.optimizer_settings.lr}, {schedule}, "
        f"wd {run.optimizer_settings.weight_decay}, momentum {run.optimizer_settings.momentum}, {s.epochs} epochs")
    log(f"loss = {run.objective.describe()}")
    recipe = vit_recipe(run.config)
    if recipe:
        log(f"recipe: {recipe}")
    compute = [f"--amp {run.precision.amp}" if run.precision.amp else "",
               "--channels_last" if run.precision.channels_last else "", "--compile" if s.compile else ""]
    if any(compute):
        log("compute: " + " ".join(x for x in compute if x))
    if run.store is not None:
        filled = min(run.store.filled_fraction(t) for t in run.objective.teacher_taps)
        log(f"teacher store {run.store.directory} ({', '.join(run.objective.teacher_taps)}, {s.store_dtype}): "
            f"{filled:.1%} of the views filled; the teacher runs on the others")
        for codec in (getattr(run.store, "codecs", None) or {}).values():
            log(codec.summary())
    elif run.store_off:
        log(f"teacher store {run.store_off}")
    if s.kind == "student":
        extra = sum(p.numel() for p in run.method.parameters() if p.requires_grad)
        log(f"{extra} extra trainable parameters (weights: command line, else the method's reference values)")
        log(f"teacher {getattr(run.teacher, 'arch', '')}: weights sha256 {run.teacher_sha256[:16]}..."
            + (f"; input: {run.teacher_note}" if run.teacher_note else ""))
        if fresh:  # a resumed run showed it when it started
            fault_point("teacher_eval", rank=run.info.rank)
            if run.config.get("no_teacher_check") or run.task.score_key != "top1":  # a card holds top-1
                acc = evaluate(run.teacher)
                why = "--no_teacher_check" if run.config.get("no_teacher_check") else "a card records top-1"
                log(f"teacher {getattr(run.teacher, 'arch', '')} test {run.task.describe(acc)} (not compared: {why})")
            else:
                check_teacher(run, evaluate, run.config.get("teacher_tolerance", 0.5), log=log)


def vit_recipe(config: Dict) -> str:
    """The ViT recipe's flags a run uses (``--mixup``, ``--ema``, ...), in one line ('' when none)."""
    parts = []
    if config.get("mixup") or config.get("cutmix"):
        parts.append(f"mixup {config.get('mixup') or 0:g}, cutmix {config.get('cutmix') or 0:g} (per batch, "
                     f"cutmix with p {config.get('mixup_switch_prob', 0.5):g} when both; the cross-entropy reads the "
                     "mixed targets, a method reading labels gets each image's own)")
    for key, name in (("label_smoothing", "label smoothing"), ("ema", "EMA decay"), ("clip_grad", "clip grad norm"),
                      ("drop_path", "drop path")):
        if config.get(key):
            parts.append(f"{name} {config[key]:g}")
    return "; ".join(parts)


def epoch_line(run, state, lr: float, metrics: Dict[str, float], acc: Dict[str, float]) -> str:
    """``epoch 3/240 lr 0.05 | train loss ... | test top-1 ... | 640 img/s, 3% of step time waiting for data``."""
    train = " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                     if k not in ("images_per_s", "lr", "data_wait") and not k.startswith("teacher_store"))
    line = (f"epoch {state.epoch}/{run.settings.epochs} lr {lr:.4g} | train {train} | test "
            f"{run.task.describe(acc)} | {metrics['images_per_s']:.0f} img/s, "
            f"{metrics['data_wait']:.0%} of step time waiting for data")
    if run.store is not None:
        line += (f" | teacher store {metrics['teacher_store_hits']:.0%} hits, "
                 f"{metrics['teacher_store_gb']:.2f} GB")
    return line


class Progress:
    """A progress line at least every ``DISTILLERS_PROGRESS_SECONDS`` (30) seconds when the output is
    not a terminal (a log file, nohup, SLURM), where tqdm's bar is off: batch, images/s and the epoch's
    ETA. The loss is read (a host sync) only when a line is written."""

    def __init__(self, active: bool, per_epoch: int, batch: int):
        import os
        import time

        self.active, self.per_epoch, self.batch, self.clock = active, per_epoch, batch, time.monotonic
        self.every = float(os.environ.get("DISTILLERS_PROGRESS_SECONDS", 30))
        self.started = self.last = self.clock()
        self.first_step = None

    def step(self, name: str, step: int, loss, log) -> None:
        if not self.active:
            return
        now = self.clock()
        if self.first_step is None:
            self.first_step = step - 1
        if now - self.last < self.every:
            return
        done = step - self.first_step
        rate = done * self.batch / max(now - self.started, 1e-9)
        eta = (self.per_epoch - step) * self.batch / max(rate, 1e-9)
        log(f"{name}: batch {step}/{self.per_epoch}, {rate:.0f} img/s, epoch ETA {int(eta // 60)}m{int(eta % 60):02d}s, "
            f"loss {float(loss):.4f}")
        self.last = now
