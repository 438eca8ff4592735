"""AOMD, architecture-oriented mapping distillation (ahu-hpt/AOMD ``AOMD``/``MapMatrix``; methods.md §6.7).

Inputs: the student's and the teacher's stage outputs (taps ``stages``: ResNet layer1..4),
paired index-wise from the deepest. The student's maps first pass through per-stage **adapters**
(1x1 conv C_s -> C_t + ReLU, the definition commented in the reference's ``loss.py``; the model
file holding them is not published). They are this distiller's parameters: trained and
checkpointed. With ``aomd_adapter="auto"`` a stage whose channels already match gets none
(identity); ``"conv"`` always builds one.

Per stage l and sample: global descriptor g_l = spatial mean (C_l values), local descriptor
a_l = channel mean flattened (H_l W_l values). For consecutive stages (bottom x, top y):

* mode 2 (the committed code, default): m_i = y_i * mean_j x_j;
* mode 1 (the paper's full map): M[i, j] = y_i * x_j (memory: B x D_top x D_bottom).

term = MSE(map_s, map_t); loss = aomd_global * sum of the global terms + aomd_local * sum of
the local ones (a = b = 1 in the reference). Mode and weights are options, not code edits.
Student and teacher descriptor sizes must match: equal spatial sizes per stage.
"""
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._pairs import METRIC_WEIGHTS
from distillers.methods.at import last_stage_pairs
from distillers.reference import GoldenEntry, register_golden

ADAPTERS = ("auto", "conv")


def _map(bottom, top, mode: int):
    if mode == 2:
        return top * bottom.mean(dim=1, keepdim=True)
    return top.unsqueeze(2) * bottom.unsqueeze(1)


@register_distiller("aomd", task="metric")
class AOMD(Distiller):
    """MSE between student and teacher maps of consecutive stages' global and local descriptors."""

    student_taps = ("stages",)
    teacher_taps = ("stages",)
    default_weights = METRIC_WEIGHTS
    options = {
        "aomd_mode": Option(2, "map of two stages: 1 the paper's full map, 2 the committed reduction", choices=(1, 2)),
        "aomd_global": Option(1.0, "weight of the global (channel) descriptor terms", min=0),
        "aomd_local": Option(1.0, "weight of the local (spatial) descriptor terms", min=0),
        "aomd_adapter": Option("auto", "student adapters: auto (none where channels match) or conv (always)",
                               choices=ADAPTERS),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        pairs = last_stage_pairs(list(spec.student.get("stages", [])), list(spec.teacher.get("stages", [])))
        if len(pairs) < 2:
            raise ValueError("aomd maps consecutive stages: student and teacher need at least 2 stage taps")
        self.first = len(spec.student["stages"]) - len(pairs)
        self.adapters = nn.ModuleList()
        for i, s, t in pairs:
            if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
                raise ValueError(f"aomd: student stage {i} {tuple(s)} and its teacher stage {tuple(t)} must be "
                                 "(C, H, W) maps of the same H x W (local descriptors are compared as they are)")
            if s[0] == t[0] and self.aomd_adapter == "auto":
                self.adapters.append(nn.Identity())
            else:
                self.adapters.append(nn.Sequential(nn.Conv2d(s[0], t[0], kernel_size=1), nn.ReLU()))

    def adapt(self, student_stages):
        """The student's stage maps after the adapters (the reference's ``stu_layers_feats_adap``)."""
        return [a(f) for a, f in zip(self.adapters, student_stages[self.first:])]

    def maps(self, stages, kind: str):
        desc = [f.mean(dim=(2, 3)) if kind == "global" else f.mean(dim=1).flatten(1) for f in stages]
        return [_map(desc[i], desc[i + 1], self.aomd_mode) for i in range(len(desc) - 1)]

    def forward(self, s, t, batch=None):
        f_s = self.adapt(s["stages"])
        f_t = t["stages"][len(t["stages"]) - len(f_s):]
        terms = {}
        for kind, weight in (("global", self.aomd_global), ("local", self.aomd_local)):
            if weight:
                pairs = zip(self.maps(f_s, kind), self.maps(f_t, kind))
                terms[kind] = weight * sum((m_s - m_t).pow(2).mean() for m_s, m_t in pairs)
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
# feats_s are the student stages after AOMD's adapters (equal channels: the adapters are identities)
register_golden("aomd", GoldenEntry("aomd", {"feats_s": "s:stages", "feats_t": "t:stages"},
                                    options={"aomd_global": 1.0, "aomd_local": 1.0},
                                    hparam_options={"aomd_mode": "mode"},
                                    hparam_fixed={"start_weight_2": 1, "end_weight_2": 1},
                                    hparam_info=("aomd_ratio_examples", "layers"),
                                    variants={"mode1": {"options": {"aomd_mode": 1}}}, task="metric"))
