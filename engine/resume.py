"""A run's checkpoint, taken and continued: what a run writes at a safe point, and how a new process
picks the run up from it, bit for bit.

The format itself (the keys, atomic writes, ``weights_only`` reads) is :mod:`engine.checkpoint`;
this module walks the run's stateful parts (:meth:`engine.assembly.Run.parts`: model, optimiser,
schedule, loss scale, the method's parts and buffers) and its position
(:class:`engine.run_state.RunState`), plus per rank the RNG states, the epoch's running sums
and the buffers a rank holds alone. Resume refuses what would not continue the same run (another
method, architecture, process count or hyper-parameter) with one line naming both values.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from engine import checkpoint as ckpt
from engine.distributed import gather_to_main, rank_differences
from engine.errors import ConfigError
from engine.resume_rules import resume_conflicts
from engine.run_state import RunState


def snapshot(run, state: RunState, acc: float) -> Dict[str, Any]:
    """This moment of the run as one checkpoint dict (a collective under DDP: every rank contributes its
    RNG state, its running train metrics and the buffers it holds alone; ranks other than 0 get ``{}``)."""
    method = run.method
    own = method.state_dict() if method is not None else {}
    per_rank = gather_to_main({"rng": ckpt.rng_state(), "epoch_totals": dict(state.totals.values),
                               "buffers": rank_differences(own)})
    if not run.info.is_main:
        return {}
    student = run.settings.kind == "student"
    config = run.config
    out = {part.key: part.state_dict() for part in run.parts()}
    out.update(state.record())
    out.update({
        "format": ckpt.FORMAT, "arch": getattr(run.model, "arch", config.get("model_s" if student else "model")),
        "model_options": dict(config.get("model_opts") or {}),
        "num_classes": run.num_classes, "dataset": run.settings.dataset,
        "distiller": own, "distiller_name": run.settings.method_name,
        "distiller_options": {k: v for k, v in vars(method).items() if k in type(method).option_names()}
        if method is not None else {},
        "added_options": {k: v for k, v in vars(run.added_term).items() if k in type(run.added_term).option_names()}
        if run.added_term is not None else {},
        "shape_spec": ckpt.spec_to_dict(run.spec) if method is not None else {},
        "world_size": run.info.world_size, "ranks": per_rank, "rng": per_rank[0]["rng"],
        "config": dict(config), "weights": dict(run.weights),
        "code_version": run.code_version, "best_acc": state.best_acc, "acc": acc,
        "finished": state.phase == "main" and state.epoch > run.settings.epochs,
        "teacher_sha256": run.teacher_sha256, "record": record(run, state, acc),
        "card": card(run, state, acc),
    })
    return out


def record(run, state: RunState, acc: float) -> Dict[str, Any]:
    """What a number needs to be reproduced: processes, per-process and global batch, the learning-rate rule
    applied, the teacher's weights, last and best accuracy (the collector reads it)."""
    s = run.settings
    return {"world_size": run.info.world_size, "batch_per_process": s.batch_per_rank, "global_batch": s.batch_size,
            "lr_rule": run.lr_rule, "learning_rate": run.optimizer_settings.lr, "teacher_sha256": run.teacher_sha256,
            "last_acc": acc, "best_acc": state.best_acc, "seed": s.seed, "code_version": run.code_version}


def card(run, state: RunState, acc: float) -> Dict[str, Any]:
    """The card of the network this checkpoint holds, so that it can be used as a teacher and checked
    (engine/teachers/card.py): its weights' hash, its input, its scores at this point, the run."""
    from data import dataset_info
    from engine.teachers.card import make_card, recipe_from_config

    config, s = run.config, run.settings
    meta = dataset_info(s.dataset)
    classification = run.task.score_key == "top1"
    return make_card(run.model, arch=getattr(run.model, "arch", config.get("model_s") or config.get("model")),
                     model_options=config.get("model_opts"), dataset=s.dataset, num_classes=run.num_classes,
                     mean=meta["mean"], std=meta["std"], input_size=meta["input_size"],
                     crop=int((config.get("data_opts") or {}).get("crop") or meta["input_size"]),
                     top1=acc if classification and acc == acc else None,
                     top5=state.last_top5 if classification and state.last_top5 == state.last_top5 else None,
                     recipe=recipe_from_config(config), world_size=run.info.world_size,
                     batch_per_process=s.batch_per_rank, seed=s.seed, code_version=run.code_version)


def resume_path(resume: Optional[str], run_dir: str, log=print) -> Optional[str]:
    """The checkpoint to continue from, or None for a fresh start (said when ``--resume`` finds none)."""
    if not resume:
        return None
    if resume != "auto":
        return resume
    path = os.path.join(run_dir, "latest.pth")
    if not os.path.isfile(path):
        log(f"--resume: no latest.pth in {run_dir} yet: starting the run from the beginning")
        return None
    return path


def _check_same_run(run, state: Dict[str, Any], path: str) -> None:
    """Refuse a checkpoint of another run: architecture, method, process count, hyper-parameters."""
    arch = getattr(run.model, "arch", None)
    if state.get("arch") != arch:
        raise ckpt.CheckpointError(f"'{path}' was trained as '{state.get('arch')}', this run builds '{arch}'")
    name = run.settings.method_name
    if state.get("distiller_name", "") != name:
        raise ckpt.CheckpointError(f"'{path}' is a {state.get('distiller_name') or 'teacher/vanilla'} run, "
                                   f"this run is {name or 'a teacher/vanilla run'}: resume it with its own "
                                   "method, or start a new run")
    recorded_teacher = state.get("teacher_sha256") or ""
    if recorded_teacher and run.teacher_sha256 and recorded_teacher != run.teacher_sha256:
        raise ConfigError(f"--resume: '{path}' was distilled from the teacher whose weights hash "
                          f"{recorded_teacher[:16]}..., --path_t {run.config.get('path_t')} holds "
                          f"{run.teacher_sha256[:16]}...: give the run's own teacher, or start a new run")
    recorded_world, world = int(state.get("world_size", 1)), run.info.world_size
    if recorded_world != world:
        raise ckpt.CheckpointError(
            f"'{path}' was written by {recorded_world} process(es), this run has {world}: every rank's data "
            f"shard and random streams belong to that count; resume with {recorded_world} process(es)")
    changed, warnings_ = resume_conflicts(state["config"], run.config)
    if changed:
        raise ConfigError(f"--resume: {'; '.join(changed)}. A resumed run keeps the values it started with "
                          "(drop the new flags, or pass the recorded values), or start a new run (--overwrite or "
                          "another --save_dir)")
    for text in warnings_:
        run.log(f"warning: --resume: {text}")


def restore(run, path: str, enter_main: Callable[[], Any]) -> Tuple[RunState, Dict[str, Any]]:
    """Put the run of checkpoint ``path`` back into ``run`` (this rank's share of it): (its position,
    the checkpoint). ``enter_main`` makes the main stage the current one, for a checkpoint written after
    an initialisation stage; an init stage's optimiser state is loaded when that stage restarts."""
    state = ckpt.load(path)
    if state.get("format") != ckpt.FORMAT:
        raise ckpt.CheckpointError(f"'{path}' is not a distillers training checkpoint")
    ckpt.require(state, path, ("model", "epoch", "step", "phase", "init_done", "best_acc", "optimizer",
                               "scheduler", "distiller", "rng", "config"))
    _check_same_run(run, state, path)
    if state["phase"] == "main" and run.method is not None and run.method.init_stage() is not None:
        enter_main()  # the init stage is over: its parts frozen, the main optimiser
    skip = {"optimizer", "scheduler"} if state["phase"] == "init" else set()
    for part in run.parts():
        if part.key in skip:
            continue
        value = state.get(part.key) or {} if part.key == "scaler" else state[part.key]  # --amp fp16 only
        try:
            part.load_state_dict(value)
        except ckpt.CheckpointError as err:
            raise ckpt.CheckpointError(f"'{path}': {err}") from None
        except RuntimeError as err:
            raise ckpt.CheckpointError(f"'{path}': the {part.key} state does not fit this run: "
                                       f"{str(err).splitlines()[0]}") from None
    mine = (state.get("ranks") or [{"rng": state["rng"]}])[run.info.rank]
    if run.method is not None and mine.get("buffers"):
        run.method.load_state_dict({**run.method.state_dict(), **mine["buffers"]})
    ckpt.set_rng_state(mine["rng"])
    position = RunState.from_record(state, mine.get("epoch_totals") or {})
    run.log.purge_step = position.epoch  # TensorBoard drops events written after this checkpoint
    return position, state
