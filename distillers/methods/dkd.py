"""Zhao et al., "Decoupled Knowledge Distillation" (DKD), as in mdistiller."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import LOGIT_STD, check_same_classes, logit_pair
from distillers.reference import GoldenEntry, register_golden, LOGITS, PublishedRow, register_row

#: mdistiller ``configs/cifar100/dkd/*.yaml`` DKD.BETA per (teacher, student); other pairs use 8.
BETA_PER_PAIR = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
}
DEFAULT_BETA = 8.0


def _kl(log_p_s, log_p_t, T: float):
    """T^2 / B * sum_i KL(p_t,i || p_s,i) from log-probabilities."""
    return F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * T * T / log_p_s.shape[0]


def dkd_per_sample(z_s, z_t, labels, T: float):
    """(TCKD, NCKD) of each sample, T^2 KL(teacher || student) each: DKD's terms are their batch means
    (SDD weights them per region). The target logit is lowered by 1000 for NCKD, as mdistiller's mask."""
    target = F.one_hot(labels.reshape(-1).long(), z_s.shape[1]).to(torch.bool)
    log_s, log_t = F.log_softmax(z_s / T, dim=1), F.log_softmax(z_t / T, dim=1)

    def rows(log_p_s, log_p_t):
        return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1) * T * T

    mask = 1000.0 * target.to(z_s.dtype)
    return (rows(DKD._binary(log_s, target), DKD._binary(log_t, target)),
            rows(F.log_softmax(z_s / T - mask, dim=1), F.log_softmax(z_t / T - mask, dim=1)))


@register_distiller("dkd")
class DKD(Distiller):
    """Target-class (TCKD) and non-target-class (NCKD) KD, returned as two terms.

    tckd = w * dkd_alpha * T^2/B sum KL(b_t || b_s), b = (p_target, 1 - p_target);
    nckd = w * dkd_beta * T^2/B sum KL(q_t || q_s), q = softmax over logits / T with the target
    logit lowered by 1000 (mdistiller's mask); w = min(epoch / warmup, 1), 1 when ``batch`` has no
    ``epoch``. ``dkd_beta`` None (the default) means mdistiller's value for the pair from
    ``spec.extra['teacher_arch'/'student_arch']`` (:data:`BETA_PER_PAIR`), else 8. CE weight 1 and no
    separate KD term (mdistiller's DKD recipe). Binary probabilities are formed in log space (the
    reference takes the log of summed probabilities: same value, no underflow). ``logit_std`` (off by
    default) z-scores both logits per sample before everything above (:mod:`distillers.methods._logits`);
    the logit-standardisation paper's CIFAR-100 recipe is ``--logit_std true --kd_T 2`` with
    ``dkd_alpha`` and ``dkd_beta`` nine times their DKD values.
    """

    display_name = "DKD"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "dkd_alpha": Option(1.0, "weight of the target-class term (TCKD)", min=0),
        "dkd_beta": Option(None, "weight of the non-target-class term (NCKD); unset: mdistiller's per-pair "
                                 "value, else 8", type=float, min=0),
        "kd_T": Option(4.0, "softmax temperature", above=0),
        "warmup": Option(20, "epochs over which the loss weight rises linearly to 1 (0: none)", min=0),
        "logit_std": LOGIT_STD,
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if self.dkd_beta is None:
            pair = (spec.extra.get("teacher_arch"), spec.extra.get("student_arch"))
            self.dkd_beta = BETA_PER_PAIR.get(pair, DEFAULT_BETA)
        check_same_classes("dkd", spec)

    def warmup_factor(self, batch) -> float:
        epoch = (batch or {}).get("epoch")
        if epoch is None or self.warmup == 0:
            return 1.0
        return min(float(epoch) / self.warmup, 1.0)

    def forward(self, s, t, batch=None):
        z_s, z_t = logit_pair(s["logits"], t["logits"], self.logit_std)
        tckd, nckd = dkd_per_sample(z_s, z_t, batch["labels"], self.kd_T)
        w = self.warmup_factor(batch)
        return {"tckd": w * self.dkd_alpha * tckd.mean(), "nckd": w * self.dkd_beta * nckd.mean()}

    @staticmethod
    def _binary(log_p, target):
        """log (p_target, 1 - p_target), the second as a logsumexp over the other classes."""
        log_gt = log_p.masked_fill(~target, float("-inf")).logsumexp(1, keepdim=True)
        log_other = log_p.masked_fill(target, float("-inf")).logsumexp(1, keepdim=True)
        return torch.cat([log_gt, log_other], dim=1)


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("dkd", GoldenEntry("dkd", {**LOGITS, "target": "batch:labels"}, options={"logit_std": False},
                                   hparam_options={"dkd_alpha": "alpha", "dkd_beta": "beta", "kd_T": "T",
                                                   "warmup": "warmup_epochs"},  # no epoch in the batch: factor 1
                                   hparam_fixed={"logit_stand": False}, hparam_info=("ce_weight", "beta_per_pair"),
                                   diagnostics=("tckd", "nckd")))
register_golden("dkd_ls", GoldenEntry("dkd", {**LOGITS, "target": "batch:labels"},
                                      options={"logit_std": True}, hparam_fixed={"logit_stand": True},
                                      hparam_options={"dkd_alpha": "alpha", "dkd_beta": "beta", "kd_T": "temperature"},
                                      hparam_info=("recipe",),
                                      outputs={"tckd": "alpha_tckd", "nckd": "beta_nckd"},
                                      variants={"alpha1_beta18_T3": {}}))


def dkd_options(pair) -> dict:
    """DKD's per-pair beta (mdistiller's configs; DEFAULT_BETA where it has none)."""
    return {"dkd_beta": BETA_PER_PAIR.get(tuple(pair), DEFAULT_BETA)}


def dkd_ls_options(pair) -> dict:
    """logit-standardization-KD tools/train.py --logit-stand --base-temp 2 --kd-weight 9: DKD's ALPHA and
    BETA times 9, T 2."""
    return {"dkd_alpha": 9.0, "dkd_beta": 9.0 * dkd_options(pair)["dkd_beta"]}


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("DKD", "dkd", "dkd",
    "megvii-research/mdistiller configs/cifar100/dkd/<pair>.yaml (BETA per pair, 8 "
    "otherwise; ALPHA 1, T 4, WARMUP 20)", options={"dkd_alpha": 1.0, "kd_T": 4.0, "warmup": 20,
                                                    "logit_std": False}, per_pair=dkd_options))
register_row(PublishedRow("DKD+LS", "dkd_ls", "dkd",
    "sunshangquan/logit-standardization-KD README: configs/cifar100/dkd/<pair>.yaml "
    "--logit-stand --base-temp 2 --kd-weight 9 (DKD ALPHA and BETA x 9, T 2)",
    options={"kd_T": 2.0, "warmup": 20, "logit_std": True}, per_pair=dkd_ls_options))
