"""What the logit methods (KD, DKD, DIST, WSLD, NKD, CTKD, MLKD) share: logit standardisation (its option too).

Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024;
reference sunshangquan/logit-standardization-KD@f6e5aa5, ``normalize`` in
``mdistiller/distillers/KD.py`` and ``DKD.py``) replaces each sample's logits by their z-score,
``(z - mean(z)) / (1e-7 + std(z))`` over the classes, with Bessel's correction in ``std`` (torch's
default, as the reference), before the method divides them by its temperature. A sample's
standardised logits do not change when its raw logits are scaled by a positive factor or shifted,
so the student is asked to match the teacher's logit relations, not their range.

The reference applies it at the top of its loss functions, so everything the loss computes (DKD's
target masks included) sees standardised logits; every method here does the same through
:func:`logit_pair`. The method's temperature is then the reference's *base temperature*: its
CIFAR-100 recipe (``--logit-stand --base-temp 2 --kd-weight 9``) uses T = 2 for KD and DKD, the
loss still multiplied by T^2, with the KD weight 9 (CE 0.1) and DKD's alpha and beta times 9.
The same commit carries CTKD and MLKD with it, and the two methods here follow them: CTKD
(``CTKD/distiller_zoo/KD.py`` ``DistillKL_logit_stand``) standardises before its *learned*
temperature (its script: KD weight 9, CE 0.1); MLKD (``mdistiller/distillers/MLKD.py``) standardises
the inputs of its instance-level KD terms only, its batch and class levels and confidence masks
keep the raw logits (recipe: TEMPERATURE 2 for its first level, KD_WEIGHT 9 on every level).
The option is off by default, so every method keeps its own paper's behaviour.
"""
import torch

from distillers.base import Option

#: The ``logit_std`` option of every logit method: off by default, so each keeps its own paper's behaviour.
LOGIT_STD = Option(False, "z-score each sample's logits before the loss (logit standardisation)",
                   row_suffix="+LS")  # results.md's KD+LS, DKD+LS, MLKD+LS

#: Added to the standard deviation, as in the reference (it guards constant logits).
STD_EPS = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample z-score over the last dimension (classes); unbiased std, as the reference."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (STD_EPS + std)


def logit_pair(logit_s: torch.Tensor, logit_t: torch.Tensor, logit_std: bool):
    """The student and teacher logits a method's loss sees: standardised when ``logit_std``."""
    if logit_std:
        return standardize(logit_s), standardize(logit_t)
    return logit_s, logit_t


def check_same_classes(method: str, spec) -> None:
    """Logit methods compare the two predictions class by class."""
    n_s, n_t = tuple(spec.student["logits"]), tuple(spec.teacher["logits"])
    if n_s != n_t:
        raise ValueError(f"{method} needs student and teacher logits over the same classes; got {n_s} and {n_t}")
