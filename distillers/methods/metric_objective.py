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

A zero ratio builds nothing (the references computed every term and multiplied by 0). There is
no cross-entropy and no KD. The teacher run (``train_teacher.py``) uses the same class with
``triplet_ratio 1`` and no teacher terms.
"""
from typing import Dict

from torch import nn

from distillers.base import Distiller, build_distiller, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS, SAMPLERS, as_number

LOSSES = {"l2_triplet": ("triplet", {"p": 2}), "l1_triplet": ("triplet", {"p": 1}),
          "contrastive": ("contrastive", {})}
RATIOS = ("triplet_ratio", "dist_ratio", "angle_ratio", "dark_ratio", "at_ratio", "fitnet_ratio",
          "sp_ratio", "aomd_ratio")


@register_distiller("metric", task="metric")
class MetricObjective(Distiller):
    batch_keys = ("labels",)
    default_weights = METRIC_WEIGHTS
    options = {"triplet_ratio": 0.0, "dist_ratio": 0.0, "angle_ratio": 0.0, "dark_ratio": 0.0,
               "dark_alpha": 2.0, "dark_beta": 3.0, "at_ratio": 0.0, "fitnet_ratio": 0.0,
               "sp_ratio": 0.0, "sp_mode": "batch", "aomd_ratio": 0.0, "aomd_mode": 2,
               "aomd_global": 1.0, "aomd_local": 1.0, "loss": "l2_triplet",
               "triplet_sample": "distance", "margin": 0.2}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        for name in RATIOS:
            setattr(self, name, as_number("metric", name, getattr(self, name)))
        if self.loss not in LOSSES:
            raise ValueError(f"metric: unknown --loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.triplet_sample not in SAMPLERS:
            raise ValueError(f"metric: unknown triplet sampler {self.triplet_sample!r}; "
                             f"choose one of {', '.join(SAMPLERS)}")
        self.weights: Dict[str, float] = {}
        self.terms = nn.ModuleDict()
        if self.triplet_ratio:
            name, extra = LOSSES[self.loss]
            self._add("triplet", self.triplet_ratio, name, margin=self.margin,
                      triplet_sample=self.triplet_sample, **extra)
        if self.dist_ratio or self.angle_ratio:
            self._add("rkd", 1.0, "metric_rkd", distance_weight=self.dist_ratio, angle_weight=self.angle_ratio)
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

    def reaches_embedding(self) -> bool:
        """Whether some enabled term reads the embedding (the head gets a gradient)."""
        return any(tap in ("logits", "embedding") for tap in self.student_taps)

    def forward(self, s, t, batch=None):
        out = {}
        for key, module in self.terms.items():
            terms = module(s, t, batch)
            if key == "rkd":  # already weighted by dist_ratio / angle_ratio
                out.update({("dist" if k == "distance" else k): v for k, v in terms.items()})
            else:
                out[key] = self.weights[key] * Distiller.total(terms)
        return out
