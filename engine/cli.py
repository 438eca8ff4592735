"""Entry points shared by train_teacher.py and train_student.py: parse, launch, report errors.

A user's mistake (a bad flag, a missing dataset, a checkpoint that does not fit) and an
interrupted run end in one ``error:`` / ``stopped`` line and a non-zero exit code, never a
traceback: 2 for an error, 128 + the signal for an interrupt (130 SIGINT, 143 SIGTERM).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from core.registry import UnknownNameError
from engine import config
from engine.checkpoint import CheckpointError
from engine.errors import TrainingError
from engine.distributed import DistInfo, launch
from engine.interrupts import STOP, RunInterrupted
from engine.plugins import load_plugins

#: Errors that are the user's input, printed as one line instead of a traceback.
USER_ERRORS = (config.ConfigError, CheckpointError, UnknownNameError, FileNotFoundError)


def user_errors():
    """USER_ERRORS plus the error types of the data module and the loop (imported lazily)."""
    from core.taps import TapError
    from data.registry import DataError
    return USER_ERRORS + (DataError, TrainingError, TapError)


class _Guarded:
    """A rank's main: ``body(info, args)`` with deferred signals; returns the exit code.
    (A class, not a closure, so that ``torch.multiprocessing.spawn`` can pickle it.)"""

    def __init__(self, prog: str, body):
        self.prog, self.body = prog, body

    def __call__(self, info: DistInfo, args) -> int:
        STOP.install()
        try:
            self.body(info, args)
        except RunInterrupted as stop:
            if info.is_main:
                print(f"{self.prog}: {stop}", file=sys.stderr, flush=True)
            return stop.exit_code
        except user_errors() as err:
            where = "" if info.is_main else f"[rank {info.rank}] "
            print(f"{self.prog}: error: {where}{err}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            return 130
        finally:
            STOP.uninstall()
            STOP.signal = None
        return 0


def _teacher_main(info: DistInfo, args) -> None:
    from engine.evaluate import evaluate_checkpoint
    from engine.loop import Trainer
    load_plugins(args.plugins)
    if getattr(args, "evaluate", False):  # ``--mode eval --load CKPT`` (the metric seeds' run.py)
        if not args.path_s:
            raise config.ConfigError("--mode eval needs the checkpoint to evaluate: --load PATH")
        evaluate_checkpoint(args, info)
        return
    Trainer(args, info, "teacher").fit()


def _student_main(info: DistInfo, args) -> None:
    from engine.evaluate import evaluate_checkpoint
    from engine.loop import Trainer
    load_plugins(args.plugins)
    if args.evaluate:
        if not args.path_s:
            raise config.ConfigError("--evaluate needs the student checkpoint: --path_s PATH")
        evaluate_checkpoint(args, info)
        return
    Trainer(args, info, "student").fit()


def _check_before_launch(args, kind: str) -> None:
    """The flags that do not depend on any data, checked once before processes are spawned (a bad
    --batch_size for --nprocs would otherwise be said once per rank)."""
    import copy

    import data as datasets
    from engine.distributed import processes_per_node
    from engine.recipes import apply_recipe, validate_numbers

    per_node = processes_per_node(args)
    if per_node is None:  # one process, or torchrun (its ranks are not ours to spawn)
        return
    meta = datasets.dataset_info(args.dataset)
    if meta.get("task", "classification") != "classification":  # its recipe comes with the task's defaults
        return
    trial = copy.deepcopy(args)
    apply_recipe(trial, meta["family"], trial.model if kind == "teacher" else trial.model_s, log=lambda *a: None)
    validate_numbers(trial, per_node * args.world_size, log=lambda *a: None)


def _run(parser, main, argv) -> int:
    try:
        args = config.parse(parser, argv)
        if not getattr(args, "evaluate", False):
            _check_before_launch(args, parser.kind)
    except (config.ConfigError, FileNotFoundError, UnknownNameError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:  # argparse: --help (0) or a bad flag (2, its one line already printed)
        return int(done.code or 0)
    return launch(_Guarded(parser.prog, main), args)


def teacher(argv: Optional[Sequence[str]] = None) -> int:
    return _run(config.teacher_parser(), _teacher_main, argv)


def student(argv: Optional[Sequence[str]] = None) -> int:
    return _run(config.student_parser(), _student_main, argv)


def teacher_main() -> None:
    """Console entry point ``distillers-train-teacher``."""
    sys.exit(teacher(sys.argv[1:]))


def student_main() -> None:
    """Console entry point ``distillers-train-student``."""
    sys.exit(student(sys.argv[1:]))
