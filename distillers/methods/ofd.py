"""Heo et al., "A Comprehensive Overhaul of Feature Distillation" (OFD), as in mdistiller."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, register_row

#: Tap group of the teacher's BatchNorm modules whose outputs feed each stage's final ReLU
#: (``stage1_bn``, ``stage2_bn``, ...): the margins are computed from their weight and bias.
BN_TAPS = "stages_bn"


def bn_margin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per channel E[x | x < 0] for x ~ N(bias, weight^2); -3|weight| where P(x < 0) <= 0.001.

    The paper's margin: the expected negative response of a teacher channel, with the BN output
    taken as Gaussian (mean = BN bias, std = |BN weight|). The closed form of the truncated normal
    mean is m - s phi(m/s) / Phi(-m/s); where the negative tail is almost empty the reference
    falls back to -3 s (its scipy code, written here with torch).
    """
    s, m = weight.abs(), bias
    z = -m / s
    tail = torch.special.ndtr(z)  # P(x < 0)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return torch.where(tail > 1e-3, m - s * pdf / tail.clamp_min(1e-3), -3 * s)


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Sum over (C, H, W) of the batch mean of the OFD distance.

    The target is first lifted to the margin (margin-ReLU: the teacher's negative responses only
    say "negative", not how much); positions where the student is already below a non-positive
    target cost nothing. Same value as mdistiller's three-mask ``feat_loss`` and clovaai's
    ``distillation_loss``.
    """
    target = torch.max(target, margin)
    mask = (source > target) | (target > 0)
    return ((source - target).pow(2) * mask).mean(0).sum()


def connector(c_s: int, c_t: int, kernel_size: int = 1) -> nn.Sequential:
    """Student -> teacher channels: conv (no bias) + BN, initialised as the reference does."""
    conv = nn.Conv2d(c_s, c_t, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * c_t)))
    return nn.Sequential(conv, nn.BatchNorm2d(c_t))


@register_distiller("ofd")
class OFD(Distiller):
    """Partial L2 between connector(student pre-ReLU stage) and margin-ReLU(teacher pre-ReLU stage).

    Stages: the last min(n_s, n_t) pre-activation stages of both (mdistiller's ``_align_list`` on
    ``preact_feats[1:]``); the teacher map is average-pooled to the student's size; term k is
    weighted 1 / 2^(n - k) so the deepest stage counts most. Connector: ``ofd_kernel`` x
    ``ofd_kernel`` conv (no bias) + BN per stage (mdistiller CONNECTOR.KERNEL_SIZE 1).

    Margins are computed at each step from the teacher's BatchNorm before each paired ReLU (tap
    group ``stages_bn``; the teacher is frozen, so they are the reference's constants; like the
    reference, computed in float64 and kept in float32). Deviation from mdistiller, on purpose: its margin list is indexed by
    position in the *aligned* list, so a teacher with more stages than the student would receive
    the margins of its first stages; here each stage gets its own BN's margins (identical when the
    stage counts are equal, as in every mdistiller OFD config). For a CIFAR ResNet the reference
    takes the last block's ``bn2`` although the tapped pre-activation is ``bn2(x) + shortcut``:
    the margin is the reference's approximation there, not a statistic of the tapped tensor.

    Weights: β = 1e-3 on the sum over C, H, W averaged over the batch (mdistiller FEAT_WEIGHT;
    clovaai divides the sum by the batch and 1000), CE 1, no KD.
    """

    display_name = "OFD"  # its row in published tables
    student_taps = ("stages_preact",)
    teacher_taps = ("stages_preact", BN_TAPS)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1e-3}
    options = {"ofd_kernel": Option(1, "kernel size of the connector conv (odd: the map keeps its size)",
                                    choices=(1, 3, 5, 7))}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if BN_TAPS not in spec.teacher:
            raise ValueError(
                "OFD computes its margins from the teacher's BatchNorm before each stage's final ReLU "
                f"(tap group '{BN_TAPS}'), which the teacher does not provide")
        s_stages, t_stages = list(spec.student["stages_preact"]), list(spec.teacher["stages_preact"])
        bns = list(spec.teacher[BN_TAPS])
        if len(bns) != len(t_stages):
            raise ValueError(f"OFD needs one teacher BatchNorm per pre-activation stage; the teacher has "
                             f"{len(t_stages)} stages and {len(bns)} '{BN_TAPS}' taps")
        n = min(len(s_stages), len(t_stages))
        self.first_s, self.first_t = len(s_stages) - n, len(t_stages) - n
        pairs = list(zip(s_stages[self.first_s:], t_stages[self.first_t:], bns[self.first_t:]))
        for i, (s, t, bn) in enumerate(pairs, start=self.first_s + 1):
            if len(s) != 3 or len(t) != 3:
                raise ValueError(f"OFD needs spatial pre-activation maps (C, H, W); student stage {i} is "
                                 f"{tuple(s)}, its teacher stage is {tuple(t)}")
            if tuple(bn) != (t[0],):
                raise ValueError(f"OFD: the teacher BatchNorm paired with student stage {i} has "
                                 f"{tuple(bn)} channels, its stage map {t[0]}")
        self.connectors = nn.ModuleList(connector(s[0], t[0], self.ofd_kernel) for s, t, _ in pairs)

    def forward(self, s, t, batch=None):
        f_s = s["stages_preact"][self.first_s:]
        f_t = t["stages_preact"][self.first_t:]
        bns = t[BN_TAPS][self.first_t:]
        n, terms = len(f_s), {}
        for i, (x, y, bn, conv) in enumerate(zip(f_s, f_t, bns, self.connectors)):
            x = conv(x)
            y = F.adaptive_avg_pool2d(y, x.shape[-2:])
            with torch.no_grad():  # float64 closed form, stored in float32 as the reference does
                margin = bn_margin(bn.weight.detach().double(), bn.bias.detach().double()).float()
            margin = margin.to(y).view(1, -1, 1, 1)
            terms[f"stage{self.first_s + i + 1}"] = partial_l2(x, y, margin) / 2 ** (n - 1 - i)
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
# feature methods (tests/golden/, made by tests/golden/make_feature_goldens.py)
register_golden("ofd", GoldenEntry("ofd", {"feats_s": "s:stages_preact", "preact_feats_t": "t:stages_preact",
                                           "bn_weight_t": "t:stages_bn.weight", "bn_bias_t": "t:stages_bn.bias"},
                                   renames=(("connectors.connectors.", "connectors."),),
                                   hparam_options={"ofd_kernel": "connector_kernel_size"},
                                   hparam_fixed={"bn_mode": "train", "stage_weights": [0.25, 0.5, 1.0]},
                                   hparam_info=("feat_weight", "ce_weight", "layers", "reduction"),
                                   diagnostics=("margins", "loss_terms", "mask_counts", "overhaul"),
                                   variants={"kernel3": {}}))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("OFD", "ofd", "ofd",
    "megvii-research/mdistiller configs/cifar100/ofd.yaml + cfg.py OFD (CE 1, "
    "FEAT_WEIGHT 1e-3, connector kernel 1)"))
