"""Zheng and Yang, "Knowledge Distillation Based on Transformed Teacher Matching" (TTM and WTTM, ICLR 2024)."""
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import check_same_classes
from distillers.reference import GoldenEntry, register_golden, LOGITS, PublishedRow, register_row

#: zkxufo/TTM@fe457b3 README.md, CIFAR-100 top-1 of TTM and WTTM (its tables 1 and 2).
README_TOP1 = {
    ("wrn_40_2", "wrn_16_2"): (76.23, 76.37), ("wrn_40_2", "wrn_40_1"): (74.32, 74.58),
    ("resnet56", "resnet20"): (71.83, 71.92), ("resnet110", "resnet20"): (71.46, 71.67),
    ("resnet110", "resnet32"): (73.97, 74.13), ("resnet32x4", "resnet8x4"): (76.17, 76.06),
    ("vgg13", "vgg8"): (74.33, 74.44), ("vgg13", "MobileNetV2"): (68.98, 69.16),
    ("ResNet50", "MobileNetV2"): (69.24, 69.59), ("ResNet50", "vgg8"): (74.87, 74.82),
    ("resnet32x4", "ShuffleV1"): (74.18, 74.37), ("resnet32x4", "ShuffleV2"): (76.57, 76.55),
    ("wrn_40_2", "ShuffleV1"): (75.39, 75.42),
}
README = "zkxufo/TTM README.md"
EXPONENT_HELP = ("the exponent gamma of the power transform of the teacher's probabilities (the repository's "
                 "--ttm_l): p_t^gamma renormalised, i.e. the teacher's softmax at temperature 1/gamma")


def transformed_teacher(z_s, z_t, exponent: float):
    """(KL(p_t^gamma / sum || softmax(z_s)) per sample, sum_j p_t,j^gamma per sample).

    The power transform of the teacher's probabilities is the teacher's softmax at temperature
    1 / gamma; the student's softmax has no temperature, and the loss no T^2 factor."""
    log_pow = exponent * F.log_softmax(z_t, dim=1)             # log p_t^gamma
    log_norm = log_pow.logsumexp(dim=1, keepdim=True)          # log sum_j p_t,j^gamma
    kl = F.kl_div(F.log_softmax(z_s, dim=1), log_pow - log_norm, reduction="none", log_target=True).sum(1)
    return kl, log_norm.squeeze(1).exp()


class _TransformedTeacher(Distiller):
    """What TTM and WTTM share: logits only, the exponent option, the check of the class counts."""

    student_taps = ("logits",)
    teacher_taps = ("logits",)

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        check_same_classes(self.registry_name, spec)


@register_distiller("ttm")
class TTM(_TransformedTeacher):
    """KD with the temperature on the teacher's side only: KL(softmax(gamma z_t) || softmax(z_s)), batch mean.

    Reference: zkxufo/TTM@fe457b33a71ba27536ec04fe3d32c5b04963522f ``distiller_zoo/ttm.py`` TTM (RepDistiller's
    ``train_student.py --distill ttm``; loss = -r CE + -b TTM + -a KD). The loss follows that code: no
    T^2 (gamma^-2) factor, the power transform normalised by its sum. Defaults are the README's only
    TTM command (vgg13 -> vgg8: ``--ttm_l 0.1 -r 1 -b 45 -a 0``); the paper's per-pair exponents and
    weights (its appendix A.4) are not in the repository, so every pair's config uses these.
    """

    display_name = "TTM"
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 45.0}
    options = {"ttm_l": Option(0.1, EXPONENT_HELP, above=0)}

    def forward(self, s, t, batch=None):
        kl, _ = transformed_teacher(s["logits"], t["logits"], self.ttm_l)
        return {"ttm": kl.mean()}


@register_distiller("wttm")
class WTTM(_TransformedTeacher):
    """TTM with a sample-adaptive weight: mean_i U_i KL_i, U_i = sum_j p_t,ij^gamma (larger for flatter teachers).

    Reference: zkxufo/TTM@fe457b33a71ba27536ec04fe3d32c5b04963522f ``distiller_zoo/wttm.py`` WTTM. The weight
    is the power sum of the teacher's probabilities, not detached (the teacher has no gradient anyway) and
    not normalised over the batch, as in that code. The repository gives no stand-alone WTTM command: the
    defaults are its README's only WTTM setting, the term it adds to CRD (``--distill crd --add wttm
    --ttm_l 0.2 -b 0.8 -a 4``): exponent 0.2, weight 4, CE 1.

    The README's WTTM+CRD and WTTM+ITRD rows add WTTM to another method through its ``--add`` slot.
    That is not possible here today: ``-a`` adds KD only, so ``--distill crd -a 4`` is CRD+KD and
    ``--distill wttm`` is WTTM alone; ITRD is not implemented. Neither row has a config.
    """

    display_name = "WTTM"
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 4.0}
    options = {"ttm_l": Option(0.2, EXPONENT_HELP, above=0)}

    def forward(self, s, t, batch=None):
        kl, weight = transformed_teacher(s["logits"], t["logits"], self.ttm_l)
        return {"wttm": (weight * kl).mean()}


# The reference numbers these methods reproduce (tests/golden/, made by tests/golden/make_wave2_logit_goldens.py):
# every file of a method holds its own exponent in hparams["l"].
register_golden("ttm", GoldenEntry("ttm", LOGITS, hparam_options={"ttm_l": "l"}))
register_golden("wttm", GoldenEntry("wttm", LOGITS, hparam_options={"ttm_l": "l"}))


# The published CIFAR-100 rows these methods run (scripts/make_configs.py writes their configs).
register_row(PublishedRow("TTM", "ttm", "ttm",
    "zkxufo/TTM README.md command (vgg13 -> vgg8: --ttm_l 0.1 -r 1 -b 45 -a 0) on every pair: the paper's "
    "per-pair values (its A.4) are not in the repository", options={"ttm_l": 0.1},
    published={pair: (top1[0], README) for pair, top1 in README_TOP1.items()}))
register_row(PublishedRow("WTTM", "wttm", "wttm",
    "zkxufo/TTM README.md WTTM setting (--ttm_l 0.2, weight 4: its WTTM+CRD command) with CE 1 on every pair: "
    "no stand-alone WTTM command in the repository", options={"ttm_l": 0.2},
    published={pair: (top1[1], README) for pair, top1 in README_TOP1.items()}))
