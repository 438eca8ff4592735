"""Wei et al., "Scale Decoupled Distillation" (SDD, CVPR 2024): KD, DKD and NKD on multi-scale region logits."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods.dkd import dkd_per_sample
from distillers.methods.kd import kd_per_sample
from distillers.methods.nkd import nkd_per_sample
from distillers.reference import GoldenEntry, register_golden, LOGITS, PublishedRow, register_row

REPO = "shicaiwei123/SDD-CVPR2024"
#: The ``--M`` values the reference accepts (its SPP raises on any other).
SCALES = ((1,), (1, 2), (1, 2, 4))
#: SDD's ``configs/cifar100/sdd_*/<pair>.yaml`` DKD.BETA where it is not the default 8. SD-DKD reads it as
#: DKD's beta, SD-NKD as NKD's gamma (``SDD_nkd.py`` takes ``cfg.DKD.BETA`` and ``cfg.DKD.T``).
BETA_PER_PAIR = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0, ("vgg13", "MobileNetV2"): 6.0, ("vgg13", "ShuffleV1"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0, ("wrn_40_2", "MobileNetV2"): 6.0,
}
DEFAULT_BETA = 8.0
#: ``--M`` of the reference's run scripts (teacher_*.sh) where it is not [1,2,4], per base loss.
SCALES_PER_PAIR = {
    "kd": {("resnet32x4", "resnet8x4"): (1, 2), ("vgg13", "vgg8"): (1, 2)},
    "dkd": {("vgg13", "vgg8"): (1, 2)},
    "nkd": {("resnet32x4", "resnet8x4"): (1, 2), ("vgg13", "vgg8"): (1, 2), ("ResNet50", "vgg8"): (1, 2),
            ("wrn_40_2", "vgg8"): (1, 2)},
}
#: Pairs of the reference's run scripts (teacher_*.sh, commented-out commands with their results) per base loss.
SCRIPT_PAIRS = {
    "kd": (("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
           ("resnet32x4", "MobileNetV2"), ("ResNet50", "ShuffleV1"), ("ResNet50", "vgg8"), ("ResNet50", "MobileNetV2"),
           ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"), ("wrn_40_2", "ShuffleV1"), ("wrn_40_2", "vgg8"),
           ("wrn_40_2", "MobileNetV2")),
}
SCRIPT_PAIRS["nkd"] = SCRIPT_PAIRS["kd"]
SCRIPT_PAIRS["dkd"] = tuple(p for p in SCRIPT_PAIRS["kd"] if p != ("resnet32x4", "resnet8x4"))
#: README.md (its cifar100.png table) CIFAR-100 top-1 of SD-KD, SD-DKD, SD-NKD.
README_TOP1 = {
    ("resnet32x4", "ShuffleV1"): (76.30, 77.30, 76.34), ("wrn_40_2", "ShuffleV1"): (76.65, 77.21, 76.81),
    ("ResNet50", "MobileNetV2"): (69.55, 71.36, 70.25), ("vgg13", "MobileNetV2"): (68.79, 70.25, 69.50),
    ("resnet32x4", "ShuffleV2"): (76.67, 78.05, 77.07), ("ResNet50", "vgg8"): (74.89, 75.86, 74.62),
}
README = "shicaiwei123/SDD-CVPR2024 README.md, its cifar100.png table"


def region_features(feature_map, scales):
    """[B, C, N]: the average feature of every region of every scale, scale by scale, rows first.

    As the reference's SPP: the map is first average-pooled to 4 x 4 and the coarser scales are pooled
    from those 16 cells, so on a map whose side is not a multiple of 4 (7 x 7) a 2 x 2 or 1 x 1 region is
    the mean of overlapping cells, not of the map's pixels."""
    cells = F.adaptive_avg_pool2d(feature_map, 4)
    parts = [cells if scale == 4 else F.adaptive_avg_pool2d(cells, scale) for scale in scales]
    return torch.cat([part.flatten(2) for part in parts], dim=2)


def region_logits(taps, scales):
    """[N * B, K]: the model's own classifier on each region's feature, region-major (rows n*B .. n*B+B-1
    are region n of the batch; region 0 is the whole map)."""
    features = region_features(taps["last_map"], scales)
    return taps["classifier"](features.permute(2, 0, 1).reshape(-1, features.shape[1]))


def region_weights(logits_t, labels, batch_size: int):
    """1 where a region's teacher prediction is right (or wrong) as the whole map's is, 2 where they
    differ: the reference's complementary terms (global right and local wrong, or the reverse) count twice."""
    correct = logits_t.argmax(dim=1) == labels
    whole = correct[:batch_size].repeat(correct.shape[0] // batch_size)
    return 1.0 + (correct != whole).to(logits_t.dtype)


class _SDD(Distiller):
    """The scale decoupling every base loss shares; subclasses give the per-sample base loss."""

    student_taps = ("logits", "last_map", "classifier")
    teacher_taps = ("logits", "last_map", "classifier")  # logits: the loss of --M [1]; regions: map + classifier
    options = {
        "M": Option((1, 2, 4), "the scales of the region pyramid (the reference's --M): each image is split into "
                               "s x s regions for each s, every region classified by the model's own classifier; "
                               "[1] is the base loss on the model's logits", choices=SCALES),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        name = self.registry_name
        if self.M == (1,):  # the reference's --M [1]: the base loss on the logits
            self.student_taps = self.teacher_taps = ("logits",)
            if tuple(spec.student["logits"]) != tuple(spec.teacher["logits"]):
                raise ValueError(f"{name} needs the same classes on both sides; got {tuple(spec.student['logits'])} "
                                 f"and {tuple(spec.teacher['logits'])}")
            return
        classes = {}
        for side, taps in (("student", spec.student), ("teacher", spec.teacher)):
            feature, fc = tuple(taps["last_map"]), tuple(taps["classifier"])
            if len(feature) != 3:
                raise ValueError(f"{name} splits the last map into regions: it needs a spatial map (C, H, W); "
                                 f"the {side}'s is {feature}")
            if len(fc) != 2 or fc[1] != feature[0]:
                raise ValueError(f"{name} classifies every region with the model's classifier: the {side}'s "
                                 f"classifier weight is {fc}, its last map has {feature[0]} channels")
            classes[side] = fc[0]
        if classes["student"] != classes["teacher"]:
            raise ValueError(f"{name} needs the same classes on both sides; the student has {classes['student']}, "
                             f"the teacher {classes['teacher']}")

    def warmup_factor(self, batch) -> float:
        """min(epoch / warmup, 1) on the 1-based epoch, as mdistiller's trainer passes it; 1 without an epoch."""
        epoch = (batch or {}).get("epoch")
        warmup = getattr(self, "warmup", 0.0)
        if epoch is None or not warmup:
            return 1.0
        return min(float(epoch) / warmup, 1.0)

    def per_sample(self, z_s, z_t, labels):
        """{term: per-row loss} of the base method on rows of logits."""
        raise NotImplementedError

    def forward(self, s, t, batch=None):
        labels = batch["labels"].reshape(-1)
        if self.M == (1,):
            z_s, z_t, weights = s["logits"], t["logits"], None
        else:
            z_s, z_t = region_logits(s, self.M), region_logits(t, self.M)
            labels = labels.repeat(z_s.shape[0] // labels.shape[0])
            weights = region_weights(z_t.detach(), labels, batch["labels"].numel())
        w = self.warmup_factor(batch)
        return {f"sdd_{key}": w * (value if weights is None else weights * value).mean()
                for key, value in self.per_sample(z_s, z_t, labels).items()}


def _pair(spec):
    return spec.extra.get("teacher_arch"), spec.extra.get("student_arch")


@register_distiller("sdd_kd")
class SDDKD(_SDD):
    """SD-KD: KD (T^2 KL at ``kd_T``) on every region's logits, complementary regions weighted 2, mean over rows.

    Reference: shicaiwei123/SDD-CVPR2024@e412036 ``mdistiller/distillers/KD.py`` SDD_KD and ``sdd_kd_loss``, its
    models' SPP (``mdistiller/models/cifar/utils.py``) and ``train_origin.py --M``. A row is one region of one
    image; its weight is 2 when the teacher's prediction on the region is right and on the whole map wrong, or
    the reverse, else 1 (region 0, the whole map, always 1); the loss is the weighted sum over the N x B rows
    divided by N x B. Weights and T are mdistiller's KD config (CE 0.1, KD 0.9, T 4), no warm-up. Code vs
    paper: the regions of the coarser scales are pooled from a 4 x 4 average of the map (see
    :func:`region_features`), and ``--M [1]`` is plain KD on the model's own logits. The reference's NaN guards
    (NaN KL entries set to 0, a non-finite loss replaced by 0) are not reproduced: a NaN loss stops the run here.
    """

    display_name = "SD-KD"
    default_weights = {"gamma": 0.1, "alpha": 0.0, "beta": 0.9}
    options = {"kd_T": Option(4.0, "softmax temperature of the KD term on each region", above=0)}

    def per_sample(self, z_s, z_t, labels):
        return {"kd": kd_per_sample(z_s, z_t, self.kd_T)}


@register_distiller("sdd_dkd")
class SDDDKD(_SDD):
    """SD-DKD: DKD's TCKD and NCKD on every region's logits, weighted per region as SD-KD, two terms.

    Reference: shicaiwei123/SDD-CVPR2024@e412036 ``mdistiller/distillers/SDD_DKD.py`` SDD_DKD and ``multi_dkd``
    (``--M [1]``: mdistiller's ``dkd_loss`` on the logits). Per row: dkd_alpha * TCKD + dkd_beta * NCKD at
    ``kd_T``; the weighted sum over rows is divided by N x B, then times min(epoch / warmup, 1). CE weight 1,
    no KD term. ``dkd_beta`` unset: the value of SDD's config for the pair (:data:`BETA_PER_PAIR`), else 8.
    """

    display_name = "SD-DKD"
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "dkd_alpha": Option(1.0, "weight of the target-class term (TCKD) on each region", min=0),
        "dkd_beta": Option(None, "weight of the non-target-class term (NCKD) on each region; unset: SDD's config "
                                 "for the pair, else 8", type=float, min=0),
        "kd_T": Option(4.0, "softmax temperature", above=0),
        "warmup": Option(20.0, "epochs over which the loss weight rises linearly to 1 (the reference's --warmup; "
                               "0: none)", min=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if self.dkd_beta is None:
            self.dkd_beta = BETA_PER_PAIR.get(_pair(spec), DEFAULT_BETA)

    def per_sample(self, z_s, z_t, labels):
        tckd, nckd = dkd_per_sample(z_s, z_t, labels, self.kd_T)
        return {"tckd": self.dkd_alpha * tckd, "nckd": self.dkd_beta * nckd}


@register_distiller("sdd_nkd")
class SDDNKD(_SDD):
    """SD-NKD: NKD's target and non-target terms on every region's logits, weighted per region as SD-KD.

    Reference: shicaiwei123/SDD-CVPR2024@e412036 ``mdistiller/distillers/SDD_nkd.py`` SDD_NKDLoss and
    ``multi_nkd_loss`` (``--M [1]``: its ``nkd_loss_origin``). Code vs paper, followed here: (1) its NKD's
    "non-target" softmax keeps the target class (``ones_like(...).scatter_(1, label, 1)`` masks nothing; the
    NKD of ``--distill nkd`` drops it, as cls_KD after its fix); (2) its temperature and gamma are DKD's
    config entries (``cfg.DKD.T`` 4 and ``cfg.DKD.BETA``: 8, or the pair's value in :data:`BETA_PER_PAIR`),
    not NKD's (T 3, gamma 3.5 on CIFAR-100); (3) warm-up ``cfg.DKD.WARMUP`` 20. CE weight 1, no KD term.
    """

    display_name = "SD-NKD"
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "nkd_T": Option(4.0, "softmax temperature of the non-target term (the reference reads DKD.T)", above=0),
        "nkd_gamma": Option(None, "weight of the non-target term (the reference reads DKD.BETA); unset: SDD's "
                                  "config for the pair, else 8", type=float, min=0),
        "warmup": Option(20.0, "epochs over which the loss weight rises linearly to 1 (DKD.WARMUP; 0: none)", min=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if self.nkd_gamma is None:
            self.nkd_gamma = BETA_PER_PAIR.get(_pair(spec), DEFAULT_BETA)

    def per_sample(self, z_s, z_t, labels):
        target, non_target = nkd_per_sample(z_s, z_t, labels, self.nkd_T, keep_target=True)
        return {"nkd_target": target, "nkd_non_target": self.nkd_gamma * non_target}


# The reference numbers these methods reproduce (tests/golden/, made by tests/golden/make_wave2_logit_goldens.py),
# each file at its own settings (hparams), with the taps its setting reads: the last maps and classifiers of both
# sides (the region logits), or, for --M [1] (methods sdd_*_m1: M fixed), the logits; labels and epoch.
_SDD_INPUTS = {"feat_s": "s:last_map", "fc_s_weight": "s:classifier.weight", "fc_s_bias": "s:classifier.bias",
               "feat_t": "t:last_map", "fc_t_weight": "t:classifier.weight", "fc_t_bias": "t:classifier.bias",
               "target": "batch:labels", "epoch": "batch:epoch"}
_SDD_M1_INPUTS = {**LOGITS, "target": "batch:labels", "epoch": "batch:epoch"}
#: hparams that set nothing compared: the 1-based epoch the reference's forward_train got, given to the method as
#: inputs.epoch (the warm-up factor comes from there).
_SDD_INFO = ("epoch",)
#: extra.teacher_agreement: counts of the teacher's (whole map, region) right/wrong cases over the regions after
#: the first, showing that the file exercises both region weights (1 and 2); the weights' effect is in the loss.
_SDD_DIAGNOSTICS = ("teacher_agreement",)
_SDD_HPARAMS = {
    "sdd_kd": ({"kd_T": "T"}, {"warmup": 0.0}),  # SD-KD has no warm-up (mdistiller's KD)
    "sdd_dkd": ({"kd_T": "T", "dkd_alpha": "alpha", "dkd_beta": "beta", "warmup": "warmup"}, {}),
    "sdd_nkd": ({"nkd_T": "T", "nkd_gamma": "gamma", "warmup": "warmup"}, {}),
}
for _name, (_hparams, _fixed) in _SDD_HPARAMS.items():
    register_golden(_name, GoldenEntry(_name, _SDD_INPUTS, hparam_options={"M": "M", **_hparams},
                                       hparam_fixed=_fixed, hparam_info=_SDD_INFO, diagnostics=_SDD_DIAGNOSTICS))
    register_golden(f"{_name}_m1", GoldenEntry(_name, _SDD_M1_INPUTS, options={"M": [1]}, hparam_options=_hparams,
                                               hparam_fixed={"M": [1], **_fixed}, hparam_info=_SDD_INFO))


def _scales(base):
    def options(pair):
        return {"M": SCALES_PER_PAIR[base].get(tuple(pair), (1, 2, 4))}
    return options


def _scales_and_beta(base, option):
    def options(pair):
        return {**_scales(base)(pair), option: BETA_PER_PAIR.get(tuple(pair), DEFAULT_BETA)}
    return options


# The published CIFAR-100 rows these methods run (scripts/make_configs.py writes their configs), and the other
# pairs of the reference's run scripts (their settings, no published number).
_SCRIPTS = "--M of its teacher_*.sh run for the pair ([1,2,4] unless that says [1,2])"
_UNPUBLISHED = "no number in SDD's README for this pair: the settings of its teacher_*.sh run"


def _unpublished(base):
    return tuple(pair for pair in SCRIPT_PAIRS[base] if pair not in README_TOP1)


register_row(PublishedRow("SD-KD", "sdd_kd", "sdd_kd",
    f"{REPO} configs/cifar100/sdd_kd/<pair>.yaml (mdistiller KD: CE 0.1, KD 0.9, T 4), {_SCRIPTS}",
    per_pair=_scales("kd"), published={pair: (top1[0], README) for pair, top1 in README_TOP1.items()},
    note=_UNPUBLISHED, extra_pairs=_unpublished("kd")))
register_row(PublishedRow("SD-DKD", "sdd_dkd", "sdd_dkd",
    f"{REPO} configs/cifar100/sdd_dkd/<pair>.yaml (DKD ALPHA 1, BETA per pair, T 4, warm-up 20), "
    f"{_SCRIPTS}", per_pair=_scales_and_beta("dkd", "dkd_beta"),
    published={pair: (top1[1], README) for pair, top1 in README_TOP1.items()},
    note=_UNPUBLISHED, extra_pairs=_unpublished("dkd")))
register_row(PublishedRow("SD-NKD", "sdd_nkd", "sdd_nkd",
    f"{REPO} configs/cifar100/sdd_nkd/<pair>.yaml (NKD at DKD.T 4, gamma DKD.BETA per pair, warm-up "
    f"20), {_SCRIPTS}", per_pair=_scales_and_beta("nkd", "nkd_gamma"),
    published={pair: (top1[2], README) for pair, top1 in README_TOP1.items()},
    note=_UNPUBLISHED, extra_pairs=_unpublished("nkd")))
