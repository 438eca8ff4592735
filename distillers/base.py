"""The one interface every distillation method fills in.

A distiller is an ``nn.Module`` that holds a method's loss and its own trainable
parts and buffers (connectors, embeddings, memory banks), nothing else. It is
built from a :class:`ShapeSpec` (the shapes of every tap of the student and the
teacher, obtained from one dry-run forward), so its connectors fit any pair
without per-model channel tables. Its ``forward`` maps tapped features to a dict
of named loss terms; the trainer weights their sum with ``-b/--beta``.

The frozen teacher and the student live outside the distiller (as in mdistiller,
learnable parameters are kept apart from the teacher), so ``distiller.parameters()``
are exactly the extra trainable parts the optimizer and checkpoint must carry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from core.registry import Registry

DISTILLERS = Registry("distiller")

#: A key of a distiller's output that is the student's prediction, not a loss term
#: (SimKD predicts through the teacher's classifier). Excluded from the loss sum.
PREDICTION = "logits"

#: Keys a distiller may ask the trainer to put in ``batch``.
BATCH_KEYS = ("labels", "index", "contrast_idx")

#: The method that ``-a/--alpha`` adds to any other: KD (Hinton et al.), an ordinary registered method.
ADDED_TERM = "kd"

Shape = Tuple[int, ...]


@dataclass
class ShapeSpec:
    """Per-sample shapes of the tapped features (batch dimension dropped).

    ``student``/``teacher`` map a tap name to a shape, or a group name
    (``stages``, ``stages_preact``) to a list of shapes. Dataset facts that some
    methods size their parts with (CRD's memory, SemCKD's batch-sized MLPs) are
    carried beside them.
    """

    student: Dict[str, Any]
    teacher: Dict[str, Any]
    num_classes: Optional[int] = None
    num_data: Optional[int] = None
    batch_size: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class InitStage:
    """An initialisation stage run by the trainer before the main loop (AB, FT, FSP).

    The trainer runs ``epochs`` epochs minimising ``Distiller.init_forward`` with its
    own SGD over ``parameters`` (plus the student's when ``trains_student``), at
    ``lr`` (None: the main learning rate), then calls ``Distiller.finish_init_stage``.
    The stage is logged, checkpointed and resumable like the main loop.
    """

    epochs: int
    parameters: List[nn.Parameter]
    trains_student: bool = False
    lr: Optional[float] = None
    student_taps: Sequence[str] = ()
    teacher_taps: Sequence[str] = ()


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


@dataclass(frozen=True)
class BatchNeeds:
    """What a method's batches carry besides images and labels; the data path serves it.

    ``index``: each sample's dataset index (memory banks). ``contrast_k``: negatives per sample
    drawn by the contrast sampler (CRD), with ``contrast_mode`` 'exact' (the positive is the
    sample itself) or 'relax' (any sample of its class). ``views``: augmented views per image
    (MLKD's weak and strong pair: the second view's taps reach the method as ``batch["strong"]``).
    """

    index: bool = False
    contrast_k: int = 0
    contrast_mode: str = "exact"
    views: int = 1

    def merged(self, other: "BatchNeeds") -> "BatchNeeds":
        """What two methods of one objective need together."""
        if self.contrast_k and other.contrast_k and (self.contrast_k, self.contrast_mode) != \
                (other.contrast_k, other.contrast_mode):
            raise ValueError("two terms ask for different contrast sampling")
        return BatchNeeds(self.index or other.index, max(self.contrast_k, other.contrast_k),
                          self.contrast_mode if self.contrast_k else other.contrast_mode,
                          max(self.views, other.views))


def register_distiller(name: str, **meta: Any):
    """Class decorator: make a :class:`Distiller` subclass buildable by ``name``.

    Metadata: ``task="metric"`` for metric-learning methods (default: classification);
    ``default_for="<task>"`` makes it the method of that task when --distill is not given.
    """

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"@register_distiller('{name}') expects a Distiller subclass, got {cls!r}")
        cls.registry_name = name
        return DISTILLERS.register(name, **meta)(cls)

    return decorator


def list_distillers():
    return DISTILLERS.names()


def default_method(task: str) -> str:
    """The method a student of ``task`` trains with when --distill is not given."""
    names = DISTILLERS.names(default_for=task)
    return names[0] if names else ADDED_TERM


def build_distiller(name: str, spec: ShapeSpec, **options: Any) -> "Distiller":
    """Build a registered distiller; an unknown option is an error naming the accepted ones."""
    cls = DISTILLERS.get(name)
    accepted = cls.option_names()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"distiller '{name}' got unknown option(s) {unknown}; accepted: {sorted(accepted) or 'none'}")
    return cls(spec, **options)


class Distiller(nn.Module):
    """Base class of every method.

    Subclasses set:

    * ``student_taps`` / ``teacher_taps``: tap names (or groups such as ``stages``)
      read by ``forward``; instances may narrow them from their options.
    * ``batch_keys``: which of ``labels``, ``index``, ``contrast_idx`` ``forward``
      reads from ``batch``; asking for ``contrast_idx`` makes the trainer wrap the
      dataset with contrast sampling.
    * ``default_weights``: the reference script's ``gamma`` (CE), ``alpha`` (KD) and
      ``beta`` (this method) used when the command line does not set them.
    * ``options``: dict of option name -> default or :class:`Option` (default, meaning,
      accepted values); these become keyword arguments and the method's own command-line
      flags ``--<name>`` (use the reference's flag names), checked in one place.

    ``batch`` carries the requested ``batch_keys`` plus ``epoch`` (1-based, float
    progress within the run) for warm-up schedules. Methods with memories update
    them inside ``forward`` after scoring, with embeddings gathered over ranks
    (:func:`distillers.dist.gather`), so every rank keeps identical buffers.

    and implement ``__init__(spec, **options)`` (build parts from shapes) and
    ``forward(s, t, batch) -> {term name: scalar tensor}``.
    """

    student_taps: Sequence[str] = ("logits",)
    teacher_taps: Sequence[str] = ("logits",)
    batch_keys: Sequence[str] = ()
    #: Augmented views of each image the method reads (MLKD: ("weak", "strong")); the first is
    #: in ``s``/``t``, the second's taps in ``batch["strong"] = {"s": ..., "t": ...}``.
    views: Sequence[str] = ()
    default_weights: Mapping[str, float] = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options: Mapping[str, Any] = {}
    registry_name: str = ""
    #: The method's name in published tables (``CRD-queue``, ``ReviewKD``); the collector's row label.
    display_name: str = ""

    def __init__(self, spec: ShapeSpec, **options: Any):
        super().__init__()
        self.spec = spec
        specs = self.option_specs()
        name = self.registry_name or type(self).__name__
        for key, option in specs.items():
            setattr(self, key, option.check(name, key, options.get(key, option.default)))

    @classmethod
    def option_specs(cls) -> Dict[str, Option]:
        """Every option as an :class:`Option`, gathered along the class hierarchy."""
        merged: Dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            for key, value in getattr(klass, "__dict__", {}).get("options", {}).items():
                merged[key] = as_option(value)
        return merged

    @classmethod
    def all_options(cls) -> Dict[str, Any]:
        """Option name -> default value."""
        return {k: v.default for k, v in cls.option_specs().items()}

    @classmethod
    def option_names(cls) -> Sequence[str]:
        return tuple(cls.all_options())

    @classmethod
    def row_name(cls, options: Mapping[str, Any]) -> str:
        """This method's row label in published tables for a run with ``options`` (its display name;
        a method whose options name another row, as CTKD's ``ctkd_base``, overrides it). The
        collector adds the suffixes every method shares: ``+KD`` (-a), ``+LS``, ``+DOT``."""
        return cls.display_name or cls.registry_name

    def forward(self, s: Dict[str, Any], t: Dict[str, Any],
                batch: Optional[Dict[str, Any]] = None) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch_needs(self) -> BatchNeeds:
        """What this method's batches need (default: sample indices when ``batch_keys`` has
        ``index``, and as many augmented views as ``views`` names); methods that sample
        contrasts override it with their own options."""
        return BatchNeeds(index="index" in self.batch_keys, views=max(1, len(self.views)))

    def parts(self) -> Sequence[Tuple[str, float, "Distiller"]]:
        """The named, weighted methods this one is composed of; empty for a method that is its own
        terms. The objective weighs each part as a term of its own (``name``: the sum of that
        part's terms), so a composed method's weights are the objective's, not hidden inside it
        (the metric-learning seeds' ``--*_ratio`` flags)."""
        return ()

    def init_stage(self) -> Optional[InitStage]:
        """The method's initialisation stage, if it has one (None for most methods)."""
        return None

    def init_forward(self, s: Dict[str, Any], t: Dict[str, Any],
                     batch: Optional[Dict[str, Any]] = None) -> Dict[str, torch.Tensor]:
        """Loss terms of the initialisation stage."""
        raise NotImplementedError(f"{type(self).__name__} has no initialisation stage")

    def finish_init_stage(self) -> None:
        """Called once the initialisation stage is over (e.g. freeze its connectors)."""

    def inference_head(self) -> Optional[nn.Module]:
        """What the student needs at test time besides itself (SimKD's projector + teacher fc).

        A module with a ``student_taps`` attribute whose ``forward`` maps the dict of
        those student taps to logits; saved with the student, used by evaluation.
        """
        return None

    @staticmethod
    def total(terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The method's loss: the sum of its terms (a prediction entry is not a term)."""
        values = [v.reshape(()) for k, v in terms.items() if k != PREDICTION]
        return torch.stack(values).sum() if values else torch.zeros(())
