"""The metric-learning objective: the seeds' ratio flags composed into one distiller.

``--distill metric`` (the default of ``train_student.py`` on a metric dataset) builds the
enabled losses from the ratio flags of lenscloth/RKD's and ahu-hpt/AOMD's distillation
scripts, each one of the registered classes, and returns their weighted terms:

==================  ==================================================  ============
flag                loss (registered class)                              term
==================  ==================================================  ============
``--triplet_ratio``  ``--loss`` l2_triplet / l1_triplet (``triplet``)    ``triplet``
                     or contrastive (``contrastive``), sampler
                     ``--triplet_sample``, ``--margin``
``--dist_ratio``     RKD distance on embeddings (``metric_rkd``)         ``dist``
``--angle_ratio``    RKD angle on embeddings (``metric_rkd``)            ``angle``
``--dark_ratio``     Hard DarkRank (``darkrank``), ``--dark_alpha/beta``  ``dark``
``--at_ratio``       attention transfer b2..b4 (``metric_at``)           ``at``
``--fitnet_ratio``   FitNet b2..b4 + embedding (``metric_fitnet``)       ``fitnet``
``--sp_ratio``       similarity preserving (``metric_sp``, ``--sp_mode``)  ``sp``
``--aomd_ratio``     AOMD (``aomd``, ``--aomd_mode``, ``--aomd_global``,  ``aomd``
                     ``--aomd_local``)
==================  ==================================================  ============

A zero ratio builds nothing (the references computed every term and multiplied by 0). The
enabled losses are the method's :meth:`~distillers.base.Distiller.parts`: the objective weighs
each as a term of its own, ``ratio * loss`` (``--distill metric`` shows them as
``1 * triplet=triplet(...) + 2 * angle=metric_rkd(...)``). There is no cross-entropy and no KD. The teacher run (``train_teacher.py``) uses the same class with
``triplet_ratio 1`` and no teacher terms.
"""
from typing import Dict

from torch import nn

from distillers.base import Distiller, Option, build_distiller, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS, SAMPLERS

LOSSES = {"l2_triplet": ("triplet", {"p": 2}), "l1_triplet": ("triplet", {"p": 1}),
          "contrastive": ("contrastive", {})}
RATIOS = ("triplet_ratio", "dist_ratio", "angle_ratio", "dark_ratio", "at_ratio", "fitnet_ratio",
          "sp_ratio", "aomd_ratio")


@register_distiller("metric", task="metric", default_for="metric")
class MetricObjective(Distiller):
    """The metric-learning seeds' losses, each weighted by its ratio flag (module docstring)."""

    default_weights = METRIC_WEIGHTS
    options = {
        "triplet_ratio": Option(0.0, "weight of the triplet (or contrastive) loss", min=0),
        "dist_ratio": Option(0.0, "weight of RKD's distance term on embeddings", min=0),
        "angle_ratio": Option(0.0, "weight of RKD's angle term on embeddings", min=0),
        "dark_ratio": Option(0.0, "weight of Hard DarkRank", min=0),
        "dark_alpha": Option(2.0, "DarkRank's alpha", min=0),
        "dark_beta": Option(3.0, "DarkRank's beta", min=0),
        "at_ratio": Option(0.0, "weight of attention transfer on b2..b4", min=0),
        "fitnet_ratio": Option(0.0, "weight of FitNet on b2..b4 and the embedding", min=0),
        "sp_ratio": Option(0.0, "weight of similarity preserving", min=0),
        "sp_mode": Option("batch", "similarity preserving per batch or per sample (the AOMD repo's)",
                          choices=("batch", "per_sample")),
        "aomd_ratio": Option(0.0, "weight of AOMD", min=0),
        "aomd_mode": Option(2, "AOMD's mode: 1 full map, 2 committed reduction", choices=(1, 2)),
        "aomd_global": Option(1.0, "AOMD's global weight", min=0),
        "aomd_local": Option(1.0, "AOMD's local weight", min=0),
        "loss": Option("l2_triplet", "the triplet loss's form", choices=tuple(LOSSES)),
        "triplet_sample": Option("distance", "triplet sampler", choices=SAMPLERS, flags=("--sample",)),
        "margin": Option(0.2, "triplet/contrastive margin", min=0, flags=("--triplet_margin",)),
    }
    #: What a teacher run (train_teacher.py on a metric dataset) trains with: the seeds' run.py,
    #: a triplet loss with the 'all' sampler; ``teacher_flags`` are its command-line options.
    teacher_options = {"triplet_ratio": 1.0, "triplet_sample": "all"}
    teacher_flags = ("loss", "triplet_sample", "margin")

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        self.weights: Dict[str, float] = {}
        self.terms = nn.ModuleDict()
        if self.triplet_ratio:
            name, extra = LOSSES[self.loss]
            self._add("triplet", self.triplet_ratio, name, margin=self.margin,
                      triplet_sample=self.triplet_sample, **extra)
        if self.dist_ratio:  # RKD's two terms as two parts, each weighted by its own ratio
            self._add("dist", self.dist_ratio, "metric_rkd", distance_weight=1.0, angle_weight=0.0)
        if self.angle_ratio:
            self._add("angle", self.angle_ratio, "metric_rkd", distance_weight=0.0, angle_weight=1.0)
        if self.dark_ratio:
            self._add("dark", self.dark_ratio, "darkrank", dark_alpha=self.dark_alpha, dark_beta=self.dark_beta)
        if self.at_ratio:
            self._add("at", self.at_ratio, "metric_at")
        if self.fitnet_ratio:
            self._add("fitnet", self.fitnet_ratio, "metric_fitnet")
        if self.sp_ratio:
            self._add("sp", self.sp_ratio, "metric_sp", sp_mode=self.sp_mode)
        if self.aomd_ratio:
            self._add("aomd", self.aomd_ratio, "aomd", aomd_mode=self.aomd_mode, aomd_global=self.aomd_global,
                      aomd_local=self.aomd_local)
        if not self.terms:
            raise ValueError("metric: every loss ratio is 0, nothing to train; set at least one of "
                             + ", ".join("--" + r for r in RATIOS))
        self.student_taps = tuple(dict.fromkeys(n for m in self.terms.values() for n in m.student_taps))
        self.teacher_taps = tuple(dict.fromkeys(n for m in self.terms.values() for n in m.teacher_taps))

    def _add(self, key: str, weight: float, name: str, **options) -> None:
        self.terms[key] = build_distiller(name, self.spec, **options)
        self.weights[key] = weight

    def parts(self):
        """Each enabled loss with its ratio: the objective weighs them as terms of their own."""
        return [(key, self.weights[key], module) for key, module in self.terms.items()]

    def forward(self, s, t, batch=None):
        """The ratio-weighted terms, for a caller that uses this method on its own (the trainer's
        objective calls the parts instead)."""
        return {key: weight * Distiller.total(module(s, t, batch)) for key, weight, module in self.parts()}
