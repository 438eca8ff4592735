"""Tiny 4-stage embedding nets (torchvision ResNet module names) for fast metric-learning tests.

``tiny_metric`` (widths 8-16-32-64) and ``tiny_metric_wide`` (16-32-64-128, a teacher whose
channels differ so FitNet regressors and AOMD adapters are real convolutions). Loaded with
``--plugin`` so spawned DDP processes register them too.
"""
from collections import OrderedDict

from torch import nn

from models.embedding_nets import EmbeddingNet
from models.registry import list_models, register_model


def _tiny(widths):
    def stage(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    def factory(num_classes=None, embedding_size=128, l2normalize=True, pretrained=False, init_weights=None):
        if pretrained or init_weights:
            raise ValueError("tiny test nets have no pretrained or initial weights")
        base = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), bn1=nn.BatchNorm2d(widths[0]), relu=nn.ReLU(),
            maxpool=nn.MaxPool2d(2), layer1=stage(widths[0], widths[0], 1), layer2=stage(widths[0], widths[1], 2),
            layer3=stage(widths[1], widths[2], 2), layer4=stage(widths[2], widths[3], 2),
            avgpool=nn.AdaptiveAvgPool2d(1)))
        return EmbeddingNet(base, widths[3], embedding_size, l2normalize)

    return factory


for _name, _widths in (("tiny_metric", (8, 16, 32, 64)), ("tiny_metric_wide", (16, 32, 64, 128))):
    if _name not in list_models("metric"):  # a --plugin may be loaded more than once
        register_model(_name, family="metric")(_tiny(_widths))
