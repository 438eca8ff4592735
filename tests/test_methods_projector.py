"""SRRL, SemCKD and SimKD: zoo pairs, the frozen teacher classifier, errors (golden parity for
every method: test_golden.py and test_methods_training.py)."""
import copy

import pytest
import torch
from torch import nn

from distillers.base import DISTILLERS, PREDICTION, Distiller, ShapeSpec, build_distiller
from core.taps import FeatureTaps, standard_taps
from models import create_model



# real zoo pairs --------------------------------------------------------------
_MODELS = {}


def _model(name):
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = create_model(name, num_classes=100)
    return _MODELS[name]


_SHAPES = {}


def _shapes_of(name):
    if name not in _SHAPES:
        with FeatureTaps(_model(name), standard_taps(_model(name))) as taps:
            _SHAPES[name] = taps.shapes(torch.randn(2, 3, 32, 32))
    return dict(_SHAPES[name])


def _run_pair(method, teacher_name, student_name, batch_size):
    teacher, student = _model(teacher_name).eval(), _model(student_name).train()
    spec = ShapeSpec(student=_shapes_of(student_name), teacher=_shapes_of(teacher_name), num_classes=100,
                     batch_size=batch_size)
    distiller = build_distiller(method, spec).train()
    x = torch.randn(batch_size, 3, 32, 32)
    with FeatureTaps(student, distiller.student_taps) as taps_s, \
            FeatureTaps(teacher, distiller.teacher_taps) as taps_t:
        s = taps_s(x)
        with torch.no_grad():
            t = taps_t(x)
    student.zero_grad(set_to_none=True)
    out = distiller(s, t, {})
    loss = Distiller.total(out)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in distiller.parameters() if p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    return out


# SemCKD's MLPs are sized by the batch, which must be >= 8, so it runs at batch 8; the others at 4.
# vgg8 -> resnet8 gives SemCKD 4 teacher stages against 3 student stages.
@pytest.mark.parametrize("method,teacher,student,batch", [
    ("srrl", "resnet32x4", "resnet8x4", 4),
    ("srrl", "vgg8", "MobileNetV2", 4),
    ("simkd", "resnet32x4", "resnet8x4", 4),
    ("simkd", "vgg8", "MobileNetV2", 4),
    ("semckd", "resnet56", "resnet20", 8),
    ("semckd", "vgg8", "resnet8", 8),
])
def test_zoo_pairs_build_and_train(method, teacher, student, batch):
    out = _run_pair(method, teacher, student, batch)
    if method == "simkd":
        assert out[PREDICTION].shape == (batch, 100)


def _spec(student, teacher, **kw):
    return ShapeSpec(student=student, teacher=teacher, **kw)


@pytest.mark.parametrize("method,spec,message", [
    ("srrl", _spec({"pooled": (8, 2, 2)}, {"pooled": (16,), "classifier": (10, 16)}), "pooled vectors"),
    ("srrl", _spec({"pooled": (8,)}, {"pooled": (16,), "classifier": (10, 32)}), "teacher classifier"),
    ("simkd", _spec({"last_map": (8,)}, {"last_map": (16, 2, 2), "classifier": (10, 16)}),
     "spatial last maps"),
    ("simkd", _spec({"last_map": (8, 4, 4)}, {"last_map": (16, 2, 2), "classifier": (10, 32)}),
     "teacher classifier"),
    ("semckd", _spec({"stages": [(8, 4, 4), (16,)]}, {"stages": [(8, 4, 4)]}, batch_size=8),
     "spatial stage maps"),
])
def test_pairs_the_method_cannot_serve_fail_clearly(method, spec, message):
    with pytest.raises(ValueError, match=message):
        build_distiller(method, spec)


def test_mismatched_zoo_classifier_fails_clearly():
    """A teacher whose classifier does not read its last map's channels cannot serve SimKD/SRRL."""
    spec_t = _shapes_of("resnet32x4")
    spec_t["classifier"] = _shapes_of("vgg8")["classifier"]  # 512 inputs vs 256 channels
    spec = ShapeSpec(student=_shapes_of("resnet8x4"), teacher=spec_t)
    for method in ("simkd", "srrl"):
        with pytest.raises(ValueError, match="teacher classifier"):
            build_distiller(method, spec)


# options -----------------------------------------------------------------------
SIMKD_SPEC = _spec({"last_map": (8, 4, 4)}, {"last_map": (16, 2, 2), "classifier": (10, 16)})
SEMCKD_SPEC = _spec({"stages": [(8, 8, 8), (12, 4, 4)]}, {"stages": [(8, 8, 8), (16, 2, 2)]}, batch_size=8)


@pytest.mark.parametrize("factor", [0, -2, 2.5, "2", True])
def test_simkd_bad_factor(factor):
    with pytest.raises(ValueError, match=rf"simkd: option factor={factor!r} is not accepted"):
        build_distiller("simkd", SIMKD_SPEC, factor=factor)


def test_simkd_factor_above_the_teacher_channels():
    with pytest.raises(ValueError, match="simkd: factor 17 leaves no bottleneck channel.*16 channels"):
        build_distiller("simkd", SIMKD_SPEC, factor=17)
    assert build_distiller("simkd", SIMKD_SPEC, factor=16).head.transfer[0].out_channels == 1


@pytest.mark.parametrize("soft", [0, -1.0, "1", None])
def test_semckd_bad_soft(soft):
    with pytest.raises(ValueError, match=r"semckd: option soft=.* is not accepted; expected a number > 0"):
        build_distiller("semckd", SEMCKD_SPEC, soft=soft)


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="accepted"):
        build_distiller("srrl", _spec({"pooled": (8,)}, {"pooled": (16,), "classifier": (10, 16)}), factor=2)


def test_defaults_follow_the_simkd_scripts():
    assert DISTILLERS.get("srrl").default_weights == {"gamma": 1.0, "alpha": 1.0, "beta": 1.0}
    assert DISTILLERS.get("semckd").default_weights == {"gamma": 1.0, "alpha": 1.0, "beta": 400.0}
    assert DISTILLERS.get("simkd").default_weights == {"gamma": 0.0, "alpha": 0.0, "beta": 1.0}
    assert DISTILLERS.get("semckd").all_options() == {"soft": 1.0}
    assert DISTILLERS.get("simkd").all_options() == {"factor": 2}


# SemCKD batch handling -----------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 4, 7])
def test_semckd_needs_a_constant_batch_of_at_least_8(batch_size):
    spec = _spec(SEMCKD_SPEC.student, SEMCKD_SPEC.teacher, batch_size=batch_size)
    with pytest.raises(ValueError, match="constant and >= 8"):
        build_distiller("semckd", spec)


def _stages(spec_side, batch):
    return [torch.rand(batch, *shape) for shape in spec_side]


def test_semckd_skips_a_batch_of_another_size():
    distiller = build_distiller("semckd", SEMCKD_SPEC).train()
    state = copy.deepcopy(distiller.state_dict())
    s = {"stages": [f.requires_grad_(True) for f in _stages(SEMCKD_SPEC.student["stages"], 5)]}
    out = distiller(s, {"stages": _stages(SEMCKD_SPEC.teacher["stages"], 5)}, {})
    assert set(out) == {"semckd"} and out["semckd"].item() == 0 and not out["semckd"].requires_grad
    for k, v in distiller.state_dict().items():  # BN statistics untouched
        assert torch.equal(v, state[k]), k
    out = distiller({"stages": _stages(SEMCKD_SPEC.student["stages"], 8)},
                    {"stages": _stages(SEMCKD_SPEC.teacher["stages"], 8)}, {})
    assert out["semckd"] > 0


def test_semckd_builds_no_unused_regressors():
    distiller = build_distiller("semckd", SEMCKD_SPEC)
    names = [n for n, _ in distiller.named_parameters()]
    assert not any(n.startswith(("query_", "key_")) and ".regressor." in n for n in names)
    assert {n.split(".")[0] for n in names} == {
        "query_0", "query_1", "key_0", "key_1", "regressor00", "regressor01", "regressor10", "regressor11"}


# SRRL's teacher classifier -----------------------------------------------------------
def test_srrl_never_trains_the_teacher_classifier():
    spec = _spec({"pooled": (8,)}, {"pooled": (16,), "logits": (10,), "classifier": (10, 16)})
    distiller = build_distiller("srrl", spec).train()
    fc = nn.Linear(16, 10)  # deliberately left trainable: the distiller must not backprop into it
    s = {"pooled": torch.randn(4, 8, requires_grad=True)}
    t = {"pooled": torch.rand(4, 16), "logits": torch.randn(4, 10), "classifier": fc}
    out = distiller(s, t, {})
    assert set(out) == {"srrl_feat", "srrl_pred"}
    Distiller.total(out).backward()
    assert fc.weight.grad is None and fc.bias.grad is None
    assert s["pooled"].grad.abs().sum() > 0


# SimKD's classifier copy and inference head ------------------------------------------
def _simkd_inputs(batch=4):
    s = {"last_map": torch.rand(batch, 8, 4, 4, requires_grad=True)}
    t = {"last_map": torch.rand(batch, 16, 2, 2), "classifier": nn.Linear(16, 10).requires_grad_(False)}
    return s, t


def test_simkd_inference_head_equals_the_training_prediction():
    distiller = build_distiller("simkd", SIMKD_SPEC).train()
    s, t = _simkd_inputs()
    out = distiller(s, t, {})
    assert Distiller.total(out) == out["simkd"]  # the prediction is not a loss term
    head = distiller.inference_head()
    assert isinstance(head, nn.Module)
    torch.testing.assert_close(head(s["last_map"]), out[PREDICTION], rtol=0, atol=0)
    assert head.student_taps == ("last_map",)  # the trainer's evaluate passes the tap dict
    torch.testing.assert_close(head(s), out[PREDICTION], rtol=0, atol=0)
    distiller.eval()
    torch.testing.assert_close(head(s["last_map"]), distiller(s, t, {})[PREDICTION], rtol=0, atol=0)


def test_simkd_keeps_a_frozen_copy_of_the_teacher_classifier():
    distiller = build_distiller("simkd", SIMKD_SPEC).train()
    s, t = _simkd_inputs()
    teacher_fc = t["classifier"]
    out = distiller(s, t, {})
    copy_fc = distiller.inference_head().fc
    assert copy_fc is not teacher_fc
    assert torch.equal(copy_fc.weight, teacher_fc.weight) and torch.equal(copy_fc.bias, teacher_fc.bias)
    assert not copy_fc.weight.requires_grad and not copy_fc.bias.requires_grad
    state = distiller.state_dict()
    assert {"head.fc.weight", "head.fc.bias"} <= set(state)

    before = copy.deepcopy(state)
    (Distiller.total(out) + out[PREDICTION].pow(2).mean()).backward()
    assert copy_fc.weight.grad is None and copy_fc.bias.grad is None
    torch.optim.SGD(distiller.parameters(), lr=0.5, weight_decay=0.1).step()
    assert torch.equal(distiller.state_dict()["head.fc.weight"], before["head.fc.weight"])
    assert torch.equal(distiller.state_dict()["head.fc.bias"], before["head.fc.bias"])
    assert not torch.equal(distiller.state_dict()["head.transfer.0.weight"], before["head.transfer.0.weight"])

    # filled once: later forwards do not re-read the teacher, and the copy is no alias
    with torch.no_grad():
        teacher_fc.weight.add_(1.0)
    distiller(s, t, {})
    assert torch.equal(copy_fc.weight, before["head.fc.weight"])


def test_simkd_checkpoint_predicts_without_a_teacher():
    distiller = build_distiller("simkd", SIMKD_SPEC).train()
    s, t = _simkd_inputs()
    distiller(s, t, {})
    distiller.eval()
    expected = distiller.inference_head()(s["last_map"])
    restored = build_distiller("simkd", SIMKD_SPEC)
    restored.load_state_dict(distiller.state_dict(), strict=True)
    restored.eval()
    torch.testing.assert_close(restored.inference_head()(s["last_map"]), expected, rtol=0, atol=0)


def test_simkd_fills_a_bias_free_teacher_classifier():
    distiller = build_distiller("simkd", SIMKD_SPEC).train()
    s, t = _simkd_inputs()
    t["classifier"] = nn.Linear(16, 10, bias=False).requires_grad_(False)
    out = distiller(s, t, {})
    head = distiller.inference_head()
    assert torch.equal(head.fc.bias, torch.zeros(10))
    expected = t["classifier"](head.project(s["last_map"]).mean(dim=(2, 3)))
    torch.testing.assert_close(out[PREDICTION], expected)
