"""A BatchNorm-free CIFAR model for tests that compare runs over different process counts.

BatchNorm statistics depend on the per-process batch (SyncBatchNorm is GPU-only), so
exact multi-process equivalence is tested on a GroupNorm network.
"""
from torch import nn

from core.taps import TapPoint
from models import register_model


class NoBNNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, num_classes)

    def tap_points(self):
        return {"stem": TapPoint("stem"), "stage1": TapPoint("stage1"), "last_map": TapPoint("pool", "input"),
                "pooled": TapPoint("fc", "input"), "logits": TapPoint(""), "classifier": TapPoint("fc", "module")}

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stage1(self.stem(x)))))


@register_model("test_nobn", family="cifar", override=True)
def test_nobn(num_classes=10):
    return NoBNNet(num_classes)
