"""Command-line and YAML configuration for ``train_teacher.py`` and ``train_student.py``.

Flags follow the reference scripts (RepDistiller / giakoumoglou's distillers), with
their aliases. ``--config file.yaml`` sets any flag by its name; the command line
wins; an unknown key is an error. Recipe values left unset (learning rate, epochs,
schedule, weight decay, batch) come from the dataset family's recipe, and a
distiller's loss weights from its reference defaults; both are printed at start.
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Any, Dict, List, Optional, Sequence

import yaml

from engine.flags import HelpFormatter, Parser, parse_bool, parse_list
from engine.metric_learning_flags import add_metric_flags

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


class ConfigError(ValueError):
    """A bad flag, config key or flag combination, reported before training starts."""


def _milestones(values: Sequence[str]) -> List[int]:
    """Accept both ``150,180,210`` and ``150 180 210``."""
    out: List[int] = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                out.append(int(part))
            except ValueError:
                raise argparse.ArgumentTypeError(f"--lr_decay_epochs expects integers, got '{part}'")
    return out


def _data_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--data_opt expects key=value, got '{text}'")
    return key, yaml.safe_load(value)


def _common(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="cifar100",
                      help="dataset plugin: cifar100, cifar10, synthetic (no download), imagefolder, ...")
    data.add_argument("--data-root", "--data_root", dest="data_root", default=None,
                      help="dataset folder (default: $DISTILLERS_DATA or ~/.cache/distillers/data)")
    data.add_argument("--data_opt", dest="data_opts", action="append", type=_data_option, default=[],
                      metavar="KEY=VALUE", help="dataset option, repeatable (e.g. train_size=2000 for synthetic)")
    data.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per process")
    data.add_argument("--skip_bad_images", action="store_true",
                      help="image-folder datasets: skip files that cannot be decoded (each is replaced by the "
                           "next readable sample, warned about once and counted) instead of stopping with the "
                           "file's path; scripts/verify_images.py ROOT lists them before a run")
    data.add_argument("--loader", choices=["auto", "device", "dataloader"], default="auto",
                      help="training loader. 'device': the in-memory uint8 set (cifar10/100, synthetic) is "
                           "cropped, flipped and normalised a batch at a time on the training device, no PIL, "
                           "no workers; each view a function of (seed, epoch, sample), which the teacher store "
                           "keys. 'dataloader': torch DataLoader with PIL transforms. 'auto': device for in-memory "
                           "sets read with one view per image, else dataloader (both reach the same accuracy: "
                           "README, Loaders)")
    data.add_argument("--dali", choices=["cpu", "gpu"], default=None,
                      help="read ImageNet-style folders with NVIDIA DALI pipelines on the CPU or GPU "
                           "(pip install -e .[dali]); default: torchvision DataLoader")

    opt = parser.add_argument_group("optimisation (unset values come from the dataset's recipe)")
    opt.add_argument("--batch_size", "--batch", dest="batch_size", type=int, default=None,
                     help="global batch size, split over processes (CIFAR 64, ImageNet 256)")
    opt.add_argument("--epochs", type=int, default=None, help="epochs (CIFAR 240, ImageNet 120)")
    opt.add_argument("--learning_rate", "--lr", dest="learning_rate", type=float, default=None,
                     help="learning rate (CIFAR 0.05, or 0.01 for MobileNetV2/ShuffleNet students; "
                          "ImageNet 0.1)")
    opt.add_argument("--lr_decay_epochs", nargs="+", default=None, metavar="EPOCH",
                     help="epochs after which the lr decays: '150,180,210' or '150 180 210'")
    opt.add_argument("--lr_decay_rate", "--lr_decay_gamma", dest="lr_decay_rate", type=float, default=None,
                     help="lr multiplier at each decay epoch (0.1)")
    opt.add_argument("--weight_decay", type=float, default=None, help="SGD weight decay (CIFAR 5e-4)")
    opt.add_argument("--momentum", type=float, default=None, help="SGD momentum (0.9)")
    opt.add_argument("--seed", type=int, default=0, help="random seed")

    run = parser.add_argument_group("run")
    run.add_argument("--trial", default="0", help="trial id, part of the run name")
    run.add_argument("--save_root", default="save",
                     help="folder for run folders, outside the code")
    run.add_argument("--save_dir", default=None, help="exact run folder (default: <save_root>/<kind>/<run name>)")
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                     help="continue a run exactly: from CKPT, or from <run folder>/latest.pth (a run that has "
                          "none yet starts from the beginning); the run's recorded hyper-parameters must not change")
    run.add_argument("--overwrite", action="store_true",
                     help="start over in a run folder that already holds a run (its checkpoints and logs "
                          "are deleted); without it such a folder is refused unless --resume continues it")
    run.add_argument("--config", default=None, help="YAML file of flag values; the command line wins")
    run.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                     help="import a module or .py file first, e.g. one that registers your own "
                          "distiller, model or dataset (repeatable)")
    run.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard logs")
    run.add_argument("--eval_freq", type=int, default=1, help="evaluate every N epochs (and at the end)")
    run.add_argument("--log_every", type=int, default=0, metavar="STEPS",
                     help="also log the loss, its terms, the lr and the fraction of step time spent waiting for "
                          "data to TensorBoard every STEPS steps (train_step/*; 0: once per epoch only)")

    compute = parser.add_argument_group("how a step computes (engine/precision.py)")
    compute.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                         help="mixed precision: forwards and losses under autocast in bfloat16, or float16 "
                              "with a gradient scaler (in the checkpoint); weights stay float32")
    compute.add_argument("--channels_last", action="store_true",
                         help="NHWC memory format for the networks and the batches (tensor cores, oneDNN)")
    compute.add_argument("--compile", action="store_true",
                         help="torch.compile the student's forward (inductor); a model that cannot be "
                              "compiled stops at the first step with one line")

    dist = parser.add_argument_group("devices and distributed training")
    dist.add_argument("--gpu_id", default=None,
                      help="CUDA devices to use, e.g. '0' or '0,1,2,3' (sets CUDA_VISIBLE_DEVICES)")
    dist.add_argument("--device", default=None, choices=["cpu", "cuda"],
                      help="force a device (default: cuda when available)")
    dist.add_argument("--multiprocessing-distributed", "--multiprocessing_distributed",
                      dest="multiprocessing_distributed", action="store_true",
                      help="spawn one process per GPU (NCCL), or --nprocs CPU processes (gloo)")
    dist.add_argument("--nprocs", type=int, default=None,
                      help="processes per node without GPUs (gloo); implies --multiprocessing-distributed")
    dist.add_argument("--dist-url", "--dist_url", dest="dist_url", default="tcp://127.0.0.1:23456",
                      help="rendezvous address of rank 0")
    dist.add_argument("--world-size", "--world_size", dest="world_size", type=int, default=1,
                      help="number of nodes")
    dist.add_argument("--rank", type=int, default=0, help="rank of this node")
    dist.add_argument("--dist-backend", "--dist_backend", dest="dist_backend", default=None,
                      choices=["nccl", "gloo"], help="default: nccl on GPUs, gloo on CPU")


def teacher_parser() -> Parser:
    parser = Parser(
        prog="train_teacher.py", kind="teacher",
        description="Train a model from scratch (a teacher, or a vanilla student baseline).",
        epilog="Metric-learning datasets (cub200, cars196, stanford, metric_folder) bring their own flags: "
               "train_teacher.py --dataset cub200 --help.",
        formatter_class=HelpFormatter)
    parser.add_argument("--model", default="resnet32x4",
                        help="architecture: a CIFAR zoo name, 'torchvision:<name>' or 'timm:<name>'")
    _common(parser)
    return parser


def student_parser() -> Parser:
    parser = Parser(
        prog="train_student.py", kind="student",
        description="Distil a teacher into a student with any registered method. "
                    "`train_student.py --distill NAME --help` lists that method's options.",
        formatter_class=HelpFormatter)
    parser.add_argument("--model_s", default="resnet8x4", help="student architecture")
    parser.add_argument("--path_t", "--path-t", dest="path_t", default=None,
                        help="teacher checkpoint (this project's or RepDistiller's {'model': state_dict})")
    parser.add_argument("--model_t", default=None,
                        help="teacher architecture, for checkpoints that do not record it")
    parser.add_argument("--distill", default=None, metavar="METHOD",
                        help="the method (default: kd; on metric-learning datasets: metric); see the list below")
    weights = parser.add_argument_group(
        "loss weights: total = gamma*CE + alpha*KD + beta*method (unset: the method's reference values)")
    weights.add_argument("-r", "--gamma", "-c", "--cls", dest="gamma", type=float, default=None,
                         help="weight of the cross-entropy term (-c/--cls is the SimKD spelling)")
    weights.add_argument("-a", "--alpha", "-d", "--div", dest="alpha", type=float, default=None,
                         help="weight of the KD term, which any method can add (-d/--div is the SimKD spelling)")
    weights.add_argument("-b", "--beta", dest="beta", type=float, default=None,
                         help="weight of the method's own loss")
    dot = parser.add_argument_group("optimiser")
    dot.add_argument("--dot", action="store_true",
                     help="DOT (Zhao et al. 2023): SGD with separate momenta for the task-loss and the distillation-"
                          "loss gradients (momentum - delta and momentum + delta), usable with any method")
    dot.add_argument("--dot_delta", type=float, default=0.075, help="DOT's momentum split delta")
    store = parser.add_argument_group(
        "teacher-output store: the teacher's small outputs (logits, pooled) per (sample, view) on disk, so "
        "later runs on the same teacher skip its forward (with --loader device, or --data_opt seeded_views=true "
        "on image folders; README: the teacher-output store)")
    store.add_argument("--teacher_store", default=None, metavar="DIR",
                       help="the store's folder (default: teacher_store/<hash of teacher, dataset, views, dtype> "
                            "in --save_root, or beside --save_dir when given); scripts/fill_teacher_store.py "
                            "fills every view once")
    store.add_argument("--no_teacher_store", action="store_true", help="run the teacher on every batch")
    store.add_argument("--teacher_store_dtype", choices=["float32", "float16"], default="float32",
                       help="storage of the stored outputs (float16 halves the disk, rounds to ~3 digits)")
    parser.add_argument("--evaluate", action="store_true",
                        help="only evaluate the student checkpoint --path_s (no teacher needed)")
    parser.add_argument("--path_s", default=None, help="student checkpoint for --evaluate")
    _common(parser)
    return parser


def _option_type(option):
    """The command-line converter of a method option (its checks run when the method is built)."""
    kind = option.kind
    if kind is bool:
        return parse_bool
    if kind is tuple:
        return parse_list
    if kind in (int, float, str):
        return kind
    return yaml.safe_load


def add_method_options(parser: argparse.ArgumentParser, name: str, title: str, skip=()) -> List[str]:
    """A group with the options of distiller ``name`` as flags (``--<option>``, dest ``method__<option>``)."""
    from distillers import DISTILLERS

    cls = DISTILLERS.get(name)
    group = parser.add_argument_group(title)
    added = []
    for option, spec in cls.option_specs().items():
        if option in skip:
            continue
        accepted = spec.accepted()
        text = (spec.help + "; " if spec.help else "") + accepted
        default = "auto (see the method)" if spec.default is None else spec.default
        group.add_argument(*spec.flags, f"--{option}", dest=f"method__{option}", default=argparse.SUPPRESS,
                           metavar=option.upper(), type=_option_type(spec), choices=spec.choices,
                           help=f"{text} (default: {default})")
        added.append(option)
    return added


def _describe_methods() -> str:
    from distillers import DISTILLERS

    lines = []
    for name in DISTILLERS.names():
        doc = (DISTILLERS.get(name).__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<14} {doc[0] if doc else ''}")
    return "methods (--distill NAME --help shows a method's options):\n" + "\n".join(lines)


def _preparse(parser: Parser, argv: Optional[Sequence[str]]):
    """The flags that decide which other flags exist: --plugin, --config, --dataset, --distill
    (the command line wins over the YAML config, as for every flag)."""
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--plugin", dest="plugins", action="append", default=[])
    early.add_argument("--config", default=None)
    early.add_argument("--dataset", default=None)
    early.add_argument("--distill", default=None)
    known, _ = early.parse_known_args(argv)
    values = {}
    if known.config:
        values = _read_yaml(known.config)
    plugins = list(values.get("plugins", values.get("plugin", [])) or [])
    plugins = ([plugins] if isinstance(plugins, str) else plugins) + known.plugins
    dataset = known.dataset or values.get("dataset") or parser.get_default("dataset")
    distill = known.distill or values.get("distill")
    return plugins, dataset, distill


def complete(parser: Parser, argv: Optional[Sequence[str]] = None) -> None:
    """Add the flags that the plugins, the dataset and the method bring (once per parser)."""
    import data as datasets
    from engine.plugins import load_plugins

    plugins, dataset, distill = _preparse(parser, argv)
    load_plugins(plugins)
    if parser.completed_for == (dataset, distill):
        return
    parser.completed_for = (dataset, distill)
    try:
        task = datasets.dataset_info(dataset).get("task", "classification")
    except KeyError:
        task = "classification"  # an unknown dataset is reported, with its suggestions, by the run
    from distillers import DISTILLERS
    from distillers.base import ADDED_TERM, default_method

    if parser.kind == "student":
        method = distill or default_method(task)
        parser.set_defaults(distill=method)
        parser.epilog = _describe_methods()
        parser.formatter_class = _RawEpilog
        added = add_method_options(parser, ADDED_TERM, f"the {ADDED_TERM} term that -a/--alpha adds to any "
                                                       f"method: options of {ADDED_TERM}")
        if method in DISTILLERS and method != ADDED_TERM:
            doc = (DISTILLERS.get(method).__doc__ or "").strip().splitlines()
            add_method_options(parser, method, f"options of --distill {method}" + (f": {doc[0].rstrip('.')}" if doc else ""),
                               skip=added)
    elif task != "classification":  # a teacher trains with its task's default method (metric: triplet)
        cls = DISTILLERS.get(default_method(task))
        teacher_flags = getattr(cls, "teacher_flags", ())
        add_method_options(parser, cls.registry_name, f"the {task} objective of a teacher run",
                           skip=[o for o in cls.option_names() if o not in teacher_flags])
    if task == "metric":
        add_metric_flags(parser, parser.kind)
    _note_flags_elsewhere(parser, task)


def _note_flags_elsewhere(parser: Parser, task: str) -> None:
    """Where the flags this parser lacks live, for the error about an unknown flag."""
    from distillers import DISTILLERS

    own = set(parser._option_string_actions)
    if parser.kind == "student":
        chosen = parser.get_default("distill")
        owners: Dict[str, List[str]] = {}
        for name in DISTILLERS.names():
            for option, spec in DISTILLERS.get(name).option_specs().items():
                for flag in (f"--{option}",) + tuple(spec.flags):
                    if flag not in own:
                        owners.setdefault(flag, []).append(name)
        parser.flags_elsewhere.update({flag: f"an option of {', '.join(names)}, not of --distill {chosen}"
                                       for flag, names in owners.items()})
    if task != "metric":
        scratch = Parser(kind=parser.kind)
        add_metric_flags(scratch, parser.kind)
        where = "a metric-learning flag: give --dataset cub200, cars196, stanford or metric_folder"
        parser.flags_elsewhere.update({flag: where for flag in scratch._option_string_actions if flag not in own})


class _RawEpilog(HelpFormatter):
    """Keeps the methods list of the epilog one per line."""

    def _fill_text(self, text, width, indent):
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _dests(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _read_yaml(path: str) -> Dict[str, Any]:
    """A YAML config file as a dict (plain values only: ``yaml.safe_load``)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--config {path}: not valid YAML{where}: {problem} (only plain values are read: "
                          "no Python tags)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path}: cannot read it ({err})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    return values


def load_yaml(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read a YAML config; keys are flag names (``lr_decay_epochs``, ``nce_k``, ``data-root``...)."""
    values = _read_yaml(path)
    dests = _dests(parser)
    out: Dict[str, Any] = {}
    for key, value in values.items():
        if key == "plugin":
            key = "plugins"
        dest = str(key).lstrip("-").replace("-", "_")
        dest = dest if dest in dests else f"method__{dest}"
        if dest == "plugins" and isinstance(value, str):
            value = [value]
        if dest not in dests:
            names = sorted(d.replace("method__", "") for d in dests if d != "config")
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            owners = parser._owners(f"unrecognized arguments: --{key}") if isinstance(parser, Parser) else ""
            raise ConfigError(f"--config {path}: unknown key '{key}'{owners}.{hint} Known keys: {', '.join(names)}")
        out[dest] = value
    return out


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse flags, layering: parser defaults < YAML config < command line.

    The parser is first completed with what --plugin, --dataset and --distill bring (their
    options), so a plugin's options are flags like any built-in method's.
    """
    if isinstance(parser, Parser):
        complete(parser, argv)
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**load_yaml(first.config, parser))
    args = parser.parse_args(argv)
    if args.lr_decay_epochs is not None:
        try:
            args.lr_decay_epochs = _milestones(args.lr_decay_epochs if isinstance(args.lr_decay_epochs, list)
                                               else [args.lr_decay_epochs])
        except argparse.ArgumentTypeError as err:
            raise ConfigError(str(err)) from None
    args.data_opts = dict(args.data_opts) if isinstance(args.data_opts, list) else dict(args.data_opts or {})
    if args.skip_bad_images:  # a dataset option; datasets without image files reject it by name
        args.data_opts["skip_bad_images"] = True
    return args


def method_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The method options the user set explicitly (``--nce_k 4096`` -> {'nce_k': 4096})."""
    return {k[len("method__"):]: v for k, v in vars(args).items()
            if k.startswith("method__") and v is not None}


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
    milestones = list(args.lr_decay_epochs or [])
    if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise bad("--lr_decay_epochs", ",".join(map(str, milestones)),
                  "must be increasing positive epoch numbers, e.g. 150,180,210")
    late = [m for m in milestones if m > args.epochs]
    if late:
        log(f"note: lr decay epochs {late} lie beyond --epochs {args.epochs} and are never reached")


#: Flags that may change when a run is resumed because they do not change what it computes.
RESUME_FREE = frozenset({
    "resume", "overwrite", "config", "plugins", "no_tensorboard", "save_root", "save_dir", "gpu_id", "device",
    "dist_url", "rank", "dist_backend", "multiprocessing_distributed", "nprocs", "world_size", "evaluate",
    "path_s", "skip_bad_images", "trial", "log_every",
})
#: Flags that may change with a warning: they alter the run, but a user may mean it.
RESUME_WARN = {
    "epochs": "the run's length changes (the lr schedule does not)",
    "eval_freq": "evaluations (and so best.pth) follow the new frequency",
    "num_workers": "the loader's worker streams change, so augmentations are no longer those of the first run",
    "path_t": "the teacher is read from the new path; it must be the same teacher",
    "data_root": "the data are read from the new folder; they must be the same data",
    "teacher_store": "the teacher's outputs are read from another store (equal within float tolerance)",
    "no_teacher_store": "the teacher's outputs are computed or read from the store (equal within float tolerance)",
    "channels_last": "the step's numerics may differ in the last bits",
    "compile": "the step's numerics may differ in the last bits",
}


def resume_conflicts(recorded: Dict[str, Any], current: Dict[str, Any]):
    """(errors, warnings) for flags whose value differs from the run's recorded config."""
    def comparable(key, values):
        value = values.get(key)
        if key == "data_opts" and isinstance(value, dict):  # skipping bad images may be switched on later
            value = {k: v for k, v in value.items() if k != "skip_bad_images"}
        return value

    errors, warnings = [], []
    method_keys = {k for k in set(recorded) | set(current) if k.startswith("method__")}  # set only when given
    for key in sorted((set(recorded) & set(current)) | method_keys):
        old, new = comparable(key, recorded), comparable(key, current)
        if key in RESUME_FREE or old == new:
            continue
        flag = "--" + key.replace("method__", "")
        said = lambda v: "its default" if v is None else repr(v)  # noqa: E731
        text = f"{flag} is {said(new)} here, the run was started with {said(old)}"
        if key == "loader" and new == "auto":  # a run from before the device loader became the default
            text += f" (auto is the default now: pass --loader {old} to continue it)"
        if key in RESUME_WARN:
            warnings.append(f"{text}: {RESUME_WARN[key]}")
        else:
            errors.append(text)
    return errors, warnings
