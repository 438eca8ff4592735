"""fitnet, at, sp, cc, vid, rkd, pkt, nst, dkd: method details, real zoo pairs, errors (golden
parity for every method: test_golden.py and test_methods_training.py)."""
import pytest
import torch

from distillers.base import ShapeSpec, build_distiller
from distillers.methods.at import last_stage_pairs
from distillers.methods.dkd import DEFAULT_BETA
from distillers.methods.fitnet import ConvReg
from core.taps import FeatureTaps, standard_taps
from models import create_model

METHODS = ["fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "dkd"]
# teacher -> student (small CIFAR models keep the file fast); wrn_40_2 has 3 stages, MobileNetV2 4
PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "MobileNetV2")]


# -- real zoo pairs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    names = {n for pair in PAIRS for n in pair}
    models = {n: create_model(n, num_classes=10) for n in names}
    x = torch.randn(2, 3, 32, 32)
    shapes = {n: FeatureTaps(m, standard_taps(m)).shapes(x) for n, m in models.items()}
    return models, shapes


@pytest.fixture(scope="module")
def teacher_features(zoo):
    """Teacher features by (teacher, taps), computed once: the frozen teacher gives the same tensors."""
    models, _ = zoo
    x = torch.randn(4, 3, 32, 32)
    cache = {}

    def get(name, tap_names):
        key = (name, tuple(tap_names))
        if key not in cache:
            with torch.no_grad(), FeatureTaps(models[name].eval(), tap_names, stop_early=True) as taps:
                cache[key] = taps(x)
        return x, cache[key]

    return get


def _spec(zoo, teacher, student):
    _, shapes = zoo
    return ShapeSpec(student=shapes[student], teacher=shapes[teacher], num_classes=10,
                     extra={"teacher_arch": teacher, "student_arch": student})


@pytest.mark.parametrize("teacher,student", PAIRS, ids=lambda n: n)
@pytest.mark.parametrize("method", METHODS)
def test_real_pair_forward_backward(zoo, teacher_features, method, teacher, student):
    models, _ = zoo
    distiller = build_distiller(method, _spec(zoo, teacher, student)).train()
    s_model = models[student].train()
    s_model.zero_grad(set_to_none=True)
    x, t = teacher_features(teacher, distiller.teacher_taps)
    batch = {"labels": torch.randint(0, 10, (4,)), "epoch": 30.0}
    with FeatureTaps(s_model, distiller.student_taps) as taps:
        s = taps(x)
    out = distiller(s, t, batch)
    loss = distiller.total(out)
    assert out and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s_model.parameters())
    for name, p in distiller.named_parameters():
        assert p.grad is not None, name


def test_stage_methods_pair_the_last_stages(zoo):
    """MobileNetV2 has 4 stages, wrn_40_2 3: student stages 2..4 meet teacher stages 1..3."""
    spec = _spec(zoo, "wrn_40_2", "MobileNetV2")
    vid = build_distiller("vid", spec)
    t_channels = [shape[0] for shape in spec.teacher["stages"]]
    s_channels = [shape[0] for shape in spec.student["stages"][1:]]
    assert [e.regressor[0].weight.shape[:2] for e in vid.estimators] == list(zip(t_channels, s_channels))

    g_s = [torch.rand(2, 4, 8, 8), torch.rand(2, 4, 4, 4), torch.rand(2, 8, 2, 2), torch.rand(2, 8, 2, 2)]
    g_t = [torch.rand(2, 6, 8, 8), torch.rand(2, 6, 4, 4), torch.rand(2, 6, 4, 4)]
    assert [i for i, _, _ in last_stage_pairs(g_s, g_t)] == [2, 3, 4]
    shapes = lambda g: [tuple(f.shape[1:]) for f in g]  # noqa: E731
    for method in ("at", "nst"):
        four = build_distiller(method, ShapeSpec({"stages": shapes(g_s)}, {"stages": shapes(g_t)}))
        three = build_distiller(method, ShapeSpec({"stages": shapes(g_s[1:])}, {"stages": shapes(g_t)}))
        a, b = four({"stages": g_s}, {"stages": g_t}), three({"stages": g_s[1:]}, {"stages": g_t})
        assert list(a) == ["stage2", "stage3", "stage4"]
        assert torch.allclose(four.total(a), three.total(b))


# -- pairs a method cannot serve, bad options ----------------------------------------------------
def test_fitnet_regressor_covers_the_three_size_cases():
    for s_hw, t_hw, kind in [(4, 2, "strided"), (4, 8, "transposed"), (8, 8, "1x1"), (5, 3, "3x3")]:
        reg = ConvReg((6, s_hw, s_hw), (10, t_hw, t_hw))
        out = reg(torch.randn(2, 6, s_hw, s_hw))
        assert out.shape == (2, 10, t_hw, t_hw) and (out >= 0).all()
        conv = reg.conv
        if kind == "strided":
            assert conv.stride == (2, 2) and conv.kernel_size == (3, 3)
        elif kind == "transposed":
            assert isinstance(conv, torch.nn.ConvTranspose2d) and conv.kernel_size == (4, 4)
        else:
            assert conv.kernel_size == ((1, 1) if kind == "1x1" else (3, 3)) and conv.stride == (1, 1)


def test_mismatched_pairs_raise_clearly(zoo):
    _, shapes = zoo
    with pytest.raises(ValueError, match="ConvReg cannot map a 2x2 student map onto a 8x8"):
        build_distiller("fitnet", ShapeSpec({"stage2": (8, 2, 2)}, {"stage2": (8, 8, 8)}))
    with pytest.raises(ValueError, match="needs tap 'stage4'.*teacher has only"):
        build_distiller("fitnet", _spec(zoo, "wrn_40_2", "MobileNetV2"), hint_layer=4)
    tokens = ShapeSpec({"stages": [(64, 192)]}, {"stages": [(16, 8, 8)]})
    for method in ("at", "nst", "vid"):
        with pytest.raises(ValueError, match="spatial stage maps"):
            build_distiller(method, tokens)
    wide = create_model("wrn_16_2", num_classes=100)
    spec = ShapeSpec(FeatureTaps(wide, ["logits"]).shapes(torch.randn(2, 3, 32, 32)), shapes["wrn_40_2"])
    with pytest.raises(ValueError, match="same classes"):
        build_distiller("dkd", spec)


@pytest.mark.parametrize("method,options,match", [
    ("fitnet", {"hint_layer": 0}, "option hint_layer=0 is not accepted"),
    ("fitnet", {"hint_layer": "2"}, "option hint_layer='2' is not accepted"),
    ("at", {"p": -1}, "option p=-1.0 is not accepted"),
    ("cc", {"feat_dim": 0}, "option feat_dim=0 is not accepted"),
    ("vid", {"init_pred_var": 0.0}, "option init_pred_var=0.0 is not accepted"),
    ("rkd", {"angle_weight": -1.0}, "option angle_weight=-1.0 is not accepted"),
    ("dkd", {"warmup": -1}, "option warmup=-1 is not accepted"),
    ("dkd", {"kd_T": 0.0}, "option kd_T=0.0 is not accepted"),
    ("dkd", {"dkd_beta": "8"}, "option dkd_beta='8' is not accepted"),
])
def test_bad_options_raise(zoo, method, options, match):
    with pytest.raises(ValueError, match=f"{method}: {match}"):
        build_distiller(method, _spec(zoo, "wrn_40_2", "wrn_16_2"), **options)


def test_unknown_option_names_the_accepted_ones(zoo):
    with pytest.raises(TypeError, match="hint_layer"):
        build_distiller("fitnet", _spec(zoo, "wrn_40_2", "wrn_16_2"), hint=3)


# -- DKD specifics ---------------------------------------------------------------------------------
def _logit_spec(teacher, student):
    return ShapeSpec({"logits": (10,)}, {"logits": (10,)},
                     extra={"teacher_arch": teacher, "student_arch": student})


def test_dkd_beta_per_pair_and_override():
    beta = lambda t, s, **o: build_distiller("dkd", _logit_spec(t, s), **o).dkd_beta  # noqa: E731
    assert beta("resnet56", "resnet20") == beta("resnet110", "resnet32") == 2.0
    assert beta("wrn_40_2", "wrn_16_2") == beta("vgg13", "MobileNetV2") == 6.0
    assert beta("resnet32x4", "resnet8x4") == beta(None, None) == DEFAULT_BETA == 8.0
    assert beta("resnet56", "resnet20", dkd_beta=3.0) == 3.0


def test_dkd_terms_warmup_and_weights():
    from distillers.base import DISTILLERS
    cls = DISTILLERS.get("dkd")
    assert cls.default_weights == {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    dkd = build_distiller("dkd", _logit_spec("resnet32x4", "resnet8x4"), dkd_alpha=2.0)
    z_s, z_t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    full = dkd({"logits": z_s}, {"logits": z_t}, {"labels": y})
    assert set(full) == {"tckd", "nckd"}
    late = dkd({"logits": z_s}, {"logits": z_t}, {"labels": y, "epoch": 40.0})
    early = dkd({"logits": z_s}, {"logits": z_t}, {"labels": y, "epoch": 5.0})
    for k in full:
        assert torch.allclose(late[k], full[k]) and torch.allclose(early[k], 0.25 * full[k])
    # tckd carries dkd_alpha
    one = build_distiller("dkd", _logit_spec("resnet32x4", "resnet8x4"))(
        {"logits": z_s}, {"logits": z_t}, {"labels": y})
    assert torch.allclose(full["tckd"], 2 * one["tckd"]) and torch.allclose(full["nckd"], one["nckd"])
