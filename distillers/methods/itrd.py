"""Miles et al., "Information Theoretic Representation Distillation" (ITRD, BMVC 2022)."""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import LinearEmbed
from distillers.methods._memory import pooled_dim
from distillers.reference import GoldenEntry, PublishedRow, register_golden, register_row

#: The teacher/student families of the README's per-pair commands that use alpha_it 1.01 (same
#: architecture type); the cross-architecture commands use 1.5.
SAME_FAMILY = {"resnet", "wrn", "vgg"}


@register_distiller("itrd")
class ITRD(Distiller):
    """Information Theoretic Representation Distillation (Miles et al., BMVC 2022): a correlation loss
    and a mutual-information loss on the pooled features.

    Follows roymiles/ITRD@5d08c6b ``distiller_zoo/IT.py`` ``ITLoss`` (``forward_correlation_it``,
    ``forward_mutual_it``, its ``Embed``) as ``helper/loops.py`` ``train_distill`` weighs them.
    ``embed`` is a linear map of the student's pooled vector to the teacher's width.

    * correlation: both batches standardised per dimension (unbiased std), c = the per-dimension
      correlation of embedded student and teacher; term = ``lambda_corr`` *
      log2(sum |1 - c|^(2 ``alpha_it``)).
    * mutual information: G_s, G_t = Gram matrices of the L2-normalised rows, G_st = G_s * G_t
      (elementwise); G_s and G_st divided by their traces; term = ``lambda_mutual`` *
      sum(G_s^2 - G_st^2).

    The code is followed, including what a reader of the method would not expect (the paper's
    equations were not at hand to compare line by line): the mutual-information term embeds the
    student only when its width differs from the teacher's (equal widths compare the raw pooled
    vectors there, while the correlation term always embeds); that term is a plain difference of
    sums of squares, without the logarithm the correlation term takes; the correlation's trace
    normalisation is commented out. Defaults are the README's CIFAR-100 commands (its revision
    8a9738e listed one per pair: -r 1 -b 1, lambda_corr 2, lambda_mutual 1, alpha_it 1.01 within a
    family, 1.5 across families); ``train_student.py``'s own defaults (lambda_mutual 0.05,
    alpha_it 1.5) are not what the README ran.
    """

    display_name = "ITRD"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "lambda_corr": Option(2.0, "weight of the correlation loss (the paper's lambda_corr)", min=0),
        "lambda_mutual": Option(1.0, "weight of the mutual-information loss (the paper's lambda_MI)", min=0),
        "alpha_it": Option(1.01, "Renyi's alpha order of the correlation loss (README: 1.01 within a family, "
                                 "1.5 across families)", above=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.s_dim = pooled_dim(spec.student, "student", "itrd")
        self.t_dim = pooled_dim(spec.teacher, "teacher", "itrd")
        self.embed = LinearEmbed(self.s_dim, self.t_dim, normalize=False)

    def forward(self, s, t, batch=None):
        z_s, z_t = s["pooled"].flatten(1), t["pooled"].flatten(1)
        if z_s.shape[0] < 2:
            raise ValueError(f"itrd standardises over the batch: it needs at least 2 samples, got {z_s.shape[0]}")
        f_s = self.embed(z_s)
        return {"itrd_corr": self.lambda_corr * self.correlation(f_s, z_t),
                "itrd_mutual": self.lambda_mutual * self.mutual(f_s if self.s_dim != self.t_dim else z_s, z_t)}

    def correlation(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        n = f_s.shape[0]
        f_s = (f_s - f_s.mean(0)) / f_s.std(0)
        f_t = (f_t - f_t.mean(0)) / f_t.std(0)
        c = (f_s * f_t).sum(0) / n
        return torch.log2((c - 1).abs().pow(2.0).pow(self.alpha_it).sum())

    @staticmethod
    def mutual(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = F.normalize(f_s), F.normalize(f_t)
        g_s = f_s @ f_s.t()
        g_st = g_s * (f_t @ f_t.t())
        g_s = g_s / torch.trace(g_s)
        g_st = g_st / torch.trace(g_st)
        return (g_s.pow(2) - g_st.pow(2)).sum()


# The reference numbers this method reproduces (python -m distillers.golden; tests/golden).
register_golden("itrd", GoldenEntry(
    "itrd", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
    hparam_options={"lambda_corr": "lambda_corr", "lambda_mutual": "lambda_mutual", "alpha_it": "alpha_it"},
    hparam_info=("s_dim", "t_dim"),  # the widths, which the inputs give
    outputs={"itrd_corr": "loss_correlation", "itrd_mutual": "loss_mutual"}))  # its two weighted terms


def _family(arch: str) -> str:
    return "wrn" if arch.startswith("wrn") else "vgg" if arch.startswith("vgg") else \
        "resnet" if arch.startswith("resnet") else arch


def itrd_options(pair) -> dict:
    """The README's alpha_it for a pair: 1.01 when teacher and student are of one type, else 1.5."""
    teacher, student = (_family(a) for a in pair)
    return {"alpha_it": 1.01 if teacher == student and teacher in SAME_FAMILY else 1.5}


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow(
    "ITRD", "itrd", "itrd",
    "roymiles/ITRD README.md at 8a9738e, its per-pair commands: -r 1 -b 1 --lambda_corr 2 --lambda_mutual 1, "
    "--alpha_it 1.01 (same architecture type) or 1.5 (different types)", per_pair=itrd_options))
