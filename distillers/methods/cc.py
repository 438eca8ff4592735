"""Peng et al., "Correlation Congruence for Knowledge Distillation" (CC), RepDistiller's variant."""

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import LinearEmbed, flat_dim
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row


@register_distiller("cc")
class CC(Distiller):
    """Consecutive-sample correlation of embedding differences (RepDistiller's code, not the paper's kernel).

    e_s = embed_s(student pooled), e_t = embed_t(teacher pooled), both trainable Linear -> ``feat_dim``
    without normalisation; with d_i = |e_s,i - e_t,i|, loss = mean over i < B of sum_c d_i,c d_{i+1},c.
    A batch of one has no consecutive pair and gives 0 (the reference's mean would be NaN).
    """

    display_name = "CC"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 0.02}
    options = {"feat_dim": Option(128, "width of the two embeddings", min=1)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.embed_s = LinearEmbed(flat_dim(spec.student["pooled"]), self.feat_dim, normalize=False)
        self.embed_t = LinearEmbed(flat_dim(spec.teacher["pooled"]), self.feat_dim, normalize=False)

    def forward(self, s, t, batch=None):
        delta = (self.embed_s(s["pooled"]) - self.embed_t(t["pooled"])).abs()
        pairs = (delta[:-1] * delta[1:]).sum()
        return {"cc": pairs / max(delta.shape[0] - 1, 1)}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("cc", GoldenEntry("cc", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
                                  hparam_options={"feat_dim": "feat_dim"}, diagnostics=("embed_s_out", "embed_t_out")))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("CC", "cc", "cc", REPDISTILLER_WEIGHTS))
