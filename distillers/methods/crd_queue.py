"""CRD with a FIFO teacher queue (giakoumoglou/distillers' default ``--memory_type fifo``).

Not the original CRD (see ``crd``): an InfoNCE over a queue of teacher embeddings.
"""
import torch
import torch.nn.functional as F

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import LinearEmbed
from distillers.methods._memory import TeacherQueue, pooled_dim
from distillers.reference import GoldenEntry, register_golden


@register_distiller("crd_queue")
class CRDQueue(Distiller):
    """Cross-entropy over [<s_i, t_i>, <s_i, Q_k> for all k] / nce_t with target 0.

    ``enqueue_first`` False (default, MoCo-faithful): score against the queue, then enqueue
    the batch's teacher embeddings. True: the reference order (enqueue, then score), so each
    positive also appears among the negatives. nce_k must be a multiple of the global batch.
    The queue starts as the reference's ``normalize(randn(K, D), dim=0)`` (unit columns).
    """

    display_name = "CRD-queue"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 0.8}
    options = {
        "feat_dim": Option(128, "width of the embeddings and queue rows", min=1),
        "nce_k": Option(16384, "queue length (negatives per sample)", min=1),
        "nce_t": Option(0.07, "softmax temperature", above=0),
        "enqueue_first": Option(False, "enqueue the batch before scoring (the reference's order)"),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.embed_s = LinearEmbed(pooled_dim(spec.student, "student", "crd_queue"), self.feat_dim)
        self.embed_t = LinearEmbed(pooled_dim(spec.teacher, "teacher", "crd_queue"), self.feat_dim)
        self.memory = TeacherQueue(self.nce_k, self.feat_dim)

    def forward(self, s, t, batch=None):
        v_s, v_t = self.embed_s(s["pooled"]), self.embed_t(t["pooled"])
        if self.enqueue_first:
            self.memory.push(v_t, "crd_queue")
        l_pos = (v_s * v_t).sum(1, keepdim=True)
        l_neg = v_s @ self.memory.snapshot().t()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.nce_t
        loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        if not self.enqueue_first:
            self.memory.push(v_t, "crd_queue")
        return {"crd_queue": loss}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("crd_fifo", GoldenEntry(
    "crd_queue", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
    options={"enqueue_first": True}, hparam_options={"feat_dim": "feat_dim", "nce_k": "nce_k", "nce_t": "nce_t"},
    hparam_fixed={"memory_type": "fifo"}, hparam_info=("s_dim", "t_dim"),
    renames=(("memory.embed_s.", "embed_s.linear."), ("memory.embed_t.", "embed_t.linear."))))
