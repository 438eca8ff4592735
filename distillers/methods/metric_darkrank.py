"""Hard DarkRank (Chen et al.; lenscloth/RKD ``HardDarkRank``; methods.md §6.4).

Scores S = -alpha * d^beta from non-squared pairwise distances of the embeddings. For each
anchor the teacher's ``permute_len`` best-scored other samples, best first, give a ranking;
the loss is the negative Plackett-Luce log-likelihood of that ranking under the student's
scores, averaged over anchors. CLI defaults alpha 2, beta 3 (``--dark_alpha``/``--dark_beta``).
"""
import torch

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS, pdist
from distillers.reference import GoldenEntry, register_golden, EMBEDS


@register_distiller("darkrank", task="metric")
class HardDarkRank(Distiller):
    """Plackett-Luce negative log-likelihood of the teacher's neighbour ranking under the student's scores."""

    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = METRIC_WEIGHTS
    options = {
        "dark_alpha": Option(2.0, "scale alpha of the scores -alpha d^beta", min=0),
        "dark_beta": Option(3.0, "power beta of the distances in the scores", min=0),
        "permute_len": Option(4, "length of the teacher's ranking per anchor", min=1),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)

    def scores(self, x):
        return -self.dark_alpha * pdist(x.flatten(1)).pow(self.dark_beta)

    def forward(self, s, t, batch=None):
        e_s, e_t = s["logits"], t["logits"]
        if e_s.shape[0] <= self.permute_len:
            raise ValueError(f"darkrank: a batch of {e_s.shape[0]} has no {self.permute_len} neighbours per "
                             "sample; use a larger batch or a smaller permute_len")
        with torch.no_grad():
            permute_idx = self.scores(e_t).sort(dim=1, descending=True)[1][:, 1:self.permute_len + 1]
        ordered = torch.gather(self.scores(e_s), 1, permute_idx)
        normaliser = torch.stack([torch.logsumexp(ordered[:, i:], dim=1) for i in range(ordered.shape[1])], dim=1)
        return {"darkrank": -(ordered - normaliser).sum(dim=1).mean()}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("darkrank", GoldenEntry(
    "darkrank", EMBEDS, hparam_options={"dark_alpha": "alpha", "dark_beta": "beta", "permute_len": "permute_len"},
    hparam_fixed={"pdist_eps": 1e-12},
    hparam_info=("student_embedding", "teacher_embedding", "l2normalize"),  # sizes; how the inputs were made
    diagnostics=("permute_idx", "labels"), task="metric"))
