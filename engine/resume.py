"""A run's checkpoint, taken and continued: what a :class:`~engine.trainer.Trainer` writes
at a safe point, and how a new process picks the run up from it, bit for bit.

The format itself (the keys, atomic writes, ``weights_only`` reads) is
:mod:`engine.checkpoint`; this module maps a trainer's moving parts onto it: the model,
optimizer, scheduler, the method's parts and buffers, the epoch/step/phase counters, and
per rank the RNG states, the epoch's running sums and the buffers a rank holds alone.
Resume refuses what would not continue the same run (another method, architecture,
process count or hyper-parameter) with one line naming both values.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from engine import checkpoint as ckpt
from engine.config import ConfigError, resume_conflicts
from engine.distributed import gather_to_main, rank_differences
from engine.run_log import EpochTotals


def snapshot(trainer, acc: float) -> Dict[str, Any]:
    """This moment of the run as one checkpoint dict (a collective under DDP: every rank
    contributes its RNG state, its running train metrics and the buffers it holds alone;
    ranks other than 0 get ``{}``)."""
    a, method = trainer.args, trainer.method
    own = method.state_dict() if method is not None else {}
    per_rank = gather_to_main({"rng": ckpt.rng_state(), "epoch_totals": dict(trainer.epoch_totals.values),
                               "buffers": rank_differences(own)})
    if not trainer.info.is_main:
        return {}
    student = trainer.kind == "student"
    return {
        "format": ckpt.FORMAT, "arch": getattr(trainer.model, "arch", a.model_s if student else a.model),
        "num_classes": trainer.num_classes, "dataset": a.dataset, "model": trainer.model.state_dict(),
        "epoch": trainer.epoch, "step": trainer.step_in_epoch, "phase": trainer.phase,
        "init_done": trainer.init_done,
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.precision.state_dict(),  # --amp fp16's loss scale ({} otherwise)
        "distiller": own, "distiller_name": a.distill if student else "",
        "distiller_options": {k: v for k, v in vars(method).items() if k in type(method).option_names()}
        if method is not None else {},
        "shape_spec": ckpt.spec_to_dict(trainer.spec) if method is not None else {},
        "world_size": trainer.info.world_size, "ranks": per_rank, "rng": per_rank[0]["rng"],
        "config": dict(vars(a)), "weights": dict(trainer.weights),
        "code_version": ckpt.code_version(), "acc": acc, "best_acc": trainer.best_acc,
        "finished": trainer.phase == "main" and trainer.epoch > a.epochs,
    }


def resume_path(args, run_dir: str, log=print) -> Optional[str]:
    """The checkpoint to continue from, or None for a fresh start (said when ``--resume`` finds none)."""
    if not args.resume:
        return None
    if args.resume != "auto":
        return args.resume
    path = os.path.join(run_dir, "latest.pth")
    if not os.path.isfile(path):
        log(f"--resume: no latest.pth in {run_dir} yet: starting the run from the beginning")
        return None
    return path


def _check_same_run(trainer, state: Dict[str, Any], path: str) -> None:
    """Refuse a checkpoint of another run: architecture, method, process count, hyper-parameters."""
    arch = getattr(trainer.model, "arch", None)
    if state.get("arch") != arch:
        raise ckpt.CheckpointError(f"'{path}' was trained as '{state.get('arch')}', this run builds '{arch}'")
    name = trainer.args.distill if trainer.kind == "student" else ""
    if state.get("distiller_name", "") != name:
        raise ckpt.CheckpointError(f"'{path}' is a {state.get('distiller_name') or 'teacher/vanilla'} run, "
                                   f"this run is {name or 'a teacher/vanilla run'}: resume it with its own "
                                   "method, or start a new run")
    recorded_world, world = int(state.get("world_size", 1)), trainer.info.world_size
    if recorded_world != world:
        raise ckpt.CheckpointError(
            f"'{path}' was written by {recorded_world} process(es), this run has {world}: every rank's data "
            f"shard and random streams belong to that count; resume with {recorded_world} process(es)")
    changed, warnings_ = resume_conflicts(state["config"], vars(trainer.args))
    if changed:
        raise ConfigError(f"--resume: {'; '.join(changed)}. A resumed run keeps the values it started with "
                          "(drop the new flags, or pass the recorded values), or start a new run (--overwrite or "
                          "another --save_dir)")
    for text in warnings_:
        trainer.log(f"warning: --resume: {text}")


def restore(trainer, path: str) -> Dict[str, Any]:
    """Put the run of checkpoint ``path`` back into ``trainer`` (this rank's share of it) and
    return the checkpoint (an init stage's optimizer state is loaded when that stage restarts)."""
    state = ckpt.load(path)
    if state.get("format") != ckpt.FORMAT:
        raise ckpt.CheckpointError(f"'{path}' is not a distillers training checkpoint")
    ckpt.require(state, path, ("model", "epoch", "step", "phase", "init_done", "best_acc", "optimizer",
                               "scheduler", "distiller", "rng", "config"))
    _check_same_run(trainer, state, path)
    ckpt.load_weights(trainer.model, state["model"], f"checkpoint '{path}'")
    trainer.epoch, trainer.step_in_epoch = state["epoch"], state["step"]
    trainer.phase, trainer.init_done, trainer.best_acc = state["phase"], state["init_done"], state["best_acc"]
    trainer.last_acc = state.get("acc", float("nan"))
    method = trainer.method
    if method is not None:
        if method.init_stage() is not None and trainer.phase == "main":
            method.finish_init_stage()  # the init stage is over: its parts frozen, the main optimizer
            trainer.optimizer, trainer.scheduler = trainer.task.optimizer(trainer.args, trainer.main_parameters(),
                                                                          trainer.args.learning_rate)
        try:
            method.load_state_dict(state["distiller"])
        except RuntimeError as err:
            raise ckpt.CheckpointError(f"'{path}': the {trainer.args.distill} parts do not fit this run: "
                                       f"{str(err).splitlines()[0]}") from None
    if trainer.phase == "main":
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.precision.load_state_dict(state.get("scaler") or {})
    mine = (state.get("ranks") or [{"rng": state["rng"]}])[trainer.info.rank]
    if method is not None and mine.get("buffers"):
        method.load_state_dict({**method.state_dict(), **mine["buffers"]})
    trainer.epoch_totals = EpochTotals(mine.get("epoch_totals"))
    ckpt.set_rng_state(mine["rng"])
    trainer.log.purge_step = trainer.epoch  # TensorBoard drops events written after this checkpoint
    trainer.log(f"resumed from {path}: {trainer.phase} epoch {trainer.epoch}, batch {trainer.step_in_epoch}")
    return state
