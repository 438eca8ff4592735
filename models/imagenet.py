"""The ImageNet zoo (models-and-data.md §2): torchvision networks under the references' names,
and MobileNetV1, which torchvision lacks (the ResNet50 -> MobileNetV1 benchmark needs it).

Names (family ``imagenet``, so ``--dataset imagenet --model ResNet50`` is torchvision's
ResNet-50, not the CIFAR variant): ``ResNet18``, ``ResNet34``, ``ResNet50``, ``MobileNetV1``,
``MobileNetV2``, ``ShuffleV2`` (SimKD's ``MobileNetV2_Imagenet``/``ShuffleV2_Imagenet`` too).
Any other torchvision or timm network is reachable as ``torchvision:<name>`` / ``timm:<name>``.

Each factory takes ``pretrained``: torchvision's ImageNet weights (1000 classes); offline
this fails with :data:`models.external.OFFLINE_HINT`. MobileNetV1 has no torchvision
weights: start it from a checkpoint, or use ``timm:mobilenetv1_100``.
"""
from __future__ import annotations

from typing import Dict

from torch import nn

from core.taps import TapPoint
from models.external import create_external
from models.registry import register_model

#: MobileNetV1 1.0 body: (output channels, stride) of each depthwise-separable block
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
#: indices in ``model`` of the last block of each stride-4/8/16/32 stage (mdistiller's feature split)
MOBILENET_V1_STAGES = (3, 5, 11, 13)


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def _conv_dw(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    """MobileNetV1, width 1.0 (4.23M parameters with 1000 classes).

    Module names follow mdistiller's ImageNet MobileNetV1 (``model.<i>``, ``fc``) so its
    state_dicts load; the fixed 7x7 average pool became adaptive, so smaller crops
    (Tiny-ImageNet's 64) work too.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, c_in = [_conv_bn(3, 32, 2)], 32
        for c_out, stride in MOBILENET_V1_BLOCKS:
            layers.append(_conv_dw(c_in, c_out, stride))
            c_in = c_out
        self.model = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.avgpool(self.model(x)).flatten(1))

    def tap_points(self) -> Dict[str, TapPoint]:
        """stem (stride 2), stage1..4 (strides 4/8/16/32) and their pre-ReLU maps, head taps."""
        points = {"stem": TapPoint("model.1"), "last_map": TapPoint("avgpool", "input"),
                  "pooled": TapPoint("fc", "input"), "logits": TapPoint("", "output"),
                  "classifier": TapPoint("fc", "module")}
        for k, idx in enumerate(MOBILENET_V1_STAGES, start=1):
            points[f"stage{k}"] = TapPoint(f"model.{idx}")
            points[f"stage{k}_preact"] = TapPoint(f"model.{idx}.5", "input")
        return points


@register_model("MobileNetV1", family="imagenet")
def mobilenet_v1(num_classes: int = 1000, pretrained: bool = False) -> MobileNetV1:
    if pretrained:
        raise ValueError("MobileNetV1 has no torchvision pretrained weights: load a checkpoint "
                         "(--path_t) or use timm:mobilenetv1_100 with pretrained weights")
    return MobileNetV1(num_classes)


def _register_torchvision(name: str, arch: str) -> None:
    def factory(num_classes: int = 1000, pretrained: bool = False, **kwargs) -> nn.Module:
        return create_external(f"torchvision:{arch}", num_classes=num_classes, pretrained=pretrained, **kwargs)

    factory.__doc__ = f"torchvision's ``{arch}`` with the standard tap map."
    register_model(name, family="imagenet")(factory)


# Names are scoped to the imagenet family (ResNet50 here is not the CIFAR ResNet50); SimKD's
# spellings MobileNetV2_Imagenet / ShuffleV2_Imagenet are accepted as well.
for _name, _arch in (("ResNet18", "resnet18"), ("ResNet34", "resnet34"), ("ResNet50", "resnet50"),
                     ("MobileNetV2", "mobilenet_v2"), ("ShuffleV2", "shufflenet_v2_x1_0"),
                     ("MobileNetV2_Imagenet", "mobilenet_v2"), ("ShuffleV2_Imagenet", "shufflenet_v2_x1_0")):
    _register_torchvision(_name, _arch)
