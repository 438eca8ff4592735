"""Tian et al., "Contrastive Representation Distillation" (CRD), the original NCE form."""
from core.requests import ContrastSampling
from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import LinearEmbed
from distillers.methods._memory import ContrastMemory, nce_loss, pooled_dim, require_num_data
from distillers.reference import (GoldenEntry, register_golden, KD_T4, PublishedRow,
                                  REPDISTILLER_WEIGHTS, register_row)

MODES = ("exact", "relax")


@register_distiller("crd")
class CRD(Distiller):
    """NCE between embedded pooled features and two momentum memory banks over the training set.

    Student anchors are scored against the teacher bank and teacher anchors against the student
    bank, on the positive plus ``nce_k`` negatives given by ``contrast_idx`` (the contrast-sample
    dataset, ``mode`` exact: the sample itself as positive, relax: a same-class sample). Both
    embeddings are trained. Banks and the normalisation constants Z are buffers (checkpointed),
    updated with rank-gathered embeddings (see :class:`ContrastMemory`).
    """

    display_name = "CRD"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 0.8}
    options = {
        "feat_dim": Option(128, "width of the embeddings and memory rows", min=1),
        "nce_k": Option(16384, "negatives per sample", min=1),
        "nce_t": Option(0.07, "NCE temperature", above=0),
        "nce_m": Option(0.5, "momentum of the memory update", min=0, below=1),
        "mode": Option("exact", "positive of each contrast: the sample itself (exact) or a same-class sample (relax)",
                       choices=MODES),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.n_data = require_num_data(spec, "crd")
        self.embed_s = LinearEmbed(pooled_dim(spec.student, "student", "crd"), self.feat_dim)
        self.embed_t = LinearEmbed(pooled_dim(spec.teacher, "teacher", "crd"), self.feat_dim)
        self.contrast = ContrastMemory(self.feat_dim, self.n_data, self.nce_k, self.nce_t, self.nce_m)

    def data_requests(self):
        """Each sample's index, and its positive and ``nce_k`` negatives (mode exact or relax)."""
        return (ContrastSampling(self.nce_k, self.mode),)

    def forward(self, s, t, batch=None):
        o_s, o_t = self.contrast(self.embed_s(s["pooled"]), self.embed_t(t["pooled"]),
                                 batch["index"], batch["contrast_idx"])
        return {"crd_s": nce_loss(o_s, self.n_data), "crd_t": nce_loss(o_t, self.n_data)}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("crd", GoldenEntry(
    "crd", {"feat_s": "s:pooled", "feat_t": "t:pooled", "idx": "batch:index",
            "contrast_idx": "batch:contrast_idx"},
    hparam_options={"feat_dim": "feat_dim", "nce_k": "nce_k", "nce_t": "nce_t", "nce_m": "nce_m"},
    spec_from_hparams={"num_data": "n_data"}, hparam_fixed={"eps": 1e-7},
    hparam_info=("nce_k_reference_default", "n_data_reference", "s_dim", "t_dim")))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("CRD", "crd", "crd", REPDISTILLER_WEIGHTS))
register_row(PublishedRow("CRD+KD", "crd_kd", "crd",
    REPDISTILLER_WEIGHTS + " with -a 1 (CRD+KD)", weights={"alpha": 1.0}, options=KD_T4))
