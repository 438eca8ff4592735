"""Typed options with their meaning and accepted values: a method's, a dataset's, a model's.

One class checks every option value of the project, for the command line, YAML configs and
Python callers alike, so an error always names the option, the bad value and what is accepted.
A factory's keyword arguments become options too (:func:`options_from_signature`): a dataset or
a model declares nothing more than its signature.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Sequence


@dataclass(frozen=True)
class Option:
    """A method option: default, one-line meaning, and the values it accepts.

    ``options = {"nce_k": Option(16384, "negatives per sample", min=1)}`` in a distiller
    class; a plain default (``{"nce_k": 16384}``) is an Option without help. The type
    comes from the default (bool, int, float, str, tuple) unless ``type`` is given (needed
    when the default is None). Values are checked in one place, :meth:`Option.check`, for
    the command line and for Python callers alike; ``flags`` are extra spellings
    (``-f``, the seeds' ``--sample``). The bounds ``min``/``above``/``max``/``below`` apply to a
    number, and to every element of a tuple option (MLKD's temperatures).

    How the option shows in a published table's row label (the collector reads these, so the
    knowledge stays with the method): ``row_suffix`` is appended to the row name when the option
    is true (logit standardisation: ``+LS``); ``names_row`` marks an option whose value picks the
    row (CTKD's base loss, read by :meth:`Distiller.row_name`); ``short`` is its name among a
    label's extra settings (SimKD's ``f``, as results.md writes it). ``stage_epochs`` marks the
    option that sets the initialisation stage's length in epochs (its cost is spread over a run).
    """

    default: Any
    help: str = ""
    type: Optional[Callable[[Any], Any]] = None
    choices: Optional[Sequence[Any]] = None
    min: Optional[float] = None
    above: Optional[float] = None  # exclusive lower bound (temperatures: above=0)
    max: Optional[float] = None
    flags: Sequence[str] = ()
    below: Optional[float] = None  # exclusive upper bound (a momentum: min=0, below=1)
    row_suffix: str = ""
    names_row: bool = False
    short: str = ""
    stage_epochs: bool = False

    @property
    def kind(self) -> Optional[type]:
        """The value type: declared, else the default's (None when it cannot be told)."""
        if self.type is not None:
            return self.type
        if self.default is None:
            return None
        return tuple if isinstance(self.default, list) else type(self.default)

    def accepted(self) -> str:
        """What the option accepts, in words (for error messages and --help)."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kind = self.kind
        bounds = []
        if self.above is not None:
            bounds.append(f"> {self.above:g}")
        if self.min is not None:
            bounds.append(f">= {self.min:g}")
        if self.max is not None:
            bounds.append(f"<= {self.max:g}")
        if self.below is not None:
            bounds.append(f"< {self.below:g}")
        words = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                 tuple: "a list of numbers" if bounds else "a list"}.get(kind, "a value")
        return words + (" " + " and ".join(bounds) if bounds else "")

    def _within(self, number: Any) -> bool:
        """Whether ``number`` is a number (not a bool) inside the bounds."""
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return False
        return not (self.min is not None and number < self.min or self.above is not None and number <= self.above
                    or self.max is not None and number > self.max or self.below is not None and number >= self.below)

    def check(self, method: str, name: str, value: Any) -> Any:
        """The value, normalised (an int for a float option, a list as a tuple), or a ValueError
        naming the method, the option, the value and what is accepted."""
        def bad() -> ValueError:
            return ValueError(f"{method}: option {name}={value!r} is not accepted; expected {self.accepted()}")

        if value is None:
            if self.default is None:
                return None
            raise bad()
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
        if kind is not None and kind is not float and not isinstance(value, kind) or \
                kind is float and not isinstance(value, float) or \
                kind is int and isinstance(value, bool):
            raise bad()
        if self.choices is not None and value not in self.choices:
            raise bad()
        bounded = any(b is not None for b in (self.min, self.above, self.max, self.below))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self._within(value):
            raise bad()
        if isinstance(value, tuple) and bounded and not all(self._within(v) for v in value):
            raise bad()
        return value


def as_option(value: Any) -> Option:
    return value if isinstance(value, Option) else Option(value)


def options_from_signature(fn: Callable, skip: Iterable[str] = ()) -> Optional[Dict[str, Option]]:
    """The keyword arguments of ``fn`` with a default, as options typed by their default (None when
    ``fn`` takes ``**kwargs`` or cannot be inspected: any key is then passed on unchecked)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    skip = set(skip)
    out = {}
    for name, p in params.items():
        if name in skip or p.kind in (inspect.Parameter.VAR_POSITIONAL,) or p.default is inspect.Parameter.empty:
            continue
        out[name] = Option(p.default, type=_annotated_type(p) if p.default is None else None)
    return out


def _annotated_type(p: inspect.Parameter):
    """A simple annotation (int, float, str, bool) as the option's type; anything else: YAML as given."""
    ann = p.annotation
    if isinstance(ann, str):
        ann = ann.replace("Optional[", "").rstrip("]")
        return {"int": int, "float": float, "str": str, "bool": bool}.get(ann)
    return ann if ann in (int, float, str, bool) else None


def check_options(owner: str, options: Optional[Dict[str, Option]], values: Dict[str, Any], flag: str) -> Dict[str, Any]:
    """``values`` checked against ``options``: an unknown key or a bad value is a ValueError naming the
    key (and the closest one), the value and every accepted option with its type."""
    if options is None:
        return dict(values)
    import difflib

    listing = ", ".join(f"{k} ({o.accepted()}, default {o.default!r})" for k, o in options.items()) or "none"
    out = {}
    for key, value in values.items():
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{flag} {key}={value!r}: {owner} takes no option '{key}'.{hint} Its options: {listing}")
        option = options[key]
        if option.kind is None:
            out[key] = value
            continue
        try:
            out[key] = option.check(owner, key, value)
        except ValueError:
            raise ValueError(f"{flag} {key}={value!r}: expected {option.accepted()} for {owner}'s option "
                             f"'{key}'. Its options: {listing}") from None
    return out
