"""Zagoruyko & Komodakis, "Paying More Attention to Attention" (AT), as in RepDistiller."""
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import pool_to_smaller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row


def last_stage_pairs(student, teacher):
    """Pair the last min(n_s, n_t) stages index-wise, as ``(student index, s, t)`` (1-based).

    RepDistiller zips ``feat[1:-1]`` and asserts equal lengths; pairing the deepest stages lets
    a 4-stage VGG/MobileNetV2 meet a 3-stage ResNet (its first stage is then left out).
    """
    n = min(len(student), len(teacher))
    first = len(student) - n
    pairs = zip(student[first:], teacher[len(teacher) - n:])
    return [(first + k + 1, s, t) for k, (s, t) in enumerate(pairs)]


def stage_shape_pairs(spec, method: str):
    """The paired stage shapes of ``spec``; a ``ValueError`` unless every paired stage is a (C, H, W) map."""
    pairs = last_stage_pairs(list(spec.student["stages"]), list(spec.teacher["stages"]))
    if not pairs:
        raise ValueError(f"{method}: student or teacher has no stage taps")
    for i, s, t in pairs:
        if len(s) != 3 or len(t) != 3:
            raise ValueError(f"{method} needs spatial stage maps (C, H, W); student stage {i} is "
                             f"{tuple(s)}, its teacher stage is {tuple(t)}")
    return pairs


@register_distiller("at")
class AT(Distiller):
    """Per stage pair (larger map pooled to the smaller): mean squared difference of attention maps.

    a(F) = L2-normalise over positions of mean_c(F^p). This is the reference's squared-difference
    mean, not the paper's norm of the difference, hence beta 1000. Terms are named after the
    student stage; stages are paired with :func:`last_stage_pairs`.
    """

    display_name = "AT"  # its row in published tables
    student_taps = ("stages",)
    teacher_taps = ("stages",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1000.0}
    options = {"p": Option(2, "power of the activations in the attention map", type=float, above=0)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        stage_shape_pairs(spec, "at")

    def attention(self, f):
        return F.normalize(f.pow(self.p).mean(1).flatten(1))

    def forward(self, s, t, batch=None):
        terms = {}
        for i, f_s, f_t in last_stage_pairs(s["stages"], t["stages"]):
            f_s, f_t = pool_to_smaller(f_s, f_t)
            terms[f"stage{i}"] = (self.attention(f_s) - self.attention(f_t)).pow(2).mean()
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("at", GoldenEntry("at", {"g_s": "s:stages", "g_t": "t:stages"}, hparam_options={"p": "p"},
                                  hparam_fixed={"sum_over_layers": True}, hparam_info=("layers",),
                                  diagnostics=("loss_terms",)))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("AT", "at", "at", REPDISTILLER_WEIGHTS))
