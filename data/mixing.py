"""Mixup and CutMix of whole training batches on the training device, the same for every loader: the
server of :class:`core.requests.Mixing` and the loader wrapper that applies it.

Plan. Batch ``b`` of epoch ``e`` draws the choice of cutmix over mixup (``switch_prob``), its lambda
(Beta(alpha, alpha)) and the cutmix box's centre from a generator seeded by (seed, e, b)
(:func:`draw_plan`): the same on every rank, on every loader, and after a resume in the middle of the
epoch, with no random state to save. One lambda (or box) per batch, as timm's default ``batch`` mode.

Partners. Each image is mixed with the image half a batch away: position ``(i + n/2) mod n`` of the
process's batch of ``n`` (``n`` must be even, as timm requires). Why not a random permutation: the batch
order already is a seeded shuffle, and this pairing mixes the same two samples on any number of
processes: rank ``r`` holds global positions ``r, r + W, r + 2W, ...`` of the global batch
(:class:`data.samplers.EpochSampler`), and half a local batch away is half a global batch away, so a
2-process run mixes exactly as a 1-process one.

Targets. ``lam * one_hot(y) + (1 - lam) * one_hot(y[partner])``, float32 [B, classes], in
``batch.targets``; label smoothing is the cross-entropy's own, applied to these (equal to timm's
``mixup_target`` with smoothing). ``batch.labels`` stay the hard labels.

The teacher-output store. A mixed image is a function of (its sample, the epoch) once the seed, the
global batch, the mixing values and the loader's own view scheme are fixed: the keys become
(sample, epoch slot), one slot per epoch (``epochs`` x samples entries), and the view scheme's
description records all of these, so a store filled by one run is exact for another with the same
values and refused for any other.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from core.batch import Batch, MixPlan
from core.requests import Mixing
from data.loaders import ViewScheme
from data.registry import DataError
from data.requests import RequestServer, register_request_server
from data.view_keys import view_key

#: What a mixed view id means; part of the store's key (a change of the plan's algorithm changes it).
PLAN = "distillers/mixing/1: batch lambda from (seed, epoch, batch); partner half a batch away"
_STREAM = 0x6D6978  # "mix": the plan's draws never share a stream with a sample's view draws


def draw_plan(request: Mixing, seed: int, epoch: int, step: int, height: int, width: int
              ) -> Tuple[float, Optional[Tuple[int, int, int, int]]]:
    """(lambda, cutmix box or None) of batch ``step`` of ``epoch``: timm's draws, from a generator
    seeded by (seed, epoch, batch). The box (top, bottom, left, right) is clipped to the image and
    lambda is then the share of the image kept (timm's ``correct_lam``)."""
    rng = np.random.default_rng([_STREAM, int(view_key(seed, epoch, [step])[0])])
    cutmix = request.cutmix_alpha > 0 and (not request.mixup_alpha > 0 or rng.random() < request.switch_prob)
    alpha = request.cutmix_alpha if cutmix else request.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not cutmix:
        return lam, None
    cut = math.sqrt(1.0 - lam)
    half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
    left, right = max(cx - half_w, 0), min(cx + half_w, width)
    return 1.0 - (bottom - top) * (right - left) / float(height * width), (top, bottom, left, right)


def mix_images(x: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """``x`` [B, C, H, W] mixed by ``plan``: a new tensor, on ``x``'s device."""
    other = x[plan.partner]
    if plan.box is None:
        return x * plan.lam + other * (1.0 - plan.lam)
    top, bottom, left, right = plan.box
    out = x.clone()
    out[..., top:bottom, left:right] = other[..., top:bottom, left:right]
    return out


def mixed_targets(labels: torch.Tensor, plan: MixPlan, num_classes: int) -> torch.Tensor:
    """float32 [B, classes]: ``lam`` on each image's label, ``1 - lam`` on its partner's."""
    one_hot = F.one_hot(labels.long(), num_classes).float()
    return one_hot * plan.lam + one_hot[plan.partner] * (1.0 - plan.lam)


@register_request_server(Mixing)
class MixingServer(RequestServer):
    """Serves :class:`Mixing` on whole batches (:class:`MixedLoader`); it adds no per-sample field, so
    every loader serves it."""

    def __init__(self, request: Mixing, dataset, seed: int):
        super().__init__(request, dataset, seed)
        self.num_classes = int(getattr(dataset, "num_classes", 0) or 0)
        if self.num_classes < 2:
            raise DataError(f"mixing needs a classification set with its num_classes; "
                            f"{type(dataset).__name__} has {self.num_classes or 'none'}")

    def fields(self, index: int, image=None) -> Dict[str, Any]:
        return {}

    def transform(self, batch: Batch, epoch: int, step: int) -> Batch:
        """``batch`` (on its device) with its images and views mixed, its targets and plan set."""
        n, height, width = batch.images.shape[0], batch.images.shape[-2], batch.images.shape[-1]
        lam, box = draw_plan(self.request, self.seed, epoch, step, height, width)
        partner = (torch.arange(n, device=batch.images.device) + n // 2) % n
        plan = MixPlan(partner, lam, box)
        for name, view in batch.views.items():
            if tuple(view.shape[-2:]) != (height, width):
                raise DataError(f"mixing: the view '{name}' is {tuple(view.shape[-2:])}, the images "
                                f"{(height, width)}: a cutmix box needs views of one size")
        batch.images = mix_images(batch.images, plan)
        batch.views = {name: mix_images(view, plan) for name, view in batch.views.items()}
        batch.targets, batch.mix = mixed_targets(batch.labels, plan, self.num_classes), plan
        return batch

    def view_scheme(self, inner: Optional[ViewScheme], epochs: int, global_batch: int) -> Optional[ViewScheme]:
        """One store slot per epoch over the loader's own views (None when those are drawn at random)."""
        if inner is None:
            return None
        request = self.request
        return ViewScheme(int(epochs), {"mixing": PLAN, "seed": self.seed, "global_batch": int(global_batch),
                                        "mixup_alpha": float(request.mixup_alpha),
                                        "cutmix_alpha": float(request.cutmix_alpha),
                                        "switch_prob": float(request.switch_prob),
                                        "epochs": int(epochs), "views": dict(inner.description),
                                        "num_views": int(inner.num_views)})


class MixedLoader:
    """A training loader (:mod:`data.loaders`' protocol) whose batches are moved to ``device`` and mixed
    there by ``server``: batch ``skip + i`` of a resumed epoch gets the plan it had the first time.
    Everything else (``batch_size``, ``sampler``, ...) is the wrapped loader's."""

    def __init__(self, loader, server: MixingServer, device, epochs: int, world_size: int):
        if loader.batch_size % 2:
            raise DataError(f"--mixup/--cutmix pair each image with the one half a batch away: the batch per "
                            f"process ({loader.batch_size}) must be even")
        self.loader, self.server, self.device = loader, server, torch.device(device)
        self.view_scheme = server.view_scheme(getattr(loader, "view_scheme", None), epochs,
                                              loader.batch_size * world_size)
        self.epoch, self.skip = 0, 0

    def __getattr__(self, name: str):  # only reached for what this wrapper does not hold itself
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.loader.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            keys = batch.keys
            batch = self.server.transform(batch.to(self.device, non_blocking=True), self.epoch, self.skip + i)
            # a mixed image is named by (sample, epoch slot); init-stage epochs (< 1) are never stored
            batch.keys = (keys[0], torch.full_like(keys[0], self.epoch - 1)) \
                if keys is not None and self.view_scheme is not None and self.epoch >= 1 else None
            yield batch


def with_mixing(loader, servers: Sequence[RequestServer], device, epochs: int, world_size: int):
    """``loader``, mixed on ``device`` when one of ``servers`` serves :class:`Mixing` (else as it is)."""
    mixing = [s for s in servers if isinstance(s, MixingServer)]
    return MixedLoader(loader, mixing[0], device, epochs, world_size) if mixing else loader
