"""Hinton et al., "Distilling the Knowledge in a Neural Network" (KD)."""
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import LOGIT_STD, logit_pair
from distillers.reference import (GoldenEntry, register_golden, LOGITS, PublishedRow,
                                  REPDISTILLER_WEIGHTS, register_row)


def kd_per_sample(logit_s, logit_t, T: float):
    """T^2 KL(softmax(z_t,i / T) || softmax(z_s,i / T)) of each sample i (SDD weights them per region)."""
    log_p_s = F.log_softmax(logit_s / T, dim=1)
    log_p_t = F.log_softmax(logit_t / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1) * T * T


def kd_loss(logit_s, logit_t, T: float):
    """T^2 / B * sum_i KL(softmax(z_t,i / T) || softmax(z_s,i / T)): batch mean, not element mean."""
    return kd_per_sample(logit_s, logit_t, T).mean()


@register_distiller("kd", default_for="classification")
class KD(Distiller):
    """Soft-target KL between student and teacher logits at temperature ``kd_T``.

    With ``--distill kd`` this term is weighted by ``-a/--alpha`` (reference: -r 0.1 -a 0.9);
    every other method adds it through ``-a`` too. ``logit_std`` (off by default) z-scores both
    logits per sample first (:mod:`distillers.methods._logits`); ``kd_T`` is then the base
    temperature, and the logit-standardisation paper's CIFAR-100 recipe is
    ``--logit_std true --kd_T 2 -r 0.1 -a 9``.
    """

    display_name = "KD"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 0.1, "alpha": 0.9, "beta": 0.0}
    options = {"kd_T": Option(4.0, "softmax temperature", above=0), "logit_std": LOGIT_STD}

    def forward(self, s, t, batch=None):
        z_s, z_t = logit_pair(s["logits"], t["logits"], self.logit_std)
        return {"kd": kd_loss(z_s, z_t, self.kd_T)}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("kd", GoldenEntry("kd", LOGITS, options={"logit_std": False}, hparam_options={"kd_T": "T"},
                                  hparam_fixed={"logit_stand": False}, hparam_info=("reduction",)))
# logit methods and logit standardisation (tests/golden/, made by tests/golden/make_logit_goldens.py)
register_golden("kd_ls", GoldenEntry("kd", LOGITS, options={"logit_std": True}, hparam_options={"kd_T": "temperature"},
                                     hparam_fixed={"logit_stand": True},
                                     hparam_info=("kd_weight", "ce_weight", "recipe"),
                                     variants={"T4": {}}))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("KD", "kd", "kd",
    REPDISTILLER_WEIGHTS + " (-r 0.1 -a 0.9 -b 0, T 4)", options={"kd_T": 4.0, "logit_std": False}))
register_row(PublishedRow("KD+DOT", "kd_dot", "kd",
    "megvii-research/mdistiller configs/cifar100/dot/<pair>.yaml (KD + the DOT "
    "optimiser, delta 0.075)", options={"kd_T": 4.0, "logit_std": False, "dot": True, "dot_delta": 0.075},
    requires=("dot", "dot_delta")))
register_row(PublishedRow("KD+LS", "kd_ls", "kd",
    "sunshangquan/logit-standardization-KD README: configs/cifar100/kd/<pair>.yaml "
    "--logit-stand --base-temp 2 --kd-weight 9 (CE 0.1, KD 9, T 2)", weights={"gamma": 0.1, "alpha": 9.0},
    options={"kd_T": 2.0, "logit_std": True}))
