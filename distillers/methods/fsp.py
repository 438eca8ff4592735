"""Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
and Transfer Learning" (FSP)."""
from distillers.base import Distiller, InitStage, Option, register_distiller
from distillers.methods._common import pool_to_smaller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row

INIT_TAPS = ("stem", "stages")


def _fsp_matrices(maps):
    """G[c_top, c_bot] = mean over positions of top * bottom, for each consecutive pair."""
    out = []
    for bot, top in zip(maps, maps[1:]):
        bot, top = pool_to_smaller(bot, top)
        out.append(top.flatten(2) @ bot.flatten(2).transpose(1, 2) / bot[0, 0].numel())
    return out


@register_distiller("fsp")
class FSP(Distiller):
    """FSP-matrix matching over stem + stage outputs, as an initialisation stage.

    In the reference FSP exists only as the init-stage loss: for ``init_epochs`` the
    student backbone (no parts of its own) minimises it at the main learning rate, then
    the main stage trains with CE (+KD) alone. So ``forward`` returns no term and taps
    nothing; β (50 in the reference script, kept as the default) has no effect.
    Student and teacher need equal channels at every level (the matrices are C_top x C_bot).
    """

    display_name = "FSP"  # its row in published tables
    student_taps = ()
    teacher_taps = ()
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 50.0}
    options = {"init_epochs": Option(30, "epochs of the initialisation stage (the student alone)", min=0,
                                     stage_epochs=True)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_ch = [spec.student["stem"][0]] + [shape[0] for shape in spec.student["stages"]]
        t_ch = [spec.teacher["stem"][0]] + [shape[0] for shape in spec.teacher["stages"]]
        if len(s_ch) != len(t_ch):
            raise ValueError(f"FSP pairs levels one to one: the student has {len(s_ch) - 1} stages, "
                             f"the teacher {len(t_ch) - 1}")
        for level, (cs, ct) in enumerate(zip(s_ch, t_ch)):
            if cs != ct:
                name = f"stage{level}" if level else "stem"
                raise ValueError(f"FSP needs equal student and teacher channels at every level; "
                                 f"{name} has {cs} (student) vs {ct} (teacher) channels")

    def init_stage(self):
        return InitStage(epochs=self.init_epochs, parameters=[], trains_student=True, lr=None,
                         student_taps=INIT_TAPS, teacher_taps=INIT_TAPS)

    def init_forward(self, s, t, batch=None):
        g_s = _fsp_matrices([s["stem"], *s["stages"]])
        g_t = _fsp_matrices([t["stem"], *t["stages"]])
        return {f"fsp{i}": (a - b).pow(2).mean() for i, (a, b) in enumerate(zip(g_s, g_t), 1)}

    def forward(self, s, t, batch=None):
        return {}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("fsp", GoldenEntry("fsp", {"g_s": "s:stem+stages", "g_t": "t:stem+stages"}, call="init_forward",
                                   hparam_info=("layers",), diagnostics=("loss_terms",)))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("FSP", "fsp", "fsp", REPDISTILLER_WEIGHTS))
