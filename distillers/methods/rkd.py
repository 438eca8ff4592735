"""Park et al., "Relational Knowledge Distillation" (RKD-DA), classification setting of RepDistiller."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row


def pairwise_distance(x, eps: float = 1e-12):
    """Euclidean distances via the squared-norm expansion, clamped at ``eps`` before the root; 0 diagonal."""
    sq = x.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x @ x.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def _normalised_distance(x):
    d = pairwise_distance(x)
    return d / d[d > 0].mean()


def _angles(x):
    """All B^3 cosines <u_ij, u_kj> of the unit difference vectors around each anchor j."""
    u = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)
    return torch.bmm(u, u.transpose(1, 2)).flatten()


@register_distiller("rkd")
class RKD(Distiller):
    """distance_weight * SmoothL1 of normalised distances + angle_weight * SmoothL1 of angles.

    Applied to the pooled (penultimate) features, not L2-normalised; weights 25 and 50 as in
    RepDistiller and mdistiller (``RKD.DISTANCE_WEIGHT``/``ANGLE_WEIGHT``). The returned terms
    already carry these weights. Needs a batch of at least 2 distinct samples.
    """

    display_name = "RKD"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "distance_weight": Option(25.0, "weight of the distance term (0: left out)", min=0),
        "angle_weight": Option(50.0, "weight of the angle term (0: left out)", min=0),
    }

    def forward(self, s, t, batch=None):
        tap = self.student_taps[0]  # pooled here; the embedding for metric learning
        x_s, x_t = s[tap].flatten(1), t[tap].flatten(1)
        terms = {}
        if self.distance_weight:
            terms["distance"] = self.distance_weight * F.smooth_l1_loss(
                _normalised_distance(x_s), _normalised_distance(x_t))
        if self.angle_weight:
            terms["angle"] = self.angle_weight * F.smooth_l1_loss(_angles(x_s), _angles(x_t))
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("rkd", GoldenEntry("rkd", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
                                   hparam_options={"distance_weight": "w_d", "angle_weight": "w_a"},
                                   hparam_fixed={"pdist_eps": 1e-12, "squared": False, "smooth_l1_beta": 1.0},
                                   diagnostics=("loss_distance", "loss_angle")))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("RKD", "rkd", "rkd", REPDISTILLER_WEIGHTS))
