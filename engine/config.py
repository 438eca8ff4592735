"""Command-line and YAML configuration for ``train_teacher.py`` and ``train_student.py``: parsing.

The flags themselves are :mod:`engine.parsers`; a method's options :mod:`engine.options`.
``--config file.yaml`` sets any flag by its name (``data_opt``, ``plugin`` and the method's
namespaced ``method: {name: ..., ...}`` section included); the command line wins; an unknown
key is an error. Recipe values left unset (learning rate, epochs, schedule, weight decay,
batch) come from the dataset family's recipe (:mod:`engine.recipes`), and a distiller's loss
weights from its reference defaults; both are printed at start.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import yaml

from engine.errors import ConfigError
from engine.flags import HelpFormatter, Parser
from engine.metric_learning_flags import add_metric_flags
from engine.options import (FLAT, SPACED, add_method_options, describe_methods, expand_yaml, flags_elsewhere,
                            method_options)
from engine.parsers import student_parser, teacher_parser

__all__ = ["ConfigError", "parse", "student_parser", "teacher_parser", "method_options", "load_yaml"]


def _install_rules() -> None:
    """Methods registered from now on (plugins) follow the command line's naming rules."""
    from distillers import DISTILLERS
    from engine.options import refuse_clashing_options

    if refuse_clashing_options not in DISTILLERS._checks:
        DISTILLERS.add_check(refuse_clashing_options)


_install_rules()


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
    plugins = values.get("plugins", values.get("plugin", [])) or []
    plugins = ([plugins] if isinstance(plugins, str) else list(plugins)) + known.plugins  # a file name is one plugin
    section = values.get("method")
    dataset = known.dataset or values.get("dataset") or parser.get_default("dataset")
    distill = known.distill or values.get("distill") or (section.get("name") if isinstance(section, dict) else None)
    return plugins, dataset, distill


def complete(parser: Parser, argv: Optional[Sequence[str]] = None) -> None:
    """Add the flags that the plugins, the dataset and the method bring (once per parser)."""
    import data as datasets
    from engine.plugins import load_plugins

    plugins, dataset, distill = _preparse(parser, argv)
    load_plugins(plugins)
    if parser.kind == "student" and "--list-methods" in (sys.argv[1:] if argv is None else argv):
        print(describe_methods())
        parser.exit(0)
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
        method = canonical_method(distill or default_method(task))
        parser.set_defaults(distill=method)
        parser.epilog = (f"{len(DISTILLERS.names())} methods: train_student.py --list-methods lists them; "
                         "train_student.py --distill NAME --help shows a method's options first.")
        added = add_method_options(parser, ADDED_TERM, f"the {ADDED_TERM} term that -a/--alpha adds to any "
                                                       f"method: options of {ADDED_TERM}")
        if method in DISTILLERS and method != ADDED_TERM:
            cls = DISTILLERS.get(method)
            doc = (cls.__doc__ or "").strip().splitlines()
            w = cls.default_weights
            add_method_options(parser, method, f"options of --distill {method}" + (f": {doc[0].rstrip('.')}" if doc
                                                                                   else "")
                               + f" (default weights: -r {w['gamma']:g} -a {w['alpha']:g} -b {w['beta']:g})",
                               skip=added)
            _first(parser, f"options of --distill {method}")
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
    own = set(parser._option_string_actions)
    if parser.kind == "student":
        parser.flags_elsewhere.update(flags_elsewhere(own, parser.get_default("distill")))
    if task != "metric":
        scratch = Parser(kind=parser.kind)
        add_metric_flags(scratch, parser.kind)
        where = "a metric-learning flag: give --dataset cub200, cars196, stanford or metric_folder"
        parser.flags_elsewhere.update({flag: where for flag in scratch._option_string_actions if flag not in own})


def _first(parser: argparse.ArgumentParser, title_start: str) -> None:
    """Show the group whose title starts with ``title_start`` first in --help (right after the usage)."""
    groups = parser._action_groups
    chosen = [g for g in groups if (g.title or "").startswith(title_start)]
    for group in chosen:
        groups.remove(group)
    parser._action_groups = chosen + groups


def canonical_method(name: str) -> str:
    """A method name as registered, whatever its case (``--distill DKD`` is dkd)."""
    from distillers import DISTILLERS

    if name in DISTILLERS:
        return name
    lowered = {n.lower(): n for n in DISTILLERS.names()}
    return lowered.get(str(name).lower(), name)


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
    from distillers import DISTILLERS

    values = expand_yaml(_read_yaml(path), DISTILLERS.names())
    dests = _dests(parser)
    out: Dict[str, Any] = {}
    for key, value in values.items():
        if key == "plugin":
            key = "plugins"
        if key in ("data_opt", "model_opt", "model_t_opt"):  # the flag names the README shows
            key += "s"
        dest = str(key) if str(key).startswith(SPACED) else str(key).lstrip("-").replace("-", "_")
        dest = dest if dest in dests or dest.startswith(SPACED) else f"{FLAT}{dest}"
        if dest == "plugins" and isinstance(value, str):
            value = [value]
        if dest in ("data_opts", "model_opts", "model_t_opts") and isinstance(value, dict):
            value = list(value.items())  # as repeated KEY=VALUE flags: the command line's add to them, key by key
        if dest.startswith(SPACED) and dest not in dests:
            method = dest[len(SPACED):].split("__")[0]
            raise ConfigError(f"--config {path}: options of {method} are given, but the run's method is "
                              f"{parser.get_default('distill')} (and the KD term kd)")
        if dest not in dests:
            names = sorted(d.replace(FLAT, "") for d in dests if d != "config" and not d.startswith(SPACED))
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            elsewhere = getattr(parser, "flags_elsewhere", {}).get(f"--{key}")
            owners = f"; --{key} is {elsewhere}" if elsewhere else ""
            raise ConfigError(f"--config {path}: unknown key '{key}'{owners}.{hint} Known keys: {', '.join(names)}")
        out[dest] = value
    return out


def _given(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set:
    """Dests of the flags present on the command line (``--flag value`` or ``--flag=value``)."""
    import sys

    tokens = {t.split("=", 1)[0] for t in (sys.argv[1:] if argv is None else argv) if t.startswith("-")}
    return {a.dest for a in parser._actions if tokens & set(a.option_strings)}


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse flags, layering: parser defaults < YAML config < command line.

    The parser is first completed with what --plugin, --dataset and --distill bring (their
    options), so a plugin's options are flags like any built-in method's.
    """
    if isinstance(parser, Parser):
        complete(parser, argv)
    first, _ = parser.parse_known_args(argv)
    from_yaml = {}
    if first.config:
        from_yaml = load_yaml(first.config, parser)
        parser.set_defaults(**from_yaml)
    args = parser.parse_args(argv)
    args.given = sorted(_given(parser, argv) | set(from_yaml))  # what the user set, not a default
    if getattr(args, "distill", None):
        args.distill = canonical_method(args.distill)
    if args.lr_decay_epochs is not None:
        try:
            args.lr_decay_epochs = _milestones(args.lr_decay_epochs if isinstance(args.lr_decay_epochs, list)
                                               else [args.lr_decay_epochs])
        except argparse.ArgumentTypeError as err:
            raise ConfigError(str(err)) from None
    for key in ("data_opts", "model_opts", "model_t_opts"):  # KEY=VALUE pairs (flags) or a mapping (YAML)
        if hasattr(args, key):
            value = getattr(args, key)
            setattr(args, key, dict(value) if isinstance(value, list) else dict(value or {}))
    if getattr(args, "dot", False):  # --dot is --optimizer dot
        if args.optimizer not in (None, "dot"):
            raise ConfigError(f"--dot and --optimizer {args.optimizer} contradict each other: DOT is an optimiser")
        args.optimizer = "dot"
    if args.skip_bad_images:  # a dataset option; datasets without image files reject it by name
        args.data_opts["skip_bad_images"] = True
    return args
