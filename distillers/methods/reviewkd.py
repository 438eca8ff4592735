"""Chen et al., "Distilling Knowledge via Knowledge Review" (ReviewKD)."""
import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._adapters import ADAPTER_CHOICES
from distillers.reference import GoldenEntry, register_golden, PublishedRow, register_row


class ABF(nn.Module):
    """Attention-based fusion: this level's student feature with the deeper level's residual."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, 1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = (nn.Sequential(nn.Conv2d(2 * mid_channel, 2, 1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual, out_size):
        """-> (output compared with the teacher at ``out_size``, residual for the next level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, :1] + residual * att[:, 1:]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def hcl_loss(f_s, f_t):
    """MSE plus MSEs of 4x4, 2x2, 1x1 average pools (those smaller than the map), weights
    halving at each level, normalised by the weight sum."""
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= f_s.shape[2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, level),
                                          F.adaptive_avg_pool2d(f_t, level))
        total += weight
    return loss / total


@register_distiller("reviewkd")
class ReviewKD(Distiller):
    """Review mechanism: student levels fused deep to shallow, each matched to a teacher level (HCL).

    ABF blocks fuse student levels deep to shallow; each output is matched to the teacher's
    pre-activation stage (and pooled vector) with ``hcl_loss``.

    Student: post-ReLU stages + pooled; teacher: pre-activation stages + pooled (the stem
    is unused on both sides). ``abfs[0]`` handles the pooled vector as a 1x1 map, then the
    stages from deepest to shallowest (the reference's reversed order; with ``adapter auto`` the
    deepest min(n_s, n_t) of each side, so a 4-stage ViT meets a 3-stage ResNet); mid width =
    min(512, student pooled channels); each block's output has the teacher's channels and
    size. Term = reviewkd_weight * min(epoch / warmup, 1) * sum of hcl (factor 1 without an
    epoch). Default weight 5 with a 20-epoch warm-up: mdistiller's CIFAR-100 config
    (``REVIEWKD_WEIGHT 5``; its base default and ImageNet runs use 1, so ImageNet launchers
    pass ``--reviewkd_weight 1``). β stays 1 (the weight lives in the option, as in mdistiller).
    """

    display_name = "ReviewKD"  # its row in published tables
    student_taps = ("stages", "pooled")
    teacher_taps = ("stages_preact", "pooled")
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "reviewkd_weight": Option(5.0, "weight of the review loss (mdistiller REVIEWKD_WEIGHT)", min=0),
        "warmup": Option(20, "epochs over which the loss weight rises linearly to 1 (0: none)", min=0),
        "adapter": Option("reference", "unequal stage counts: reference (an error) or auto (pair the deepest "
                          "min(n_s, n_t) stages)", choices=ADAPTER_CHOICES),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_stages, t_stages = spec.student["stages"], spec.teacher["stages_preact"]
        if len(s_stages) != len(t_stages) and self.adapter != "auto":
            raise ValueError(f"ReviewKD pairs stages one to one: the student has {len(s_stages)} stages, "
                             f"the teacher {len(t_stages)} (--adapter auto pairs the deepest "
                             f"{min(len(s_stages), len(t_stages))})")
        for side, shapes in (("student", s_stages), ("teacher", t_stages)):
            if any(len(shape) != 3 for shape in shapes):
                raise ValueError(f"ReviewKD needs spatial stage maps (C, H, W); the {side}'s are {list(shapes)}")
        s_pooled, t_pooled = spec.student["pooled"][0], spec.teacher["pooled"][0]
        mid = min(512, s_pooled)
        self.abfs = nn.ModuleList([ABF(s_pooled, mid, t_pooled, fuse=False)] + [
            ABF(s[0], mid, t[0], fuse=True) for s, t in zip(reversed(s_stages), reversed(t_stages))])

    def forward(self, s, t, batch=None):
        xs = [s["pooled"].reshape(*s["pooled"].shape[:2], 1, 1), *reversed(s["stages"])]
        ts = [t["pooled"].reshape(*t["pooled"].shape[:2], 1, 1), *reversed(t["stages_preact"])]
        loss, residual = 0.0, None
        for abf, x, f_t in zip(self.abfs, xs, ts):
            out, residual = abf(x, residual, f_t.shape[-2:])
            loss = loss + hcl_loss(out, f_t)
        epoch = (batch or {}).get("epoch")
        factor = 1.0 if epoch is None or self.warmup == 0 else min(epoch / self.warmup, 1.0)
        return {"reviewkd": self.reviewkd_weight * factor * loss}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("reviewkd", GoldenEntry(
    "reviewkd", {"feats_s": "s:_+stages", "pooled_s": "s:pooled",
                 "preact_feats_t": "t:_+stages_preact", "pooled_t": "t:pooled"},
    options={"reviewkd_weight": 1.0}, renames=(("", "abfs."),), hparam_options={"warmup": "warmup_epochs"},
    hparam_fixed={"stu_preact": False, "bn_mode": "train"},
    # sizes that follow from the inputs (ours derives them from the shapes); the CIFAR weight is not applied
    hparam_info=("shapes", "out_shapes", "in_channels", "out_channels", "mid_channel", "reviewkd_weight_cifar")))


#: dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh --kd-loss-weight (other pairs: 5).
REVIEWKD_WEIGHT_PER_PAIR = {("resnet56", "resnet20"): 0.6, ("resnet110", "resnet32"): 1.0,
                            ("resnet32x4", "ShuffleV2"): 8.0}


def reviewkd_options(pair) -> dict:
    return {"reviewkd_weight": REVIEWKD_WEIGHT_PER_PAIR.get(tuple(pair), 5.0)}


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("ReviewKD", "reviewkd", "reviewkd",
    "dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh --kd-loss-weight "
    "per pair (5 where it has none, as mdistiller's configs/cifar100/reviewkd.yaml), warm-up 20; its train.py "
    "uses batch 128, lr 0.1 (0.02 for ShuffleNet/MobileNet) with Nesterov momentum, not reproduced here (no "
    "--nesterov flag): the common CIFAR recipe, as in mdistiller's reproduction", per_pair=reviewkd_options))
