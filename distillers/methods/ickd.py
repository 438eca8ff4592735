"""Liu et al., "Exploring Inter-Channel Correlation for Diversity-preserved Knowledge Distillation"
(ICKD-C), as in the authors' CIFAR-100 code (ADLab-AutoDrive/ICKD ``Cifar100/``)."""
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, register_distiller
from distillers.reference import GoldenEntry, register_golden


def channel_correlation(f):
    """Per sample, the C x C Gram matrix of the channels over positions, each row L2-normalised."""
    x = f.flatten(2)
    return F.normalize(x @ x.transpose(1, 2), dim=2)


@register_distiller("ickd")
class ICKD(Distiller):
    """Squared distance between the student's and the teacher's inter-channel correlation matrices.

    The student's last map (``last_map``: RepDistiller's ``feat[-2]`` where they coincide) goes
    through ``embed`` = 1x1 conv (no bias) to the teacher's channels + BN, so both matrices are
    C_t x C_t; the spatial sizes may differ (only channel x channel matrices meet).
    term = sum over (b, i, j) of (G_s - G_t)^2 / (C_t * B), the CIFAR code's normalisation
    (torchdistill's ImageNet port divides by C_t * B^2). The reference also builds an ``embed_t``
    that its loss never calls; it is not built here.

    Weights: β 2.5 with CE 1 and no KD, the README's ICKD command (ICKD + KL: ``-a 1``).
    """

    display_name = "ICKD"  # its row in published tables
    student_taps = ("last_map",)
    teacher_taps = ("last_map",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 2.5}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_shape, t_shape = tuple(spec.student["last_map"]), tuple(spec.teacher["last_map"])
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ValueError(f"ICKD needs spatial last maps (C, H, W); got student {s_shape}, teacher {t_shape}")
        self.embed = nn.Sequential(nn.Conv2d(s_shape[0], t_shape[0], 1, bias=False), nn.BatchNorm2d(t_shape[0]))

    def forward(self, s, t, batch=None):
        f_s = self.embed(s["last_map"])
        b, c = f_s.shape[:2]
        diff = channel_correlation(f_s) - channel_correlation(t["last_map"])
        return {"ickd": diff.pow(2).sum() / (c * b)}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("ickd", GoldenEntry("ickd", {"feat_s": "s:last_map", "feat_t": "t:last_map"},
                                    renames=(("embed_s.conv2d.", "embed.0."), ("embed_s.l2norm.", "embed.1.")),
                                    ignore_params=("embed_t.*",), hparam_fixed={"bn_mode": "train"},
                                    hparam_info=("feat_dim", "layers", "beta_cifar", "alpha_cifar"),  # feat_dim = t_dim
                                    diagnostics=("loss_terms",)))
