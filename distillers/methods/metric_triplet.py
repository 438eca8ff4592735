"""Triplet and contrastive losses of metric learning (lenscloth/RKD ``metric/loss.py``, methods.md §6.1-6.2).

Both read the embedding (tap ``logits``, the embedding net's output) and the labels. The
triplets come from a sampler of :mod:`distillers.methods._pairs`, or from ``batch`` when it
carries ``anchor_idx``/``pos_idx``/``neg_idx`` (externally mined triplets; the golden files fix
them this way). A batch without any triplet gives a zero loss that still reaches the graph.
"""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS, SAMPLERS, sample_triplets
from distillers.reference import GoldenEntry, register_golden, LABELLED, TRIPLETS, mined_variant

TRIPLET_KEYS = ("anchor_idx", "pos_idx", "neg_idx")
MARGIN = Option(0.2, "margin", min=0)


class _TripletLoss(Distiller):
    student_taps = ("logits",)
    teacher_taps = ()
    default_weights = METRIC_WEIGHTS

    def squared_mining(self) -> bool:
        """Mining distance of the hard/semi-hard samplers: plain Euclidean (the reference default)."""
        return False

    def triplets(self, e, batch):
        if all(k in batch for k in TRIPLET_KEYS):
            return tuple(batch[k].to(e.device) for k in TRIPLET_KEYS)
        return sample_triplets(e.detach(), batch["labels"], self.triplet_sample, squared=self.squared_mining())


@register_distiller("triplet", task="metric")
class Triplet(_TripletLoss):
    """mean over triplets of max(0, d(a, p) - d(a, n) + margin), d = ||x - y + 1e-6||_p.

    ``p`` 2 is the reference's L2Triplet, 1 its L1Triplet. The mining distance of the hard and
    semi-hard samplers is squared Euclidean when ``mining_squared`` is true; unset (None) it
    follows the reference: squared for p = 2, plain Euclidean for p = 1.
    """

    options = {
        "margin": MARGIN,
        "p": Option(2, "norm of the distance: 1 (L1 triplet) or 2 (L2 triplet)", choices=(1, 2)),
        "triplet_sample": Option("distance", "triplet sampler", choices=SAMPLERS),
        "mining_squared": Option(None, "mine hard/semi-hard negatives by squared distance (unset: for p 2 only)",
                                 type=bool),
    }

    def squared_mining(self) -> bool:
        return self.p == 2 if self.mining_squared is None else bool(self.mining_squared)

    def forward(self, s, t, batch=None):
        e = s["logits"]
        a, p, n = self.triplets(e, batch)
        if a.numel() == 0:
            return {"triplet": e.sum() * 0}
        return {"triplet": F.triplet_margin_loss(e[a], e[p], e[n], margin=self.margin, p=self.p)}


@register_distiller("contrastive", task="metric")
class Contrastive(_TripletLoss):
    """Contrastive loss: squared positive distances and squared hinges margin - d(a, n), averaged.

    The mean of cat(d(a, p)^2, max(0, margin - d(a, n))^2) over the sampled triplets (a positive
    pair counts once per negative); default sampler ``all``, as ``run.py --loss contrastive``.
    """

    options = {"margin": MARGIN, "triplet_sample": Option("all", "triplet sampler", choices=SAMPLERS)}

    def forward(self, s, t, batch=None):
        e = s["logits"]
        a, p, n = self.triplets(e, batch)
        if a.numel() == 0:
            return {"contrastive": e.sum() * 0}
        pos = F.pairwise_distance(e[a], e[p], p=2).pow(2)
        neg = (self.margin - F.pairwise_distance(e[a], e[n], p=2)).clamp(min=0).pow(2)
        return {"contrastive": torch.cat((pos, neg)).mean()}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("triplet", GoldenEntry(
    "triplet", {**LABELLED, **TRIPLETS}, hparam_options={"margin": "margin", "p": "p"},
    hparam_fixed={"pairwise_distance_eps": 1e-6}, hparam_info=("reduction", "default_sampler"),
    variants={"all_pairs": mined_variant("all"), "hard_negative": mined_variant("hard"),
              "semihard_negative": mined_variant("semihard")}, task="metric"))
register_golden("metric_contrastive", GoldenEntry(
    "contrastive", {**LABELLED, **TRIPLETS}, hparam_options={"margin": "margin"},
    hparam_fixed={"p": 2, "pairwise_distance_eps": 1e-6}, hparam_info=("reduction", "sampler"),
    diagnostics=("d_pos", "d_neg", "n_active_neg"), task="metric"))
