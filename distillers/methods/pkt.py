"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (PKT)."""
import torch

from distillers.base import Distiller, register_distiller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row

EPS = 1e-7  # RepDistiller's eps, both in the normalisation and in the log ratio


def _conditional(x):
    """Row-normalised cosine-similarity kernel (cos + 1) / 2 of the batch."""
    x = x.flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + EPS)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


@register_distiller("pkt")
class PKT(Distiller):
    """KL-style divergence mean(Q log((Q + eps) / (P + eps))) between teacher (Q) and student (P) kernels."""

    display_name = "PKT"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 30000.0}

    def forward(self, s, t, batch=None):
        p, q = _conditional(s["pooled"]), _conditional(t["pooled"])
        return {"pkt": (q * torch.log((q + EPS) / (p + EPS))).mean()}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("pkt", GoldenEntry("pkt", {"feat_s": "s:pooled", "feat_t": "t:pooled"}, hparam_fixed={"eps": 1e-7}))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("PKT", "pkt", "pkt", REPDISTILLER_WEIGHTS))
