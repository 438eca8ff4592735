"""RKD on embeddings (lenscloth/RKD ``RkdDistance`` + ``RKdAngle``; methods.md §6.3).

The distance and angle terms of :mod:`distillers.methods.rkd`, applied to the embedding-net
outputs (tap ``logits``) with the metric scripts' weights ``--dist_ratio 1 --angle_ratio 2``
and no task loss. The teacher side carries no gradient (its taps run under no_grad).
"""
from distillers.base import Option, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS
from distillers.methods.rkd import RKD
from distillers.reference import GoldenEntry, register_golden, EMBEDS


@register_distiller("metric_rkd", task="metric")
class MetricRKD(RKD):
    """RKD's distance and angle terms on embeddings (the metric scripts' weights 1 and 2).

    distance_weight * SmoothL1(D_s / mean D_s, D_t / mean D_t) + angle_weight * SmoothL1 of the
    N^3 angle cosines. A zero weight skips its term.
    """

    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = METRIC_WEIGHTS
    options = {
        "distance_weight": Option(1.0, "weight of the distance term", min=0),
        "angle_weight": Option(2.0, "weight of the angle term", min=0),
    }


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
# metric learning (lenscloth/RKD metric/, ahu-hpt/AOMD metric/); embeddings = the embedding net's output
register_golden("rkd_metric", GoldenEntry(
    "metric_rkd", EMBEDS, hparam_options={"distance_weight": "dist_ratio", "angle_weight": "angle_ratio"},
    hparam_fixed={"pdist_eps": 1e-12, "smooth_l1_beta": 1.0},
    hparam_info=("student_embedding", "teacher_embedding", "l2normalize"),
    diagnostics=("loss_distance", "loss_angle"), task="metric"))
