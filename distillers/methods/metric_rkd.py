"""RKD on embeddings (lenscloth/RKD ``RkdDistance`` + ``RKdAngle``; methods.md §6.3).

The distance and angle terms of :mod:`distillers.methods.rkd`, applied to the embedding-net
outputs (tap ``logits``) with the metric scripts' weights ``--dist_ratio 1 --angle_ratio 2``
and no task loss. The teacher side carries no gradient (its taps run under no_grad).
"""
import torch.nn.functional as F

from distillers.base import register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS, as_number
from distillers.methods.rkd import RKD, _angles, _normalised_distance


@register_distiller("metric_rkd", task="metric")
class MetricRKD(RKD):
    """distance_weight * SmoothL1(D_s / mean D_s, D_t / mean D_t) + angle_weight * SmoothL1 of the
    N^3 angle cosines, on embeddings. A zero weight skips its term."""

    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = METRIC_WEIGHTS
    options = {"distance_weight": 1.0, "angle_weight": 2.0}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.distance_weight = as_number("metric_rkd", "distance_weight", self.distance_weight)
        self.angle_weight = as_number("metric_rkd", "angle_weight", self.angle_weight)

    def forward(self, s, t, batch=None):
        x_s, x_t = s["logits"].flatten(1), t["logits"].flatten(1)
        terms = {}
        if self.distance_weight:
            terms["distance"] = self.distance_weight * F.smooth_l1_loss(
                _normalised_distance(x_s), _normalised_distance(x_t))
        if self.angle_weight:
            terms["angle"] = self.angle_weight * F.smooth_l1_loss(_angles(x_s), _angles(x_t))
        return terms
