"""Tian et al., "Contrastive Representation Distillation" (CRD), the original NCE form."""
from distillers.base import Distiller, register_distiller
from distillers.methods._common import LinearEmbed
from distillers.methods._memory import (ContrastMemory, nce_loss, pooled_dim, require_num_data,
                                        require_positive)

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

    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    batch_keys = ("index", "contrast_idx")
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 0.8}
    options = {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "mode": "exact"}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if self.mode not in MODES:
            raise ValueError(f"crd: mode must be one of {MODES}, got {self.mode!r}")
        require_positive("crd", feat_dim=self.feat_dim, nce_k=self.nce_k, nce_t=self.nce_t)
        if not 0 <= self.nce_m < 1:
            raise ValueError(f"crd: nce_m (memory momentum) must be in [0, 1), got {self.nce_m}")
        self.n_data = require_num_data(spec, "crd")
        self.embed_s = LinearEmbed(pooled_dim(spec.student, "student", "crd"), self.feat_dim)
        self.embed_t = LinearEmbed(pooled_dim(spec.teacher, "teacher", "crd"), self.feat_dim)
        self.contrast = ContrastMemory(self.feat_dim, self.n_data, self.nce_k, self.nce_t, self.nce_m)

    def forward(self, s, t, batch=None):
        o_s, o_t = self.contrast(self.embed_s(s["pooled"]), self.embed_t(t["pooled"]),
                                 batch["index"], batch["contrast_idx"])
        return {"crd_s": nce_loss(o_s, self.n_data), "crd_t": nce_loss(o_t, self.n_data)}
