"""A CIFAR model whose logits turn NaN at a chosen training forward (tests of the finiteness stop).

``NAN_AT`` (environment variable, default 9) counts training-mode forwards from 1.
"""
import os

import torch

from core.taps import TapPoint
from models import create_model, register_model


class NanAfter(torch.nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.inner = create_model("resnet8", num_classes=num_classes, family="cifar")
        self.calls = 0

    def tap_points(self):
        return {"logits": TapPoint("")}

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= int(os.environ.get("NAN_AT", 9)):
                out = out * float("nan")
        return out


@register_model("test_nan_after", family="cifar", override=True)
def test_nan_after(num_classes=10):
    return NanAfter(num_classes)
