"""Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer" (FT)."""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, InitStage, Option, register_distiller
from distillers.methods._common import pool_to_smaller
from distillers.reference import GoldenEntry, register_golden, PublishedRow, REPDISTILLER_WEIGHTS, register_row

RATE = 0.5  # factor channels = RATE * teacher channels (the reference's k)


def _conv_stack(widths, bn: bool, conv=nn.Conv2d) -> nn.Sequential:
    """3x3 convs (size-preserving) through ``widths``, each followed by [BN and] LeakyReLU(0.1)."""
    layers = []
    for c_in, c_out in zip(widths, widths[1:]):
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def _factor(f):
    """Normalised spatial attention: norm over positions of the channel mean of F^2."""
    return F.normalize(f.pow(2).mean(1).flatten(1))


@register_distiller("ft")
class FT(Distiller):
    """Factor transfer: an initialisation stage, then the translator loss.

    Init stage (``init_epochs``): the paraphraser (teacher side; 3x3 convs C_t -> C_t -> k ->
    k and transposed back, LeakyReLU, no BN) learns to reconstruct the teacher's last map,
    loss MSE. Its lr is 0.01 when the student is a CIFAR ResNet or WRN (the reference's
    init routine), else the main lr. ``finish_init_stage`` freezes it in eval mode.

    Main stage: the frozen paraphraser's encoder gives the teacher factor; the translator
    (student side; convs C_s -> C_s -> k -> k, each with BN and LeakyReLU) gives the
    student's. Loss = mean |f(translator(F_s)) - f(factor_t)| after pooling the larger map,
    f = normalised channel mean of F^2. Reference β = 200.

    A teacher factor may also be given precomputed as the teacher feature ``factor`` (the
    golden file does this): a distiller built from a ``factor`` shape has no paraphraser
    and no init stage. The paraphraser gets no gradient in the main stage.
    """

    display_name = "FT"  # its row in published tables
    student_taps = ("last_map",)
    teacher_taps = ("last_map",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 200.0}
    options = {"init_epochs": Option(30, "epochs of the initialisation stage (the paraphraser)", min=0,
                                     stage_epochs=True)}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_c = spec.student["last_map"][0]
        if "factor" in spec.teacher:
            k = spec.teacher["factor"][0]
            self.teacher_taps = ("factor",)
            self.paraphraser = None
        else:
            t_c = spec.teacher["last_map"][0]
            k = int(t_c * RATE)
            if k < 1:
                raise ValueError(f"FT needs at least 2 teacher channels for its factor, got {t_c}")
            self.paraphraser = nn.Sequential(OrderedDict(
                encoder=_conv_stack([t_c, t_c, k, k], bn=False),
                decoder=_conv_stack([k, k, t_c, t_c], bn=False, conv=nn.ConvTranspose2d)))
        self.translator = _conv_stack([s_c, s_c, k, k], bn=True)
        self._frozen = False

    def init_stage(self):
        if self.paraphraser is None:
            return None
        arch = str(self.spec.extra.get("student_arch", ""))
        return InitStage(epochs=self.init_epochs, parameters=list(self.paraphraser.parameters()),
                         trains_student=False, lr=0.01 if arch.startswith(("resnet", "wrn")) else None,
                         teacher_taps=("last_map",))

    def init_forward(self, s, t, batch=None):
        f_t = t["last_map"]
        return {"ft_init": F.mse_loss(self.paraphraser(f_t), f_t)}

    def finish_init_stage(self):
        self.paraphraser.requires_grad_(False)
        self.paraphraser.eval()
        self._frozen = True

    def train(self, mode: bool = True):
        """Keep the frozen paraphraser in eval mode when the trainer switches modes."""
        super().train(mode)
        if self._frozen:
            self.paraphraser.eval()
        return self

    def forward(self, s, t, batch=None):
        if "factor" in t:
            factor_t = t["factor"]
        else:
            with torch.no_grad():
                factor_t = self.paraphraser.encoder(t["last_map"])
        f_s, f_t = pool_to_smaller(self.translator(s["last_map"]), factor_t)
        return {"ft": (_factor(f_s) - _factor(f_t)).abs().mean()}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("ft", GoldenEntry("ft", {"feat_s": "s:last_map", "factor_t": "t:factor"},
                                  renames=(("encoder.", "translator."),),
                                  hparam_fixed={"p1": 2, "p2": 1, "k": 0.5, "translator_use_bn": True,
                                                "bn_mode": "train"},
                                  hparam_info=("layers",), diagnostics=("factor_s",)))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("FT", "ft", "ft", REPDISTILLER_WEIGHTS))
