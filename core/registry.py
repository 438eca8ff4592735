"""One small generic registry, used for distillers, models and datasets.

A registry maps a name to a factory (usually a class). Entries are added with a
decorator and built by name; an unknown name fails at once with the known names
and the closest match, so a typo on the command line never reaches a traceback.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, List, Optional


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the accepted ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0] if self.args else ""


class DuplicateNameError(ValueError):
    """A name registered twice without ``override=True`` (e.g. a plugin's method named ``kd``)."""


def _origin(obj: Any) -> str:
    """Where a registered object comes from: its module (``distillers.methods.kd``)."""
    return getattr(obj, "__module__", None) or repr(obj)


class Registry:
    """Name -> factory table with a decorator, lookup with suggestions, and metadata.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("resnet8", family="cifar")
    ... def resnet8(num_classes=100): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._meta: Dict[str, Dict[str, Any]] = {}
        self._checks: List[Callable[[str, Any], None]] = []

    def register(self, name: str, *, override: bool = False, **meta: Any):
        """Decorator that registers `obj` under `name` with optional metadata."""

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and not override and self._entries[name] is not obj:
                raise DuplicateNameError(
                    f"{self.kind} '{name}' is already registered by {_origin(self._entries[name])}; "
                    f"choose another name or pass override=True to replace it"
                )
            for check in self._checks:  # a rule another layer added: refused here, at registration
                check(name, obj)
            self._entries[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return decorator

    def add_check(self, check: Callable[[str, Any], None]) -> None:
        """Run ``check(name, entry)`` on every entry, now and at each later registration; it raises
        ValueError to refuse one (e.g. the engine refuses a method option named like one of its flags)."""
        for name, entry in list(self._entries.items()):
            check(name, entry)
        self._checks.append(check)

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def meta(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self, **meta_filter: Any) -> List[str]:
        """Sorted names, optionally only those whose metadata matches every filter."""
        return sorted(
            n for n, m in self._meta.items()
            if all(m.get(k) == v for k, v in meta_filter.items())
        )

    def unknown_message(self, name: str, choices: Optional[Iterable[str]] = None) -> str:
        known = sorted(choices) if choices is not None else self.names()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        if not close:  # case-insensitive second chance: 'resnet50' vs 'ResNet50'
            lowered = {k.lower(): k for k in known}
            close = [lowered[name.lower()]] if name.lower() in lowered else []
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"Unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(known)}"

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self.get(name)

    def __iter__(self):
        """The names, sorted (a registry reads like a mapping of name -> entry)."""
        return iter(self.names())

    def items(self) -> List[Any]:
        return [(name, self._entries[name]) for name in self.names()]

    def values(self) -> List[Any]:
        return [self._entries[name] for name in self.names()]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
