"""FitNet of the metric scripts (lenscloth/RKD ``run_distill_fitnet.py``; methods.md §6.6).

One 1x1 convolution without bias per (student, teacher) pair, drawn U(-0.005, 0.005), maps the
student's channels to the teacher's; the term is mean((W * s - t)^2). Default pairs: stages b2,
b3, b4 and the embedding (2-D tensors are viewed as 1x1 maps), sizes inferred from the taps.
The regressors are this distiller's parameters, so they are **trained** and checkpointed (the
reference never passed them to its optimiser).
"""
from torch import nn

from distillers.base import PREDICTION, Distiller, Option, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS, as_layers, tap_shape
from distillers.reference import GoldenEntry, register_golden


def _as_map(x):
    return x[:, :, None, None] if x.dim() == 2 else x


@register_distiller("metric_fitnet", task="metric")
class MetricFitNet(Distiller):
    """MSE between 1x1-regressed student taps and the teacher's (stages and embedding; the metric scripts' FitNet)."""

    default_weights = METRIC_WEIGHTS
    options = {"fitnet_layers": Option("stage2,stage3,stage4,logits",
                                       "taps regressed, comma-separated (logits: the embedding)")}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.layers = as_layers("metric_fitnet", self.fitnet_layers)
        self.regressors = nn.ModuleDict()
        for layer in self.layers:
            s = tap_shape(spec.student, layer, "student", "metric_fitnet")
            t = tap_shape(spec.teacher, layer, "teacher", "metric_fitnet")
            if len(s) not in (1, 3) or len(s) != len(t) or s[1:] != t[1:]:
                raise ValueError(f"metric_fitnet: {layer} of the student {s} and of the teacher {t} must be "
                                 "vectors or (C, H, W) maps of the same H x W (1x1 regressor)")
            conv = nn.Conv2d(s[0], t[0], kernel_size=1, bias=False)
            nn.init.uniform_(conv.weight, -0.005, 0.005)
            self.regressors[layer.replace(".", "_")] = conv
        self.student_taps = self.teacher_taps = self.layers

    def forward(self, s, t, batch=None):
        terms = {}
        for layer in self.layers:
            regressor = self.regressors[layer.replace(".", "_")]
            key = "embedding" if layer == PREDICTION else layer  # a 'logits' key is not summed as a loss
            terms[key] = (regressor(_as_map(s[layer])) - _as_map(t[layer])).pow(2).mean()
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("metric_fitnet", GoldenEntry(
    "metric_fitnet", {"feat_s": "s:stage2", "feat_t": "t:stage2"},
    options={"fitnet_layers": "stage2"}, renames=(("transform.", "regressors.stage2."),),
    hparam_fixed={"kernel": 1, "bias": False},
    hparam_info=("in_feature", "out_feature", "weight_init", "layer", "fitnet_ratio_examples"),
    task="metric"))
