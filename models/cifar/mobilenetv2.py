"""CIFAR MobileNetV2 (expansion 6, width 0.5: RepDistiller's ``mobile_half``), registered as
``MobileNetV2`` and state_dict-compatible with RepDistiller's ``mobilenetv2.py``.

Features follow RepDistiller: ``stem`` = ``conv1`` output, stages = outputs of ``blocks[1]``,
``blocks[2]``, ``blocks[4]``, ``blocks[6]`` (linear bottlenecks, so signed). The reference
ignores ``preact``, so every ``stageK_preact`` (and ``stem_preact``) is the same tensor as
``stageK`` (``stem``).

Difference from RepDistiller's feature list: its ``feat[-2]`` is the ``blocks[6]`` output
(160@2x2), while ``last_map`` here is the map that is actually pooled, the ``conv2`` output
(1280@2x2). The reference's ``AvgPool2d(2, ceil_mode=True)`` is an ``AdaptiveAvgPool2d(1)``
(identical at 32x32).
"""
from __future__ import annotations

import math
from typing import Dict

from torch import Tensor, nn

from core.taps import TapPoint, head_taps
from models.registry import register_model

STAGE_BLOCKS = (1, 2, 4, 6)  # blocks whose outputs are the reference's feat[1:-1]


def conv_bn(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100):
        super().__init__()
        setting = [  # t, c, n, s
            [1, 16, 1, 1],
            [expansion, 24, 2, 1],
            [expansion, 32, 3, 2],
            [expansion, 64, 4, 2],
            [expansion, 96, 3, 1],
            [expansion, 160, 3, 2],
            [expansion, 320, 1, 1],
        ]
        channels = int(32 * width_mult)
        self.conv1 = conv_bn(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            out = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out, stride, t))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn(channels, last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        for block in self.blocks:
            out = block(out)
        out = self.flatten(self.avgpool(self.conv2(out)))
        return self.classifier(out)

    def tap_points(self) -> Dict[str, TapPoint]:
        points = {"stem": TapPoint("conv1"), "stem_preact": TapPoint("conv1")}
        for k, b in enumerate(STAGE_BLOCKS, start=1):
            points[f"stage{k}"] = points[f"stage{k}_preact"] = TapPoint(f"blocks.{b}")
            points[f"stage{k}_bn"] = TapPoint(f"blocks.{b}.{len(self.blocks[b]) - 1}.conv.7", "module")
        points.update(head_taps("classifier.0", pooled_from="classifier"))
        return points


@register_model("MobileNetV2", family="cifar")
def mobile_half(num_classes: int = 100, **kw) -> MobileNetV2:
    return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes, **kw)
