"""Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels" (NKD, ICCV 2023)."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import LOGIT_STD, check_same_classes, logit_pair
from distillers.reference import GoldenEntry, register_golden, LOGITS


def nkd_per_sample(z_s, z_t, labels, T: float, keep_target: bool = False):
    """(target term, non-target term without gamma) of each sample: -p_t[y] log p_s[y] at temperature 1,
    and -T^2 sum_j q_t,j log q_s,j over the non-target logits at temperature T. ``keep_target`` keeps the
    target logit in that softmax, as the copy of NKD in SDD's code does (its mask selects every class)."""
    n, c = z_s.shape
    target = F.one_hot(labels.reshape(-1).long(), c).to(torch.bool)
    log_p_s = F.log_softmax(z_s, dim=1)[target]
    p_t = F.softmax(z_t, dim=1)[target].detach()
    if not keep_target:
        z_s, z_t = z_s[~target].reshape(n, c - 1), z_t[~target].reshape(n, c - 1)
    cross = (F.softmax(z_t / T, dim=1) * F.log_softmax(z_s / T, dim=1)).sum(1)
    return -p_t * log_p_s, -T * T * cross


@register_distiller("nkd")
class NKD(Distiller):
    """Normalised KD: the target class and the renormalised non-target classes as two terms.

    nkd_target = -mean_i p_t,i[y_i] log p_s,i[y_i] at temperature 1 (the teacher's target
    probability weighting the student's target log-likelihood); nkd_non_target =
    -nkd_gamma * nkd_T^2 * mean_i sum_{j != y_i} q_t,ij log q_s,ij, with q = softmax(z / nkd_T) over
    the non-target logits only (the target logit removed, so the non-target distribution is
    normalised to sum 1 whatever the target's share). Their sum is the reference
    (yzd-v/cls_KD@1e5d48f ``mmcls/models/dis_losses/nkd.py`` NKDLoss, after its fix 9466b3f that
    made the mask drop the target). Defaults are that repository's CIFAR-100 config
    (``configs/distillers/cifar100/res34_distill_res18_cifar.py``): T 3, gamma 3.5, CE weight 1 and
    NKD weight 1 (ImageNet: T 1, gamma 1.5). ``logit_std`` z-scores the logits first, for both terms
    (:mod:`distillers.methods._logits`).
    """

    display_name = "NKD"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "nkd_T": Option(3.0, "softmax temperature of the non-target term", above=0),
        "nkd_gamma": Option(3.5, "weight of the non-target term", min=0),
        "logit_std": LOGIT_STD,
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        check_same_classes("nkd", spec)

    def forward(self, s, t, batch=None):
        z_s, z_t = logit_pair(s["logits"], t["logits"], self.logit_std)
        target_term, non_target = nkd_per_sample(z_s, z_t, batch["labels"], self.nkd_T)
        return {"nkd_target": target_term.mean(), "nkd_non_target": self.nkd_gamma * non_target.mean()}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("nkd", GoldenEntry(
    "nkd", {**LOGITS, "target": "batch:labels"},
    options={"logit_std": False}, hparam_options={"nkd_T": "temp", "nkd_gamma": "gamma"},
    hparam_fixed={"logit_stand": False}, hparam_info=("config",),
    outputs={"nkd_target": "target", "nkd_non_target": "non_target"}, variants={"class_defaults": {}}))
register_golden("nkd_ls", GoldenEntry("nkd", {**LOGITS, "target": "batch:labels"}, options={"logit_std": True},
                                      hparam_options={"nkd_T": "temp", "nkd_gamma": "gamma"},
                                      hparam_fixed={"logit_stand": True}, hparam_info=("config",),
                                      outputs={"nkd_target": "target", "nkd_non_target": "non_target"}))
