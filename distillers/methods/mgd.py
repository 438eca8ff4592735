"""Yang et al., "Masked Generative Distillation" (MGD, ECCV 2022): its classification loss."""
import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import pool_to_smaller
from distillers.reference import GoldenEntry, register_golden

#: What one mask element hides: a channel of a sample (classification code) or a position (detection code).
MASKS = ("channel", "spatial")


@register_distiller("mgd")
class MGD(Distiller):
    """Masked Generative Distillation (Yang et al., ECCV 2022): mask the student's last map at random and
    regenerate the teacher's map from what is left.

    Follows yzd-v/MGD@2c9da0b ``cls/mmcls/distillation/losses/mgd.py`` ``MGDLoss`` (the same class
    as yzd-v/cls_KD@1e5d48f ``mmcls/models/dis_losses/mgd.py``), on the map the classifier pools
    (``last_map``, the backbone output the reference distils). A 1x1 ``align`` conv maps the
    student's channels to the teacher's when they differ; each element of a random mask is 0 with
    probability ``lambda_mgd``; the ``generation`` head (3x3 conv, ReLU, 3x3 conv) maps the masked
    map onto the teacher's; term = ``alpha_mgd`` * sum of squared errors / batch size.

    Where the code deviates from the paper (the code is followed): the paper masks spatial
    positions, the classification code masks whole channels per sample (its spatial line is
    commented out); ``mgd_mask spatial`` gives the detection/segmentation code's position mask
    (``det/mmdet/distillation/losses/mgd.py``: zero where a uniform draw exceeds 1 - lambda).
    The reference asserts equal map sizes; here the larger map is average-pooled to the smaller.

    The mask is drawn on the CPU from torch's global generator, as the reference draws it: the
    trainer seeds that generator and saves its state in checkpoints, so a resumed run draws the
    same masks, and two runs from one seed draw the same masks on any device.
    """

    display_name = "MGD"  # its row in published tables
    student_taps = ("last_map",)
    teacher_taps = ("last_map",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {
        "alpha_mgd": Option(0.0012, "the paper's alpha: weight of the generation loss (yzd-v/cls_KD's CIFAR-100 "
                                    "config; 7e-5 in yzd-v/MGD's ImageNet configs)", min=0),
        "lambda_mgd": Option(0.15, "the paper's lambda: masked ratio, the probability that a mask element is 0 "
                                   "(0.15 in every classification config)", min=0, below=1),
        "mgd_mask": Option("channel", "what a mask element hides: a channel of a sample (the classification code) "
                                      "or a spatial position (the detection code)", choices=MASKS),
    }

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        shapes = {side: tuple(taps.get("last_map", ())) for side, taps in
                  (("student", spec.student), ("teacher", spec.teacher))}
        for side, shape in shapes.items():
            if len(shape) != 3:
                raise ValueError(f"mgd regenerates a spatial map: the {side}'s last_map must be (C, H, W), "
                                 f"got {shape or 'none'}")
        c_s, c_t = shapes["student"][0], shapes["teacher"][0]
        self.align = nn.Conv2d(c_s, c_t, kernel_size=1) if c_s != c_t else None
        self.generation = nn.Sequential(nn.Conv2d(c_t, c_t, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(c_t, c_t, kernel_size=3, padding=1))

    def keep_mask(self, n: int, c: int, h: int, w: int) -> torch.Tensor:
        """1 where the student map is kept, 0 where it is masked; drawn on the CPU generator."""
        if self.mgd_mask == "channel":
            return torch.rand((n, c, 1, 1)) >= self.lambda_mgd
        return torch.rand((n, 1, h, w)) <= 1 - self.lambda_mgd

    def forward(self, s, t, batch=None):
        feat_s, feat_t = pool_to_smaller(s["last_map"], t["last_map"])
        if self.align is not None:
            feat_s = self.align(feat_s)
        keep = self.keep_mask(*feat_t.shape).to(device=feat_s.device, dtype=feat_s.dtype)
        generated = self.generation(feat_s * keep)
        return {"mgd": self.alpha_mgd * F.mse_loss(generated, feat_t, reduction="sum") / feat_t.shape[0]}


# The reference numbers this method reproduces (python -m distillers.golden; tests/golden): the masks
# the reference drew come back through the generator state recorded in the file (``rng_state``).
register_golden("mgd", GoldenEntry(
    "mgd", {"preds_S": "s:last_map", "preds_T": "t:last_map"},
    hparam_options={"alpha_mgd": "alpha_mgd", "lambda_mgd": "lambda_mgd", "mgd_mask": "mask"},
    # the configs' alpha_mgd (CIFAR-100, ImageNet), recorded beside the alpha_mgd the file applies
    hparam_info=("alpha_mgd_cifar100", "alpha_mgd_imagenet"),
    # masked_fraction_step1: the share of the first draw masked (the mask's effect is in the loss); cls_kd: the
    # same loss from yzd-v/cls_KD's copy of the class, a cross-check of the reference by another repository
    diagnostics=("masked_fraction_step1", "cls_kd")))
