"""Taps on unmodified timm models of every family, model options, and the teacher's own input.

The stage maps are checked against timm's own ``forward_intermediates`` (NCHW, prefix tokens
dropped) at the blocks the tap map chose, ``pooled`` against ``forward_head(pre_logits=True)``,
``logits`` against ``forward``. Models are small: 32x32 inputs, reduced depths where timm takes them.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.taps import FeatureTaps, TapError, standard_taps
from models import ModelOptionError, attach_teacher_input, create_model, model_options_of, timm_input_config
from models.timm_taps import derive_timm_taps, isotropic_stage_blocks

SWIN = dict(img_size=32, window_size=2, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
#: name, options, stage shapes, stage modules, prefix tokens (None: no token taps), last_map is avg-pooled
FAMILIES = {
    "vit": ("timm:vit_tiny_patch16_224", dict(img_size=32, patch_size=4, depth=4), [(192, 8, 8)] * 4,
            ["blocks.0", "blocks.1", "blocks.2", "blocks.3"], 1, False),
    "vit12": ("timm:vit_tiny_patch16_224", dict(img_size=32, patch_size=8), [(192, 4, 4)] * 4,
              ["blocks.1", "blocks.3", "blocks.9", "blocks.11"], 1, False),  # OFA-KD's blocks
    "vit_reg_avg": ("timm:vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=4, reg_tokens=4,
                                                      global_pool="avg"), [(192, 4, 4)] * 4,
                    ["blocks.0", "blocks.1", "blocks.2", "blocks.3"], 5, False),  # fc_norm after the average
    "deit_distilled": ("timm:deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=4, depth=4),
                       [(192, 8, 8)] * 4, ["blocks.0", "blocks.1", "blocks.2", "blocks.3"], 2, False),
    "swin": ("timm:swin_tiny_patch4_window7_224", SWIN, [(24, 8, 8), (48, 4, 4), (96, 2, 2), (192, 1, 1)],
             ["layers.0", "layers.1", "layers.2", "layers.3"], None, True),
    "convnext_atto": ("timm:convnext_atto", {}, [(40, 8, 8), (80, 4, 4), (160, 2, 2), (320, 1, 1)],
                      ["stages.0", "stages.1", "stages.2", "stages.3"], None, False),
    "convnext_femto": ("timm:convnext_femto", {}, [(48, 8, 8), (96, 4, 4), (192, 2, 2), (384, 1, 1)],
                       ["stages.0", "stages.1", "stages.2", "stages.3"], None, False),
    "mixer": ("timm:mixer_s16_224", dict(img_size=32), [(512, 2, 2)] * 4,
              ["blocks.0", "blocks.2", "blocks.6", "blocks.7"], 0, True),
    "resmlp": ("timm:resmlp_12_224", dict(img_size=32), [(384, 2, 2)] * 4,
               ["blocks.1", "blocks.3", "blocks.9", "blocks.11"], 0, True),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(family):
    name, options, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return create_model(name, num_classes=10, **options).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stage_maps_pooled_and_logits(family):
    name, options, stage_shapes, stage_modules, prefix, avg_pooled = FAMILIES[family]
    model = _build(family)
    points = model.tap_points
    assert [points[f"stage{k}"].module for k in range(1, 5)] == stage_modules
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, standard_taps(model)) as taps:
        shapes = taps.shapes(x)
        with torch.no_grad():
            feats = taps(x)
    assert shapes["stages"] == stage_shapes
    assert shapes["last_map"] == stage_shapes[-1]  # the final map: same width and grid as the last stage
    assert shapes["logits"] == (10,) and shapes["pooled"] == (stage_shapes[-1][0],)
    with torch.no_grad():
        blocks = [int(m.rsplit(".", 1)[1]) for m in stage_modules]
        expected = model.forward_intermediates(x, indices=blocks, intermediates_only=True)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    for k, (got, want) in enumerate(zip(feats["stages"], expected), start=1):
        torch.testing.assert_close(got, want, msg=f"stage{k}")
    torch.testing.assert_close(feats["pooled"], pre_logits)  # class token, average or DeiT's (cls + dist) / 2
    torch.testing.assert_close(feats["logits"], logits)
    if avg_pooled:
        torch.testing.assert_close(feats["last_map"].mean((2, 3)), feats["pooled"])
    if family != "deit_distilled":  # its two heads read two tokens; its classifier is the class-token head
        torch.testing.assert_close(feats["classifier"](feats["pooled"]), feats["logits"])
    if prefix is None:
        assert not any(n.endswith("_tokens") for n in points)
        return
    tokens = feats["stage1_tokens"]
    grid = stage_shapes[0][1:]
    assert tokens.shape == (2, prefix + grid[0] * grid[1], stage_shapes[0][0])
    assert points["stage1"].transform.prefix == prefix
    patches = tokens[:, prefix:].transpose(1, 2).reshape(2, -1, *grid)
    torch.testing.assert_close(feats["stage1"], patches)  # prefix tokens dropped, row-major grid


def test_vit_last_map_is_the_final_norm_patch_grid():
    model = _build("vit")
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, ["last_map", "pooled"]) as taps, torch.no_grad():
        feats = taps(x)
        tokens = model.forward_features(x)
    torch.testing.assert_close(feats["last_map"], tokens[:, 1:].transpose(1, 2).reshape(2, 192, 8, 8))
    torch.testing.assert_close(feats["pooled"], tokens[:, 0])  # the class token after the final norm


def test_register_tokens_are_prefix_tokens_of_an_avg_pooled_vit():
    model = _build("vit_reg_avg")  # class token + 4 registers; the average is over patch tokens only
    with FeatureTaps(model, ["last_map", "pooled"]) as taps, torch.no_grad():
        feats = taps(torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(model.fc_norm(feats["last_map"].mean((2, 3))), feats["pooled"])


def test_residual_stream_preact_is_the_stage_and_resnet_preact_is_before_relu():
    vit = _build("vit")
    assert vit.tap_points["stage2_preact"] == vit.tap_points["stage2"]  # no activation ends a ViT block
    model = create_model("timm:resnet18", num_classes=10).eval()
    assert model.tap_points["stage4_preact"].module == "layer4.1.act2"
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_(0, 0.5)
    with FeatureTaps(model, ["stages", "stages_preact"]) as taps, torch.no_grad():
        feats = taps(torch.randn(2, 3, 32, 32))
    for stage, pre in zip(feats["stages"], feats["stages_preact"]):
        assert (pre < 0).any()
        torch.testing.assert_close(F.relu(pre), stage)


@pytest.mark.parametrize("depth,blocks", [(12, [1, 3, 9, 11]), (24, [3, 7, 19, 23]), (8, [0, 2, 6, 7]),
                                          (4, [0, 1, 2, 3]), (5, [0, 1, 3, 4]), (2, [0, 1])])
def test_isotropic_stage_blocks(depth, blocks):
    assert isotropic_stage_blocks(depth) == blocks


def test_isotropic_stage_blocks_increase_and_end_at_the_last_block():
    for depth in range(4, 65):
        blocks = isotropic_stage_blocks(depth)
        assert len(blocks) == 4 and blocks[-1] == depth - 1
        assert all(a < b for a, b in zip(blocks, blocks[1:])), depth


class _NoLayout(nn.Module):
    """A classifier without feature_info, as an unknown timm layout looks to the tap map."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 5)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.body(x))


def test_unknown_layout_gives_head_taps_and_a_reason_for_stages():
    model = _NoLayout()
    derived = derive_timm_taps(model)
    assert set(derived.points) == {"logits", "pooled", "classifier"}
    assert "declares no feature_info" in derived.unavailable["stages"]
    model.tap_points, model.unavailable_taps = derived.points, derived.unavailable
    with FeatureTaps(model, ["pooled", "logits"]) as taps:
        feats = taps(torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(model.fc(feats["pooled"]), feats["logits"])
    with pytest.raises(TapError, match="'stages' matches no tap: timm model _NoLayout declares no feature_info"):
        FeatureTaps(model, ["stages"])
    with pytest.raises(TapError, match="has no tap 'stage2': timm model _NoLayout declares no feature_info"):
        FeatureTaps(model, ["stage2"])


def test_a_model_that_cannot_run_its_dry_run_keeps_its_head_taps():
    model = _NoLayout()
    model.feature_info = [{"module": "body.0", "num_chs": 4, "reduction": 1}]
    model.forward = lambda x: (_ for _ in ()).throw(RuntimeError("needs 5 channels"))
    derived = derive_timm_taps(model)
    assert set(derived.points) == {"logits", "pooled", "classifier"}
    assert derived.unavailable["stages"].startswith("its dry run failed (RuntimeError: needs 5 channels)")


def test_model_options_are_recorded_and_rebuild_the_model():
    model = create_model("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=2)
    options = model_options_of(model)
    assert options == {"img_size": 32, "patch_size": 4, "depth": 2}
    rebuilt = create_model(model.arch, num_classes=10, **options)
    rebuilt.load_state_dict(model.state_dict())  # same architecture, strict
    assert model_options_of(create_model("resnet8", num_classes=10)) == {}


@pytest.mark.parametrize("name,options,message", [
    ("timm:resnet18", {"img_size": 32},
     "timm:resnet18 takes no model option 'img_size'; ResNet takes: .*drop_path_rate"),
    ("timm:mixer_s16_224", {"num_blocks": 2},
     "timm:mixer_s16_224 fixes 'num_blocks' itself .*MlpMixer takes: .*img_size"),
    ("torchvision:resnet18", {"patch_size": 4}, "torchvision:resnet18 takes no model option 'patch_size'"),
    ("resnet8", {"img_size": 32}, "resnet8 takes no model option 'img_size'; ResNet takes: "),
])
def test_unknown_model_option_is_one_line(name, options, message):
    with pytest.raises(ModelOptionError, match=message) as err:
        create_model(name, num_classes=10, **options)
    assert "\n" not in str(err.value)


def test_teacher_input_hook_equals_the_same_by_hand():
    teacher = _build("vit")  # 32x32 input, timm's (0.5, 0.5, 0.5) normalisation
    data_mean, data_std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100
    config = timm_input_config(teacher)
    assert config["size"] == (32, 32) and config["mean"] == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 24, 24)  # the student's data: another size and normalisation
    images = x * torch.tensor(data_std).view(1, 3, 1, 1) + torch.tensor(data_mean).view(1, 3, 1, 1)
    by_hand = F.interpolate((images - 0.5) / 0.5, size=(32, 32), mode="bicubic", align_corners=False)
    with torch.no_grad():
        expected = teacher(by_hand)
        handle = attach_teacher_input(teacher, data_mean, data_std, config["mean"], config["std"], config["size"],
                                      config["interpolation"])
        with FeatureTaps(teacher, ["logits", "stage1"]) as taps:
            feats = taps(x)
        handle.remove()
        plain = teacher(by_hand)
    torch.testing.assert_close(feats["logits"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, expected)  # the handle removed the hook
    assert feats["stage1"].shape == (2, 192, 8, 8)


def test_teacher_input_hook_downsizes_with_antialias_and_checks_its_arguments():
    model = nn.Identity()
    handle = attach_teacher_input(model, (0.0,), (1.0,), (0.5,), (2.0,), teacher_size=4)
    x = torch.rand(1, 1, 8, 8)
    expected = F.interpolate((x - 0.5) / 2.0, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(model(x), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16()).dtype == torch.bfloat16
    handle.remove()
    with pytest.raises(ValueError, match="one value per channel; got lengths"):
        attach_teacher_input(model, (0.0, 0.0), (1.0,), (0.5,), (2.0,))
    with pytest.raises(ValueError, match=r"teacher_std=\[0.0\] must be positive"):
        attach_teacher_input(model, (0.0,), (1.0,), (0.5,), (0.0,))
    with pytest.raises(ValueError, match="interpolation='lanczos'; accepted: bilinear, bicubic, nearest, area"):
        attach_teacher_input(model, (0.0,), (1.0,), (0.5,), (1.0,), interpolation="lanczos")
