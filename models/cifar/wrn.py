"""Wide ResNets (pre-activation blocks, depth 6n+4), state_dict-compatible with
RepDistiller's ``wrn.py``.

Features follow RepDistiller's definition, which differs from the post-ReLU ResNets:
- ``stem`` is the first conv output (before any BN);
- ``stage1..3`` are the block outputs, i.e. pre-activation residual sums (signed);
- ``stageK_preact`` is stage K passed through the *next* BN, taken as the input of the
  ReLU that follows that BN: ``block2.layer.0.relu1``, ``block3.layer.0.relu1`` and the
  final ``relu``. This is the same tensor RepDistiller computes by re-applying the BN.
- ``last_map`` is the pooled map ``relu(bn1(block3))``; RepDistiller's ``feat[-2]`` is
  the block3 output before that BN-ReLU (``stage3``).

The ``F.avg_pool2d(out, 8)`` of the reference is an ``AdaptiveAvgPool2d(1)`` module
(identical at 32x32). Dropout (always 0 in the zoo) is not implemented.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor, nn

from core.taps import TapPoint, head_taps
from models.registry import register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus shortcut; the output is left un-activated.

    When the width changes, the 1x1 ``convShortcut`` is applied to the *activated* input
    (as in the reference); otherwise the raw input is added.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        shortcut = x if self.equalInOut else self.convShortcut(act)
        return torch.add(shortcut, out)


class NetworkBlock(nn.Module):
    """One stage: ``nb_layers`` BasicBlocks under ``.layer`` (the reference's key prefix)."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(nb_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """conv1, three NetworkBlocks, final BN-ReLU, global pool, ``fc``."""

    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(self.flatten(self.avgpool(out)))

    def tap_points(self) -> Dict[str, TapPoint]:
        return {
            "stem": TapPoint("conv1"),
            "stem_preact": TapPoint("conv1"),  # the stem is already un-activated
            "stage1": TapPoint("block1"),
            "stage2": TapPoint("block2"),
            "stage3": TapPoint("block3"),
            "stage1_preact": TapPoint("block2.layer.0.relu1", "input"),
            "stage2_preact": TapPoint("block3.layer.0.relu1", "input"),
            "stage3_preact": TapPoint("relu", "input"),
            "stage1_bn": TapPoint("block2.layer.0.bn1", "module"),
            "stage2_bn": TapPoint("block3.layer.0.bn1", "module"),
            "stage3_bn": TapPoint("bn1", "module"),
            **head_taps("fc"),
        }


@register_model("wrn_16_1", family="cifar")
def wrn_16_1(num_classes: int = 100, **kw) -> WideResNet:
    return WideResNet(16, num_classes=num_classes, widen_factor=1, **kw)


@register_model("wrn_16_2", family="cifar")
def wrn_16_2(num_classes: int = 100, **kw) -> WideResNet:
    return WideResNet(16, num_classes=num_classes, widen_factor=2, **kw)


@register_model("wrn_40_1", family="cifar")
def wrn_40_1(num_classes: int = 100, **kw) -> WideResNet:
    return WideResNet(40, num_classes=num_classes, widen_factor=1, **kw)


@register_model("wrn_40_2", family="cifar")
def wrn_40_2(num_classes: int = 100, **kw) -> WideResNet:
    return WideResNet(40, num_classes=num_classes, widen_factor=2, **kw)
