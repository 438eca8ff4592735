"""Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST, NeurIPS 2022)."""
import torch

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import LOGIT_STD, check_same_classes, logit_pair
from distillers.reference import GoldenEntry, register_golden, LOGITS, PublishedRow, register_row

#: Added to the product of norms in the cosine, as in the reference.
EPS = 1e-8


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (cosine of centred rows)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


@register_distiller("dist")
class DIST(Distiller):
    """Correlation between softened predictions instead of their exact match (KL).

    With y = softmax(z / dist_tau): inter = dist_tau^2 * (1 - mean over samples of the Pearson
    correlation of the student's and teacher's class distributions), intra = the same over classes
    (the columns of y: how each class's probability varies across the batch). Returned as two
    terms, ``dist_beta * inter`` and ``dist_gamma * intra``, whose sum is the reference's loss
    (hunto/image_classification_sota@d9662f7, the classification submodule of hunto/DIST_KD,
    ``lib/models/losses/dist_kd.py`` DIST). Defaults are its CIFAR-100 recipe
    (``configs/strategies/distill/dist_cifar.yaml``, ``kd: dist_t4``): tau 4, beta = gamma = 1,
    CE weight 1 and DIST weight 2 (``ori_loss_weight``/``kd_loss_weight``); ImageNet uses tau 1.
    The intra term correlates over the batch, so it needs at least two samples. The loss is 0
    when the student's softened predictions equal the teacher's. ``logit_std`` z-scores the
    logits first (:mod:`distillers.methods._logits`).
    """

    display_name = "DIST"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 2.0}
    options = {
        "dist_beta": Option(1.0, "weight of the inter-class term (correlation per sample)", min=0),
        "dist_gamma": Option(1.0, "weight of the intra-class term (correlation per class over the batch)", min=0),
        "dist_tau": Option(4.0, "softmax temperature", above=0),
        "logit_std": LOGIT_STD,
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        check_same_classes("dist", spec)
        if spec.batch_size is not None and spec.batch_size < 2:
            raise ValueError(f"dist: the intra-class term correlates over the batch; batch size {spec.batch_size} "
                             "leaves it constant (use a batch of 2 or more)")

    def forward(self, s, t, batch=None):
        z_s, z_t = logit_pair(s["logits"], t["logits"], self.logit_std)
        tau = self.dist_tau
        y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
        inter = tau ** 2 * (1 - pearson_rows(y_s, y_t).mean())
        intra = tau ** 2 * (1 - pearson_rows(y_s.t(), y_t.t()).mean())
        return {"dist_inter": self.dist_beta * inter, "dist_intra": self.dist_gamma * intra}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
_DIST_HPARAMS = {"dist_beta": "beta", "dist_gamma": "gamma", "dist_tau": "tau"}
register_golden("dist", GoldenEntry("dist", LOGITS, options={"logit_std": False}, hparam_options=_DIST_HPARAMS,
                                    hparam_fixed={"logit_stand": False},
                                    hparam_info=("kd", "ori_loss_weight", "kd_loss_weight"),
                                    outputs={"dist_inter": "inter", "dist_intra": "intra"},
                                    variants={"beta2_gamma05_tau1": {}}))
register_golden("dist_ls", GoldenEntry(
    "dist", LOGITS, options={"logit_std": True}, hparam_options=_DIST_HPARAMS, hparam_fixed={"logit_stand": True},
    hparam_info=("kd", "ori_loss_weight", "kd_loss_weight"),
    outputs={"dist_inter": "inter", "dist_intra": "intra"}))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("DIST", "dist", "dist",
    "hunto/DIST_KD classification/configs/strategies/distill/dist_cifar.yaml "
    "(ori_loss_weight 1, kd_loss_weight 2, dist_t4: tau 4, beta 1, gamma 1; lr 0.01 for MobileNetV2 "
    "and ShuffleNets, as the recipe)", options={"logit_std": False}))
