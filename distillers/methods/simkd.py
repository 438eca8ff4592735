"""Chen et al., "Knowledge Distillation with the Reused Teacher Classifier" (SimKD, CVPR 2022)."""
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import PREDICTION, Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, register_golden


class SimKDHead(nn.Module):
    """Student ``last_map`` -> logits with no teacher at hand: the SimKD inference model's extra part.

    ``align_to`` pools the student map to the teacher's size when it is the larger one (as in
    training), ``transfer`` is the projector, ``fc`` a frozen copy of the teacher classifier.
    ``forward`` takes the map itself or the student's tap dict (``student_taps`` names the tap).
    """

    student_taps = ("last_map",)

    def __init__(self, transfer: nn.Module, fc: nn.Linear, align_to=None):
        super().__init__()
        self.transfer = transfer
        self.fc = fc
        self.align_to = align_to

    def project(self, feat_s: torch.Tensor) -> torch.Tensor:
        if self.align_to is not None:
            feat_s = F.adaptive_avg_pool2d(feat_s, self.align_to)
        return self.transfer(feat_s)

    def classify(self, projected: torch.Tensor) -> torch.Tensor:
        return self.fc(projected.mean(dim=(2, 3)))

    def forward(self, feat_s) -> torch.Tensor:
        if isinstance(feat_s, Mapping):
            feat_s = feat_s["last_map"]
        return self.classify(self.project(feat_s))


@register_distiller("simkd")
class SimKD(Distiller):
    """MSE between the projected student map and the teacher map; predict with the teacher's classifier.

    After pooling the larger of the two last maps to the smaller size, a bottleneck projector
    (1x1 conv C_s -> C_t/factor, 3x3 conv, 1x1 conv -> C_t, each with BN and ReLU, no biases)
    maps the student map to the teacher's channels; loss = MSE(projector(F_s), F_t).
    The output's ``logits`` entry (:data:`PREDICTION`, not a loss term) is the student's
    prediction fc_t(avgpool(projector(F_s))), which replaces the student's own logits at train
    and test time; the reference trains with -c 0 -d 0 -b 1.

    The teacher classifier is kept as a frozen copy (``head.fc``, requires_grad False, in the
    state_dict) so that :meth:`inference_head` works without a teacher. It is built from the
    ``classifier`` shape and filled from the teacher's classifier the first time ``forward``
    sees it (the teacher is frozen, so a later refill after resuming copies the same values).
    """

    display_name = "SimKD"  # its row in published tables
    student_taps = ("last_map",)
    teacher_taps = ("last_map", "classifier")
    default_weights = {"gamma": 0.0, "alpha": 0.0, "beta": 1.0}
    options = {"factor": Option(2, "projector bottleneck: teacher channels / factor", min=1, flags=("-f",),
                                short="f")}  # SimKD (f=4) in published tables

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_shape, t_shape = tuple(spec.student["last_map"]), tuple(spec.teacher["last_map"])
        fc_shape = tuple(spec.teacher["classifier"])
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ValueError(f"simkd needs spatial last maps [C, H, W] on both sides, got student "
                             f"{s_shape} and teacher {t_shape}")
        s_c, t_c = s_shape[0], t_shape[0]
        if len(fc_shape) != 2 or fc_shape[1] != t_c:
            raise ValueError(f"simkd feeds the projector output ({t_c} channels, the teacher's last_map "
                             f"width) to the teacher classifier, whose weight is {fc_shape}")
        if self.factor > t_c:
            raise ValueError(f"simkd: factor {self.factor} leaves no bottleneck channel: the teacher's last map "
                             f"has {t_c} channels (factor at most {t_c})")
        mid = t_c // self.factor
        transfer = nn.Sequential(
            nn.Conv2d(s_c, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_c, 1, bias=False), nn.BatchNorm2d(t_c), nn.ReLU(inplace=True),
        )
        fc = nn.Linear(fc_shape[1], fc_shape[0]).requires_grad_(False)
        s_hw, t_hw = s_shape[1:], t_shape[1:]
        student_larger = s_hw != t_hw and all(a >= b for a, b in zip(s_hw, t_hw))
        self.head = SimKDHead(transfer, fc, t_hw if student_larger else None)
        self._classifier_filled = False

    @torch.no_grad()
    def _fill_classifier(self, teacher_fc: nn.Linear) -> None:
        self.head.fc.weight.copy_(teacher_fc.weight)
        if teacher_fc.bias is None:
            self.head.fc.bias.zero_()
        else:
            self.head.fc.bias.copy_(teacher_fc.bias)
        self._classifier_filled = True

    def forward(self, s, t, batch=None):
        if not self._classifier_filled:
            self._fill_classifier(t["classifier"])
        projected = self.head.project(s["last_map"])
        target = t["last_map"]
        if target.shape[-2:] != projected.shape[-2:]:
            target = F.adaptive_avg_pool2d(target, projected.shape[-2:])
        return {"simkd": F.mse_loss(projected, target), PREDICTION: self.head.classify(projected)}

    def inference_head(self) -> nn.Module:
        return self.head


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("simkd", GoldenEntry(
    "simkd", {"feat_s": "s:last_map", "feat_t": "t:last_map",
              "teacher_fc_weight": "t:classifier.weight", "teacher_fc_bias": "t:classifier.bias"},
    hparam_options={"factor": "factor"}, hparam_fixed={"bn_mode": "train"},
    hparam_info=("cls", "div", "beta", "layers"), diagnostics=("trans_feat_t",),
    renames=(("transfer.", "head.transfer."),),
    state_from_inputs={"head.fc.weight": "teacher_fc_weight", "head.fc.bias": "teacher_fc_bias"},
    outputs={"logits": "logits"}))
