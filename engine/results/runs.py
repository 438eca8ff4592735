"""Reading finished run folders: one :class:`Run` per folder, or a :class:`Skipped` saying why not.

A run folder holds ``latest.pth`` (and ``best.pth``) as written by the trainer; checkpoints are read
with ``torch.load(weights_only=True)`` through :func:`engine.checkpoint.load`. A run's last-epoch
top-1 is ``latest.pth['acc']`` (the RepDistiller convention), its best-epoch top-1 ``best.pth['acc']``
(= ``latest.pth['best_acc']``; mdistiller's). Unfinished runs (interrupted, or still in their
initialisation stage) are skipped unless asked for.
"""
from __future__ import annotations

import glob
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from engine import checkpoint as ckpt
from engine.results.labels import DOT_FLAG, canonical_options, kd_term_options, option_names

VANILLA = "vanilla"


@dataclass
class Run:
    folder: str
    dataset: str
    teacher: Optional[str]  # None for a vanilla run
    student: str
    method: str             # distiller name, or VANILLA
    weights: Tuple[float, float, float]
    options: Tuple[Tuple[str, str], ...]  # method options set on the command line
    last: float
    best: float
    seed: Optional[int]
    trial: str
    epochs: Optional[int]
    batch_size: Optional[int]
    learning_rate: Optional[float]
    teacher_checkpoint: str
    code_version: str
    recorded: Tuple[Tuple[str, str], ...] = ()  # options as recorded (before dropping reference values)
    # the checkpoint's reproduction record (engine.resume.record); None / "" for runs written before it
    world_size: Optional[int] = None
    lr_rule: str = ""
    teacher_sha256: str = ""


@dataclass
class Skipped:
    folder: str
    reason: str


def _teacher_arch(state: dict, folder: str, config: dict) -> str:
    """The teacher's architecture: recorded in the shape spec, given with --model_t, named in the
    trainer's run-folder name, recorded in the teacher checkpoint, or parsed from its path."""
    extra = (state.get("shape_spec") or {}).get("extra") or {}
    if extra.get("teacher_arch"):
        return str(extra["teacher_arch"])
    if config.get("model_t"):
        return str(config["model_t"])
    match = re.match(r"S_.+?_T_(.+?)_" + re.escape(str(state.get("dataset", ""))) + "_", os.path.basename(folder))
    if match:
        return match.group(1)
    path_t = config.get("path_t") or ""
    if path_t and os.path.isfile(path_t):
        try:
            arch = ckpt.load(path_t).get("arch")
            if arch:
                return str(arch)
        except ckpt.CheckpointError:
            pass
    return (ckpt.arch_from_path(path_t) if path_t else None) or "?"


def as_number(value) -> float:
    """A number, or NaN for a missing or unreadable value."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_run(folder: str, include_unfinished: bool = False):
    """A :class:`Run`, or a :class:`Skipped` saying why the folder does not count."""
    latest = os.path.join(folder, "latest.pth")
    try:
        state = ckpt.load(latest)
    except ckpt.CheckpointError as err:
        return Skipped(folder, str(err))
    if state.get("format") != ckpt.FORMAT:
        return Skipped(folder, "latest.pth is not a distillers training checkpoint")
    config = state.get("config") or {}
    epochs = config.get("epochs")
    last = as_number(state.get("acc"))
    finished = state.get("phase", "main") == "main" and (epochs is None or state.get("epoch", 0) > epochs)
    if not include_unfinished and (not finished or math.isnan(last)):
        where = (f"{state.get('phase')} stage" if state.get("phase") != "main" else
                 f"epoch {state.get('epoch', 0) - 1} of {epochs}")
        return Skipped(folder, f"unfinished ({where})")
    best = as_number(state.get("best_acc"))
    best_path = os.path.join(folder, "best.pth")
    if os.path.isfile(best_path):
        try:
            recorded = as_number(ckpt.load(best_path).get("acc"))
        except ckpt.CheckpointError as err:
            return Skipped(folder, str(err))
        if not math.isnan(best) and abs(recorded - best) > 1e-6:
            print(f"collect_results: {folder}: best.pth acc {recorded} != latest.pth best_acc {best}; "
                  "using best.pth", file=sys.stderr)
        best = recorded
    method = state.get("distiller_name") or VANILLA
    weights = state.get("weights") or {}
    w = tuple(float(weights.get(k, d)) for k, d in (("gamma", 1.0), ("alpha", 0.0), ("beta", 0.0)))
    options = tuple(sorted((k[len("method__"):], str(v)) for k, v in config.items()
                           if k.startswith("method__") and v is not None))
    for key, spec in kd_term_options().items():  # older runs recorded the KD term's temperature as a common flag
        value = config.get(key)
        if method != VANILLA and value not in (None, spec.default) and (w[1] or key in option_names(method)):
            options = tuple(sorted(options + ((key, str(value)),)))
    if method != VANILLA and config.get(DOT_FLAG) and DOT_FLAG not in dict(options):  # the DOT optimiser flag
        options = tuple(sorted(options + ((DOT_FLAG, "True"),)))
    teacher = None if method == VANILLA else _teacher_arch(state, folder, config)
    student = str(state.get("arch", "?"))
    recorded = options
    if method != VANILLA:
        options = canonical_options(method, (teacher, student), w, options)
    seed = config.get("seed")
    record = state.get("record") or {}
    world_size = record.get("world_size", state.get("world_size"))
    return Run(folder=folder, dataset=str(state.get("dataset", config.get("dataset", "?"))),
               teacher=teacher, student=student, method=method, weights=w, options=options,
               last=last, best=best, seed=int(seed) if seed is not None else None,
               trial=str(config.get("trial", "")), epochs=epochs, batch_size=config.get("batch_size"),
               learning_rate=config.get("learning_rate"),
               teacher_checkpoint=str(config.get("path_t") or ""), code_version=str(state.get("code_version", "")),
               recorded=recorded, world_size=int(world_size) if world_size is not None else None,
               lr_rule=str(config.get("lr_rule") or ""),  # the rule's name; the record says what it did
               teacher_sha256=str(record.get("teacher_sha256") or state.get("teacher_sha256") or ""))


def find_run_folders(patterns: Sequence[str]) -> List[str]:
    folders = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path) and os.path.basename(path) == "latest.pth":
                path = os.path.dirname(path)
            if os.path.isfile(os.path.join(path, "latest.pth")) and path not in folders:
                folders.append(path)
    return folders
