"""Romero et al., "FitNets: Hints for Thin Deep Nets": one hint stage, single-stage training.

As in RepDistiller, the hint loss is trained jointly with the task from the start (no separate
hint pre-training stage of the paper).
"""
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._adapters import ADAPTER_OPTION, SpatialProjection
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row


class ConvReg(nn.Module):
    """Conv sized from the two maps, BN, then ReLU (optional): student map -> teacher map shape.

    The conv follows RepDistiller's ConvReg, chosen on the heights:
    student twice as large -> 3x3 conv, stride 2, pad 1; half as large -> 4x4 transposed conv,
    stride 2, pad 1; otherwise (at least as large) a conv of kernel (1 + s_H - t_H) x (1 + s_W - t_W),
    i.e. 1x1 when the sizes match. Any other pair of sizes is a ``ValueError``, unless ``adapter`` is
    ``auto``: then the conv is a :class:`~distillers.methods._adapters.SpatialProjection` (patch
    merging or expanding by an integer factor, else interpolation and a 1x1 conv).
    """

    def __init__(self, s_shape, t_shape, use_relu: bool = True, adapter: str = "reference"):
        super().__init__()
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ValueError(f"ConvReg needs spatial maps (C, H, W); got student {tuple(s_shape)}, "
                             f"teacher {tuple(t_shape)}")
        (s_c, s_h, s_w), (t_c, t_h, t_w) = s_shape, t_shape
        if s_h == 2 * t_h and (s_w + 1) // 2 == t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        elif adapter == "auto":
            self.conv = SpatialProjection(s_shape, t_shape)
        else:
            raise ValueError(
                f"ConvReg cannot map a {s_h}x{s_w} student map onto a {t_h}x{t_w} teacher map: the "
                "student map must be twice as large, half as large, or at least as large in both "
                "dimensions (--adapter auto maps any sizes)")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


@register_distiller("fitnet")
class FitNet(Distiller):
    """MSE between ConvReg(student stage ``hint_layer``) and the teacher's same stage.

    ``hint_layer`` k picks tap ``stage{k}`` on both sides (RepDistiller's ``feat[k]``; default 2 as
    in RepDistiller, mdistiller and giakoumoglou/distillers ``cifar/``). The regressor's BN runs in
    the module's mode (train during distillation).
    """

    display_name = "FitNet"  # its row in published tables
    student_taps = ("stage2",)
    teacher_taps = ("stage2",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 100.0}
    options = {"hint_layer": Option(2, "the hint stage k: tap stage<k> on both sides", min=1),
               "adapter": ADAPTER_OPTION}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.tap = f"stage{self.hint_layer}"
        for side, taps in (("student", spec.student), ("teacher", spec.teacher)):
            if self.tap not in taps:
                stages = sorted(k for k in taps if k.startswith("stage") and k[5:].isdigit())
                have = f"only {', '.join(stages)}" if stages else f"no stage taps (its taps: {', '.join(sorted(taps))})"
                raise ValueError(f"fitnet: hint_layer {self.hint_layer} needs tap '{self.tap}', but the {side} has "
                                 f"{have}")
        self.student_taps = self.teacher_taps = (self.tap,)
        self.regressor = ConvReg(spec.student[self.tap], spec.teacher[self.tap], adapter=self.adapter)

    def forward(self, s, t, batch=None):
        return {"hint": F.mse_loss(self.regressor(s[self.tap]), t[self.tap])}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("fitnet", GoldenEntry("fitnet", {"feat_s": "s:stage2", "feat_t": "t:stage2"},
                                      hparam_options={"hint_layer": "hint_layer"}, renames=(("", "regressor."),),
                                      hparam_fixed={"regressor": "ConvReg(use_relu=True)", "bn_mode": "train",
                                                    "bn_momentum": 0.1, "bn_eps": 1e-05},
                                      hparam_info=("conv",)))  # the conv the shapes select


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("FitNet", "fitnet", "fitnet", REPDISTILLER_WEIGHTS))
