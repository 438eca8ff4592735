"""Zhang et al., "Cross-View Consistency Regularisation for Knowledge Distillation" (CRLD, ACM MM 2024)."""
import torch
import torch.nn.functional as F
from torchvision.transforms import RandAugment

from core.requests import ExtraView
from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import check_same_classes
from distillers.methods.kd import kd_per_sample
from distillers.reference import GoldenEntry, LOGITS, PublishedRow, register_golden, register_row

#: The pairs of the reference's CIFAR-100 configs (``configs/cifar100/crld/*.yaml``): every one runs the CRLD
#: defaults of its ``cfg.py`` and the RepDistiller recipe (LR 0.01 for MobileNetV2/ShuffleV2 students).
CONFIG_PAIRS = (
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV2"),
    ("resnet32x4", "wrn_16_2"), ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "resnet8x4"),
    ("wrn_40_2", "MobileNetV2"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"),
)


def confident(logit_t: torch.Tensor, tau: float) -> torch.Tensor:
    """1 where the teacher's top softmax probability is at least ``tau`` (the reference's ``conf.ge(tau)``)."""
    return (F.softmax(logit_t.detach(), dim=1).max(dim=1).values >= tau).to(logit_t.dtype)


@register_distiller("crld")
class CRLD(Distiller):
    """Within-view and cross-view KD between a weak and a strong view of each image, on the samples the
    teacher is confident about.

    Follows scx-822/CRLD-main@c9d6657 ``mdistiller/distillers/CRLD.py`` ``CRLD.forward_train`` (the
    ``crld`` trainer of ``tools/train_crld.py``; the defaults are its ``cfg.py`` CRLD section, which every
    CIFAR-100 config keeps). With KD_i(a, b) = T^2 KL(softmax(b_i / T) || softmax(a_i / T)), student s and
    teacher t on the weak (w) and strong (s) view, and the masks m_w = [max softmax(t_w) >= tau_w],
    m_s = [max softmax(t_s) >= tau_s] (at T 1):

    * ``crld_wv`` = wv_weight * mean_i (KD_i(s_w, t_w) + KD_i(s_s, t_s)) m_w,i
    * ``crld_cv`` = cv_weight * mean_i (KD_i(s_s, t_w) + KD_i(s_w, t_s)) m_s,i

    As the code does: the weak teacher's mask gates both within-view terms and the strong teacher's both
    cross-view terms, and the mean runs over the whole batch (a masked sample counts as 0). The reference's
    CE on both views (CE_WEIGHT 1 each) is the trainer's gamma * CE, which covers both views. The paper's
    text could not be consulted here; this describes the code only.

    Views: the reference draws the strong view with its own crop and flip, then its RandAugment(2, 10),
    which also holds a Cutout op; :meth:`data_requests` asks for the view ``strong`` (the dataset's
    augmentation, then torchvision's RandAugment(2, 10), which has no Cutout), as MLKD does. Without
    ``batch["strong"]`` (a caller with one view) the one view serves as both.
    """

    display_name = "CRLD"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}  # CE_WEIGHT 1; WV/CV weights are options
    options = {
        "kd_T": Option(4.0, "softmax temperature of every KD term (TEMPERATURE; 1 in the ImageNet configs)",
                       above=0),
        "tau_w": Option(0.9, "confidence threshold of the weak-view teacher, gating the within-view terms (TAU_W)",
                        min=0, max=1),
        "tau_s": Option(0.2, "confidence threshold of the strong-view teacher, gating the cross-view terms (TAU_S)",
                        min=0, max=1),
        "wv_weight": Option(2.0, "weight of the within-view terms (WV_WEIGHT)", min=0),
        "cv_weight": Option(0.5, "weight of the cross-view terms (CV_WEIGHT)", min=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        check_same_classes("crld", spec)

    def data_requests(self):
        """The strong view: the dataset's augmentation followed by RandAugment(2, 10)."""
        return (ExtraView("strong", RandAugment(num_ops=2, magnitude=10)),)

    def forward(self, s, t, batch=None):
        s_w, t_w = s["logits"], t["logits"].detach()
        strong = (batch or {}).get("strong")
        s_s, t_s = (strong["s"]["logits"], strong["t"]["logits"].detach()) if strong else (s_w, t_w)
        m_w, m_s = confident(t_w, self.tau_w), confident(t_s, self.tau_s)
        T = self.kd_T
        within = (kd_per_sample(s_w, t_w, T) + kd_per_sample(s_s, t_s, T)) * m_w
        cross = (kd_per_sample(s_s, t_w, T) + kd_per_sample(s_w, t_s, T)) * m_s
        return {"crld_wv": self.wv_weight * within.mean(), "crld_cv": self.cv_weight * cross.mean()}


# The reference numbers this method reproduces (python -m distillers.golden; tests/golden/, made by
# tests/golden/make_crld_vitkd_goldens.py).
register_golden("crld", GoldenEntry(
    "crld", {**LOGITS, "logit_s_strong": "strong_s:logits", "logit_t_strong": "strong_t:logits",
             "target": "batch:labels"},
    hparam_options={"kd_T": "temperature", "tau_w": "tau_w", "tau_s": "tau_s", "wv_weight": "wv_weight",
                    "cv_weight": "cv_weight"},
    hparam_info=("ce_weight",),  # the trainer's gamma: the reference's CE is not part of the compared loss
    outputs={"crld_wv": "loss_kd_wv", "crld_cv": "loss_kd_cv"}, diagnostics=("mask_counts",),
    variants={"imagenet_T1": {}, "tau05_weights1": {}}))


# The reference's CIFAR-100 settings (scripts/make_configs.py writes one config per pair of its configs).
register_row(PublishedRow("CRLD", "crld", "crld",
    "scx-822/CRLD-main@c9d6657 configs/cifar100/crld/<pair>.yaml with the CRLD defaults of "
    "mdistiller/engine/cfg.py (CE 1 on both views, WV_WEIGHT 2, CV_WEIGHT 0.5, TEMPERATURE 4, TAU_W 0.9, "
    "TAU_S 0.2; weak and strong views); the strong view's RandAugment is torchvision's, without the "
    "reference's Cutout op",
    note="no CRLD number in results.md, and the reference's README holds no table: its settings, for runs "
         "of your own", extra_pairs=CONFIG_PAIRS))
