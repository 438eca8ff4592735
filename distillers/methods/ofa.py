"""Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge
Distillation" (OFA-KD, NeurIPS 2023), as in Hao840/OFAKD ``distillers/ofa.py``."""
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, register_golden

#: timm modules whose models are token models (transformers, MLP mixers): their stages get
#: transformer-block heads, as the reference gives its ViT, Swin and MLP students.
TOKEN_MODULES = ("vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos",
                 "vision_transformer_sam", "deit", "beit", "eva", "cait", "xcit", "volo", "tnt", "pit",
                 "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr", "mlp_mixer", "sequencer")
#: Token heads merge patches until the grid is at most this wide (the reference's 7x7 = 49 patches).
FINAL_GRID = 7
#: Attention heads of the transformer blocks of a token head (the reference's value).
HEAD_BLOCK_HEADS = 4


def ofa_loss(logit_s: torch.Tensor, logit_t: torch.Tensor, target_mask: torch.Tensor, eps: float,
             T: float = 1.0) -> torch.Tensor:
    """Batch mean of -sum_c w_c log p_s,c with w = (p_t + y)^eps - y, y the one-hot label (``target_mask``):
    the true class weighted (1 + p_t)^eps - 1, every other class p_t^eps. eps = 1 is cross-entropy to the
    teacher's distribution; eps > 1 moves weight from the other classes to the true one (OFA's adaptive
    target enhancement)."""
    log_p_s = F.log_softmax(logit_s / T, dim=1)
    p_t = F.softmax(logit_t / T, dim=1)
    weight = (p_t + target_mask).pow(eps) - target_mask
    return -(weight * log_p_s).sum(dim=1).mean()


def target_mask(labels: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot labels; soft or mixed targets ``[B, C]`` (mixup, cutmix, smoothing) by their argmax, as
    the reference does (its ``label.argmax(-1)``)."""
    if labels.dim() == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(f"ofa: soft labels have {labels.shape[1]} classes, the logits {num_classes}")
        labels = labels.argmax(dim=1)
    elif labels.dim() != 1:
        raise ValueError(f"ofa: labels must be class indices [B] or soft targets [B, C], got {tuple(labels.shape)}")
    return F.one_hot(labels.long(), num_classes).to(like.dtype)


# ------------------------------------------------------------------------------------- stage heads
class SepConv(nn.Sequential):
    """Two depthwise-separable 3x3 convolutions, the first of stride 2, each followed by BN and ReLU:
    one step down the student's resolution pyramid (the reference's ``SepConv``)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, stride=1, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def cnn_head(channels: int, steps: int, width: int, num_classes: int) -> nn.Sequential:
    """A CNN stage map -> logits: ``steps`` separable blocks (channels doubling, the last to ``width``)
    down to the last stage's resolution, or a 1x1 conv for the last stage itself; then GAP and a
    Linear(width, classes)."""
    if steps == 0:
        body: List[nn.Module] = [nn.Conv2d(channels, width, 1)]
    else:
        body, c = [], channels
        for i in range(steps):
            body.append(SepConv(c, width if i == steps - 1 else 2 * c))
            c *= 2
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class PatchMerge(nn.Module):
    """Each 2x2 group of patches concatenated (4C), LayerNorm, a bias-free Linear to ``out_dim`` and an
    activation: halves a token grid (the reference's ``PatchMerging``; concatenation order
    (0,0), (1,0), (0,1), (1,1) in (row, column) offsets)."""

    def __init__(self, grid: Tuple[int, int], dim: int, out_dim: int, act: nn.Module):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h, w = self.grid
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5)  # [b, i, j, col, row, c]
        return self.act(self.reduction(self.norm(x.reshape(b, (h // 2) * (w // 2), 4 * c))))


class TokenHead(nn.Module):
    """A token stage -> logits: patches merged down to at most 7x7 (to ``width``), transformer blocks,
    then the first prefix token (the class token) or, without prefix tokens, the mean token, and a
    Linear(width, classes). Takes tokens ``[B, P + H*W, C]`` (P prefix tokens first) or a map
    ``[B, C, H, W]`` (P = 0)."""

    def __init__(self, grid: Tuple[int, int], dim: int, prefix: int, width: int, blocks: int, num_classes: int):
        super().__init__()
        from timm.models.vision_transformer import Block  # timm only where a token head is built

        merges = max(int(math.log2(min(grid) / FINAL_GRID)), 0)
        layers: List[nn.Module] = []
        for i in range(merges):
            if grid[0] % 2 or grid[1] % 2:
                raise ValueError(f"ofa: a token head halves the patch grid {grid[0]}x{grid[1]}, which is odd")
            # the reference: GELU after every merge but the last of two or more
            act = nn.GELU() if i == 0 or i != merges - 1 else nn.Identity()
            layers.append(PatchMerge(grid, dim if i == 0 else width, width, act))
            grid = (grid[0] // 2, grid[1] // 2)
        if not merges and dim != width:
            if prefix:
                raise ValueError(f"ofa: a token stage of width {dim} with prefix tokens needs width {width}")
            layers.append(nn.Linear(dim, width))  # here only: the reference needs dim == width when nothing merges
        if width % HEAD_BLOCK_HEADS:
            raise ValueError(f"ofa: token heads use {HEAD_BLOCK_HEADS}-head attention; width {width} is not a "
                             f"multiple of {HEAD_BLOCK_HEADS}")
        self.prefix = prefix
        self.merge = nn.Sequential(*layers)
        # LayerNorm with torch's eps 1e-5: the reference's timm 0.6.5 Block (timm 1.x defaults to 1e-6)
        self.blocks = nn.Sequential(*[Block(width, HEAD_BLOCK_HEADS, norm_layer=nn.LayerNorm) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)
        x = self.merge(x[:, self.prefix:]) if not self.prefix else \
            torch.cat([x[:, :self.prefix], self.merge(x[:, self.prefix:])], dim=1)
        x = self.blocks(x)
        return self.fc(x[:, 0] if self.prefix else x.mean(dim=1))


def init_head(module: nn.Module) -> None:
    """The reference's initialisation of its heads: Kaiming (fan out) convolutions, unit BatchNorms,
    truncated-normal (std 0.02) Linear weights with zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def token_layout(shape: Sequence[int]) -> Tuple[Tuple[int, int], int, int]:
    """(grid, channels, prefix tokens) of a stage shape: a map (C, H, W), or tokens (L, C) whose
    L - floor(sqrt(L))^2 leading tokens are prefix tokens (class, distillation, registers)."""
    if len(shape) == 3:
        return (shape[1], shape[2]), shape[0], 0
    side = math.isqrt(shape[0])
    return (side, side), shape[1], shape[0] - side * side


def is_token_arch(arch: str) -> bool:
    """Whether ``timm:<name>`` names a transformer or MLP model (:data:`TOKEN_MODULES`)."""
    if not arch.startswith("timm:"):
        return False
    from timm.models import is_model_in_modules
    return is_model_in_modules(arch.split(":", 1)[1], TOKEN_MODULES)


@register_distiller("ofa")
class OFA(Distiller):
    """OFA loss of the teacher's logits against the student's logits and a logit head on each stage.

    Each chosen student stage gets its own head to the class logits (trained with the student, saved
    with it, not used at test time). CNN students: ``n - k`` separable-conv blocks take stage k of n
    down to the last stage's resolution (a 1x1 conv for the last stage), then GAP and a
    Linear(max(d_s, d_t), classes), d = the pooled width. Token students (ViT, Swin, Mixer): patch
    merging to at most 7x7, max(n - k, 1) transformer blocks, the class token or the mean token, a
    Linear(d_s, classes). The reference hard-codes four stages (4 - k blocks); n - k is the same
    there and follows the same rule for the CIFAR models' three stages.

    Terms: ``ofa_logits`` = OFA loss on the student's own logits (the reference's ``loss_kd``,
    weight 1 there), ``ofa_stageK`` = ``ofa_loss_weight`` x OFA loss on stage K's head. The loss needs
    ``batch["labels"]``; soft or mixed labels ``[B, C]`` count as their argmax, as in the reference (under
    ``--mixup``/``--cutmix`` the batch's mixed ``targets``, which the reference hands its loss).
    ``student_kind`` auto: token heads when a stage comes as tokens (L, C) or the student is a
    ``timm:`` transformer/MLP (:data:`TOKEN_MODULES`), separable-conv heads otherwise.
    """

    display_name = "OFA"  # its row in published tables
    student_taps = ("stages", "pooled")
    teacher_taps = ("logits", "pooled")
    batch_keys = ("labels",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "ofa_eps": Option(1.0, "target-enhancement exponent (reference CIFAR-100 value; 1.5 on ImageNet)", above=0),
        "ofa_stages": Option(None, "student stages given a logit head (default: every stage, the reference's "
                                   "1,2,3,4)", type=tuple, flags=("--ofa_stage",)),
        "ofa_loss_weight": Option(1.0, "weight of each stage head's term against the final logits' term", min=0),
        "ofa_temperature": Option(1.0, "softmax temperature of both sides", above=0),
        "student_kind": Option("auto", "stage heads: cnn (separable convs) or token (transformer blocks); auto "
                                       "decides from the stage shapes and the student's timm family",
                               choices=("auto", "cnn", "token")),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        stages = [tuple(s) for s in spec.student.get("stages", [])]
        if not stages:
            raise ValueError("ofa needs the student's stage maps (tap group 'stages'); the student has none")
        chosen = tuple(range(1, len(stages) + 1)) if self.ofa_stages is None else self.ofa_stages
        valid = [isinstance(k, (int, float)) and not isinstance(k, bool) and k == int(k) and 1 <= k <= len(stages)
                 for k in chosen]
        if not chosen or not all(valid) or len(set(chosen)) != len(chosen):
            raise ValueError(f"ofa: option ofa_stages={self.ofa_stages!r} is not accepted; expected distinct "
                             f"stage numbers among 1..{len(stages)} (the student's stages)")
        self.stage_ids = tuple(int(k) for k in chosen)
        missing = [side for side, taps in (("student", spec.student), ("teacher", spec.teacher))
                   if "pooled" not in taps]
        if missing:
            raise ValueError(f"ofa sizes its heads by the pooled width; the {' and '.join(missing)} has no "
                             "'pooled' tap")
        d_s, d_t = spec.student["pooled"][0], spec.teacher["pooled"][0]
        num_classes = spec.student["logits"][0] if "logits" in spec.student else spec.num_classes
        self.kind = self.student_kind
        if self.kind == "auto":
            tokens = any(len(stages[k - 1]) == 2 for k in self.stage_ids)
            self.kind = "token" if tokens or is_token_arch(spec.extra.get("student_arch", "")) else "cnn"
        n = len(stages)
        heads = {}
        for k in self.stage_ids:
            shape = stages[k - 1]
            if self.kind == "cnn":
                if len(shape) != 3:
                    raise ValueError(f"ofa: cnn heads need stage maps (C, H, W); stage{k} is {shape}")
                heads[str(k)] = cnn_head(shape[0], n - k, max(d_s, d_t), num_classes)
            else:
                grid, dim, prefix = token_layout(shape)
                heads[str(k)] = TokenHead(grid, dim, prefix, d_s, max(n - k, 1), num_classes)
        self.heads = nn.ModuleDict(heads)
        init_head(self.heads)

    def forward(self, s, t, batch=None):
        if batch is None or "labels" not in batch:
            raise ValueError("ofa needs the labels (batch['labels'])")
        logit_s, logit_t = s["logits"], t["logits"].detach()  # the teacher is a fixed target
        labels = batch["targets"] if batch.get("targets") is not None else batch["labels"]  # mixed: the reference's
        mask = target_mask(labels, logit_s.shape[1], logit_s)
        terms = {"ofa_logits": ofa_loss(logit_s, logit_t, mask, self.ofa_eps, self.ofa_temperature)}
        for k in self.stage_ids:
            logits = self.heads[str(k)](s["stages"][k - 1])
            terms[f"ofa_stage{k}"] = self.ofa_loss_weight * ofa_loss(logits, logit_t, mask, self.ofa_eps,
                                                                     self.ofa_temperature)
        return terms


# The reference numbers this method reproduces (python -m distillers.golden; tests/golden/, made by
# tests/golden/make_ofa_deit_goldens.py). The reference nests each separable block's layers under ``.op``
# and keys its heads by stage number; the three-stage CNN student of ofa.pt is given to it as its stages 2..4.
_SEPCONV_RENAMES = tuple((f"projector.{k}.{i}.op.", f"heads.{k - 1}.{i}.") for k in range(2, 6) for i in range(4))
_OFA_INPUTS = {"feats_s": "s:stages", "pooled_s": "s:pooled", "logit_s": "s:logits", "logit_t": "t:logits",
               "pooled_t": "t:pooled", "labels": "batch:labels"}
_OFA_HPARAMS = {"ofa_eps": "eps", "ofa_temperature": "temperature", "ofa_loss_weight": "loss_weight"}
#: the sizes its train.py passes (classes, pooled widths, prefix tokens): ours reads them from the inputs' shapes
_OFA_INFO = ("num_classes", "feature_dim_s", "feature_dim_t", "num_tokens")
#: every file's ``extra.t2``: the same parameters at eps 1, temperature 2, stage heads weighted 0.5
_T2 = {"t2": {"options": {"ofa_eps": 1.0, "ofa_temperature": 2.0, "ofa_loss_weight": 0.5}}}
#: a three-stage CNN student (the CIFAR models), shown to the reference as its stages 2..4 (its ofa_stage, fixed:
#: the renames map its heads 2..4 onto ours 1..3, every stage of ours)
register_golden("ofa", GoldenEntry(
    "ofa", _OFA_INPUTS, options={"student_kind": "cnn"}, hparam_options=_OFA_HPARAMS, variants=_T2,
    hparam_fixed={"ofa_stage": [2, 3, 4]}, hparam_info=_OFA_INFO,
    renames=_SEPCONV_RENAMES + tuple((f"projector.{k}.", f"heads.{k - 1}.") for k in range(2, 6))))
#: a four-stage CNN student (timm's ResNets), the reference's own numbering (its ofa_stage is ours)
register_golden("ofa_4stage", GoldenEntry(
    "ofa", _OFA_INPUTS, options={"student_kind": "cnn"}, hparam_options={**_OFA_HPARAMS, "ofa_stages": "ofa_stage"},
    hparam_info=_OFA_INFO, variants=_T2, task="timm",
    renames=tuple((f"projector.{k}.{i}.op.", f"heads.{k}.{i}.") for k in range(1, 5) for i in range(4))
    + (("projector.", "heads."),)))
#: token students: ViT-like with a class token, Swin-like without prefix tokens (GAP readout)
_TOKEN_RENAMES = tuple(pair for k in range(1, 5) for pair in (
    (f"projector.{k}.0.fn.", f"heads.{k}.merge."), (f"projector.{k}.1.", f"heads.{k}.blocks."),
    (f"projector.{k}.3.", f"heads.{k}.fc.")))
for _name in ("ofa_token", "ofa_token_gap"):
    register_golden(_name, GoldenEntry("ofa", _OFA_INPUTS, options={"student_kind": "token"},
                                       hparam_options={**_OFA_HPARAMS, "ofa_stages": "ofa_stage"},
                                       hparam_info=_OFA_INFO, variants=_T2, renames=_TOKEN_RENAMES, task="timm"))
