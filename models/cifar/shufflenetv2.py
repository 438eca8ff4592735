"""CIFAR ShuffleNet V2 (net_size 1: channels (116, 232, 464, 1024), blocks (3, 7, 3)),
registered as ``ShuffleV2`` and state_dict-compatible with RepDistiller's ``ShuffleNetv2.py``.

Features follow RepDistiller: ``stem`` = ReLU(BN(conv1)), stages = ``layer1..3`` outputs, and
``stageK_preact`` = the last BasicBlock's ``cat([x1, bn3 output])`` *before* the channel
shuffle (so it is a channel permutation of the stage output, not the same layout). It is
tapped as the input of that block's ``relu``, which here rectifies the concatenation: x1 is
always the output of earlier ReLUs (non-negative), so this equals the reference's
``cat([x1, relu(branch)])`` in values and in gradients.

Difference from RepDistiller's feature list: its ``feat[-2]`` is the ``layer3`` output
(464@4x4), while ``last_map`` here is the map that is actually pooled, ReLU(BN(conv2)) of it
(1024@4x4). The reference's ``F.avg_pool2d(out, 4)`` is an ``AdaptiveAvgPool2d(1)``
(identical at 32x32).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from core.taps import TapPoint, head_taps, residual_stage_taps
from models.registry import register_model


class SplitBlock(nn.Module):
    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlock(nn.Module):
    """Split; transform the second half (1x1-BN-ReLU, dw3x3-BN, 1x1-BN); concat; ReLU; shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.split(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x2)))))
        out = self.bn3(self.conv3(out))
        return self.shuffle(self.relu(torch.cat([x1, out], 1)))


class DownBlock(nn.Module):
    """Stride-2 block: two branches (dw3x3-BN, 1x1-BN-ReLU | 1x1-BN-ReLU, dw3x3-BN,
    1x1-BN-ReLU), concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU(inplace=True)
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        right = self.relu5(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3),
                 num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu1 = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.linear(self.flatten(self.avgpool(out)))

    def tap_points(self) -> Dict[str, TapPoint]:
        return {**residual_stage_taps("relu1", (self.layer1, self.layer2, self.layer3)), **head_taps("linear")}


@register_model("ShuffleV2", family="cifar")
def ShuffleV2(num_classes: int = 100, **kw) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes, **kw)
