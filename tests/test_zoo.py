"""CIFAR zoo: exact parameter counts, RepDistiller state_dict keys, tap shapes and pre-activations.

Reference numbers come from HobbitLong/RepDistiller's ``models/`` definitions (models-and-data.md
§1.1 and §1.3); the key lists were written down from those definitions, so a renamed attribute
(which would break loading published checkpoints) fails here.
"""
import inspect
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.taps import FeatureTaps
from models import create_model, list_models

PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756,
    "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564,
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "ResNet50": 23_705_252, "MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
}
ZOO = sorted(PARAMS)

# Per-sample shapes at 32x32: stem, stage1..N, last_map, pooled (models-and-data.md §1.1).
_RESNET = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 8, 8), (64,)]
_VGG = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512, 4, 4), (512,)]


def _wrn(k):
    return [(16, 32, 32), (16 * k, 32, 32), (32 * k, 16, 16), (64 * k, 8, 8), (64 * k, 8, 8),
            (64 * k,)]


SHAPES = {
    **{n: _RESNET for n in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44",
                            "resnet56", "resnet110")},
    **{n: [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256, 8, 8), (256,)]
       for n in ("resnet8x4", "resnet32x4")},
    "wrn_16_1": _wrn(1), "wrn_40_1": _wrn(1), "wrn_16_2": _wrn(2), "wrn_40_2": _wrn(2),
    **{n: _VGG for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "ResNet50": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4),
                 (2048, 4, 4), (2048,)],
    # last_map is the pooled conv2 output (RepD's feat[-2] is stage4, 160x2x2)
    "MobileNetV2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2),
                    (1280, 2, 2), (1280,)],
    "ShuffleV1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960, 4, 4), (960,)],
    # last_map is the pooled ReLU(BN(conv2)) output (RepD's feat[-2] is stage3, 464x4x4)
    "ShuffleV2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024, 4, 4),
                  (1024,)],
}

# RepDistiller state_dict: number of entries for every model ...
NUM_KEYS = {
    "resnet8": 56, "resnet14": 92, "resnet20": 128, "resnet32": 200, "resnet44": 272,
    "resnet56": 344, "resnet110": 668, "resnet8x4": 62, "resnet32x4": 206,
    "wrn_16_1": 82, "wrn_16_2": 83, "wrn_40_1": 226, "wrn_40_2": 227,
    "vgg8": 37, "vgg11": 58, "vgg13": 72, "vgg16": 93, "vgg19": 114,
    "MobileNetV2": 320, "ShuffleV1": 296, "ShuffleV2": 338, "ResNet50": 320,
}
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# ... and for one model per family: first keys, last keys, landmark keys with shapes.
REPD_KEYS = {
    "resnet8": dict(
        first=["conv1.weight"] + [f"bn1.{s}" for s in _BN] + ["layer1.0.conv1.weight"],
        last=["layer3.0.downsample.1.running_var", "layer3.0.downsample.1.num_batches_tracked",
              "fc.weight", "fc.bias"],
        shapes={"layer2.0.downsample.0.weight": (32, 16, 1, 1),
                "layer3.0.downsample.0.weight": (64, 32, 1, 1), "layer3.0.bn2.weight": (64,)}),
    "wrn_16_1": dict(
        first=["conv1.weight"] + [f"block1.layer.0.bn1.{s}" for s in _BN]
              + ["block1.layer.0.conv1.weight"],
        last=["bn1.running_var", "bn1.num_batches_tracked", "fc.weight", "fc.bias"],
        shapes={"block2.layer.0.convShortcut.weight": (32, 16, 1, 1),
                "block3.layer.0.convShortcut.weight": (64, 32, 1, 1),
                "block1.layer.1.conv2.weight": (16, 16, 3, 3), "block3.layer.1.bn2.weight": (64,)},
        absent=["block1.layer.0.convShortcut.weight"]),
    "vgg8": dict(
        first=["block0.0.weight", "block0.0.bias"] + [f"block0.1.{s}" for s in _BN],
        last=["block4.1.running_var", "block4.1.num_batches_tracked",
              "classifier.weight", "classifier.bias"],
        shapes={"block4.0.weight": (512, 512, 3, 3), "block1.1.running_mean": (128,)}),
    "vgg13": dict(
        first=["block0.0.weight", "block0.0.bias"] + [f"block0.1.{s}" for s in _BN],
        last=["block4.4.running_var", "block4.4.num_batches_tracked",
              "classifier.weight", "classifier.bias"],
        shapes={"block0.3.weight": (64, 64, 3, 3)}),
    "MobileNetV2": dict(
        first=["conv1.0.weight"] + [f"conv1.1.{s}" for s in _BN] + ["blocks.0.0.conv.0.weight"],
        last=["conv2.1.running_var", "conv2.1.num_batches_tracked",
              "classifier.0.weight", "classifier.0.bias"],
        shapes={"blocks.0.0.conv.6.weight": (8, 16, 1, 1),
                "blocks.1.1.conv.6.weight": (12, 72, 1, 1), "blocks.6.0.conv.7.weight": (160,),
                "conv2.0.weight": (1280, 160, 1, 1)}),
    "ShuffleV1": dict(
        first=["conv1.weight"] + [f"bn1.{s}" for s in _BN] + ["layer1.0.conv1.weight"],
        last=["layer3.3.bn3.running_var", "layer3.3.bn3.num_batches_tracked",
              "linear.weight", "linear.bias"],
        shapes={"layer1.0.conv1.weight": (54, 24, 1, 1), "layer1.0.conv3.weight": (216, 18, 1, 1),
                "layer2.0.conv1.weight": (60, 80, 1, 1)}),
    "ShuffleV2": dict(
        first=["conv1.weight"] + [f"bn1.{s}" for s in _BN] + ["layer1.0.conv1.weight"],
        last=["bn2.running_var", "bn2.num_batches_tracked", "linear.weight", "linear.bias"],
        shapes={"layer1.0.conv5.weight": (58, 58, 1, 1), "layer1.3.bn3.weight": (58,),
                "conv2.weight": (1024, 464, 1, 1)}),
    "ResNet50": dict(
        first=["conv1.weight"] + [f"bn1.{s}" for s in _BN] + ["layer1.0.conv1.weight"],
        last=["layer4.2.bn3.running_var", "layer4.2.bn3.num_batches_tracked",
              "linear.weight", "linear.bias"],
        shapes={"layer1.0.shortcut.0.weight": (256, 64, 1, 1),
                "layer4.2.conv3.weight": (2048, 512, 1, 1)}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batches of 2 gain nothing from intra-op threads, and on a busy 2-core box the
    thread hand-offs make forwards ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(size=32):
    return torch.randn(2, 3, size, size)


def _num_stages(name):
    return len(SHAPES[name]) - 3


#: Models without a BatchNorm feeding each stage's final ReLU (no ``stageK_bn`` taps).
NO_STAGE_BN = ("ShuffleV1", "ShuffleV2")


def _standard_names(name):
    stages = [f"stage{k}" for k in range(1, _num_stages(name) + 1)]
    bns = [] if name in NO_STAGE_BN else [f"{s}_bn" for s in stages]
    return (["stem", "stem_preact"] + stages + [f"{s}_preact" for s in stages] + bns
            + ["last_map", "pooled", "logits", "classifier"])


def _tap(model, names, x):
    """Run ``model`` once under no_grad and return the named taps (hooks removed after)."""
    with torch.no_grad(), FeatureTaps(model, names) as taps:
        return taps(x)


def _randomize_bn(model):
    """Non-trivial BN statistics and affine terms, so 'the next BN' is not ~identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    return model.eval()


def test_registry_lists_the_whole_zoo():
    assert set(ZOO) <= set(list_models("cifar"))


@pytest.mark.parametrize("name", ZOO)
def test_param_count_exact(name):
    model = create_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", ZOO)
def test_tap_shapes_and_classifier(name):
    model = create_model(name).eval()
    assert list(inspect.signature(model.forward).parameters) == ["x"]  # no is_feat/preact flags
    assert set(model.tap_points()) == set(_standard_names(name))

    with FeatureTaps(model, _standard_names(name)) as taps:
        shapes = taps.shapes(_x())
    stem, *stages, last_map, pooled = SHAPES[name]
    assert shapes["stem"] == shapes["stem_preact"] == stem
    for k, shape in enumerate(stages, start=1):
        assert shapes[f"stage{k}"] == shapes[f"stage{k}_preact"] == shape, k
        if name not in NO_STAGE_BN:  # the BN whose output enters stage k's final ReLU (OFD's margins)
            assert shapes[f"stage{k}_bn"] == (shape[0],), k
    assert shapes["last_map"] == last_map
    assert shapes["pooled"] == pooled
    assert shapes["logits"] == (100,)
    assert shapes["classifier"] == (100, pooled[0])

    feats = _tap(model, ["pooled", "last_map", "logits", "classifier"], _x())
    assert isinstance(feats["classifier"], nn.Linear)
    torch.testing.assert_close(feats["classifier"](feats["pooled"]), feats["logits"])
    torch.testing.assert_close(feats["last_map"].mean((2, 3)), feats["pooled"])


@pytest.mark.parametrize("name", ["resnet8", "vgg8", "MobileNetV2", "ShuffleV2", "wrn_16_1"])
def test_other_input_sizes(name):
    """Adaptive pooling: 64x64 inputs (e.g. Tiny-ImageNet) give logits too."""
    assert create_model(name).eval()(_x(64)).shape == (2, 100)


@pytest.mark.parametrize("name", ZOO)
def test_repd_state_dict_keys(name):
    sd = create_model(name).state_dict()
    keys = list(sd)
    assert len(keys) == NUM_KEYS[name]
    ref = REPD_KEYS.get(name)
    if ref is None:
        return
    assert keys[:len(ref["first"])] == ref["first"]
    assert keys[-len(ref["last"]):] == ref["last"]
    for key, shape in ref["shapes"].items():
        assert tuple(sd[key].shape) == shape, key
    for key in ref.get("absent", []):
        assert key not in sd


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1",
                                  "ShuffleV2", "ResNet50"])
def test_repd_checkpoint_roundtrip_strict(name):
    src = _randomize_bn(create_model(name))
    buf = io.BytesIO()
    torch.save({"model": src.state_dict()}, buf)
    buf.seek(0)
    dst = create_model(name).eval()
    dst.load_state_dict(torch.load(buf)["model"], strict=True)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_resnet20_preact_is_the_block_sum():
    """stageK_preact = bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x) of the stage's last block."""
    model = _randomize_bn(create_model("resnet20"))
    names = [f"stage{k}{s}" for k in (1, 2, 3) for s in ("", "_preact")]
    inputs = [f"layer{k}.2:input" for k in (1, 2, 3)]
    feats = _tap(model, names + inputs, _x())
    with torch.no_grad():
        for k in (1, 2, 3):
            block, x = getattr(model, f"layer{k}")[2], feats[f"layer{k}.2:input"]
            shortcut = x if block.downsample is None else block.downsample(x)
            expected = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x))))) + shortcut
            pre = feats[f"stage{k}_preact"]
            torch.testing.assert_close(pre, expected)
            assert (pre < 0).any()
            torch.testing.assert_close(F.relu(pre), feats[f"stage{k}"])


def test_wrn_stages_are_signed_and_preact_is_next_bn():
    model = _randomize_bn(create_model("wrn_16_2"))
    names = ["stem", "last_map"] + [f"stage{k}{s}" for k in (1, 2, 3) for s in ("", "_preact")]
    x = _x()
    feats = _tap(model, names, x)
    with torch.no_grad():
        torch.testing.assert_close(feats["stem"], model.conv1(x))  # before any BN
        next_bn = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
        for k, bn in enumerate(next_bn, start=1):
            stage, pre = feats[f"stage{k}"], feats[f"stage{k}_preact"]
            assert (stage < 0).any() and (pre < 0).any()
            torch.testing.assert_close(pre, bn(stage))
        torch.testing.assert_close(F.relu(feats["stage3_preact"]), feats["last_map"])


def test_vgg8_preact_four_stages():
    model = _randomize_bn(create_model("vgg8"))
    names = ["stem", "stem_preact"] + [f"stage{k}{s}" for k in range(1, 5) for s in ("", "_preact")]
    feats = _tap(model, names + ["block4"], _x())
    torch.testing.assert_close(feats["stage4_preact"], feats["block4"])
    for k in ["stem"] + [f"stage{k}" for k in range(1, 5)]:
        pre = feats[f"{k}_preact"]
        assert (pre < 0).any(), k
        torch.testing.assert_close(F.relu(pre), feats[k])


@pytest.mark.parametrize("name", ["resnet8x4", "ResNet50", "ShuffleV1"])
def test_relu_of_preact_is_the_stage(name):
    model = _randomize_bn(create_model(name))
    names = ["stem", "stem_preact"] + [f"stage{k}{s}" for k in range(1, _num_stages(name) + 1)
                                       for s in ("", "_preact")]
    feats = _tap(model, names, _x())
    for k in ["stem"] + [f"stage{k}" for k in range(1, _num_stages(name) + 1)]:
        assert (feats[f"{k}_preact"] < 0).any(), k
        torch.testing.assert_close(F.relu(feats[f"{k}_preact"]), feats[k])


def test_shufflev2_preact_is_unshuffled_concat():
    """RepD's ShuffleV2 preact is cat([x1, branch]) before the channel shuffle."""
    model = _randomize_bn(create_model("ShuffleV2"))
    names = [f"stage{k}{s}" for k in (1, 2, 3) for s in ("", "_preact")]
    feats = _tap(model, names, _x())
    for k, layer in enumerate((model.layer1, model.layer2, model.layer3), start=1):
        pre = feats[f"stage{k}_preact"]
        assert (pre < 0).any()
        torch.testing.assert_close(layer[-1].shuffle(F.relu(pre)), feats[f"stage{k}"])


def test_mobilenetv2_preact_aliases_stage():
    model = create_model("MobileNetV2")
    points = model.tap_points()
    for k in range(1, 5):
        assert points[f"stage{k}_preact"] == points[f"stage{k}"]
