"""CIFAR VGGs with BN (five conv blocks, single linear head), state_dict-compatible with
RepDistiller's ``vgg.py`` (its ``vgg*_bn`` factories, registered here as ``vgg8`` ... ``vgg19``).

Each block is a Sequential ending in a BN (its trailing ReLU is dropped, as in the reference,
so the Sequential indices in the keys match). The ReLU after block K is the module ``reluK``:
``stageK`` is its output and ``stageK_preact`` its input, for K = 1..4 (``stem`` = ``relu0``).
As in the reference, ``pool3`` only runs for 64x64 inputs, so block3 and block4 are both 4x4
at 32x32. The pooled map ``last_map`` is RepDistiller's ``feat[-2]`` (block4 after its ReLU).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

from torch import Tensor, nn

from core.taps import TapPoint, head_taps
from models.registry import register_model

CFG = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512],
          [512, 512, 512, 512]],
}


def make_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    """conv-BN-ReLU repeated, without the last ReLU (applied by the parent as ``reluK``)."""
    layers: List[nn.Module] = []
    for v in widths:
        layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v),
                   nn.ReLU(inplace=True)]
        in_channels = v
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg: List[List[int]], num_classes: int = 100):
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in cfg[:-1]]
        for k, (widths, c_in) in enumerate(zip(cfg, in_channels)):
            setattr(self, f"block{k}", make_block(widths, c_in))
            setattr(self, f"relu{k}", nn.ReLU())
        for k in range(4):
            setattr(self, f"pool{k}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(self.flatten(self.pool4(x)))

    def tap_points(self) -> Dict[str, TapPoint]:
        points = {"stem": TapPoint("relu0"), "stem_preact": TapPoint("relu0", "input")}
        for k in range(1, 5):
            points[f"stage{k}"] = TapPoint(f"relu{k}")
            points[f"stage{k}_preact"] = TapPoint(f"relu{k}", "input")
            points[f"stage{k}_bn"] = TapPoint(f"block{k}.{len(getattr(self, f'block{k}')) - 1}", "module")
        points.update(head_taps("classifier", pool="pool4"))
        return points


@register_model("vgg8", family="cifar")
def vgg8(num_classes: int = 100, **kw) -> VGG:
    return VGG(CFG["S"], num_classes=num_classes, **kw)


@register_model("vgg11", family="cifar")
def vgg11(num_classes: int = 100, **kw) -> VGG:
    return VGG(CFG["A"], num_classes=num_classes, **kw)


@register_model("vgg13", family="cifar")
def vgg13(num_classes: int = 100, **kw) -> VGG:
    return VGG(CFG["B"], num_classes=num_classes, **kw)


@register_model("vgg16", family="cifar")
def vgg16(num_classes: int = 100, **kw) -> VGG:
    return VGG(CFG["D"], num_classes=num_classes, **kw)


@register_model("vgg19", family="cifar")
def vgg19(num_classes: int = 100, **kw) -> VGG:
    return VGG(CFG["E"], num_classes=num_classes, **kw)
