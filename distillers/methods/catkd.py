"""Guo et al., "Class Attention Transfer Based Knowledge Distillation" (CAT-KD), as in
GzyAftermath/CAT-KD (an mdistiller fork)."""
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, register_row

#: CAT-KD ``configs/cifar100/CAT_KD/*.yaml`` per (teacher, student):
#: (CAT_loss_weight, CAM_RESOLUTION, IF_NORMALIZE).
SETTINGS_PER_PAIR = {
    ("resnet56", "resnet20"): (0.7, 2, False),
    ("resnet110", "resnet32"): (1.8, 2, False),
    ("resnet32x4", "resnet8x4"): (15.0, 2, False),
    ("wrn_40_2", "wrn_16_2"): (12.0, 2, False),
    ("wrn_40_2", "wrn_40_1"): (1.5, 2, False),
    ("vgg13", "vgg8"): (4.5, 2, False),
    ("vgg13", "MobileNetV2"): (15.0, 2, True),
    ("ResNet50", "MobileNetV2"): (40.0, 2, True),
    ("resnet32x4", "ShuffleV1"): (600.0, 4, True),
    ("resnet32x4", "ShuffleV2"): (600.0, 4, True),
    ("wrn_40_2", "ShuffleV1"): (80.0, 4, True),
}
#: The fork's own defaults (``mdistiller/engine/cfg.py``) for pairs without a config.
DEFAULT_SETTINGS = (400.0, 2, True)


def class_activation_maps(feature, classifier):
    """CAM[b, k] = W_k . F[b, :, h, w] at every position: the classifier applied before pooling.

    The bias is left out, as in the reference: its ``*_test`` models classify with a bias-free
    1x1 conv and it converts a trained teacher by dropping the fc bias.
    """
    weight = classifier.weight
    return F.conv2d(feature, weight.reshape(*weight.shape, 1, 1))


@register_distiller("catkd")
class CATKD(Distiller):
    """MSE between the student's and the teacher's class activation maps, pooled to a few positions.

    CAM = the model's own classifier weights applied at each position of its last map (student:
    through its own classifier, which is trained by this term too). Both CAMs are average-pooled to
    ``cam_resolution`` x ``cam_resolution``, L2-normalised over positions per class when
    ``cam_normalize``, and compared with a mean squared error; term = ``cat_weight`` x that.
    ``None`` options take the fork's CIFAR-100 config of the pair (:data:`SETTINGS_PER_PAIR`),
    else its base defaults (weight 400, resolution 2, normalised). The CE weight is 1 and there
    is no KD term (CAT-KD); ``-r 0`` gives the paper's "CAT" (``onlyCAT``). β stays 1 (the weight
    lives in ``cat_weight``, as in the fork's configs).

    Differences from the fork: its students are ``*_test`` variants whose classifier has no bias
    (logits = pooled CAM); here the student keeps its model's classifier (with bias) for its
    logits and the CAM leaves the bias out. The fork's analysis switches (CAM binarisation,
    transferring only some classes' CAMs) are off in every CAT-KD config and not provided.
    """

    display_name = "CAT-KD"  # its row in published tables
    student_taps = ("last_map", "classifier")
    teacher_taps = ("last_map", "classifier")
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "cat_weight": Option(None, "weight of the CAM loss (unset: the pair's config)", type=float, min=0),
        "cam_resolution": Option(None, "CAMs pooled to this size per side (unset: the pair's config)", type=int,
                                 min=1),
        "cam_normalize": Option(None, "L2-normalise each CAM over positions (unset: the pair's config)",
                                type=bool),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        pair = (spec.extra.get("teacher_arch"), spec.extra.get("student_arch"))
        weight, resolution, normalize = SETTINGS_PER_PAIR.get(pair, DEFAULT_SETTINGS)
        self.cat_weight = weight if self.cat_weight is None else self.cat_weight
        self.cam_resolution = resolution if self.cam_resolution is None else self.cam_resolution
        self.cam_normalize = normalize if self.cam_normalize is None else self.cam_normalize
        classes = {}
        for side, taps in (("student", spec.student), ("teacher", spec.teacher)):
            feature, fc = tuple(taps["last_map"]), tuple(taps["classifier"])
            if len(feature) != 3:
                raise ValueError(f"CAT-KD needs a spatial last map (C, H, W); the {side}'s is {feature}")
            if len(fc) != 2 or fc[1] != feature[0]:
                raise ValueError(f"CAT-KD applies the classifier at every position of the last map: the "
                                 f"{side}'s classifier weight is {fc}, its last map has {feature[0]} channels")
            classes[side] = fc[0]
        if classes["student"] != classes["teacher"]:
            raise ValueError(f"CAT-KD needs the same classes on both sides; the student has {classes['student']}, "
                             f"the teacher {classes['teacher']}")

    def cams(self, taps):
        cam = class_activation_maps(taps["last_map"], taps["classifier"])
        cam = F.adaptive_avg_pool2d(cam, self.cam_resolution)
        return F.normalize(cam, dim=(2, 3)) if self.cam_normalize else cam

    def forward(self, s, t, batch=None):
        return {"cat": self.cat_weight * F.mse_loss(self.cams(s), self.cams(t))}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("catkd", GoldenEntry(
    "catkd", {"feat_s": "s:last_map", "fc_s_weight": "s:classifier.weight",
              "feat_t": "t:last_map", "fc_t_weight": "t:classifier.weight"},
    hparam_options={"cat_weight": "cat_loss_weight", "cam_resolution": "cam_resolution",
                    "cam_normalize": "if_normalize"},
    hparam_fixed={"if_binarize": False, "only_transfer_partial_cams": False},
    hparam_info=("cat_loss_weight_res32x4_res8x4",), variants={"normalized_res4": {}, "weight2_res3": {}}))


def catkd_options(pair) -> dict:
    """The fork's per-pair CIFAR-100 settings (a pair without one has no reference settings)."""
    weight, resolution, normalize = SETTINGS_PER_PAIR[tuple(pair)]
    return {"cat_weight": weight, "cam_resolution": resolution, "cam_normalize": normalize}


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("CAT-KD", "catkd", "catkd",
    "GzyAftermath/CAT-KD configs/cifar100/CAT_KD/<pair>.yaml (CAT_loss_weight, "
    "CAM_RESOLUTION, IF_NORMALIZE per pair; CE 1, no KD)", per_pair=catkd_options,
    note="no CAT-KD number in results.md: the fork's settings, for runs of your own",
    extra_pairs=tuple(SETTINGS_PER_PAIR)))
