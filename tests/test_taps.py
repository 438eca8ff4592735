"""Hook-based feature taps on plain models: capture, pre-activations, early stop, cleanup."""
import gc
import warnings

import pytest
import torch
from torch import nn

from core.taps import (ChannelsLastToMap, FeatureTaps, PrefixMean, TapError, TapPoint, TokensToMap, count_hooks,
                       standard_taps)
from models import create_model


class Tiny(nn.Module):
    """A plain model with an in-place ReLU after its only block, like the zoo's."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 5)
        self.calls = []
        self.fc.register_forward_pre_hook(lambda m, a: self.calls.append("fc"))

    def tap_points(self):
        return {"stage1": TapPoint("relu"), "stage1_preact": TapPoint("relu", "input"),
                "last_map": TapPoint("pool", "input"), "pooled": TapPoint("fc", "input"),
                "logits": TapPoint(""), "classifier": TapPoint("fc", "module")}

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def test_capture_standard_taps_and_groups():
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(model, ["stages", "pooled", "logits", "classifier"]) as taps:
        feats = taps(x)
    assert feats["stages"][0].shape == (2, 4, 8, 8)
    assert torch.allclose(feats["logits"], model(x))
    assert torch.allclose(model.fc(feats["pooled"]), feats["logits"])
    assert feats["classifier"] is model.fc


def test_preact_survives_inplace_relu():
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(model, ["stage1", "stage1_preact"]) as taps:
        feats = taps(x)
    expected = model.bn(model.conv(x))
    assert (feats["stage1_preact"] < 0).any()
    assert torch.allclose(feats["stage1_preact"], expected)
    assert torch.allclose(feats["stage1"], expected.clamp_min(0))


def test_torchvision_preact_is_the_residual_sum():
    """torchvision's block reuses one in-place ReLU; the last call's input is the preact sum."""
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, ["stage3", "stage4_preact"]) as taps:
        feats = taps(x)
    block = model.layer4[1]
    h = feats["stage3"]
    with torch.no_grad():
        h = model.layer4[0](h)
        out = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h))))) + h
    assert (feats["stage4_preact"] < 0).any()
    assert torch.allclose(feats["stage4_preact"], out, atol=1e-5)


def test_timm_and_torchvision_shape_specs():
    for name in ("timm:resnet18", "torchvision:mobilenet_v2"):
        model = create_model(name, num_classes=7)
        with FeatureTaps(model, standard_taps(model)) as taps:
            shapes = taps.shapes(torch.randn(2, 3, 32, 32))
        assert shapes["logits"] == (7,)
        assert shapes["classifier"][0] == 7 and shapes["pooled"] == (shapes["classifier"][1],)
        assert len(shapes["stages"]) == 4


def test_module_path_taps_and_unknown_tap():
    model = Tiny()
    with FeatureTaps(model, ["conv", "bn:input"]) as taps:
        feats = taps(torch.randn(1, 3, 4, 4))
    assert torch.equal(feats["conv"], feats["bn:input"])
    with pytest.raises(TapError, match="Unknown tap 'stage9'.*Standard taps"):
        FeatureTaps(model, ["stage9"])


def test_standard_tap_module_is_the_module_at_its_path():
    """``stage2:module`` is the module whose output is ``stage2``: calling it on ``stage1`` gives ``stage2``."""
    model = create_model("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, ["stage1", "stage2", "stage2:module", "last_map:module"]) as taps:
        feats = taps(x)
        assert taps.shapes(x)["stage2:module"] == ()  # a module without a weight of its own
    assert feats["stage2:module"] is model.layer2 and feats["last_map:module"] is model.avgpool
    with torch.no_grad():
        assert torch.equal(feats["stage2:module"](feats["stage1"]), feats["stage2"])
    assert FeatureTaps(Tiny(), ["classifier:module"]).points["classifier:module"] == TapPoint("fc", "module")
    with pytest.raises(TapError, match="Unknown tap 'stage7:module'.*'<standard tap>:module'"):
        FeatureTaps(model, ["stage7:module"])


def test_early_stop_skips_the_head_of_a_feature_teacher():
    model = Tiny().eval()
    with FeatureTaps(model, ["stage1"], stop_early=True) as taps:
        taps(torch.randn(2, 3, 8, 8))      # first forward runs whole and learns the cut
        model.calls.clear()
        feats = taps(torch.randn(2, 3, 8, 8))
    assert model.calls == [] and feats["stage1"].shape == (2, 4, 8, 8)
    with FeatureTaps(model, ["stage1", "logits"], stop_early=True) as taps:
        taps(torch.randn(2, 3, 8, 8))
        model.calls.clear()
        taps(torch.randn(2, 3, 8, 8))
    assert model.calls == ["fc"]  # logits requested: no cut


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_hooks_removed_and_nothing_accumulates():
    model = create_model("torchvision:resnet18", num_classes=10)
    before_hooks = count_hooks(model)
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, standard_taps(model)) as taps:
        assert count_hooks(model) > before_hooks
        for _ in range(3):
            taps(x)
        baseline = _live_tensors()
        for _ in range(50):
            feats = taps(x)
            feats["logits"].sum().backward()
        del feats
        assert _live_tensors() <= baseline
    assert count_hooks(model) == before_hooks


def test_a_transform_applies_per_name_on_a_shared_site():
    """Two names on one module share one hook; each gets its own transform, computed at capture."""
    model = Tiny().eval()
    points = {**model.tap_points(), "stage1_nhwc": TapPoint("relu", "output", ChannelsLastToMap()),
              "stage1_mean2": TapPoint("relu", "output", PrefixMean(2))}
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(model, ["stage1", "stage1_nhwc", "stage1_mean2"], points=points, stop_early=True) as taps:
        assert taps.num_hooks == 1
        taps(x)
        model.calls.clear()
        feats = taps(x)  # the cut forward: the transforms still apply
    assert model.calls == []
    assert feats["stage1"].shape == (2, 4, 8, 8)
    assert torch.equal(feats["stage1_nhwc"], feats["stage1"].permute(0, 3, 1, 2))
    assert torch.equal(feats["stage1_mean2"], feats["stage1"][:, :2].mean(1))


def test_tokens_to_map_drops_prefix_tokens_and_checks_the_grid():
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # 2 prefix tokens + a 2x2 grid
    grid = TokensToMap(2, (2, 2))(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[:, :, 1, 0], tokens[:, 2 + 2])
    assert TokensToMap(2, (3, 3))(torch.zeros(1, 2 + 16, 3)).shape == (1, 3, 4, 4)  # another length: square
    with pytest.raises(TapError, match="5 patch tokens .* make no 2x2 grid and no square one"):
        TokensToMap(1, (2, 2))(torch.zeros(1, 6, 3))
    with pytest.raises(ValueError, match="takes no transform"):
        TapPoint("fc", "module", ChannelsLastToMap())


def test_an_unavailable_tap_says_why():
    model = Tiny()
    model.unavailable_taps = {"stages_preact": "its blocks end in no activation module"}
    with pytest.raises(TapError, match="has no tap 'stage2_preact': its blocks end in no activation module"):
        FeatureTaps(model, ["stage2_preact"])
    with pytest.raises(TapError, match="Unknown tap 'stage9'.*Standard taps"):  # no reason declared: the list
        FeatureTaps(model, ["stage9"])
