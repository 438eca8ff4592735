"""Similarity-preserving distillation on embeddings (Tung & Mori; methods.md §3.1 and §6.7).

``sp_mode="batch"`` (default) is the SP paper's loss on the batch: G = X X^T (B x B) of the
embeddings, each row L2-normalised, loss = ||G_t - G_s||_F^2 / B^2. ``sp_mode="per_sample"``
reproduces how ahu-hpt/AOMD's script calls its ``Similarity`` on embeddings: every sample is
its own "batch", x_i = e_s[i] viewed as [ds, 1] and y_i = e_t[i] as [ds, dt/ds], G = x x^T
(ds x ds, rows normalised), term_i = ||G_t - G_s||_F^2 / ds^2, loss = mean over samples (only
when dt is a multiple of ds). That is a bug of the reference, kept as an option for
comparison (golden ``metric_sp``).
"""
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS
from distillers.methods.sp import _similarity
from distillers.reference import GoldenEntry, register_golden, EMBEDS

SP_MODES = ("batch", "per_sample")


@register_distiller("metric_sp", task="metric")
class MetricSP(Distiller):
    """Similarity preserving on embeddings: squared difference of row-normalised Gram matrices."""

    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = METRIC_WEIGHTS
    options = {"sp_mode": Option("batch", "Gram matrix over the batch, or per sample (the AOMD repository's)",
                                 choices=SP_MODES)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if self.sp_mode == "per_sample":
            ds, dt = spec.student["logits"][-1], spec.teacher["logits"][-1]
            if dt % ds:
                raise ValueError(f"metric_sp: sp_mode per_sample needs the teacher embedding ({dt}) to be a "
                                 f"multiple of the student's ({ds})")

    def forward(self, s, t, batch=None):
        e_s, e_t = s["logits"].flatten(1), t["logits"].flatten(1)
        if self.sp_mode == "batch":
            diff = _similarity(e_t) - _similarity(e_s)
            return {"sp": diff.pow(2).sum() / e_s.shape[0] ** 2}
        n, ds = e_s.shape
        x = e_s.reshape(n, ds, 1)
        y = e_t.reshape(n, ds, -1)
        g_s = F.normalize(x @ x.transpose(1, 2), dim=2)
        g_t = F.normalize(y @ y.transpose(1, 2), dim=2)
        return {"sp": ((g_t - g_s).pow(2).sum(dim=(1, 2)) / ds ** 2).mean()}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("metric_sp", GoldenEntry(
    "metric_sp", EMBEDS, options={"sp_mode": "per_sample"},
    hparam_fixed={"per_sample": True, "normalize_eps": 1e-12},  # per_sample True is sp_mode per_sample
    hparam_info=("student_embedding", "teacher_embedding", "l2normalize", "sp_ratio_examples"),
    diagnostics=("loss_terms",), task="metric"))
