"""Jin et al., "Multi-Level Logit Distillation" (MLKD, CVPR 2023), as in
Jin-Ying/Multi-Level-Logit-Distillation (``mdistiller/distillers/KD_ours.py``, class ``KD_ours``)."""
import torch
import torch.nn.functional as F
from torchvision.transforms import RandAugment

from core.requests import ExtraView
from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import LOGIT_STD, check_same_classes, logit_pair
from distillers.methods.kd import kd_loss
from distillers.reference import GoldenEntry, register_golden, LOGITS, PublishedRow, register_row


def class_loss(logit_s, logit_t, T):
    """Class-level alignment: ||P_t^T P_t - P_s^T P_s||^2 / C, P = softmax(z / T) [B, C]."""
    p_s, p_t = F.softmax(logit_s / T, dim=1), F.softmax(logit_t / T, dim=1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / logit_s.shape[1]


def batch_loss(logit_s, logit_t, T):
    """Batch-level alignment: ||P_t P_t^T - P_s P_s^T||^2 / B."""
    p_s, p_t = F.softmax(logit_s / T, dim=1), F.softmax(logit_t / T, dim=1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / logit_s.shape[0]


@torch.no_grad()
def confidence_fractions(logit_t):
    """The reference's masks, as the fractions they scale by.

    Sample mask: teacher confidence max_c softmax(z_t) <= its batch median; class mask: class
    confidence sum_i softmax(z_t)_ic <= its median over classes (medians as ``np.percentile(., 50)``).
    The reference multiplies each batch-mean loss (a scalar) by a mask and averages, so a mask
    scales the loss by the fraction it keeps (1/2 for distinct values and an even count) rather
    than selecting samples; its per-sample form is commented out (``# reduce=False``).
    """
    p_t = F.softmax(logit_t, dim=1)
    confidence = p_t.max(dim=1).values
    class_confidence = p_t.sum(dim=0)
    sample = (confidence <= torch.quantile(confidence, 0.5)).to(p_t.dtype).mean()
    klass = (class_confidence <= torch.quantile(class_confidence, 0.5)).to(p_t.dtype).mean()
    return sample, klass


@register_distiller("mlkd")
class MLKD(Distiller):
    """Instance (KD), batch and class alignment at temperatures (kd_T, *mlkd_T) = (4, 3, 5, 2, 6).

    Two views: the reference feeds a weak (crop + flip) and a strong (+ RandAugment(2, 10) and
    Cutout) augmentation of each image; :meth:`data_requests` asks for the strong one (torchvision's
    RandAugment(2, 10) after the dataset's own augmentation; the reference's copy of RandAugment
    also holds a Cutout op, which torchvision's does not). With the weak view in ``s``/``t``
    and the strong view's taps in ``batch["strong"] = {"s": {...}, "t": {...}}`` the terms are,
    summed over the temperatures, with the masks of :func:`confidence_fractions` (weak teacher):

    * ``mlkd_instance`` = frac_sample * KD(weak) + KD(strong)
    * ``mlkd_batch`` = frac_sample * batch_loss(weak); ``mlkd_class`` = frac_class * class_loss(weak)

    The reference computes strong-view batch/class terms too but does not return them (left out
    here as well), and its strong KD at T 2 and 6 reads the weak logits (a copy-paste slip; the
    default uses the strong view at every T, :attr:`strong_levels_on_weak` reproduces the slip).
    The trainer serves both views in one forward; without ``batch["strong"]`` (a caller with
    one view) the one view serves as both, which is the reference's ``forward_train`` with
    ``image_strong = image_weak``. The reference's CE is on both views (CE_WEIGHT each), as the
    trainer's gamma * CE.

    Defaults (``configs/cifar100/ours``): gamma 0.1 (CE_WEIGHT), beta 0.9 (KD_WEIGHT, applied to
    every term), alpha 0; the reference's resnet32x4 -> resnet8x4 recipe uses lr 0.025.

    ``logit_std`` (off by default) z-scores the logits of the instance level, both views, at every
    temperature, before the division by it (:mod:`distillers.methods._logits`); the batch and class
    levels and the confidence masks keep the raw logits. So does the logit-standardisation reference
    (sunshangquan/logit-standardization-KD@f6e5aa5 ``mdistiller/distillers/MLKD.py``: ``logit_stand``
    reaches its ``kd_loss`` only). Its CIFAR-100 recipe (``--logit-stand --base-temp 2 --kd-weight 9``
    sets TEMPERATURE 2 and KD_WEIGHT 9, CE_WEIGHT 0.1) is ``--logit_std true --kd_T 2 -r 0.1 -b 9``
    here; ``mlkd_T`` keeps (3, 5, 2, 6).
    """

    display_name = "MLKD"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 0.1, "alpha": 0.0, "beta": 0.9}
    options = {
        "kd_T": Option(4.0, "first temperature (the plain KD level)", above=0),
        "mlkd_T": Option((3.0, 5.0, 2.0, 6.0), "further temperatures, each adding the three terms again", above=0),
        "logit_std": LOGIT_STD,
    }
    #: positions in (kd_T, *mlkd_T) whose strong-view KD term reads the weak logits (the reference: (3, 4),
    #: its T 2 and 6; by position, since the LS recipe's kd_T 2 repeats a temperature)
    strong_levels_on_weak = ()

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.mlkd_T = tuple(float(t) for t in self.mlkd_T)
        check_same_classes("mlkd", spec)

    def data_requests(self):
        """The strong view: the dataset's augmentation followed by RandAugment(2, 10)."""
        return (ExtraView("strong", RandAugment(num_ops=2, magnitude=10)),)

    def forward(self, s, t, batch=None):
        z_s, z_t = s["logits"], t["logits"]
        strong = (batch or {}).get("strong")
        zs_strong, zt_strong = (strong["s"]["logits"], strong["t"]["logits"]) if strong else (z_s, z_t)
        frac_sample, frac_class = confidence_fractions(z_t)
        kd_s, kd_t = logit_pair(z_s, z_t, self.logit_std)  # the instance level's inputs (the reference's kd_loss)
        kd_s_strong, kd_t_strong = logit_pair(zs_strong, zt_strong, self.logit_std) if strong else (kd_s, kd_t)
        instance = batch_level = class_level = 0.0
        for level, T in enumerate((self.kd_T, *self.mlkd_T)):
            on_weak = level in self.strong_levels_on_weak
            instance = (instance + frac_sample * kd_loss(kd_s, kd_t, T)
                        + kd_loss(kd_s if on_weak else kd_s_strong, kd_t if on_weak else kd_t_strong, T))
            batch_level = batch_level + frac_sample * batch_loss(z_s, z_t, T)
            class_level = class_level + frac_class * class_loss(z_s, z_t, T)
        return {"mlkd_instance": instance, "mlkd_batch": batch_level, "mlkd_class": class_level}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
#: two_views: distinct strong-view logits, with the reference's slip (its strong KD at T 2 and 6 reads the weak view)
_MLKD_VARIANTS = {"two_views": {"attributes": {"strong_levels_on_weak": (3, 4)}}}
for _name, _std, _variants in (("mlkd", False, {**_MLKD_VARIANTS, "temperature2": {}}),
                               ("mlkd_ls", True, _MLKD_VARIANTS)):
    register_golden(_name, GoldenEntry(
        "mlkd", {**LOGITS, "logit_s_strong": "strong_s:logits", "logit_t_strong": "strong_t:logits"},
        options={"logit_std": _std}, hparam_options={"kd_T": "temperature", "mlkd_T": "level_temperatures"},
        # KD_WEIGHT multiplies every term in the reference (ours: beta, outside the method)
        hparam_fixed={"kd_weight": 1.0, "logit_stand": _std},
        hparam_info=("kd_weight_reference", "ce_weight_reference", "recipe"),
        outputs={"mlkd_instance": "loss_kd", "mlkd_batch": "loss_bc", "mlkd_class": "loss_cc"}, variants=_variants))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("MLKD", "mlkd", "mlkd",
    "Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/<pair>.yaml (CE 0.1, "
    "KD_WEIGHT 0.9 on every level, T 4 then 3, 5, 2, 6; weak and strong views: the registry's defaults); its "
    "LR 0.025 (0.01 for MobileNetV2/ShuffleNet students) and 480/960 epochs on cross-family pairs are not "
    "reproduced (the trainer's recipe), and L's numbers come from a longer recipe (results.md §0)"))
register_row(PublishedRow("MLKD+LS", "mlkd_ls", "mlkd",
    "sunshangquan/logit-standardization-KD README: configs/cifar100/mlkd/<pair>.yaml "
    "--logit-stand --base-temp 2 --kd-weight 9 (TEMPERATURE 2, KD_WEIGHT 9 on every level, CE 0.1; its "
    "logs/MLKD name --kd-weight 6 on vgg13->vgg8, vgg13->MobileNetV2, resnet32x4->ShuffleV2); the configs' "
    "480 epochs (960 for ShuffleNets) and per-pair LR are not reproduced (the trainer's recipe)",
    weights={"gamma": 0.1, "beta": 9.0}, options={"kd_T": 2.0, "logit_std": True}))
