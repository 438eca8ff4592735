"""The one shape of a batch: named fields, never positional tuples.

Every loader the project builds (the torch DataLoader path, the device loader, DALI, the
metric-learning sampler, the evaluation loaders) yields a :class:`Batch`. Fields beyond
images and labels are there because a method asked for them with a data request
(:mod:`core.requests`): the sample index, contrast indices, further augmented views, or a
plugin request's own fields in ``extras``. ``keys`` names each sample's augmented view for
the teacher-output store; it stays on the host, so a store lookup never waits for a device.

Under mixing (:class:`core.requests.Mixing`, ``--mixup``/``--cutmix``) ``images`` (and every view)
are the mixed images, ``mix`` says how they were mixed, ``targets`` holds the mixed soft targets that
the task's cross-entropy reads, and ``labels`` stay the hard label of each image's own sample (the
first of the two mixed): a method that reads ``batch["labels"]`` gets that one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch


class MixPlan(NamedTuple):
    """How a batch was mixed: image ``i`` is ``lam * images[i] + (1 - lam) * images[partner[i]]`` (mixup),
    or ``images[i]`` with the ``box`` (top, bottom, left, right) cut from ``images[partner[i]]`` (cutmix;
    ``lam`` is then the share of the image kept). ``partner`` is a LongTensor [B] of batch positions."""

    partner: torch.Tensor
    lam: float
    box: Optional[Tuple[int, int, int, int]] = None


@dataclass
class Batch:
    """Images and labels, plus what the run's data requests added (see the module docstring).

    ``views``: further augmented views of the same images, by the name their request gave
    (MLKD's ``strong``), each ``[B, C, H, W]`` like ``images``. ``extras``: a plugin request's fields
    by name (tensors whose first dimension is the batch, or other values). ``targets`` and ``mix``:
    mixing's soft targets and plan (module docstring).
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: Optional[torch.Tensor] = None
    contrast_idx: Optional[torch.Tensor] = None
    views: Dict[str, torch.Tensor] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)
    keys: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    targets: Optional[torch.Tensor] = None
    mix: Optional[MixPlan] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """The batch on ``device`` (``keys`` stay on the host: they are read there)."""
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=non_blocking)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            if isinstance(value, MixPlan):
                return value._replace(partner=move(value.partner))
            return value

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "keys"})

    def named_fields(self) -> Dict[str, Any]:
        """What a method reads from its ``batch`` argument: labels, and the index, contrast
        indices, mixed ``targets`` and ``mix`` plan and plugin fields when the batch carries them
        (views reach the method as taps)."""
        out: Dict[str, Any] = {"labels": self.labels}
        if self.targets is not None:
            out["targets"], out["mix"] = self.targets, self.mix
        if self.index is not None:
            out["index"] = self.index
        if self.contrast_idx is not None:
            out["contrast_idx"] = self.contrast_idx
        out.update(self.extras)
        return out
