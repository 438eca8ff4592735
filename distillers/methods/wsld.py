"""Zhou et al., "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff
Perspective" (weighted soft labels, WSLD, ICLR 2021)."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import LOGIT_STD, check_same_classes, logit_pair
from distillers.reference import GoldenEntry, register_golden, LOGITS

#: Added to the teacher's cross-entropy in the weight's ratio, as in the reference.
EPS = 1e-7


@register_distiller("wsld")
class WSLD(Distiller):
    """Soft-label cross-entropy weighted per sample by how much worse the student is than the teacher.

    loss = wsld_T^2 * mean_i w_i * H(softmax(z_t,i / T), softmax(z_s,i / T)), a cross-entropy (the
    KL plus the teacher's entropy: same gradient), with w_i = 1 - exp(-CE_s,i / (CE_t,i + 1e-7)),
    CE = each network's cross-entropy on the label at temperature 1, computed without gradient:
    samples the student already fits as well as the teacher (the "regularisation samples") get a
    small weight. Reference: bellymonster/Weighted-Soft-Label-Distillation@67820dd
    ``knowledge_distiller.py`` WSLDistiller (its hard-coded ``num_classes=1000`` makes it
    ImageNet-only; here the classes come from the logits). That repository ships only ImageNet
    settings (T 2, alpha 2.5); the defaults are the CIFAR-100 ones, T 4 and soft-loss weight
    alpha 2.25 as ``-b`` with CE weight 1 (the values of yzd-v/cls_KD's CIFAR-100 WSLD config).
    ``logit_std`` z-scores the logits first, for the soft term and the weight alike
    (:mod:`distillers.methods._logits`).
    """

    display_name = "WSLD"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 2.25}
    options = {"wsld_T": Option(4.0, "softmax temperature", above=0), "logit_std": LOGIT_STD}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        check_same_classes("wsld", spec)

    def forward(self, s, t, batch=None):
        z_s, z_t = logit_pair(s["logits"], t["logits"], self.logit_std)
        T = self.wsld_T
        soft_ce = -(F.softmax(z_t / T, dim=1) * F.log_softmax(z_s / T, dim=1)).sum(1)
        labels = batch["labels"].reshape(-1).long()
        with torch.no_grad():
            ce_s = F.cross_entropy(z_s, labels, reduction="none")
            ce_t = F.cross_entropy(z_t, labels, reduction="none")
            weight = 1 - torch.exp(-ce_s / (ce_t + EPS))  # the reference's clamp at 0 never acts
        return {"wsld": T * T * (weight * soft_ce).mean()}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("wsld", GoldenEntry("wsld", {**LOGITS, "target": "batch:labels"}, options={"logit_std": False},
                                    hparam_options={"wsld_T": "T"}, hparam_fixed={"logit_stand": False},
                                    hparam_info=("alpha", "note"), variants={"T4": {}}))
register_golden("wsld_ls", GoldenEntry(
    "wsld", {**LOGITS, "target": "batch:labels"}, options={"logit_std": True}, hparam_options={"wsld_T": "T"},
    hparam_fixed={"logit_stand": True}, hparam_info=("alpha", "note")))
