"""Pair and triplet samplers of metric learning (lenscloth/RKD ``metric/pairsampler.py``).

Anchor-positive pairs are every ordered same-label pair i != j, in row-major order. The
negative of each pair comes from one of the samplers (models-and-data.md §5.5):

* ``all``: every negative of the anchor, in increasing index (one triplet each);
* ``random``: one negative drawn uniformly among the anchor's negatives;
* ``hard``: the anchor's nearest negative;
* ``semihard``: the nearest negative farther than the positive (no upper bound d_ap + margin);
  when none is farther, the farthest negative;
* ``distance``: distance-weighted sampling (Wu et al.) exactly as the reference computes it,
  :func:`distance_weighted_probabilities`, then one ``torch.multinomial`` draw per pair.

Masks are boolean (the reference's uint8 masks are deprecated). The mining distance of
``hard``/``semihard`` is an explicit argument: squared Euclidean for the L2 triplet, plain
Euclidean otherwise (the reference sets it as a side effect of building the loss). Random
draws use the global torch generator, which the trainer seeds and checkpoints.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from distillers.reference import GoldenEntry, register_golden

SAMPLERS = ("all", "random", "hard", "semihard", "distance")
BIG_NUMBER = 1e12
Triplets = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pdist(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """The reference's pairwise distance: squared-norm expansion clamped at ``eps``, root unless
    ``squared``, exactly 0 on the diagonal."""
    sq = x.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x @ x.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def pos_neg_masks(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def positive_pairs(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every ordered same-label pair i != j, row-major: (anchor_idx, pos_idx)."""
    pos, _ = pos_neg_masks(labels)
    idx = pos.nonzero()
    return idx[:, 0], idx[:, 1]


def check_sampler(name: str, owner: str = "metric") -> str:
    if name not in SAMPLERS:
        raise ValueError(f"{owner}: unknown triplet sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return name


def distance_weighted_probabilities(embeddings: torch.Tensor, labels: torch.Tensor, cut_off: float = 0.5,
                                    nonzero_loss_cutoff: float = 1.4) -> Tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
    """Sampling rows of the distance-weighted sampler: (probabilities [pairs, B], anchor_idx, pos_idx).

    x = L2-normalise(embeddings) (always); D = max(sqrt(squared distance + I), cut_off);
    log w = (2 - d) log D - ((d - 3) / 2) log(1 - D^2 / 4); w = exp(log w - row max over all
    entries) kept where label differs and D < nonzero_loss_cutoff; an all-zero row falls back to
    uniform over its negatives; rows sum to 1; row r is the anchor of pair r. The argument of the
    second log is clamped at 1e-12 (an antipodal pair, D = 2, would make the reference's row NaN).
    """
    with torch.no_grad():
        x = F.normalize(embeddings, p=2, dim=1)
        pos, neg = pos_neg_masks(labels)
        anchor_idx, pos_idx = pos.nonzero().unbind(1)
        d = x.shape[1]
        eye = torch.eye(len(x), dtype=x.dtype, device=x.device)
        dist = (pdist(x, squared=True) + eye).sqrt().clamp(min=cut_off)
        log_weight = (2.0 - d) * dist.log() - ((d - 3.0) / 2.0) * (1.0 - 0.25 * dist * dist).clamp(min=1e-12).log()
        weight = (log_weight - log_weight.max(dim=1, keepdim=True)[0]).exp()
        weight = weight * (neg & (dist < nonzero_loss_cutoff)).to(weight.dtype)
        weight = weight + ((weight.sum(dim=1, keepdim=True) == 0) & neg).to(weight.dtype)
        weight = weight / weight.sum(dim=1, keepdim=True)
        return weight[anchor_idx], anchor_idx, pos_idx


def sample_triplets(embeddings: torch.Tensor, labels: torch.Tensor, sampler: str,
                    squared: bool = False) -> Triplets:
    """(anchor_idx, pos_idx, neg_idx) of one batch; empty tensors when no triplet exists.

    ``squared`` chooses the mining distance of ``hard`` and ``semihard``.
    """
    check_sampler(sampler)
    with torch.no_grad():
        pos, neg = pos_neg_masks(labels)
        anchor_idx, pos_idx = pos.nonzero().unbind(1)
        has_neg = neg.any(dim=1)
        keep = has_neg[anchor_idx]  # an anchor without negatives (one-class batch) forms no triplet
        anchor_idx, pos_idx = anchor_idx[keep], pos_idx[keep]
        if anchor_idx.numel() == 0:
            empty = anchor_idx.new_empty(0)
            return empty, empty, empty
        if sampler == "all":
            rows, neg_idx = neg[anchor_idx].nonzero().unbind(1)  # row-major: pair by pair
            return anchor_idx[rows], pos_idx[rows], neg_idx
        if sampler == "random":
            return anchor_idx, pos_idx, torch.multinomial(neg.to(embeddings.dtype)[anchor_idx], 1).squeeze(1)
        if sampler == "distance":
            weight, _, _ = distance_weighted_probabilities(embeddings, labels)
            weight = weight[keep]
            return anchor_idx, pos_idx, torch.multinomial(weight, 1).squeeze(1)
        dist = pdist(embeddings.detach(), squared=squared)
        big = torch.full_like(dist, BIG_NUMBER)
        if sampler == "hard":
            return anchor_idx, pos_idx, torch.where(neg, dist, big).argmin(dim=1)[anchor_idx]
        # semihard: nearest negative farther than the positive, else the farthest negative
        d_an = dist[anchor_idx]
        d_ap = dist[anchor_idx, pos_idx].unsqueeze(1)
        neg_rows = neg[anchor_idx]
        satisfied = neg_rows & (d_an > d_ap)
        none = ~satisfied.any(dim=1, keepdim=True)
        score = torch.where(satisfied, d_an, torch.full_like(d_an, BIG_NUMBER))
        score = torch.where(none & neg_rows, -d_an, score)
        return anchor_idx, pos_idx, score.argmin(dim=1)


def mined_triplets(embeddings: torch.Tensor, labels: torch.Tensor, sampler: str = "all",
                   squared: bool = True) -> dict:
    """Sampler output as a dict (``anchor_idx``, ``pos_idx``, ``neg_idx``), for the golden adapter."""
    a, p, n = sample_triplets(embeddings, labels, sampler, squared=squared)
    return {"anchor_idx": a, "pos_idx": p, "neg_idx": n}


# ------------------------------------------------------------------ shared by the metric losses
#: Metric-learning losses replace the task loss: no cross-entropy, no KD (methods.md §0.3).
METRIC_WEIGHTS = {"gamma": 0.0, "alpha": 0.0, "beta": 1.0}


def as_layers(owner: str, value) -> Tuple[str, ...]:
    """Tap names from ``"stage2,stage3"`` or a list."""
    names = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip())
    if not names:
        raise ValueError(f"{owner}: no layers given")
    return names


def tap_shape(spec_side, tap: str, side: str, owner: str):
    if tap not in spec_side:
        known = sorted(k for k in spec_side if not isinstance(spec_side[k], list))
        raise ValueError(f"{owner}: the {side} has no tap '{tap}'; its taps: {', '.join(known)}")
    return tuple(spec_side[tap])


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("distance_weighted_logweights", GoldenEntry(
    "", {"embeddings": "arg:embeddings", "labels": "arg:labels"},
    function="distillers.methods._pairs:distance_weighted_probabilities",
    outputs={"1": "anchor_idx", "2": "pos_idx"},
    hparam_options={"cut_off": "cut_off", "nonzero_loss_cutoff": "nonzero_loss_cutoff"}, hparam_info=("dim",),
    diagnostics=("dist", "log_weight", "weight_matrix", "nonzero_fraction"), task="metric"))
