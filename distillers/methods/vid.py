"""Ahn et al., "Variational Information Distillation" (VID), as in RepDistiller."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import pool_to_smaller
from distillers.methods.at import last_stage_pairs, stage_shape_pairs
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row

EPS = 1e-5  # variance floor (RepDistiller / mdistiller EPS)


class VariationalEstimator(nn.Module):
    """Gaussian q(t | s): mean from a 1x1-conv MLP (s -> t -> t -> t, no biases), per-channel variance."""

    def __init__(self, s_channels: int, t_channels: int, init_pred_var: float):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, t_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False))
        # softplus^-1(init_pred_var - EPS): the initial variance is init_pred_var
        self.log_scale = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_pred_var - EPS))))

    def forward(self, f_s, f_t):
        f_s, f_t = pool_to_smaller(f_s, f_t)
        var = (F.softplus(self.log_scale) + EPS).view(1, -1, 1, 1)
        return (0.5 * ((self.regressor(f_s) - f_t).pow(2) / var + var.log())).mean()


@register_distiller("vid")
class VID(Distiller):
    """Negative log-likelihood of each teacher stage under a Gaussian predicted from the student's.

    One estimator per stage pair (``estimators.<k>``, k = 0 for the first pair); stages are paired
    with :func:`distillers.methods.at.last_stage_pairs` (the last min(n_s, n_t)); terms are named
    after the student stage.
    """

    display_name = "VID"  # its row in published tables
    student_taps = ("stages",)
    teacher_taps = ("stages",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {"init_pred_var": Option(5.0, "initial variance of the predicted Gaussian", above=EPS)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.estimators = nn.ModuleList(
            VariationalEstimator(s[0], t[0], self.init_pred_var)
            for _, s, t in stage_shape_pairs(spec, "vid"))

    def forward(self, s, t, batch=None):
        pairs = last_stage_pairs(s["stages"], t["stages"])
        return {f"stage{i}": est(f_s, f_t) for est, (i, f_s, f_t) in zip(self.estimators, pairs)}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("vid", GoldenEntry("vid", {"g_s": "s:stages", "g_t": "t:stages"}, renames=(("", "estimators."),),
                                   hparam_options={"init_pred_var": "init_pred_var"}, hparam_fixed={"eps": 1e-5},
                                   hparam_info=("num_mid_channel", "layers"), diagnostics=("loss_terms",)))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("VID", "vid", "vid", REPDISTILLER_WEIGHTS))
