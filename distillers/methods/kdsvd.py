"""Lee et al., "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (KDSVD)."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, register_golden


def _finite(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _svd(feat, n: int):
    """First ``n`` right singular vectors of the map viewed as [B, HW, C] (normalised over C)
    and the singular values (normalised over the kept ones)."""
    _, sv, vh = torch.linalg.svd(feat.flatten(2).transpose(1, 2), full_matrices=False)
    sv, v = _finite(sv), _finite(vh.transpose(1, 2))
    return F.normalize(sv[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def _align(v_s, v_t):
    """Pick, for each teacher vector, the student vector of largest |cosine|, sign-matched."""
    cosine = (v_s.transpose(1, 2) @ v_t).detach()
    best = cosine.abs() == cosine.abs().amax(1, keepdim=True)
    return v_s @ torch.where(best, cosine.sign(), torch.zeros_like(cosine))


def _rbf(v, v_prev):
    """exp(-(v_c - v'_c')^2 / 8) over all channel pairs of two consecutive stages."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / 8)


@register_distiller("kdsvd")
class KDSVD(Distiller):
    """Match the cross-stage RBF correlation of the dominant singular vectors of each stage.

    Per stage the teacher keeps ``k`` right singular vectors and the student ``k + 3``,
    aligned to the teacher's by the largest |cosine|; both are scaled by the teacher's
    normalised singular values. One term per consecutive stage pair: sum of squared RBF
    differences / B (non-finite entries zeroed). Needs equal channels per stage. The
    reference views maps as H*H (square only); flattening H*W gives the same on square
    maps and serves any map. Singular-vector signs are implementation-defined (golden
    tolerance 1e-5). β: not in the RepDistiller scripts; mdistiller's FEAT_WEIGHT is 1.
    """

    display_name = "KDSVD"  # its row in published tables
    student_taps = ("stages",)
    teacher_taps = ("stages",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {"k": Option(1, "singular vectors kept per teacher stage (the student keeps k + 3)", min=1)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_shapes, t_shapes = spec.student["stages"], spec.teacher["stages"]
        if len(s_shapes) != len(t_shapes):
            raise ValueError(f"KDSVD pairs stages one to one: the student has {len(s_shapes)} stages, "
                             f"the teacher {len(t_shapes)}")
        for i, (s, t) in enumerate(zip(s_shapes, t_shapes), 1):
            if s[0] != t[0]:
                raise ValueError(f"KDSVD needs equal student and teacher channels per stage; "
                                 f"stage{i} has {s[0]} (student) vs {t[0]} (teacher) channels")

    def forward(self, s, t, batch=None):
        terms = {}
        prev = None
        for i, (f_s, f_t) in enumerate(zip(s["stages"], t["stages"]), 1):
            sv_t, v_t = _svd(f_t, self.k)
            _, v_s = _svd(f_s, self.k + 3)
            scale = sv_t.unsqueeze(1)
            v_s, v_t = _align(v_s, v_t) * scale, v_t * scale
            if prev is not None:
                diff = (_rbf(v_s, prev[0]) - _rbf(v_t, prev[1]).detach()).pow(2)
                terms[f"kdsvd{i - 1}"] = _finite(diff).sum() / f_s.shape[0]
            prev = (v_s, v_t)
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("kdsvd", GoldenEntry("kdsvd", {"g_s": "s:stages", "g_t": "t:stages"}, hparam_options={"k": "k"},
                                     hparam_fixed={"student_k": "k+3", "rbf_sigma2": 8.0}, hparam_info=("layers",),
                                     diagnostics=("loss_terms",)))
