#!/usr/bin/env python
"""Reproduce one published CIFAR-100 cell with N seeds, and print reported vs reproduced.

    python scripts/reproduce.py kd/resnet56_resnet20 --teacher resnet56@cifar100 --seeds 0 1 2
    python scripts/reproduce.py configs/cifar100/dkd/resnet32x4_resnet8x4.yaml --teacher resnet32x4@cifar100 \\
        --seeds 0 1 2 3 4 --dry-run
    python scripts/reproduce.py kd/resnet56_resnet20 --teacher save/teachers/resnet56_vanilla/best.pth -- --gpu_id 0

CELL is ``<row>/<teacher>_<student>`` (a file of ``configs/cifar100/``) or a config path; the
teacher is a zoo name (``NAME@DATASET``: downloaded and verified on first use,
engine/teachers/zoo.py) or a checkpoint path; flags after ``--`` go to every
``train_student.py`` run. Each seed runs in ``<save_root>/reproduce/<row>/<pair>/seed_<s>``
with ``--seed s --trial s``, one after another. Re-running the command is safe: a finished run
is skipped, an interrupted one continues with ``--resume``. At the end it prints, per seed and
over the seeds, last-epoch and best-epoch top-1 (mean ± sample std), world size, global batch
and the teacher's weights hash beside the published number, then one JSON line holding
everything needed to rerun the cell. Exit status: 0 when every seed finished, 1 when a run
failed or is unfinished, 2 for a bad argument.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from core.registry import Registry  # noqa: E402
from engine import checkpoint as ckpt  # noqa: E402
from engine.teachers import zoo  # noqa: E402
from engine.teachers.card import weights_sha256  # noqa: E402

CONFIG_ROOT = os.path.join(REPO, "configs", "cifar100")
_PUBLISHED = re.compile(r"^#\s*Published top-1:\s*([0-9.]+)\s*\(([^;)]*)")


class ReproduceError(ValueError):
    """A cell, teacher or seed list that cannot be run; one line."""


def cell_config(cell: str, config_root: str = CONFIG_ROOT) -> Tuple[str, str]:
    """``(label 'row/pair', config path)`` of CELL, or a one-line error with the closest names."""
    if cell.endswith((".yaml", ".yml")):
        if not os.path.isfile(cell):
            raise ReproduceError(f"cell config '{cell}' does not exist")
        path = os.path.abspath(cell)
        return f"{os.path.basename(os.path.dirname(path))}/{os.path.splitext(os.path.basename(path))[0]}", path
    row, _, pair = cell.partition("/")
    if not pair:
        raise ReproduceError(f"cell '{cell}': expected ROW/TEACHER_STUDENT (e.g. kd/resnet56_resnet20) or a config "
                             "path")
    rows = sorted(d for d in os.listdir(config_root) if os.path.isdir(os.path.join(config_root, d)))
    if row not in rows:
        raise ReproduceError(Registry("cell row").unknown_message(row, rows))
    pairs = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(config_root, row)) if f.endswith(".yaml"))
    if pair not in pairs:
        raise ReproduceError(Registry(f"{row} cell").unknown_message(pair, pairs))
    return f"{row}/{pair}", os.path.abspath(os.path.join(config_root, row, pair + ".yaml"))


def published(config: str) -> Tuple[Optional[float], str]:
    """The number and source key the config's header gives (``# Published top-1: 70.66 (R; ...)``)."""
    with open(config, encoding="utf-8") as fh:
        for line in fh:
            match = _PUBLISHED.match(line)
            if match:
                return float(match.group(1)), match.group(2).strip()
    return None, ""


def teacher_file(teacher: str, expected_arch: Optional[str], dry_run: bool) -> Tuple[str, Optional[str]]:
    """``(path, arch)`` of ``--teacher``: a zoo name (fetched unless ``dry_run``) or a checkpoint path."""
    if zoo.is_zoo_name(teacher):
        found = zoo.lookup(teacher)  # checked before anything is downloaded
        arch = found.entry.get("arch")
        if expected_arch and arch and arch != expected_arch:
            raise ReproduceError(f"--teacher {teacher} is a {arch}, the cell distils a {expected_arch} teacher")
        return (found.path if dry_run else zoo.resolve(teacher).path), arch
    if not dry_run and not os.path.isfile(teacher):
        raise ReproduceError(f"--teacher '{teacher}' is neither an existing checkpoint nor a zoo name NAME@DATASET")
    return teacher, None


def teacher_hash(path: str) -> Optional[str]:
    """The teacher's weights hash (engine/teachers/card.py), None before the file exists."""
    if not os.path.isfile(path):
        return None
    return weights_sha256(ckpt.model_state(ckpt.load(path)))


def run_state(folder: str) -> Tuple[str, Dict[str, Any]]:
    """'new', 'resume' (an interrupted run) or 'done' (finished), with the latest checkpoint."""
    latest = os.path.join(folder, "latest.pth")
    if not os.path.isfile(latest):
        return "new", {}
    state = ckpt.load(latest)
    return ("done" if state.get("finished") else "resume"), state


def command(python: str, config: str, teacher: str, seed: int, folder: str, extra: Sequence[str],
            resume: bool) -> List[str]:
    cmd = [python, os.path.join(REPO, "train_student.py"), "--config", config, "--path_t", teacher,
           "--seed", str(seed), "--trial", str(seed), "--save_dir", folder, *extra]
    return cmd + (["--resume"] if resume else [])


def _stats(values: List[float]) -> Dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "values": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def _pm(stats: Dict[str, Any]) -> str:
    return "n/a" if stats["mean"] is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def summarise(label: str, config: str, folders: Dict[int, str], reported: Optional[float], source: str,
              record: Dict[str, Any], log=print) -> Dict[str, Any]:
    """Print each seed's and the cell's reported vs reproduced numbers; return the JSON record."""
    last, best, worlds, batches, missing = [], [], set(), set(), []
    log(f"cell {label} ({config}): reported {reported if reported is not None else 'n/a'}"
        f"{f' ({source})' if source else ''}")
    for seed, folder in folders.items():
        state_name, state = run_state(folder)
        if state_name != "done":
            missing.append(seed)
            log(f"  seed {seed}: {'not started' if state_name == 'new' else 'unfinished'} ({folder})")
            continue
        last.append(float(state["acc"]))
        best.append(float(state["best_acc"]))
        worlds.add(int(state.get("world_size", 1)))
        batches.add((state.get("config") or {}).get("batch_size"))
        log(f"  seed {seed}: last {last[-1]:.2f} best {best[-1]:.2f} ({folder})")
    record.update(last=_stats(last), best=_stats(best), world_size=sorted(worlds), global_batch=sorted(
        b for b in batches if b is not None), unfinished_seeds=missing, reported=reported, reported_source=source)
    sha = record.get("teacher_sha256")
    log(f"  reproduced over {len(last)} of {len(folders)} seeds: last {_pm(record['last'])}, best "
        f"{_pm(record['best'])}; world size {record['world_size'] or 'n/a'}, global batch "
        f"{record['global_batch'] or 'n/a'}; teacher sha256 {sha[:16] + '...' if sha else 'unknown'}")
    log(json.dumps(record, sort_keys=True))
    return record


def parse_args(argv: Sequence[str]):
    argv = list(argv)
    extra: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="scripts/reproduce.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", help="ROW/TEACHER_STUDENT (a file of configs/cifar100/) or a config path")
    parser.add_argument("--teacher", required=True, help="NAME@DATASET (zoo) or a teacher checkpoint path")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed (default 0 1 2)")
    parser.add_argument("--save_root", default="save", help="runs go to <save_root>/reproduce/<row>/<pair>/seed_<s>")
    parser.add_argument("--config_root", default=CONFIG_ROOT, help="where ROW/PAIR cells are looked up")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the commands (and which runs would be skipped or resumed); run nothing")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs train_student.py")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise ReproduceError(f"--seeds lists a seed twice: {args.seeds}")
    return args, extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = parse_args(given)
        label, config = cell_config(args.cell, args.config_root)
        with open(config, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
        reported, source = published(config)
        path_t, _ = teacher_file(args.teacher, values.get("model_t"), args.dry_run)
        sha = teacher_hash(path_t)
    except (ValueError, OSError) as err:  # ReproduceError, ZooError, DownloadError, CheckpointError
        print(f"error: {err}", file=sys.stderr)
        return 2
    path_t = os.path.abspath(path_t)  # the runs start in the repository: every path absolute
    cell_root = os.path.join(os.path.abspath(args.save_root), "reproduce", *label.split("/"))
    folders = {s: os.path.join(cell_root, f"seed_{s}") for s in args.seeds}
    print(f"teacher {args.teacher}: {path_t} "
          + (f"(weights sha256 {sha[:16]}...)" if sha else "(not there yet: a real run fetches it)"), flush=True)
    failed = []
    for seed, folder in folders.items():
        state_name, _ = run_state(folder)
        if state_name == "done":
            print(f"seed {seed}: finished in {folder}, skipped", flush=True)
            continue
        cmd = command(args.python, config, path_t, seed, folder, extra, resume=state_name == "resume")
        print(f"+ {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            failed.append(seed)
    print(f"results: {cell_root}", flush=True)
    if args.dry_run:
        return 0
    record = {"cell": label, "config": config, "teacher": args.teacher, "teacher_path": path_t, "teacher_sha256": sha,
              "seeds": list(args.seeds), "train_student_extra": extra, "save_root": args.save_root,
              "rerun": shlex.join(["python", "scripts/reproduce.py", *given])}
    record = summarise(label, config, folders, reported, source, record)
    if failed:
        print(f"failed: seed(s) {', '.join(map(str, failed))}", file=sys.stderr)
    return 1 if failed or record["unfinished_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main())
