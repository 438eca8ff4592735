"""Huang & Wang, "Like What You Like: Neuron Selectivity Transfer" (NST), as in RepDistiller."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, register_distiller
from distillers.methods._common import pool_to_smaller
from distillers.methods.at import last_stage_pairs, stage_shape_pairs
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row


def _poly_kernel(a, b):
    """Mean over batch and channel pairs (i, j) of <a_i, b_j>^2 (degree-2 polynomial, c = 0)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


@register_distiller("nst")
class NST(Distiller):
    """Squared MMD between channel-wise L2-normalised spatial maps, summed over stage pairs.

    term = k(t, t) + k(s, s) - 2 k(s, t) after pooling the larger map; k(t, t) is a constant kept
    so the value equals the reference's full loss. Stages are paired with
    :func:`distillers.methods.at.last_stage_pairs` (the last min(n_s, n_t)); terms are named after
    the student stage. Channel counts may differ.
    """

    display_name = "NST"  # its row in published tables
    student_taps = ("stages",)
    teacher_taps = ("stages",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 50.0}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        stage_shape_pairs(spec, "nst")

    def forward(self, s, t, batch=None):
        terms = {}
        for i, f_s, f_t in last_stage_pairs(s["stages"], t["stages"]):
            f_s, f_t = pool_to_smaller(f_s, f_t)
            f_s = F.normalize(f_s.flatten(2), dim=2)
            f_t = F.normalize(f_t.flatten(2), dim=2)
            terms[f"stage{i}"] = (_poly_kernel(f_t, f_t).detach() + _poly_kernel(f_s, f_s)
                                  - 2 * _poly_kernel(f_s, f_t))
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("nst", GoldenEntry("nst", {"g_s": "s:stages", "g_t": "t:stages"},
                                   hparam_fixed={"kernel": "polynomial, degree 2, c=0", "full_loss": True},
                                   hparam_info=("layers",), diagnostics=("loss_terms",)))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("NST", "nst", "nst", REPDISTILLER_WEIGHTS))
