"""Flag types and the parser class shared by the command lines (no project imports)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Tuple

import yaml


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None/False (their help text says what happens when unset)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS, []) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the full usage is what ``--help`` is for).

    ``kind`` is ``teacher`` or ``student``; :func:`engine.config.parse` completes the parser with
    the groups that the chosen dataset and method bring (their options, the metric-learning flags).
    """

    def __init__(self, *args, kind: str = "", **kwargs):
        # no abbreviations: the flags a method brings change with --distill, and a prefix that
        # names one flag today could name another tomorrow
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.kind = kind
        self.completed_for: Any = None
        self.flags_elsewhere: Dict[str, str] = {}

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{self._owners(message)} (see {self.prog} --help)\n")

    def _owners(self, message: str) -> str:
        """For unknown flags that exist elsewhere (another method's option, a metric-learning flag),
        say where: ``flags_elsewhere`` maps such a flag to that place (filled by engine.config); for
        others, the closest flag of this parser (``--learning-rate``: did you mean --learning_rate?)."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        hints = []
        for token in message.split(":", 1)[1].split():
            flag = token.split("=", 1)[0]
            if flag in self.flags_elsewhere:
                hints.append(f"{flag} is {self.flags_elsewhere[flag]}")
            elif flag.startswith("-"):
                close = self.closest_flag(flag)
                if close:
                    hints.append(f"did you mean {close}?")
        return ("; " + "; ".join(dict.fromkeys(hints))) if hints else ""

    def closest_flag(self, flag: str) -> str:
        """The parser's flag nearest to ``flag``: hyphens and underscores, case, then spelling."""
        import difflib

        own = [f for f in self._option_string_actions if f.startswith("--")]
        normal = {f.replace("-", "_").lower(): f for f in own}
        key = "--" + flag.lstrip("-").replace("-", "_").lower()
        if key in normal:
            return normal[key]
        close = difflib.get_close_matches(flag, own, n=1, cutoff=0.75)
        return close[0] if close else ""

    def format_usage(self) -> str:
        return f"usage: {self.prog} [options]   ({self.prog} --help lists them)\n"

    def format_help(self) -> str:
        """The full help with a one-line usage (the option list below says it all)."""
        text = super().format_help()
        return self.format_usage() + text.split("\n\n", 1)[1] if "\n\n" in text else text


def parse_bool(value: str) -> bool:
    lowered = str(value).lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{value}'")


def parse_list(value: str) -> Tuple[Any, ...]:
    """``3,5,2`` or ``[3, 5, 2]`` -> (3, 5, 2)."""
    text = str(value).strip()
    loaded = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
    return tuple(loaded)
