"""Giakoumoglou & Stathaki, "Relational Representation Distillation" (RRD)."""
import torch.nn.functional as F

from core.requests import ContrastSampling
from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import LinearEmbed
from distillers.methods._memory import ContrastMemory, TeacherQueue, pooled_dim, require_num_data
from distillers.reference import GoldenEntry, register_golden, KD_T4, PublishedRow, register_row

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

    display_name = "RRD"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "feat_dim": Option(128, "width of the embeddings and memory rows", min=1),
        "nce_k": Option(16384, "memory size: queue length, or negatives per sample (momentum)", min=1),
        "nce_t_s": Option(0.04, "temperature of the student's distribution", above=0),
        "nce_t_t": Option(0.10, "temperature of the teacher's distribution", above=0),
        "enqueue_first": Option(False, "enqueue the batch before scoring (the reference's order; queue)"),
        "memory_type": Option("queue", "FIFO teacher queue, or CRD's momentum banks", choices=MEMORY_TYPES),
        "queue_row_norm": Option(True, "start the queue with unit rows (false: the reference's unit columns)"),
        "nce_t": Option(0.07, "temperature of CRD's scores (momentum)", above=0),
        "nce_m": Option(0.5, "momentum of the memory update (momentum)", min=0, below=1),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.embed_s = LinearEmbed(pooled_dim(spec.student, "student", "rrd"), self.feat_dim)
        self.embed_t = LinearEmbed(pooled_dim(spec.teacher, "teacher", "rrd"), self.feat_dim)
        if self.memory_type == "momentum":
            self.contrast = ContrastMemory(self.feat_dim, require_num_data(spec, "rrd (momentum memory)"),
                                           self.nce_k, self.nce_t, self.nce_m)
        else:
            self.memory = TeacherQueue(self.nce_k, self.feat_dim, row_norm=self.queue_row_norm)

    def data_requests(self):
        if self.memory_type == "momentum":  # CRD's banks: contrast indices drawn as CRD's exact mode
            return (ContrastSampling(int(self.nce_k)),)
        return ()

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


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("rrd", GoldenEntry(
    "rrd", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
    options={"enqueue_first": True, "queue_row_norm": False, "memory_type": "queue"},
    hparam_options={"feat_dim": "feat_dim", "nce_k": "nce_k", "nce_t_s": "nce_t_s", "nce_t_t": "nce_t_t"},
    hparam_fixed={"memory_type": "fifo"},  # the reference's name of our "queue"
    hparam_info=("nce_k_reference_default", "s_dim", "t_dim"),
    renames=(("memory.embed_s.", "embed_s.linear."), ("memory.embed_t.", "embed_t.linear."))))
register_golden("rrd_momentum", GoldenEntry(
    "rrd", {"feat_s": "s:pooled", "feat_t": "t:pooled", "idx": "batch:index",
            "contrast_idx": "batch:contrast_idx"},
    options={"memory_type": "momentum"}, hparam_fixed={"memory_type": "momentum"},  # the entry's memory
    hparam_options={"feat_dim": "feat_dim", "nce_k": "nce_k", "nce_t": "nce_t", "nce_m": "nce_m",
                    "nce_t_s": "nce_t_s", "nce_t_t": "nce_t_t"},
    spec_from_hparams={"num_data": "n_data"}, hparam_info=("s_dim", "t_dim"),
    renames=(("memory.embed_s.", "embed_s.linear."), ("memory.embed_t.", "embed_t.linear."),
             ("memory.contrast.", "contrast."))))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("RRD", "rrd", "rrd",
    "giakoumoglou/distillers cifar/ scripts, paper settings (the registry's defaults)"))
register_row(PublishedRow("RRD+KD", "rrd_kd", "rrd", "giakoumoglou/distillers cifar/ scripts, paper settings, -a 1",
    weights={"alpha": 1.0}, options=KD_T4))
