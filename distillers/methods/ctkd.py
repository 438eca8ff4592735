"""Li et al., "Curriculum Temperature for Knowledge Distillation" (CTKD, AAAI 2023), as in zhengli97/CTKD.

The KD temperature is a trained parameter that plays against the student: it is read through a
gradient-reversal layer, so the optimiser step that lowers the student's KD loss raises the loss
w.r.t. the temperature, and the reversal strength grows along an easy-to-hard curriculum.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._logits import LOGIT_STD, check_same_classes, logit_pair
from distillers.methods.dkd import BETA_PER_PAIR, DEFAULT_BETA, DKD, _kl
from distillers.methods.kd import kd_loss
from distillers.reference import GoldenEntry, register_golden, LOGITS, PublishedRow, register_row
from distillers.methods.dkd import dkd_options


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``lambda_`` (the reference's
    ``GradientReversalFunction``: it multiplies by lambda, and its schedule makes lambda <= 0)."""

    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.lambda_, None


def reversal_lambda(epoch, decay_max=0.0, decay_min=-1.0, decay_loops=10.0, cosine_decay=1):
    """The reference's per-epoch gradient factor (``train_student.py`` CosineDecay / LinearDecay).

    cosine: i = clamp(epoch, 0, decay_loops), (cos(pi i / decay_loops) + 1) / 2 * (max - min) + min,
    from decay_max (0) at epoch 0 to decay_min (-1) at epoch decay_loops, then constant.
    linear (``cosine_decay 0``, as the reference codes it): -i (max - min) / decay_loops with
    i = clamp(epoch, 0, decay_loops - 1).
    """
    if cosine_decay:
        i = min(max(epoch, 0), decay_loops)
        return (math.cos(i * math.pi / decay_loops) + 1.0) * 0.5 * (decay_max - decay_min) + decay_min
    i = min(max(epoch, 0), decay_loops - 1)
    return -i * (decay_max - decay_min) / decay_loops


def instance_kd_loss(logit_s, logit_t, T):
    """KD with one temperature per sample (``T`` [B, 1]), the reference README's ``KL_Loss``:
    mean_i T_i^2 sum_c q_ic (log q_ic - log_softmax(z_s,i / T_i)_c), q = softmax(z_t / T) + 1e-7."""
    q = F.softmax(logit_t / T, dim=1) + 1e-7
    per_sample = (q * (q.log() - F.log_softmax(logit_s / T, dim=1))).sum(1, keepdim=True)
    return (per_sample * T * T).mean()


def dkd_at(logit_s, logit_t, labels, T, dkd_alpha, dkd_beta):
    """DKD's (tckd, nckd) at a tensor temperature, from dkd.py's pieces (CTKD's DKD has no warm-up)."""
    target = F.one_hot(labels.reshape(-1).long(), logit_s.shape[1]).to(torch.bool)
    log_s, log_t = F.log_softmax(logit_s / T, dim=1), F.log_softmax(logit_t / T, dim=1)
    tckd = _kl(DKD._binary(log_s, target), DKD._binary(log_t, target), T)
    mask = 1000.0 * target.to(logit_s.dtype)
    nckd = _kl(F.log_softmax(logit_s / T - mask, dim=1), F.log_softmax(logit_t / T - mask, dim=1), T)
    return dkd_alpha * tckd, dkd_beta * nckd


@register_distiller("ctkd")
class CTKD(Distiller):
    """KD at a learned, adversarial temperature T = t_start + t_end * sigmoid(theta).

    T stays in (t_start, t_start + t_end) = (1, 21).

    ``mlp_name global`` (default): theta is one scalar parameter ``global_T`` (initialised to 1, as
    the reference's ``Global_T``). ``mlp_name instance``: theta = MLP([z_t, z_s]) per sample
    (Linear(2C, 256), ReLU, Linear(256, 1), on detached logits) with the README's per-sample KL;
    the reference distributes that module only as a download, so this MLP is this project's own
    construction (not golden-checked), and it works with ``ctkd_base kd`` only.

    The gradient reaching theta is multiplied by lambda = :func:`reversal_lambda` at the integer
    epoch floor(``batch["epoch"]``) (1-based; the reference sets it once per epoch), defaults
    ``decay_max 0 decay_min -1 decay_loops 10 cosine_decay 1`` (its CIFAR script): 0 at epoch 0,
    -1 from epoch 10 on, i.e. the paper's reversal -lambda with lambda rising 0 -> 1. Without an
    epoch the end of the curriculum is used. theta is the distiller's own parameter: the trainer's
    SGD (momentum, weight decay) updates, checkpoints and resumes it, as the reference's optimiser does.

    ``ctkd_base kd`` returns ``ctkd`` = KD(T) (reference: -r 0.1 -a 0.9 -b 0 with the learned T in
    its KD term; here gamma 0.1, beta 0.9, alpha 0 since the trainer's own KD term has a fixed T).
    ``ctkd_base dkd`` returns DKD's ``tckd``/``nckd`` at T with ``dkd_alpha`` 1, ``dkd_beta`` (None:
    mdistiller's per-pair value, 8 otherwise; the CTKD script uses 2 for resnet56/resnet20) and no
    warm-up; set ``-r 1 -b 1`` as the reference's DKD+CTKD command does.

    ``logit_std`` (off by default) z-scores both logits per sample before the loss divides them by
    the learned T (:mod:`distillers.methods._logits`), as the logit-standardisation reference's
    CTKD (sunshangquan/logit-standardization-KD@f6e5aa5 ``CTKD/distiller_zoo/KD.py``
    ``DistillKL_logit_stand``); T is learned as above, from the raw logits for the instance MLP. Its
    CIFAR-100 script (``CTKD/scripts/run_cifar_distill.sh``) is ``-r 0.1 -a 9 -b 0`` on the
    learned-T KD term, i.e. ``--logit_std true -r 0.1 -b 9`` here; its ``--kd_T 2`` is not read with a
    learned temperature. With ``ctkd_base dkd`` the standardised logits go to DKD (all of it, masks
    included, as the same fork's DKD+LS): our composition, since the fork standardises only its KD term.
    """

    display_name = "KD+CTKD"  # its row in published tables
    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 0.1, "alpha": 0.0, "beta": 0.9}
    options = {
        "ctkd_base": Option("kd", "the loss read at the learned temperature", choices=("kd", "dkd"),
                            names_row=True),  # KD+CTKD or DKD+CTKD
        "mlp_name": Option("global", "one learned temperature (global) or one per sample (instance)",
                           choices=("global", "instance")),
        "t_start": Option(1.0, "lowest temperature", above=0),
        "t_end": Option(20.0, "range of the temperature above t_start", min=0),
        "cosine_decay": Option(1, "curriculum of the reversal factor: 1 cosine, 0 linear", choices=(0, 1)),
        "decay_max": Option(0.0, "gradient factor lambda at epoch 0"),
        "decay_min": Option(-1.0, "gradient factor lambda at the end of the curriculum"),
        "decay_loops": Option(10.0, "epochs of the curriculum", above=0),
        "dkd_alpha": Option(1.0, "DKD's target-class weight (ctkd_base dkd)", min=0),
        "dkd_beta": Option(None, "DKD's non-target weight (ctkd_base dkd; unset: mdistiller's per-pair value, "
                                 "else 8)", type=float, min=0),
        "logit_std": LOGIT_STD,
    }

    @classmethod
    def row_name(cls, options):
        """KD+CTKD; DKD+CTKD with ``ctkd_base dkd``; KD+CTKD with logit standardisation is results.md's CTKD+LS."""
        if options.get("ctkd_base") == "dkd":
            return "DKD+CTKD"
        return "CTKD+LS" if options.get("logit_std") is True else "KD+CTKD"

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        if self.mlp_name == "instance" and self.ctkd_base != "kd":
            raise ValueError("ctkd: the instance-wise temperature works with ctkd_base kd only")
        check_same_classes("ctkd", spec)
        if self.dkd_beta is None:
            pair = (spec.extra.get("teacher_arch"), spec.extra.get("student_arch"))
            self.dkd_beta = BETA_PER_PAIR.get(pair, DEFAULT_BETA)
        if self.mlp_name == "global":
            self.global_T = nn.Parameter(torch.ones(1))
        else:
            self.mlp = nn.Sequential(nn.Linear(2 * spec.student["logits"][0], 256), nn.ReLU(inplace=True), nn.Linear(256, 1))

    def grl_lambda(self, batch) -> float:
        epoch = (batch or {}).get("epoch")
        epoch = self.decay_loops if epoch is None else math.floor(float(epoch))
        return reversal_lambda(epoch, self.decay_max, self.decay_min, self.decay_loops, self.cosine_decay)

    def temperature(self, logit_s, logit_t, lambda_):
        """T ([1], or [B, 1] instance-wise); its gradient to the parameters is scaled by ``lambda_``."""
        if self.mlp_name == "global":
            theta = self.global_T
        else:
            theta = self.mlp(torch.cat([logit_t, logit_s], dim=1).detach())
        return self.t_start + self.t_end * torch.sigmoid(_ScaleGradient.apply(theta, lambda_))

    def forward(self, s, t, batch=None):
        T = self.temperature(s["logits"], t["logits"], self.grl_lambda(batch))
        z_s, z_t = logit_pair(s["logits"], t["logits"], self.logit_std)
        if self.ctkd_base == "dkd":
            tckd, nckd = dkd_at(z_s, z_t, batch["labels"], T, self.dkd_alpha, self.dkd_beta)
            return {"tckd": tckd, "nckd": nckd}
        if self.mlp_name == "instance":
            return {"ctkd": instance_kd_loss(z_s, z_t, T)}
        return {"ctkd": kd_loss(z_s, z_t, T)}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
# CTKD, MLKD, DOT (tests/golden/, made by tests/golden/make_ctkd_mlkd_dot_goldens.py)
#: CTKD's train_student.py flags, which are our options' names (--distill kd|dkd is ctkd_base)
_CTKD_HPARAMS = {"ctkd_base": "distill",
                 **{k: k for k in ("mlp_name", "cosine_decay", "t_start", "t_end", "decay_max", "decay_min",
                                   "decay_loops", "dkd_alpha", "dkd_beta")}}
#: the dkd_base variant: its temperature gradient is NaN in the reference
_CTKD_DKD = {"unchecked": {"params.global_T": "NaN in the reference (0 * log 0 in its probability-space KL)"}}
register_golden("ctkd", GoldenEntry("ctkd", {**LOGITS, "target": "batch:labels", "epoch": "batch:epoch"},
                                    options={"logit_std": False}, hparam_fixed={"logit_stand": False},
                                    hparam_options=_CTKD_HPARAMS,
                                    # the optimiser (extra.step2.sgd) and epochs (inputs) the file gives otherwise
                                    hparam_info=("lr", "momentum", "weight_decay", "epoch", "epoch2"),
                                    diagnostics=("lambda", "temperature"),
                                    variants={"dkd_base": _CTKD_DKD, "linear_t2_10_loops5": {}}))
# CTKD and MLKD with logit standardisation (tests/golden/, make_ctkd_mlkd_dot_goldens.py --ls)
register_golden("ctkd_ls", GoldenEntry("ctkd", {**LOGITS, "target": "batch:labels", "epoch": "batch:epoch"},
                                       options={"logit_std": True}, hparam_fixed={"logit_stand": True},
                                       hparam_options=_CTKD_HPARAMS,
                                       hparam_info=("lr", "momentum", "weight_decay", "epoch", "epoch2"),
                                       diagnostics=("lambda", "temperature"),
                                       variants={"dkd_base": _CTKD_DKD, "linear_t2_10_loops5": {}}))


# The published CIFAR-100 rows this method runs (scripts/make_configs.py writes their configs).
register_row(PublishedRow("KD+CTKD", "ctkd", "ctkd",
    "zhengli97/CTKD scripts/run_cifar_distill.sh (-r 0.1 -a 0.9 -b 0 on the "
    "learned-T KD term: gamma 0.1, beta 0.9 here; global T 1..21, cosine decay 0 -> -1 over 10 epochs)",
    skip=("dkd_alpha", "dkd_beta")))
register_row(PublishedRow("DKD+CTKD", "ctkd_dkd", "ctkd",
    "zhengli97/CTKD scripts (DKD+CTKD: -r 1 -a 0 -b 1, dkd_alpha 1, dkd_beta "
    "mdistiller's per pair; no CIFAR-100 number in results.md, so no file: the row names such runs)",
    weights={"gamma": 1.0, "beta": 1.0}, options={"ctkd_base": "dkd"}, per_pair=dkd_options))
register_row(PublishedRow("CTKD+LS", "ctkd_ls", "ctkd",
    "sunshangquan/logit-standardization-KD CTKD/scripts/run_cifar_distill.sh "
    "(-r 0.1 -a 9 -b 0 on the learned-T KD term, which its train_student.py standardises: gamma 0.1, beta 9 "
    "here; global T 1..21, cosine decay 0 -> -1 over 10 epochs; its --kd_T 2 is not read with --have_mlp 1). "
    "Its logs/CTKD/ctkd,<pair>,2,9.txt show T between 2 and 30: those runs bounded T below by 2, not 1",
    weights={"gamma": 0.1, "beta": 9.0}, options={"logit_std": True}, skip=("dkd_alpha", "dkd_beta")))
