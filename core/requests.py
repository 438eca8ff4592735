"""What a method needs from the data besides images and labels, said as request objects.

A method declares its requests (``Distiller.data_requests()``); the data layer serves each kind
once, behind one interface (:mod:`data.requests`), on every loader that can. The engine only
passes them on: it never names a method or looks for a method's attributes.

Built-in kinds: :class:`SampleIndex` (memory banks), :class:`ContrastSampling` (CRD's
positive and negatives), :class:`ExtraView` (a further augmented view of each image, MLKD's
strong view), :class:`Mixing` (mixup and cutmix of each batch: the run's flags add it, not a method).
A plugin defines a new kind by subclassing :class:`DataRequest` and registering its server with
``data.register_request_server`` in its own file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Tuple


@dataclass(frozen=True)
class DataRequest:
    """Base of every request. Two requests of one :attr:`slot` are one request: equal ones
    merge, different ones are an error naming both (two terms asking for different sampling)."""

    @property
    def slot(self) -> Tuple[Any, ...]:
        """What identifies the request among others of its kind (the kind itself by default)."""
        return (type(self).__name__,)

    def merged(self, other: "DataRequest") -> "DataRequest":
        if other != self:
            raise ValueError(f"two terms of the loss ask for different data: {self} and {other}")
        return self


@dataclass(frozen=True)
class SampleIndex(DataRequest):
    """Each sample's index in the training set (``batch["index"]``): memory banks and queues."""


@dataclass(frozen=True)
class ContrastSampling(DataRequest):
    """``negatives`` indices per sample from other classes and one positive (``batch["contrast_idx"]``,
    [B, negatives + 1], column 0 the positive: the sample itself for ``positive="exact"``, a sample of
    its class for ``"relax"``); the sample index comes with it. Draws depend on (seed, epoch, sample)."""

    negatives: int
    positive: str = "exact"

    def __post_init__(self):
        if self.positive not in ("exact", "relax"):
            raise ValueError(f"contrast sampling's positive must be 'exact' or 'relax', got {self.positive!r}")
        if int(self.negatives) < 1:
            raise ValueError(f"contrast sampling needs at least 1 negative, got {self.negatives}")


@dataclass(frozen=True)
class ExtraView(DataRequest):
    """A further augmented view of each image, named ``name``: the dataset's own augmentation
    followed by ``augment`` (a transform inserted before the tensor conversion, e.g. torchvision's
    ``RandAugment(2, 10)``). The student and the teacher see it in the same forward as the first
    view; the method reads its taps as ``batch[name] = {"s": ..., "t": ...}``."""

    name: str
    augment: Optional[Any] = None

    @property
    def slot(self) -> Tuple[Any, ...]:
        return (type(self).__name__, self.name)

    def merged(self, other: "DataRequest") -> "DataRequest":
        if other is not self and (type(other.augment), repr(other.augment)) != (type(self.augment), repr(self.augment)):
            raise ValueError(f"two terms ask for a view named '{self.name}' with different augmentations: "
                             f"{self.augment!r} and {other.augment!r}")
        return self


@dataclass(frozen=True)
class Mixing(DataRequest):
    """Mixup and CutMix of each training batch (the ViT recipes: DeiT, OFA-KD), served once for every
    loader by :mod:`data.mixing`: each image mixed with a partner of its batch, the same lambda (or box)
    for the whole batch, cutmix instead of mixup with ``switch_prob`` when both alphas are set. The plan is
    a function of (seed, epoch, batch index); ``batch.mix`` holds it, ``batch.targets`` the mixed soft
    targets ([B, classes]); ``batch.labels`` stay the hard labels of each image's own sample. Teacher and
    student see the same mixed images."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5

    def __post_init__(self):
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"mixing: {name} {value} must be 0 (off) or positive")
        if not self.mixup_alpha > 0 and not self.cutmix_alpha > 0:
            raise ValueError("mixing needs mixup_alpha or cutmix_alpha above 0")
        if not 0 <= self.switch_prob <= 1:
            raise ValueError(f"mixing: switch_prob {self.switch_prob} must be in [0, 1]")


def merge_requests(requests: Iterable[DataRequest]) -> List[DataRequest]:
    """One request per slot, in first-seen order (what every term of one loss needs together)."""
    out = {}
    for request in requests:
        if not isinstance(request, DataRequest):
            raise TypeError(f"a data request must be a core.requests.DataRequest, got {request!r}")
        slot = request.slot
        out[slot] = out[slot].merged(request) if slot in out else request
    return list(out.values())


def views_of(requests: Iterable[DataRequest]) -> List[str]:
    """Names of the extra views among ``requests``, in order."""
    return [r.name for r in requests if isinstance(r, ExtraView)]
