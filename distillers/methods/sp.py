"""Tung & Mori, "Similarity-Preserving Knowledge Distillation" (SP), as in RepDistiller."""
import torch.nn.functional as F

from distillers.base import Distiller, register_distiller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row


def _similarity(f):
    """Batch Gram matrix of the flattened maps, each row L2-normalised."""
    x = f.flatten(1)
    return F.normalize(x @ x.t())


@register_distiller("sp")
class SP(Distiller):
    """||G_t - G_s||_F^2 / B^2 on the last feature maps; any pair works (only B x B matrices meet)."""

    display_name = "SP"  # its row in published tables
    student_taps = ("last_map",)
    teacher_taps = ("last_map",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 3000.0}

    def forward(self, s, t, batch=None):
        f_s = s["last_map"]
        diff = _similarity(t["last_map"]) - _similarity(f_s)
        return {"sp": diff.pow(2).sum() / f_s.shape[0] ** 2}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("sp", GoldenEntry("sp", {"feat_s": "s:last_map", "feat_t": "t:last_map"}, hparam_info=("layers",)))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("SP", "sp", "sp", REPDISTILLER_WEIGHTS))
