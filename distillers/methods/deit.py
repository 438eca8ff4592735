"""Touvron et al., "Training data-efficient image transformers & distillation through attention"
(DeiT, ICML 2021): the distillation token, as in facebookresearch/deit ``losses.py`` DistillationLoss."""
import torch.nn.functional as F

from distillers.base import PREDICTION, Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, register_golden

#: The student's two heads, tapped by module path: the class token's and the distillation token's.
CLS_HEAD, DIST_HEAD = "head:output", "head_dist:output"


def has_distillation_head(arch: str) -> bool:
    """Whether ``timm:<name>`` declares two classifiers, ``head`` and ``head_dist`` (timm's
    ``deit_*_distilled_*`` models)."""
    if not arch.startswith("timm:"):
        return False
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(arch.split(":", 1)[1])
    return cfg is not None and "head_dist" in tuple(cfg.classifier or ())


def soft_distillation(logit_dist, logit_t, T: float):
    """T^2 KL(softmax(z_t / T) || softmax(z_dist / T)) summed, divided by batch x classes: DeiT's
    normalisation (a C-times smaller scale than KD's batch mean)."""
    kl = F.kl_div(F.log_softmax(logit_dist / T, dim=1), F.log_softmax(logit_t / T, dim=1),
                  reduction="sum", log_target=True)
    return kl * (T * T) / logit_dist.numel()


@register_distiller("deit")
class DeiT(Distiller):
    """DeiT's distillation token: the distillation head learns from the teacher, the class head from
    the labels.

    The student is a timm ``deit_*_distilled_*`` model; its heads ``head`` (class token) and ``head_dist``
    (distillation token) are tapped by module path. Term ``deit`` = soft: T^2 KL(teacher || head_dist)
    at ``distillation_tau`` over batch x classes (the reference's ``/ numel``); hard: CE of
    head_dist on the teacher's argmax. The class head is the step's prediction (``logits``), so the
    trainer's CE (gamma) applies to it: DeiT's (1 - alpha) CE + alpha distillation with alpha 0.5 is
    ``-r 0.5 -b 0.5``. At test time the model's own forward averages the two heads (timm's
    ``distilled_training`` flag off, its default); this method never sets that flag and refuses a
    student whose forward returns both heads.
    """

    display_name = "DeiT"  # its row in published tables
    student_taps = (CLS_HEAD, DIST_HEAD)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 0.5, "alpha": 0.0, "beta": 0.5}
    options = {
        "distillation_type": Option("hard", "soft (KL at distillation_tau) or hard (CE on the teacher's argmax), "
                                            "the paper's distilled models: hard", choices=("soft", "hard")),
        "distillation_tau": Option(1.0, "soft distillation temperature (reference default)", above=0),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        heads = [spec.student.get(tap) for tap in self.student_taps]
        arch = spec.extra.get("student_arch", "")
        if None in heads and not has_distillation_head(arch):
            raise ValueError(f"deit needs a student with a distillation head (module 'head_dist'), a timm "
                             f"deit_*_distilled_* model such as timm:deit_tiny_distilled_patch16_224; got student "
                             f"'{arch or 'unknown'}'")
        if None not in heads and tuple(heads[0]) != tuple(heads[1]):
            raise ValueError(f"deit: the class head gives {tuple(heads[0])} and the distillation head "
                             f"{tuple(heads[1])}; both must predict the same classes")

    def forward(self, s, t, batch=None):
        if isinstance(s.get("logits"), (tuple, list)):
            raise ValueError("deit: the student returns both heads (timm's distilled_training flag is on); this "
                             "method taps them itself and needs the flag off: model.set_distilled_training(False)")
        logit_cls, logit_dist, logit_t = s[CLS_HEAD], s[DIST_HEAD], t["logits"].detach()
        if self.distillation_type == "soft":
            term = soft_distillation(logit_dist, logit_t, self.distillation_tau)
        else:
            term = F.cross_entropy(logit_dist, logit_t.argmax(dim=1))
        return {"deit": term, PREDICTION: logit_cls}


# The reference numbers this method reproduces (python -m distillers.golden; tests/golden/, made by
# tests/golden/make_ofa_deit_goldens.py). No trainer task runs them yet: timm ViT students need the
# trainer's timm ViT taps; tests/test_methods_ofa_deit.py trains a DeiT student with FeatureTaps directly.
_DEIT_INPUTS = {"logit_cls": "s:" + CLS_HEAD, "logit_dist": "s:" + DIST_HEAD, "logit_t": "t:logits"}
# Every file: alpha 1, the distillation term alone, which is this method's term (the (1 - alpha) CE is the trainer's
# gamma); extra.with_ce = the reference's alpha 0.5 with its CE, the trainer's composition (CE 0.5 + this 0.5),
# which tests/test_methods_ofa_deit.py compares through the trainer's objective, not the method alone.
register_golden("deit_soft", GoldenEntry("deit", _DEIT_INPUTS, options={"distillation_type": "soft"},
                                         hparam_options={"distillation_tau": "tau"},
                                         hparam_fixed={"distillation_type": "soft", "alpha": 1.0},
                                         outputs={"logits": "logit_cls"}, diagnostics=("with_ce",), task="timm"))
register_golden("deit_hard", GoldenEntry("deit", _DEIT_INPUTS, options={"distillation_type": "hard"},
                                         hparam_fixed={"distillation_type": "hard", "alpha": 1.0},
                                         hparam_info=("tau",),  # the hard mode reads no temperature
                                         outputs={"logits": "logit_cls"}, diagnostics=("with_ce",), task="timm"))
