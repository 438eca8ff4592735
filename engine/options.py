"""A method's options on the command line and in YAML: namespaced, with the references' flat spellings.

Every option of a method lives under the method: ``--dkd.dkd_beta 8`` on the command line,
``dkd: {dkd_beta: 8}`` or ``method: {name: dkd, dkd_beta: 8}`` in a YAML config. Inside its
namespace an option may drop the method's own prefix (``--dkd.beta``, ``--nkd.T``). The flat
spelling the reference scripts use (``--dkd_beta``, ``--nce_k``, ``--kd_T``) stays an alias,
so every command and config written for them works.

A run has two terms that take options: the method (``--distill``) and the KD term that ``-a``
adds. A flat flag goes to whichever of them has the option; when both do and they are
different methods (``--distill dkd -a 0.5 --kd_T 2``: DKD's temperature and the KD term's),
the flat flag is refused and the namespaced spellings are named, so one flag never sets two
temperatures.
"""
from __future__ import annotations

import argparse
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from engine.errors import ConfigError
from engine.flags import parse_bool, parse_list

FLAT = "method__"  # dest prefix of a flat option flag (--nce_k)
SPACED = "ns__"    # dest prefix of a namespaced one (--crd.nce_k): ns__<method>__<option>


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


class _ListOption(argparse.Action):
    """A list option given as ``3,5,2,6``, ``[3, 5, 2, 6]`` or ``3 5 2 6``; ``allowed``: the whole lists
    accepted (argparse's own ``choices`` would check each number alone)."""
    allowed: Optional[Sequence[Any]] = None

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            value = parse_list(",".join(str(v).strip("[]") for v in values))
        except Exception:  # noqa: BLE001 - yaml's errors: say it in the parser's one line
            parser.error(f"{option_string}: expected numbers, got {' '.join(map(str, values))}")
        if self.allowed is not None and tuple(value) not in [tuple(c) for c in self.allowed]:
            parser.error(f"argument {option_string}: invalid choice: {tuple(value)!r} (choose from "
                         f"{', '.join(repr(tuple(c)) for c in self.allowed)})")
        setattr(namespace, self.dest, value)


def _list_action(choices: Optional[Sequence[Any]]) -> type:
    return type("ListOption", (_ListOption,), {"allowed": choices})


def short_name(method: str, option: str) -> Optional[str]:
    """``dkd_beta`` in the ``dkd`` namespace -> ``beta`` (None when the option has no such prefix)."""
    prefix = method + "_"
    return option[len(prefix):] if option.startswith(prefix) and len(option) > len(prefix) else None


def add_method_options(parser: argparse.ArgumentParser, name: str, title: str, skip=(),
                       flat: bool = True) -> List[str]:
    """A group with the options of distiller ``name``: ``--<name>.<option>`` (and ``--<name>.<short>``),
    plus the flat ``--<option>`` (and its reference spellings) unless ``skip`` names it or ``flat`` is
    off. Returns the flat options added."""
    from distillers import DISTILLERS

    cls = DISTILLERS.get(name)
    group = parser.add_argument_group(title)
    added = []
    for option, spec in cls.option_specs().items():
        text = (spec.help + "; " if spec.help else "") + spec.accepted()
        default = "auto (see the method)" if spec.default is None else spec.default
        common = dict(default=argparse.SUPPRESS, type=_option_type(spec), choices=spec.choices)
        if spec.kind is tuple:  # also as separate numbers: --mlkd_T 3 5 2 6
            common = dict(default=argparse.SUPPRESS, nargs="+", action=_list_action(spec.choices))
        spaced = [f"--{name}.{option}"] + ([f"--{name}.{short_name(name, option)}"] if short_name(name, option) else [])
        if flat and option not in skip:
            group.add_argument(*spec.flags, f"--{option}", dest=f"{FLAT}{option}", metavar=option.upper(),
                               help=f"{text} (default: {default}; also {' or '.join(spaced)})", **common)
            added.append(option)
            group.add_argument(*spaced, dest=f"{SPACED}{name}__{option}", help=argparse.SUPPRESS, **common)
        else:
            group.add_argument(*spaced, dest=f"{SPACED}{name}__{option}", metavar=option.upper(),
                               help=f"{text} (default: {default})", **common)
    return added


def method_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The flat method options set explicitly (``--nce_k 4096`` -> {'nce_k': 4096})."""
    return {k[len(FLAT):]: v for k, v in vars(args).items() if k.startswith(FLAT) and v is not None}


def spaced_options(args: argparse.Namespace, method: str) -> Dict[str, Any]:
    """The namespaced options of ``method`` set explicitly (``--dkd.beta 8`` -> {'dkd_beta': 8})."""
    prefix = f"{SPACED}{method}__"
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def term_options(args: argparse.Namespace, method: str, added: Optional[str]) -> Tuple[Dict, Dict]:
    """(options of ``method``, options of the ``added`` KD term or {}): namespaced values, then the
    flat ones each term has; a flat option that both terms have, when they are different methods,
    is refused (module docstring); one that neither has is refused naming the method's options."""
    from distillers import DISTILLERS

    own = set(DISTILLERS.get(method).option_names())
    theirs = set(DISTILLERS.get(added).option_names()) if added else set()
    mine, kd = {}, {}
    for option, value in method_options(args).items():
        if option in own and option in theirs and added != method:
            raise ConfigError(f"--{option} is an option of --distill {method} and of the {added} term that -a adds: "
                              f"say which with --{method}.{option} or --{added}.{option}")
        if option not in own and option not in theirs:
            raise ConfigError(f"option --{option} does not apply to --distill {method}; its options: "
                              f"{', '.join(sorted(own)) or 'none'}" + (f" (and the {added} term's: "
                                                                       f"{', '.join(sorted(theirs))})" if added else ""))
        if option in own:
            mine[option] = value
        if option in theirs:
            kd[option] = value
    mine.update(spaced_options(args, method))
    if added:
        kd.update(spaced_options(args, added))
    return mine, (kd if added else {})


def first_sentence(doc: Optional[str]) -> str:
    """The first sentence of a docstring's first paragraph, however many lines it spans."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = re.search(r"(?<!e\.g)(?<!i\.e)(?<!et al)\.(\s|$)", paragraph)
    return paragraph[:end.start() + 1] if end else paragraph


def describe_methods(width: int = 0) -> str:
    """``train_student.py --list-methods``: one line per method, wrapped to the terminal; metric-learning
    methods marked (they train embedding networks on metric datasets)."""
    import shutil
    import textwrap

    from distillers import DISTILLERS

    width = width or max(60, min(120, shutil.get_terminal_size((100, 20)).columns))
    lines = []
    for name in DISTILLERS.names():
        mark = "[metric learning] " if DISTILLERS.meta(name).get("task") == "metric" else ""
        lines += textwrap.wrap(f"{name:<14} {mark}{first_sentence(DISTILLERS.get(name).__doc__)}", width,
                               initial_indent="  ", subsequent_indent=" " * 17)
    return "methods (train_student.py --distill NAME --help shows a method's options):\n" + "\n".join(lines)


def flags_elsewhere(own: Iterable[str], chosen: str) -> Dict[str, str]:
    """Flags of other methods that this parser lacks -> where they live, for the unknown-flag error."""
    from distillers import DISTILLERS

    own = set(own)
    owners: Dict[str, List[str]] = {}
    for name in DISTILLERS.names():
        for option, spec in DISTILLERS.get(name).option_specs().items():
            for flag in (f"--{option}", f"--{name}.{option}") + tuple(spec.flags):
                if flag not in own:
                    owners.setdefault(flag, []).append(name)
    return {flag: f"an option of {', '.join(names)}, not of --distill {chosen}" for flag, names in owners.items()}


def expand_yaml(values: Mapping[str, Any], methods: Iterable[str]) -> Dict[str, Any]:
    """A config's namespaced sections as flag dests: ``method: {name: dkd, beta: 8}`` -> distill and
    ``ns__dkd__dkd_beta``; ``<method>: {...}`` -> that method's namespaced options. Other keys pass."""
    from distillers import DISTILLERS

    methods = set(methods)
    out: Dict[str, Any] = {}
    for key, value in values.items():
        section = None
        if key == "method" and isinstance(value, dict):
            value = dict(value)
            name = value.pop("name", None) or values.get("distill")
            if not name:
                raise ConfigError("a 'method:' section needs 'name: <method>' (or a 'distill' key)")
            out["distill"], section = name, name
        elif key in methods and isinstance(value, dict):
            section = key
        if section is None:
            out[key] = value
            continue
        if section not in DISTILLERS:
            DISTILLERS.get(section)  # the unknown-name error with its suggestion
        names = DISTILLERS.get(section).option_names()
        for option, option_value in value.items():
            full = option if option in names else f"{section}_{option}"
            if full not in names:
                raise ConfigError(f"'{section}: {{{option}: ...}}': {section} has no option '{option}'; its options: "
                                  f"{', '.join(names) or 'none'}")
            out[f"{SPACED}{section}__{full}"] = option_value
    return out


def engine_flag_names() -> set:
    """The names of the command lines' own flags (``epochs``, ``batch_size``, ...), which no method
    option may take: a flat option flag of that name would shadow or be shadowed by the engine's."""
    from engine.parsers import student_parser, teacher_parser

    names = set()
    for parser in (teacher_parser(), student_parser()):
        for action in parser._actions:
            names.add(action.dest)
            names.update(flag.lstrip("-").replace("-", "_") for flag in action.option_strings)
    return names - {"help", "h"}


def refuse_clashing_options(name: str, cls) -> None:
    """Registration rule for methods: no option named like an engine flag, and none named like an option
    of the KD term that ``-a`` adds with another type (the two share their flat flag)."""
    from distillers.base import ADDED_TERM, DISTILLERS

    taken = engine_flag_names()
    for option, spec in cls.option_specs().items():
        if option in taken:
            raise ValueError(f"distiller '{name}': option '{option}' is named like the engine's flag --{option}; "
                             f"rename it (e.g. '{name}_{option}')")
    if name == ADDED_TERM or ADDED_TERM not in DISTILLERS:
        return
    kd = DISTILLERS.get(ADDED_TERM).option_specs()
    for option, spec in cls.option_specs().items():
        if option in kd and spec.kind is not kd[option].kind:
            raise ValueError(f"distiller '{name}': option '{option}' is {spec.accepted()}, but the KD term's "
                             f"'{option}' is {kd[option].accepted()}; they share --{option}: rename it")
