"""Entry points shared by train_teacher.py and train_student.py: parse, launch, report errors."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Optional, Sequence

from distillers.registry import UnknownNameError
from engine import config
from engine.checkpoint import CheckpointError
from engine.distributed import DistInfo, launch

#: Errors that are the user's input, printed as one line instead of a traceback.
USER_ERRORS = (config.ConfigError, CheckpointError, UnknownNameError, FileNotFoundError)


def load_plugins(plugins: Sequence[str]) -> None:
    """Import user modules (dotted names or .py files) so their registrations take effect."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            if not os.path.isfile(plugin):
                raise FileNotFoundError(f"--plugin {plugin}: no such file")
            name = "distillers_plugin_" + os.path.splitext(os.path.basename(plugin))[0]
            spec = importlib.util.spec_from_file_location(name, plugin)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(plugin)


def _teacher_main(info: DistInfo, args) -> None:
    from engine.trainer import Trainer, evaluate_checkpoint
    load_plugins(args.plugins)
    if getattr(args, "evaluate", False):  # ``--mode eval --load CKPT`` (the metric seeds' run.py)
        if not args.path_s:
            raise config.ConfigError("--mode eval needs the checkpoint to evaluate: --load PATH")
        evaluate_checkpoint(args, info)
        return
    Trainer(args, info, "teacher").fit()


def _student_main(info: DistInfo, args) -> None:
    from engine.trainer import Trainer, evaluate_checkpoint
    load_plugins(args.plugins)
    if args.evaluate:
        if not args.path_s:
            raise config.ConfigError("--evaluate needs the student checkpoint: --path_s PATH")
        evaluate_checkpoint(args, info)
        return
    Trainer(args, info, "student").fit()


def _run(parser, main, argv) -> int:
    args = config.parse(parser, argv)
    try:
        launch(main, args)
    except USER_ERRORS as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def teacher(argv: Optional[Sequence[str]] = None) -> int:
    return _run(config.teacher_parser(), _teacher_main, argv)


def student(argv: Optional[Sequence[str]] = None) -> int:
    return _run(config.student_parser(), _student_main, argv)
