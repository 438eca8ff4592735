"""Wang et al., "Improving Knowledge Distillation via Regularizing Feature Direction and Norm" (ND loss, ECCV 2024):
KD++ and DKD++, KD and DKD plus the ND loss on the student's penultimate feature."""
import torch
import torch.nn.functional as F
from torch import nn

from distillers import dist
from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import check_same_classes
from distillers.methods.dkd import dkd_per_sample
from distillers.methods.kd import kd_loss
from distillers.reference import GoldenEntry, register_golden, PublishedRow, register_row

REPO = "WangYZ1608/Knowledge-Distillation-via-ND"
#: CIFAR/train_cifar.sh, the comment above its KD++ command: (kd_loss_factor, nd_loss_factor) per pair.
KDPP_PER_PAIR = {
    ("resnet56", "resnet20"): (1.0, 2.0), ("resnet32x4", "resnet8x4"): (3.5, 2.0),
    ("wrn_40_2", "wrn_40_1"): (1.0, 1.5), ("ResNet50", "MobileNetV2"): (3.0, 0.5),
    ("resnet32x4", "ShuffleV1"): (2.5, 1.5), ("resnet32x4", "ShuffleV2"): (4.0, 0.5),
}
#: the same file, above its DKD++ command: (dkd_alpha, dkd_beta, nd_loss_factor) per pair.
DKDPP_PER_PAIR = {
    ("resnet56", "resnet20"): (2.5, 4.0, 3.5), ("resnet32x4", "resnet8x4"): (2.0, 8.0, 0.5),
    ("wrn_40_2", "wrn_40_1"): (1.0, 6.0, 1.0), ("ResNet50", "MobileNetV2"): (0.5, 8.0, 1.0),
    ("resnet32x4", "ShuffleV1"): (0.5, 8.0, 4.0), ("resnet32x4", "ShuffleV2"): (0.5, 6.0, 0.5),
}
CENTERS = ("class_mean", "classifier")


def nd_loss(emb_s, emb_t, centers):
    """mean_i 1 - <s_i, c_i / |c_i|> / max(|s_i|, |t_i|): the student's feature along its class centre's
    direction, against the larger of the two features' norms (so it also pushes the student's norm up).
    A zero centre (a class not seen yet) has no direction: its samples contribute 1."""
    direction = F.normalize(centers, dim=1)
    scale = torch.maximum(emb_s.norm(dim=1), emb_t.norm(dim=1))
    return (1.0 - (emb_s * direction).sum(dim=1) / scale).mean()


class _NormDirection(Distiller):
    """The ND loss beside a logit loss: class centres, the student's projector, the KD warm-up."""

    student_taps = ("logits", "pooled")
    teacher_taps = ("logits", "pooled")
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "nd_loss_factor": Option(None, "weight of the ND loss (the reference's --nd_loss_factor); unset: "
                                       "its train_cifar.sh value for the pair, else 1", type=float, min=0),
        "kd_T": Option(4.0, "softmax temperature of the logit loss (the reference's --t)", above=0),
        "warmup": Option(20.0, "epochs over which the logit loss's weight rises linearly from 0 to 1, counted "
                               "from 0 as the reference's --warm_up (0: none)", min=0),
        "nd_center": Option("class_mean", "class centres: class_mean = the mean teacher feature of each class "
                                          "over the first epoch (the reference: over the training set), "
                                          "classifier = the teacher classifier's weight rows", choices=CENTERS),
        "nd_dropout": Option(0.5, "dropout of the student's projector (only when the two features differ in "
                                  "width)", min=0, below=1),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        name = self.registry_name
        check_same_classes(name, spec)
        d_s, d_t = tuple(spec.student["pooled"]), tuple(spec.teacher["pooled"])
        if len(d_s) != 1 or len(d_t) != 1:
            raise ValueError(f"{name} needs penultimate feature vectors; got {d_s} (student) and {d_t} (teacher)")
        classes = spec.teacher["logits"][0]
        if self.nd_center == "classifier":
            self.teacher_taps = ("logits", "pooled", "classifier")
            if tuple(spec.teacher["classifier"]) != (classes, d_t[0]):
                raise ValueError(f"{name} --nd_center classifier: the teacher classifier's weight is "
                                 f"{tuple(spec.teacher['classifier'])}, not ({classes}, {d_t[0]})")
        # the reference's EmbTrans: the student's feature is mapped to the teacher's width when they differ
        self.projector = None if d_s == d_t else nn.Sequential(
            nn.BatchNorm1d(d_s[0]), nn.Dropout(self.nd_dropout), nn.Linear(d_s[0], d_t[0]))
        if self.projector is not None:
            nn.init.zeros_(self.projector[2].bias)
        #: class_mean: the sum of the teacher features of each class seen in epoch 1 (only its direction is used)
        self.register_buffer("centers", torch.zeros(classes, d_t[0]))

    def logit_weight(self, batch) -> float:
        """min(1, (epoch - 1) / warmup): the reference counts epochs from 0, so its first epoch has no logit
        loss; 1 without an epoch."""
        epoch = (batch or {}).get("epoch")
        if epoch is None or not self.warmup:
            return 1.0
        return min(1.0, (float(epoch) - 1.0) / self.warmup)

    def nd_term(self, s, t, batch):
        labels = batch["labels"].reshape(-1).long()
        emb_s, emb_t = s["pooled"].flatten(1), t["pooled"].flatten(1)
        if self.nd_center == "classifier":
            centers = t["classifier"].weight
        else:
            epoch = (batch or {}).get("epoch")
            if self.training and epoch is not None and float(epoch) == 1.0:  # epoch 1 fills the centres
                with torch.no_grad():
                    self.centers.index_add_(0, dist.gather(labels), dist.gather(emb_t.detach()).to(self.centers.dtype))
            centers = self.centers
        if self.projector is not None:
            emb_s = self.projector(emb_s)
        return self.nd_loss_factor * nd_loss(emb_s, emb_t, centers[labels].to(emb_s.dtype))


def _pair(spec):
    return spec.extra.get("teacher_arch"), spec.extra.get("student_arch")


@register_distiller("kdpp")
class KDPP(_NormDirection):
    """KD++: KD plus the ND loss, two terms: kd = warm-up * kd_loss_factor * KD(T); nd = nd_loss_factor * ND.

    ND = mean_i 1 - <f_i, e_c> / max(|f_i|, |t_i|): f_i the student's penultimate feature (through a
    BatchNorm-Dropout-Linear projector to the teacher's width when they differ, trained with the student),
    t_i the teacher's, e_c the unit direction of the teacher's mean feature of the sample's class. Reference:
    WangYZ1608/Knowledge-Distillation-via-ND@fc6f3f9058ed35189a1d3c0a79a7594025e4d88f ``CIFAR/train_cifar_kd.py``
    with ``CIFAR/utils.py`` KDLoss and DirectNormLoss and ``CIFAR/Models/embtrans_cifar.py`` EmbTrans. Unset
    factors take the pair's values from ``CIFAR/train_cifar.sh`` (:data:`KDPP_PER_PAIR`), else its argparse
    defaults (1 and 1); CE weight 1. The KD warm-up counts epochs from 0 (none in the first epoch).

    Beside the ND loss (``DirectNormLoss``), followed here as the code has them: the KD warm-up counted from
    epoch 0 and, for a student feature of another width, the projector with dropout 0.5 (``EmbTrans``).
    Where this differs from the reference: its class centres are precomputed class means over one augmented
    pass of the training set (``emb_fea_distribution.py``, a JSON per teacher; its scripts hard-code
    resnet56's file and say to edit the path); here they are summed from the teacher's features during the
    first epoch (one augmented pass, in the training step, gathered over ranks), so the first epoch aligns
    with partial means; ``--nd_center classifier`` uses the teacher classifier's rows instead (not in the
    reference). Its recipe (batch 64 per GPU on 2 GPUs, lr 0.1, 0.02 in its ShuffleNet commands, Nesterov)
    is the trainer's cifar recipe here at the same lr per sample (0.05 / 0.01 at batch 64), without Nesterov.
    """

    display_name = "KD++"
    options = {"kd_loss_factor": Option(None, "weight of the KD term (the reference's --kd_loss_factor); unset: "
                                              "its train_cifar.sh value for the pair, else 1", type=float, min=0)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        kd, nd = KDPP_PER_PAIR.get(_pair(spec), (1.0, 1.0))
        self.kd_loss_factor = kd if self.kd_loss_factor is None else self.kd_loss_factor
        self.nd_loss_factor = nd if self.nd_loss_factor is None else self.nd_loss_factor

    def forward(self, s, t, batch=None):
        kd = kd_loss(s["logits"], t["logits"], self.kd_T)
        return {"kd": self.logit_weight(batch) * self.kd_loss_factor * kd, "nd": self.nd_term(s, t, batch)}


@register_distiller("dkdpp")
class DKDPP(_NormDirection):
    """DKD++: DKD plus the ND loss, three terms: tckd and nckd (DKD's, times the warm-up), nd (as KD++).

    Reference: WangYZ1608/Knowledge-Distillation-via-ND@fc6f3f9058ed35189a1d3c0a79a7594025e4d88f
    ``CIFAR/train_cifar_dkd.py`` with ``CIFAR/utils.py`` DKDLoss (mdistiller's dkd_loss) and DirectNormLoss.
    Unset weights take the pair's values from ``CIFAR/train_cifar.sh`` (:data:`DKDPP_PER_PAIR`), else its
    argparse defaults (alpha 1, beta 1, ND 1: not DKD's beta 8). The warm-up counts epochs from 0 as KD++'s
    (DKD's own warm-up here counts from 1, as mdistiller). Class centres and recipe: as :class:`KDPP`.
    """

    display_name = "DKD++"
    options = {
        "dkd_alpha": Option(None, "weight of the target-class term (TCKD); unset: train_cifar.sh's value for the "
                                  "pair, else 1", type=float, min=0),
        "dkd_beta": Option(None, "weight of the non-target-class term (NCKD); unset: train_cifar.sh's value for "
                                 "the pair, else 1", type=float, min=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        alpha, beta, nd = DKDPP_PER_PAIR.get(_pair(spec), (1.0, 1.0, 1.0))
        self.dkd_alpha = alpha if self.dkd_alpha is None else self.dkd_alpha
        self.dkd_beta = beta if self.dkd_beta is None else self.dkd_beta
        self.nd_loss_factor = nd if self.nd_loss_factor is None else self.nd_loss_factor

    def forward(self, s, t, batch=None):
        tckd, nckd = dkd_per_sample(s["logits"], t["logits"], batch["labels"], self.kd_T)
        w = self.logit_weight(batch)
        return {"tckd": w * self.dkd_alpha * tckd.mean(), "nckd": w * self.dkd_beta * nckd.mean(),
                "nd": self.nd_term(s, t, batch)}


# The reference numbers these methods reproduce (tests/golden/, made by tests/golden/make_wave2_logit_goldens.py):
# the reference's class centres (its T_EMB) are the file's params, loaded as our centres, and its state_after
# (the reference reads them, never updates them; ours fills them in epoch 1 only).
_ND_INPUTS = {"logit_s": "s:logits", "logit_t": "t:logits", "emb_s": "s:pooled", "emb_t": "t:pooled",
              "target": "batch:labels", "epoch": "batch:epoch"}
_ND_RENAMES = (("T_EMB", "centers"), ("fc1.", "projector."))
_ND_HPARAMS = {"kd_T": "t", "nd_loss_factor": "nd_loss_factor", "warmup": "warm_up", "nd_dropout": "dropout"}
#: hparams that set nothing compared: the 1-based epoch, given to the method as inputs.epoch (the warm-up)
_ND_INFO = ("epoch",)
register_golden("kdpp", GoldenEntry("kdpp", _ND_INPUTS, renames=_ND_RENAMES,
                                    outputs={"kd": "logit_loss", "nd": "nd_loss"}, hparam_info=_ND_INFO,
                                    hparam_options={**_ND_HPARAMS, "kd_loss_factor": "kd_loss_factor"}))
# extra.logit_loss: the reference's DKD term (warm-up included), ours tckd + nckd; it is loss - nd_loss, both compared
register_golden("dkdpp", GoldenEntry("dkdpp", _ND_INPUTS, renames=_ND_RENAMES, outputs={"nd": "nd_loss"},
                                     hparam_options={**_ND_HPARAMS, "dkd_alpha": "dkd_alpha", "dkd_beta": "dkd_beta"},
                                     hparam_info=_ND_INFO, diagnostics=("logit_loss",)))


def kdpp_options(pair) -> dict:
    kd, nd = KDPP_PER_PAIR[tuple(pair)]
    return {"kd_loss_factor": kd, "nd_loss_factor": nd}


def dkdpp_options(pair) -> dict:
    alpha, beta, nd = DKDPP_PER_PAIR[tuple(pair)]
    return {"dkd_alpha": alpha, "dkd_beta": beta, "nd_loss_factor": nd}


# The published CIFAR-100 rows these methods run (scripts/make_configs.py writes their configs).
_RECIPE = ("; its recipe (batch 2 x 64, lr 0.1, 0.02 in its ShuffleNet commands, Nesterov) is the trainer's at "
           "the same lr per sample, without Nesterov; class centres from the first epoch")
register_row(PublishedRow("KD++", "kdpp", "kdpp",
    f"{REPO} CIFAR/train_cifar.sh (CE 1, KD and ND factors per pair, T 4, warm-up 20)" + _RECIPE,
    per_pair=kdpp_options))
register_row(PublishedRow("DKD++", "dkdpp", "dkdpp",
    f"{REPO} CIFAR/train_cifar.sh (CE 1, TCKD, NCKD and ND factors per pair, T 4, warm-up 20)" + _RECIPE,
    per_pair=dkdpp_options))
