"""CIFAR ShuffleNet V1 (groups 3, out_planes [240, 480, 960], blocks [4, 8, 4]), registered
as ``ShuffleV1`` and state_dict-compatible with RepDistiller's ``ShuffleNetv1.py``.

Features follow RepDistiller: ``stem`` = ReLU(BN(conv1)), stages = ``layer1..3`` outputs, and
``stageK_preact`` = the last block's value before its final ReLU (the residual sum, or for a
stride-2 block the concatenation [branch, pooled shortcut]), tapped as that block's
``relu`` input. ``last_map`` is the ``layer3`` output, which is RepDistiller's ``feat[-2]``.
The reference's ``F.avg_pool2d(out, 4)`` is an ``AdaptiveAvgPool2d(1)`` (identical at 32x32).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from core.taps import TapPoint, head_taps, residual_stage_taps
from models.registry import register_model


class Bottleneck(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1, then add (stride 1) or concat
    with a 3x3 average-pooled shortcut (stride 2), then ``relu``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first block sees the 24-channel stem
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.shuffle1 = nn.ChannelShuffle(g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return self.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNet(nn.Module):
    def __init__(self, out_planes, num_blocks, groups: int, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # the stride-2 first block concatenates its input, so its branch is narrower
            branch_planes = out_planes - self.in_planes if i == 0 else out_planes
            layers.append(Bottleneck(self.in_planes, branch_planes, 2 if i == 0 else 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.avgpool(out)))

    def tap_points(self) -> Dict[str, TapPoint]:
        return {**residual_stage_taps("relu", (self.layer1, self.layer2, self.layer3)), **head_taps("linear")}


@register_model("ShuffleV1", family="cifar")
def ShuffleV1(num_classes: int = 100, **kw) -> ShuffleNet:
    return ShuffleNet([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes, **kw)
