"""Yang et al., "ViTKD: Practical Guidelines for ViT feature knowledge distillation" (arXiv 2209.02432)."""
import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.reference import GoldenEntry, PublishedRow, register_golden, register_row

#: The first two transformer blocks (the shallow layers the reference mimics), tapped by module path: their
#: raw outputs (B, prefix + h*w, D). The standard ``stageK_tokens`` taps are other blocks on deeper models.
SHALLOW = ("blocks.0", "blocks.1")
#: The last block after the final norm, patch tokens as a map (D, h, w): the deep layer the reference generates.
DEEP = "last_map"

#: yzd-v/cls_KD@1e5d48f vitkd.md, ImageNet-1k top-1 of ViTKD alone (its ViTKD+NKD numbers: 77.78, 83.59, 85.41).
README_TOP1 = {("timm:deit3_small_patch16_224", "timm:deit_tiny_patch16_224"): 76.06,
               ("timm:deit3_base_patch16_224", "timm:deit_small_patch16_224"): 81.95,
               ("timm:deit3_large_patch16_224", "timm:deit_base_patch16_224"): 83.46}


def _token_model(taps) -> bool:
    """Whether a side's taps are a token model's: raw block outputs (``stageK_tokens``, or the shallow taps
    themselves as (L, D) sequences) and a last map (D, h, w)."""
    tokens = any(k.endswith("_tokens") for k in taps) or all(len(tuple(taps.get(k, ()))) == 2 for k in SHALLOW)
    return tokens and len(tuple(taps.get(DEEP, ()))) == 3


@register_distiller("vitkd")
class ViTKD(Distiller):
    """Mimic the teacher's first two blocks, regenerate its last one from a masked student copy (ViT pairs).

    Follows yzd-v/cls_KD@1e5d48f ``mmcls/models/dis_losses/vitkd.py`` ``ViTKDLoss`` on the features its
    modified backbones hand it (``mmcls/models/backbones/vision_transformer.py``, ``deit3.py``): the patch
    tokens of blocks 0 and 1 (the class token dropped) and of the last block after the final norm. Here the
    shallow blocks are tapped by module path (``blocks.0``, ``blocks.1``, timm's ViT/DeiT layout) and every
    prefix token (class, distillation, register) is dropped; the deep layer is ``last_map``.

    * ``vitkd_mimic`` = alpha_vitkd * sum of squared errors of align2[k](student block k) against teacher
      block k, k = 0, 1, divided by the batch size (a Linear per block when the widths differ);
    * ``vitkd_gen`` = beta_vitkd / lambda_vitkd * sum of squared errors over the masked tokens of
      generation(tokens) against the teacher's last tokens, divided by the batch size, where ``tokens`` are
      align(student last tokens) with a random fraction lambda_vitkd (int(N (1 - lambda)) kept per sample)
      replaced by a learned mask token, laid out on the patch grid; generation = 3x3 conv, ReLU, 3x3 conv.

    The paper mimics the shallow layers and generates the deep one, as the code does; the code divides the
    generation term by lambda_vitkd, not by the number of masked tokens. Both networks need equal patch
    grids (the reference compares tokens one to one). The mask is drawn on the CPU from torch's global
    generator (``torch.rand`` per token, argsort), as the reference draws it: seeded, checkpointed, and the
    same on any device. The reference's student and teacher token counts must be squares; here the grid
    of ``last_map`` is used as it is.
    """

    display_name = "ViTKD"  # its row in published tables
    student_taps = (*SHALLOW, DEEP)
    teacher_taps = (*SHALLOW, DEEP)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "alpha_vitkd": Option(3e-5, "weight of the shallow-layer mimicking (every ImageNet config)", min=0),
        "beta_vitkd": Option(3e-6, "weight of the deep-layer generation (every ImageNet config)", min=0),
        "lambda_vitkd": Option(0.5, "fraction of the last layer's tokens masked before generation", above=0,
                               below=1),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        for side, taps in (("student", spec.student), ("teacher", spec.teacher)):
            if not _token_model(taps):
                arch = spec.extra.get(f"{side}_arch") or "model"
                raise ValueError(f"vitkd needs ViT token features on both sides (the raw outputs of blocks 0 and 1 "
                                 f"and the final patch tokens of a timm ViT/DeiT); the {side} {arch} has none")
        (d_s, *grid_s), (d_t, *grid_t) = spec.student[DEEP], spec.teacher[DEEP]
        if tuple(grid_s) != tuple(grid_t):
            raise ValueError(f"vitkd compares tokens one to one: the student has a {grid_s[0]}x{grid_s[1]} patch grid, "
                             f"the teacher {grid_t[0]}x{grid_t[1]}")
        if d_s != d_t:
            self.align2 = nn.ModuleList(nn.Linear(d_s, d_t) for _ in SHALLOW)
            self.align = nn.Linear(d_s, d_t)
        else:
            self.align2 = self.align = None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_t))
        self.generation = nn.Sequential(nn.Conv2d(d_t, d_t, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(d_t, d_t, kernel_size=3, padding=1))

    @staticmethod
    def patch_tokens(block: torch.Tensor, grid: torch.Size) -> torch.Tensor:
        """A raw block output (B, prefix + h*w, D) without its prefix tokens."""
        return block[:, block.shape[1] - grid[0] * grid[1]:]

    def mask(self, batch: int, length: int) -> torch.Tensor:
        """Per sample, the tokens to replace (1) and keep (0): the reference's argsort of uniform noise."""
        keep = int(length * (1 - self.lambda_vitkd))
        order = torch.argsort(torch.rand(batch, length), dim=1)  # CPU generator; small keeps, large masks
        masked = torch.ones(batch, length)
        masked[:, :keep] = 0
        return torch.gather(masked, 1, torch.argsort(order, dim=1))

    def forward(self, s, t, batch=None):
        deep_s, deep_t = s[DEEP], t[DEEP]
        n, _, h, w = deep_t.shape
        grid = (h, w)
        mimic = 0.0
        for k, tap in enumerate(SHALLOW):
            low_s, low_t = self.patch_tokens(s[tap], grid), self.patch_tokens(t[tap], grid)
            if self.align2 is not None:
                low_s = self.align2[k](low_s)
            mimic = mimic + F.mse_loss(low_s, low_t, reduction="sum")
        x = deep_s.flatten(2).transpose(1, 2)  # (B, h*w, D): the tokens in the map's row-major order
        if self.align is not None:
            x = self.align(x)
        masked = self.mask(n, h * w).to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        x = x * (1 - masked) + self.mask_token.to(x.dtype) * masked
        generated = self.generation(x.transpose(1, 2).reshape(n, -1, h, w)).flatten(2).transpose(1, 2)
        high_t = deep_t.flatten(2).transpose(1, 2)
        gen = F.mse_loss(generated * masked, high_t * masked, reduction="sum")
        return {"vitkd_mimic": self.alpha_vitkd * mimic / n,
                "vitkd_gen": self.beta_vitkd / self.lambda_vitkd * gen / n}


# The reference numbers this method reproduces (python -m distillers.golden; tests/golden/, made by
# tests/golden/make_crld_vitkd_goldens.py). No CIFAR pair has ViT students: tests/test_methods_crld_vitkd.py
# checks a training step on the small test ViTs (task "timm").
_VITKD_INPUTS = {"low_s_0": "s:blocks.0", "low_s_1": "s:blocks.1", "high_s": "s:" + DEEP,
                 "low_t_0": "t:blocks.0", "low_t_1": "t:blocks.1", "high_t": "t:" + DEEP}
register_golden("vitkd", GoldenEntry(
    "vitkd", _VITKD_INPUTS,
    hparam_options={"alpha_vitkd": "alpha_vitkd", "beta_vitkd": "beta_vitkd", "lambda_vitkd": "lambda_vitkd"},
    hparam_info=("student_dims", "teacher_dims", "name", "use_this"),  # sizes follow from the inputs
    task="timm"))  # a second setting is a second file (vitkd_same_width.pt): each records its own rng_state


# The published ImageNet-1k cells (yzd-v/cls_KD vitkd.md), with mmcls's DeiT recipe: configs/vit/vitkd_deit_*.yaml.
register_row(PublishedRow("ViTKD", "vitkd", "vitkd",
    "yzd-v/cls_KD@1e5d48f configs/distillers/imagenet/deit-*3_distill_deit-*_img.py with nkd off (ViTKD alone: "
    "alpha_vitkd 3e-5, beta_vitkd 3e-6, lambda_vitkd 0.5, CE 1); DeiT III teachers, DeiT students",
    blocked="ImageNet-1k cells: configs/vit/vitkd_deit_tiny.yaml, vitkd_deit_small.yaml and vitkd_deit_base.yaml "
            "(mmcls's DeiT recipe, written by hand); the generator writes CIFAR-100 cells only",
    published={pair: (top1, "yzd-v/cls_KD vitkd.md (ImageNet-1k)") for pair, top1 in README_TOP1.items()}))
