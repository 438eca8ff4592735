"""Giakoumoglou & Stathaki, "Discriminative and Consistent Representation Distillation" (DCD)."""
import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import LinearEmbed
from distillers.methods._memory import pooled_dim
from distillers.reference import GoldenEntry, register_golden, KD_T4, PublishedRow, register_row

#: Upper clamp of the learnt logit scale exp(tau) (reference ``max_tau``).
MAX_SCALE = 10.0


@register_distiller("dcd")
class DCD(Distiller):
    """In-batch contrast plus a consistency KL, with a learnt logit scale and bias.

    L = (s t^T) * clamp(exp(tau), 0, 10) + b  [B, B] over embedded, normalised pooled features;
    contrast = CE(L, targets 0..B-1); consist = (1/B) sum_i KL(c_i || softmax_j L[i, j]) with
    c_i = column i of softmax(L, dim=0) (not detached, as the reference); weighted by dcd_alpha.
    ``tau`` (init 1) and ``b`` (init 0) are parameters, so they are optimised and checkpointed
    (the reference's ImageNet script never optimised them). ``b`` gets an exactly zero gradient:
    adding one constant to every logit changes neither the row nor the column softmax.
    """

    display_name = "DCD"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "feat_dim": Option(128, "width of the two embeddings", min=1),
        "dcd_alpha": Option(0.5, "weight of the consistency KL", min=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.embed_s = LinearEmbed(pooled_dim(spec.student, "student", "dcd"), self.feat_dim)
        self.embed_t = LinearEmbed(pooled_dim(spec.teacher, "teacher", "dcd"), self.feat_dim)
        self.tau = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, s, t, batch=None):
        v_s, v_t = self.embed_s(s["pooled"]), self.embed_t(t["pooled"])
        logits = v_s @ v_t.t() * self.tau.exp().clamp(0, MAX_SCALE) + self.b
        targets = torch.arange(len(logits), device=logits.device)
        log_rows = F.log_softmax(logits, dim=1)
        log_cols = F.log_softmax(logits, dim=0).t()
        consist = (log_cols.exp() * (log_cols - log_rows)).sum() / len(logits)
        return {"dcd_contrast": F.cross_entropy(logits, targets), "dcd_consist": self.dcd_alpha * consist}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("dcd", GoldenEntry(
    "dcd", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
    hparam_options={"feat_dim": "feat_dim", "dcd_alpha": "alpha"}, hparam_fixed={"max_tau": 10.0},
    hparam_info=("init_tau", "init_b", "trainable", "s_dim", "t_dim"),  # initial values: the file's params
    renames=(("params.", ""), ("embed_s.", "embed_s.linear."), ("embed_t.", "embed_t.linear."))))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("DCD", "dcd", "dcd", "giakoumoglou/distillers cifar/ scripts (the registry's defaults)"))
register_row(PublishedRow("DCD+KD", "dcd_kd", "dcd",
    "giakoumoglou/distillers cifar/ scripts, -a 1", weights={"alpha": 1.0},
    options=KD_T4))
