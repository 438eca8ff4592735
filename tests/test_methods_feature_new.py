"""Method-specific checks of OFD, ICKD and CAT-KD (golden parity, the training step and
checkpoints are covered for every method by test_golden.py and test_methods_training.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillers import build_distiller
from distillers.base import ShapeSpec
from distillers.methods.catkd import DEFAULT_SETTINGS, SETTINGS_PER_PAIR, class_activation_maps
from distillers.methods.ofd import bn_margin, partial_l2


# ---------------------------------------------------------------------------- OFD
def _negative_mean_by_quadrature(m: float, s: float) -> float:
    """E[x | x < 0] for x ~ N(m, s^2), integrated numerically (independent of the closed form)."""
    x = torch.linspace(m - 12 * s, 0.0, 200_001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((x - m) / s) ** 2)
    return float(torch.trapezoid(x * pdf, x) / torch.trapezoid(pdf, x))


@pytest.mark.parametrize("weight,bias", [(1.0, 0.0), (0.5, -1.0), (-2.0, 1.5), (0.3, 0.8)])
def test_ofd_margin_is_the_mean_negative_response_of_the_bn_gaussian(weight, bias):
    margin = bn_margin(torch.tensor([weight], dtype=torch.float64), torch.tensor([bias], dtype=torch.float64))
    assert margin.item() == pytest.approx(_negative_mean_by_quadrature(bias, abs(weight)), abs=1e-6)
    if bias == 0.0:  # half-normal: -s * sqrt(2 / pi)
        assert margin.item() == pytest.approx(-abs(weight) * math.sqrt(2 / math.pi), abs=1e-12)


def test_ofd_margin_falls_back_to_three_std_when_the_negative_tail_is_empty():
    weight = torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64)
    bias = torch.tensor([3.2 * 0.5, 3.2 * 0.5, 3.0], dtype=torch.float64)  # P(x < 0) = 0.0007, 0.0007, 0.0013
    margin = bn_margin(weight, bias)
    assert margin[:2].tolist() == [-1.5, -1.5]
    assert margin[2].item() == pytest.approx(_negative_mean_by_quadrature(3.0, 1.0), abs=1e-6)


def test_ofd_partial_l2_ignores_what_the_relu_would_erase():
    margin = torch.full((1, 1, 1, 1), -0.5)
    target = torch.tensor([-2.0, -0.2, 0.7]).view(1, 1, 1, 3)  # lifted to (-0.5, -0.2, 0.7)
    # below a non-positive (lifted) target: free; above it, or any mismatch of a positive target: squared error
    assert partial_l2(torch.tensor([-3.0, -1.0, 0.7]).view(1, 1, 1, 3), target, margin) == 0
    loss = partial_l2(torch.tensor([0.0, 0.3, 0.2]).view(1, 1, 1, 3), target, margin)
    assert loss.item() == pytest.approx(0.5 ** 2 + 0.5 ** 2 + 0.5 ** 2)


def _bn(c, seed):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.2)
        bn.bias.copy_(torch.randn(c, generator=g))
    return bn.requires_grad_(False)


def test_ofd_pairs_each_stage_with_its_own_teacher_bn_when_the_teacher_is_deeper():
    """mdistiller indexes margins by aligned position (a 4-stage teacher would lend its first BNs);
    here the last three teacher stages use their own BNs."""
    s_shapes, t_shapes = [(4, 8, 8), (8, 4, 4), (8, 2, 2)], [(6, 8, 8), (10, 8, 8), (12, 4, 4), (14, 2, 2)]
    spec = ShapeSpec(student={"stages_preact": s_shapes},
                     teacher={"stages_preact": t_shapes, "stages_bn": [(c,) for c, _, _ in t_shapes]})
    ofd = build_distiller("ofd", spec)
    assert [c[0].out_channels for c in ofd.connectors] == [10, 12, 14]
    s = {"stages_preact": [torch.randn(2, *x) for x in s_shapes]}
    bns = [_bn(c, i) for i, (c, _, _) in enumerate(t_shapes)]
    t = {"stages_preact": [torch.randn(2, *x) for x in t_shapes], "stages_bn": bns}
    terms = ofd(s, t)
    assert list(terms) == ["stage1", "stage2", "stage3"]
    for k, (x, y, bn, conv) in enumerate(zip(s["stages_preact"], t["stages_preact"][1:], bns[1:], ofd.connectors)):
        out = conv(x)  # training mode: batch statistics, as in the forward above
        margin = bn_margin(bn.weight.double(), bn.bias.double()).float().view(1, -1, 1, 1)
        expected = partial_l2(out, F.adaptive_avg_pool2d(y, out.shape[-2:]), margin) / 2 ** (2 - k)
        assert torch.allclose(terms[f"stage{k + 1}"], expected, rtol=1e-5)


def test_ofd_without_teacher_batchnorm_taps_says_why():
    spec = ShapeSpec(student={"stages_preact": [(4, 8, 8)]}, teacher={"stages_preact": [(8, 8, 8)]})
    with pytest.raises(ValueError, match="tap group 'stages_bn'"):
        build_distiller("ofd", spec)


# ---------------------------------------------------------------------------- ICKD
def test_ickd_is_zero_when_the_embedded_student_has_the_teachers_channel_correlations():
    """Only channel x channel correlations meet: a teacher map that is the (rescaled) embedded
    student map upsampled 2x, at another spatial size, costs nothing."""
    spec = ShapeSpec(student={"last_map": (6, 2, 2)}, teacher={"last_map": (6, 4, 4)})
    ickd = build_distiller("ickd", spec).eval()  # BN with fresh statistics: x / sqrt(1 + eps)
    with torch.no_grad():
        ickd.embed[0].weight.copy_(torch.eye(6).view(6, 6, 1, 1))
    f_s = torch.randn(3, 6, 2, 2)
    f_t = 5.0 * F.interpolate(f_s, scale_factor=2, mode="nearest")
    assert ickd({"last_map": f_s}, {"last_map": f_t})["ickd"].item() == pytest.approx(0.0, abs=1e-10)
    assert ickd({"last_map": f_s}, {"last_map": torch.randn(3, 6, 4, 4)})["ickd"] > 0.01


def test_ickd_embeds_the_student_into_the_teacher_channels():
    spec = ShapeSpec(student={"last_map": (4, 2, 2)}, teacher={"last_map": (12, 4, 4)})
    ickd = build_distiller("ickd", spec)
    assert ickd.embed[0].weight.shape == (12, 4, 1, 1) and ickd.embed[0].bias is None
    assert sorted(n for n, _ in ickd.named_parameters()) == ["embed.0.weight", "embed.1.bias", "embed.1.weight"]


# ---------------------------------------------------------------------------- CAT-KD
def _catkd_spec(c_s=8, c_t=16, classes=5, extra=None):
    return ShapeSpec(student={"last_map": (c_s, 4, 4), "classifier": (classes, c_s)},
                     teacher={"last_map": (c_t, 8, 8), "classifier": (classes, c_t)}, extra=extra or {})


def test_catkd_cam_is_the_classifier_before_pooling():
    fc = nn.Linear(8, 5)
    feature = torch.randn(3, 8, 4, 4)
    cam = class_activation_maps(feature, fc)
    assert cam.shape == (3, 5, 4, 4)
    # pooling the CAM gives the logits without the bias (the reference's bias-free classifier)
    assert torch.allclose(cam.mean((2, 3)), fc(feature.mean((2, 3))) - fc.bias, atol=1e-6)


def test_catkd_pools_cams_to_the_resolution_and_trains_the_student_classifier():
    catkd = build_distiller("catkd", _catkd_spec(), cat_weight=1.0, cam_resolution=2, cam_normalize=True)
    fc_s, fc_t = nn.Linear(8, 5), nn.Linear(16, 5).requires_grad_(False)
    s = {"last_map": torch.randn(2, 8, 4, 4), "classifier": fc_s}
    t = {"last_map": torch.randn(2, 16, 8, 8), "classifier": fc_t}
    cams = catkd.cams(s)
    assert cams.shape == (2, 5, 2, 2)
    assert torch.allclose(cams.flatten(2).norm(dim=2), torch.ones(2, 5))
    catkd(s, t)["cat"].backward()
    assert fc_s.weight.grad.abs().sum() > 0 and fc_s.bias.grad is None  # the CAM has no bias


def test_catkd_settings_follow_the_pair_config_unless_given():
    pair = {"teacher_arch": "resnet32x4", "student_arch": "ShuffleV1"}
    catkd = build_distiller("catkd", _catkd_spec(extra=pair))
    assert (catkd.cat_weight, catkd.cam_resolution, catkd.cam_normalize) == SETTINGS_PER_PAIR[("resnet32x4", "ShuffleV1")]
    other = build_distiller("catkd", _catkd_spec(extra={"teacher_arch": "x", "student_arch": "y"}))
    assert (other.cat_weight, other.cam_resolution, other.cam_normalize) == DEFAULT_SETTINGS
    given = build_distiller("catkd", _catkd_spec(extra=pair), cat_weight=2.0, cam_normalize=False)
    assert (given.cat_weight, given.cam_resolution, given.cam_normalize) == (2.0, 4, False)


def test_catkd_needs_the_same_classes_and_a_classifier_on_the_last_map():
    spec = _catkd_spec()
    spec.teacher["classifier"] = (7, 16)
    with pytest.raises(ValueError, match="same classes"):
        build_distiller("catkd", spec)
    spec = _catkd_spec()
    spec.student["classifier"] = (5, 9)
    with pytest.raises(ValueError, match="every position of the last map"):
        build_distiller("catkd", spec)
