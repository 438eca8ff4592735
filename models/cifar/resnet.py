"""CIFAR ResNets (BasicBlock, depth 6n+2), state_dict-compatible with RepDistiller's ``resnet.py``.

Differences from the reference that do not change any state_dict key:
- every ``F.relu`` is an ``nn.ReLU`` module, so pre-activations are tappable as a ReLU's input;
- the 8x8 ``AvgPool2d`` is an ``AdaptiveAvgPool2d(1)`` (identical at 32x32, and it also
  accepts other input sizes), followed by an ``nn.Flatten`` so ``fc``'s input is the
  pooled vector.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import Tensor, nn

from core.taps import TapPoint, head_taps, residual_stage_taps
from models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, then ``relu``; its input is the block's pre-activation."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem conv-BN-ReLU, three stages of ``n`` BasicBlocks, global pool, ``fc``."""

    def __init__(self, depth: int, num_filters: List[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(num_filters[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))

    def tap_points(self) -> Dict[str, TapPoint]:
        return {**residual_stage_taps("relu", (self.layer1, self.layer2, self.layer3), bn="bn2"), **head_taps("fc")}


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


@register_model("resnet8", family="cifar")
def resnet8(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(8, _NARROW, num_classes=num_classes, **kw)


@register_model("resnet14", family="cifar")
def resnet14(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(14, _NARROW, num_classes=num_classes, **kw)


@register_model("resnet20", family="cifar")
def resnet20(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(20, _NARROW, num_classes=num_classes, **kw)


@register_model("resnet32", family="cifar")
def resnet32(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(32, _NARROW, num_classes=num_classes, **kw)


@register_model("resnet44", family="cifar")
def resnet44(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(44, _NARROW, num_classes=num_classes, **kw)


@register_model("resnet56", family="cifar")
def resnet56(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(56, _NARROW, num_classes=num_classes, **kw)


@register_model("resnet110", family="cifar")
def resnet110(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(110, _NARROW, num_classes=num_classes, **kw)


@register_model("resnet8x4", family="cifar")
def resnet8x4(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(8, _WIDE, num_classes=num_classes, **kw)


@register_model("resnet32x4", family="cifar")
def resnet32x4(num_classes: int = 100, **kw) -> ResNet:
    return ResNet(32, _WIDE, num_classes=num_classes, **kw)
