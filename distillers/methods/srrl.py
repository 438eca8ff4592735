"""Yang et al., "Knowledge Distillation via Softmax Regression Representation Learning" (SRRL, ICLR 2021)."""
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, register_distiller
from distillers.reference import GoldenEntry, register_golden


@register_distiller("srrl")
class SRRL(Distiller):
    """Match the teacher's penultimate vector and, through the teacher's classifier, its logits.

    h = ReLU(BN(conv1x1(pooled_s viewed as [B, C_s, 1, 1]))) has the teacher's width, and
    loss = MSE(h, pooled_t) + MSE(fc_t(h), logits_t). The teacher classifier is used with
    detached weights: gradients flow through it into the connector, never into it. At test
    time the student keeps its own classifier. Weights follow SimKD's script: -c 1 -d 1 -b 1.
    """

    display_name = "SRRL"  # its row in published tables
    student_taps = ("pooled",)
    teacher_taps = ("pooled", "logits", "classifier")
    default_weights = {"gamma": 1.0, "alpha": 1.0, "beta": 1.0}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        s_shape, t_shape = tuple(spec.student["pooled"]), tuple(spec.teacher["pooled"])
        fc_shape = tuple(spec.teacher["classifier"])
        if len(s_shape) != 1 or len(t_shape) != 1:
            raise ValueError(f"srrl needs pooled vectors [C] on both sides, got student {s_shape} "
                             f"and teacher {t_shape}")
        if len(fc_shape) != 2 or fc_shape[1] != t_shape[0]:
            raise ValueError(f"srrl feeds the connector output ({t_shape[0]} channels, the teacher's "
                             f"pooled width) to the teacher classifier, whose weight is {fc_shape}")
        s_dim, t_dim = s_shape[0], t_shape[0]
        self.transfer = nn.Sequential(
            nn.Conv2d(s_dim, t_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(t_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, s, t, batch=None):
        h = self.transfer(s["pooled"][:, :, None, None]).flatten(1)
        fc = t["classifier"]
        pred = F.linear(h, fc.weight.detach(), None if fc.bias is None else fc.bias.detach())
        return {"srrl_feat": F.mse_loss(h, t["pooled"]), "srrl_pred": F.mse_loss(pred, t["logits"])}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("srrl", GoldenEntry(
    "srrl", {"feat_s": "s:pooled", "feat_t": "t:pooled", "logit_t": "t:logits",
             "teacher_fc_weight": "t:classifier.weight", "teacher_fc_bias": "t:classifier.bias"},
    hparam_fixed={"bn_mode": "train"}, hparam_info=("connector", "cls", "div", "beta"),
    diagnostics=("loss_feat", "loss_pred", "trans_feat_s", "pred_feat_s")))
