"""Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons" (AB)."""
from torch import nn

from distillers.base import Distiller, InitStage, Option, register_distiller
from distillers.methods._adapters import ADAPTER_OPTION
from distillers.methods.at import last_stage_pairs
from distillers.methods.fitnet import ConvReg
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row

INIT_TAPS = ("stages_preact",)


def _connector(stage: int, s_shape, t_shape, adapter: str = "reference") -> nn.Module:
    """The reference's Connector: FitNet's regressor conv and BN without ReLU, or the identity
    when channels and size already match."""
    if tuple(s_shape) == tuple(t_shape):
        return nn.Identity()
    try:
        return ConvReg(s_shape, t_shape, use_relu=False, adapter=adapter)
    except ValueError as exc:
        raise ValueError(f"AB cannot connect stage {stage}: {exc}") from None


@register_distiller("ab")
class AB(Distiller):
    """Activation-boundary loss on pre-activation stage outputs, as an initialisation stage.

    In the reference AB exists only as the init-stage loss: for ``init_epochs`` the
    connectors and the student backbone minimise it (at the main learning rate), then
    the main stage trains with CE (+KD) alone. So ``forward`` returns no term and taps
    nothing; β (1 in the reference script, kept as the default) has no effect.
    ``finish_init_stage`` freezes the connectors, which get no gradient afterwards.

    Per stage, with x = connector(student), t = teacher and margin m:
    sum (x+m)^2 [x > -m, t <= 0] + (x-m)^2 [x <= m, t > 0], weighted 2^(i-n+1), / B / 1000 * 3.
    Stages pair one to one; ``adapter auto`` pairs the last min(n_s, n_t)
    (:func:`distillers.methods.at.last_stage_pairs`) and connects sizes the reference's connector
    cannot (cross-architecture pairs).
    """

    display_name = "AB"  # its row in published tables
    student_taps = ()
    teacher_taps = ()
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "init_epochs": Option(30, "epochs of the initialisation stage (connectors and student)", min=0,
                              stage_epochs=True),
        "margin": Option(1.0, "margin m of the activation-boundary loss", above=0),
        "adapter": ADAPTER_OPTION,
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_shapes, t_shapes = list(spec.student["stages_preact"]), list(spec.teacher["stages_preact"])
        if len(s_shapes) != len(t_shapes) and self.adapter != "auto":
            raise ValueError(f"AB pairs stages one to one: the student has {len(s_shapes)} stages, "
                             f"the teacher {len(t_shapes)} (--adapter auto pairs the deepest "
                             f"{min(len(s_shapes), len(t_shapes))})")
        pairs = last_stage_pairs(s_shapes, t_shapes)
        self.connectors = nn.ModuleList(_connector(i, s, t, self.adapter) for i, s, t in pairs)
        n = len(pairs)
        self.stage_weights = [2.0 ** (i - n + 1) for i in range(n)]

    def init_stage(self):
        return InitStage(epochs=self.init_epochs, parameters=list(self.connectors.parameters()),
                         trains_student=True, lr=None, student_taps=INIT_TAPS, teacher_taps=INIT_TAPS)

    def init_forward(self, s, t, batch=None):
        m = self.margin
        terms = {}
        pairs = last_stage_pairs(s["stages_preact"], t["stages_preact"])
        for (i, f_s, f_t), connector, w in zip(pairs, self.connectors, self.stage_weights):
            x = connector(f_s)
            loss = ((x + m).pow(2) * ((x > -m) & (f_t <= 0))
                    + (x - m).pow(2) * ((x <= m) & (f_t > 0))).sum()
            terms[f"ab{i}"] = loss * w / x.shape[0] / 1000 * 3
        return terms

    def finish_init_stage(self):
        self.connectors.requires_grad_(False)

    def forward(self, s, t, batch=None):
        return {}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("ab", GoldenEntry("ab", {"g_s": "s:stages_preact", "g_t": "t:stages_preact"},
                                  hparam_options={"margin": "margin"}, call="init_forward",
                                  hparam_fixed={"layer_weights": [0.25, 0.5, 1], "scale": "each term /batch /1000 *3",
                                                "bn_mode": "train"},
                                  hparam_info=("feat_num", "layers"), diagnostics=("loss_terms",)))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("AB", "ab", "ab", REPDISTILLER_WEIGHTS))
