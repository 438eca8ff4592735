"""Row labels of runs as the published tables name them: KD, KD+LS, CRD+KD, DKD+CTKD, SimKD (f=4), ...

What a label is made of is declared beside each method, and read here: its row name
(``Distiller.display_name``, ``Distiller.row_name``), the options that are part of its row
(``Option.names_row``; ``Option.row_suffix``, as logit standardisation's ``+LS``) and their short
names (``Option.short``). The KD term that ``-a`` adds to any method is the registry's
``ADDED_TERM``, with its own options. A method option at its registry default, or at the reference
value of the run's row on its pair (:func:`engine.results.published.settings`, the settings of the
generated ``configs/cifar100/<row>/<pair>.yaml``), is not part of the label, so a run launched from
a config and one launched with the same values on the command line share a cell.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

from distillers.base import ADDED_TERM, DISTILLERS, Option
from distillers.reference import ROWS
from engine.results import published as pub

#: The trainer's DOT optimiser flag (engine/config.py ``--dot``): an optimiser, usable with any method,
#: not a method option; its runs are rows of their own (KD+DOT).
DOT_FLAG, DOT_SUFFIX = "dot", "+DOT"


def method_class(method: str):
    """The registered class of ``method``, or None (a run of a plugin method that is not loaded)."""
    try:
        return DISTILLERS.get(method)
    except Exception:
        return None


def registry_defaults(method: str) -> Dict[str, float]:
    """The method's reference weights; for an unknown (plugin) method the trainer's base defaults."""
    cls = method_class(method)
    return dict(cls.default_weights) if cls else {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}


def option_names(method: str) -> Sequence[str]:
    cls = method_class(method)
    return cls.option_names() if cls else ()


def kd_term_options() -> Dict[str, Option]:
    """The options of the KD term that ``-a`` adds to any method, as :class:`Option` s."""
    return dict(DISTILLERS.get(ADDED_TERM).option_specs())


def option_specs(method: str) -> Dict[str, Option]:
    """Every option a run of ``method`` can record: the KD term's, then the method's own."""
    cls = method_class(method)
    return {**kd_term_options(), **(cls.option_specs() if cls else {})}


def row_options(method: str) -> Set[str]:
    """Options whose value is part of the row label (never dropped as a reference value, never an extra)."""
    return {k for k, spec in option_specs(method).items() if spec.names_row or spec.row_suffix} | {DOT_FLAG}


def short_name(method: str, option: str) -> str:
    """The option's name among a label's extra settings (``f`` for SimKD's factor)."""
    spec = option_specs(method).get(option)
    return spec.short if spec is not None and spec.short else option


def adds_kd(method: str, weights: Tuple[float, float, float]) -> bool:
    """A run that adds the KD term (``-a`` > 0) to a method that has none by default: its row is ``<row>+KD``."""
    return method != ADDED_TERM and weights[1] > 0 and not registry_defaults(method).get("alpha", 0.0)


def canon(value):
    """An option value as recorded (``"4.0"``, ``"True"``, ``"[3.0, 5.0]"``) or given, in a comparable form."""
    if isinstance(value, str):
        try:
            import yaml

            value = yaml.safe_load(value)
        except Exception:  # not YAML: compare the text
            return value.strip().lower()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(canon(v) for v in value)
    return str(value).strip().lower()


def reference_settings(label: str, pair: Tuple[Optional[str], str]) -> Optional[Dict]:
    """The flag values of results.md row ``label`` on ``pair`` as the references ran it, or None."""
    if label not in ROWS or pair[0] is None:
        return None
    try:
        return pub.settings(label, pair)
    except Exception:  # e.g. CAT-KD on a pair its fork has no config for
        return None


def published(label: str, pair: Tuple[Optional[str], str]) -> Optional[Tuple[float, str]]:
    """(published top-1, source key) of results.md §1-2 for a row label and pair, or None."""
    return pub.PUBLISHED.get(label, {}).get(pair)


def display_name(method: str) -> str:
    """The method's name in published tables, declared beside it (``Distiller.display_name``)."""
    cls = method_class(method)
    return (cls.display_name or method) if cls else method


def method_order() -> List[str]:
    """Methods in the order of the published tables' rows (results.md), then the others by name."""
    ordered = [ROWS[label].distill for label in pub.PUBLISHED if label in ROWS]
    return list(dict.fromkeys(ordered + DISTILLERS.names()))


def variant_name(method: str, weights: Tuple[float, float, float], options) -> str:
    """results.md's row name of a run: KD, KD+LS, CRD+KD, DKD+LS, KD+CTKD, KD+DOT, ...: the method's
    own row name (``Distiller.row_name``), then the suffixes every method shares."""
    opts = {k: canon(v) for k, v in dict(options).items()}
    try:
        name = DISTILLERS.get(method).row_name(opts)
    except Exception:  # a plugin method that is not loaded
        name = method
    if adds_kd(method, weights):
        name += "+KD"
    for key, spec in option_specs(method).items():
        if spec.row_suffix and opts.get(key) is True and not name.endswith(spec.row_suffix):
            name += spec.row_suffix
    if opts.get(DOT_FLAG) is True:
        name += DOT_SUFFIX
    return name


def canonical_options(method: str, pair, weights, options) -> Tuple[Tuple[str, str], ...]:
    """The options that make a run differ from its row's recipe: those at the registry's default, or at
    the reference value of the run's row on its pair, are dropped (the row-defining ones are kept)."""
    opts = dict(options)
    cls = method_class(method)
    defaults = {k: spec.default for k, spec in kd_term_options().items() if spec.default is not None}
    defaults.update({k: v for k, v in (cls.all_options() if cls else {}).items() if v is not None})
    for key in list(opts):
        if key in defaults and canon(opts[key]) == canon(defaults[key]):
            del opts[key]
    reference = reference_settings(variant_name(method, weights, opts), pair) or {}
    keep = row_options(method)
    for key in list(opts):
        if key not in keep and key in reference and canon(opts[key]) == canon(reference[key]):
            del opts[key]
    return tuple(sorted(opts.items()))
