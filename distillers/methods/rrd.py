"""Giakoumoglou & Stathaki, "Relational Representation Distillation" (RRD)."""
import torch.nn.functional as F

from distillers.base import Distiller, register_distiller
from distillers.methods._common import LinearEmbed
from distillers.methods._memory import (ContrastMemory, TeacherQueue, pooled_dim, require_num_data,
                                        require_positive)

MEMORY_TYPES = ("queue", "momentum")


@register_distiller("rrd")
class RRD(Distiller):
    """Soft cross-entropy between teacher and student similarity distributions over a memory.

    L = -(1/B) sum_i sum_k softmax(<t_i, Q_k> / nce_t_t)_k log_softmax(<s_i, Q_k> / nce_t_s)_k,
    the teacher distribution detached, so ``embed_t`` gets no gradient (as in the reference).

    ``memory_type`` "queue": a FIFO queue of teacher embeddings; defaults are the paper's
    (nce_t_s 0.04, nce_t_t 0.10, score then enqueue, unit-row queue init); the reference HEAD
    uses 0.1 / 0.02, enqueue first and unit-column init (``queue_row_norm`` False).
    "momentum": CRD's :class:`ContrastMemory`, whose scores are already exp(./nce_t)/Z before the
    two temperatures apply (the reference's double exponential, kept for parity only); it needs
    ``index``/``contrast_idx`` and ``num_data``.
    """

    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {"feat_dim": 128, "nce_k": 16384, "nce_t_s": 0.04, "nce_t_t": 0.10,
               "enqueue_first": False, "memory_type": "queue", "queue_row_norm": True,
               "nce_t": 0.07, "nce_m": 0.5}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if self.memory_type not in MEMORY_TYPES:
            raise ValueError(f"rrd: memory_type must be one of {MEMORY_TYPES}, got {self.memory_type!r}")
        require_positive("rrd", feat_dim=self.feat_dim, nce_k=self.nce_k, nce_t_s=self.nce_t_s,
                         nce_t_t=self.nce_t_t, nce_t=self.nce_t)
        self.embed_s = LinearEmbed(pooled_dim(spec.student, "student", "rrd"), self.feat_dim)
        self.embed_t = LinearEmbed(pooled_dim(spec.teacher, "teacher", "rrd"), self.feat_dim)
        if self.memory_type == "momentum":
            if not 0 <= self.nce_m < 1:
                raise ValueError(f"rrd: nce_m (memory momentum) must be in [0, 1), got {self.nce_m}")
            self.batch_keys = ("index", "contrast_idx")
            self.contrast = ContrastMemory(self.feat_dim, require_num_data(spec, "rrd (momentum memory)"),
                                           self.nce_k, self.nce_t, self.nce_m)
        else:
            self.memory = TeacherQueue(self.nce_k, self.feat_dim, row_norm=self.queue_row_norm)

    def forward(self, s, t, batch=None):
        v_s, v_t = self.embed_s(s["pooled"]), self.embed_t(t["pooled"])
        if self.memory_type == "momentum":
            o_s, o_t = self.contrast(v_s, v_t, batch["index"], batch["contrast_idx"])
        else:
            if self.enqueue_first:
                self.memory.push(v_t, "rrd")
            queue = self.memory.snapshot().t()
            o_s, o_t = v_s @ queue, v_t @ queue
            if not self.enqueue_first:
                self.memory.push(v_t, "rrd")
        p_t = F.softmax(o_t.detach() / self.nce_t_t, dim=1)
        log_p_s = F.log_softmax(o_s / self.nce_t_s, dim=1)
        return {"rrd": -(p_t * log_p_s).sum(1).mean()}
