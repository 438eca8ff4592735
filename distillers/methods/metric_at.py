"""Attention transfer of the metric scripts (lenscloth/RKD ``AttentionTransfer``; methods.md §6.5).

a(F) = L2-normalise over positions of mean_c(F^2); term = mean over N*HW of (a_s - a_t)^2, one
term per stage (default b2, b3, b4 = taps stage2..stage4), summed. Unlike ``at`` nothing is
pooled: student and teacher maps must have the same spatial size (ResNet18/50 on the same input).
"""
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS, as_layers, tap_shape
from distillers.reference import GoldenEntry, register_golden


@register_distiller("metric_at", task="metric")
class MetricAT(Distiller):
    """Mean squared difference of attention maps, per stage, without pooling (the metric scripts' AT)."""

    default_weights = METRIC_WEIGHTS
    options = {
        "at_layers": Option("stage2,stage3,stage4", "stage taps compared (comma-separated)"),
        "p": Option(2, "power of the activations in the attention map", type=float, above=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.layers = as_layers("metric_at", self.at_layers)
        for layer in self.layers:
            s = tap_shape(spec.student, layer, "student", "metric_at")
            t = tap_shape(spec.teacher, layer, "teacher", "metric_at")
            if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
                raise ValueError(f"metric_at compares {layer} maps without pooling: student {s} and teacher {t} "
                                 "must be (C, H, W) maps of the same H x W")
        self.student_taps = self.teacher_taps = self.layers

    def attention(self, f):
        return F.normalize(f.pow(self.p).mean(1).flatten(1))

    def forward(self, s, t, batch=None):
        return {layer: (self.attention(s[layer]) - self.attention(t[layer])).pow(2).mean() for layer in self.layers}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("metric_at", GoldenEntry(
    "metric_at", {"g_s": "s:stage2+stage3+stage4", "g_t": "t:stage2+stage3+stage4"},
    hparam_options={"p": "p"}, hparam_fixed={"sum_over_layers": True, "normalize_eps": 1e-12},
    hparam_info=("layers", "at_ratio_examples"), diagnostics=("loss_terms",), task="metric"))
