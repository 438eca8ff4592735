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

from core.options import Option, as_option
from core.registry import Registry
from core.requests import DataRequest

DISTILLERS = Registry("distiller")

#: A key of a distiller's output that is the student's prediction, not a loss term
#: (SimKD predicts through the teacher's classifier). Excluded from the loss sum.
PREDICTION = "logits"

class NotApplicable(ValueError):
    """The method cannot serve this teacher/student pair, found only when it first sees the tapped features
    (what the shapes cannot tell: which module a tap is, what a head does). The trainer reports it as one
    line naming the method and the pair, as it does for what ``__init__`` refuses."""


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
    * ``default_weights``: the reference script's ``gamma`` (CE), ``alpha`` (KD) and
      ``beta`` (this method) used when the command line does not set them.
    * ``options``: dict of option name -> default or :class:`Option` (default, meaning,
      accepted values); these become keyword arguments and the method's own command-line
      flags ``--<name>`` (use the reference's flag names), checked in one place.

    ``batch`` always carries ``labels`` and ``epoch`` (the 1-based epoch, for warm-up schedules),
    and what the method's :meth:`data_requests` asked for: ``index``, ``contrast_idx``, a
    further view's taps under its name (``batch["strong"] = {"s": ..., "t": ...}``), a plugin
    request's fields. Methods with memories update them inside ``forward`` after scoring, with
    embeddings gathered over ranks (:func:`distillers.dist.gather`), so every rank keeps
    identical buffers.

    and implement ``__init__(spec, **options)`` (build parts from shapes) and
    ``forward(s, t, batch) -> {term name: scalar tensor}``.
    """

    student_taps: Sequence[str] = ("logits",)
    teacher_taps: Sequence[str] = ("logits",)
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

    def data_requests(self) -> Sequence[DataRequest]:
        """What this method needs from the data besides images and labels (:mod:`core.requests`:
        ``SampleIndex()``, ``ContrastSampling(negatives, positive)``, ``ExtraView(name, augment)``, or a plugin's
        own kind); the data path serves each (none by default)."""
        return ()

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
