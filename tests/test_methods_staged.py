"""ab, ft, fsp, kdsvd, reviewkd: initialisation stages, real zoo pairs, errors (golden parity for
every method: test_golden.py and test_methods_training.py)."""
import pytest
import torch

from distillers.base import ShapeSpec, build_distiller
from core.taps import FeatureTaps, standard_taps
from models import create_model

METHODS = ["ab", "ft", "fsp", "kdsvd", "reviewkd"]
# teacher -> student pairs each method serves (kept light: two CPU cores), and one it
# cannot, with the error it gives. wrn_40_2 -> ShuffleV2 halves every stage's size.
PAIRS = {
    "ab": [("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "ShuffleV2")],
    "ft": [("resnet56", "resnet20"), ("wrn_40_2", "vgg8")],
    "fsp": [("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2")],
    "kdsvd": [("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2")],
    "reviewkd": [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "ShuffleV2")],
}
MISMATCHED = {
    "ab": (("wrn_40_2", "vgg8"), "student has 4 stages, the teacher 3"),
    "fsp": (("wrn_40_2", "wrn_40_1"), "stage1 has 16 (student) vs 32 (teacher)"),
    "kdsvd": (("wrn_40_2", "wrn_40_1"), "stage1 has 16 (student) vs 32 (teacher)"),
    "reviewkd": (("wrn_40_2", "vgg8"), "student has 4 stages, the teacher 3"),
}
LIGHT = ("resnet56", "resnet20")


# -- real zoo pairs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    names = {n for pairs in PAIRS.values() for pair in pairs for n in pair}
    names |= {n for pair, _ in MISMATCHED.values() for n in pair}
    models = {n: create_model(n, num_classes=10) for n in names}
    x = torch.randn(2, 3, 32, 32)
    shapes = {n: FeatureTaps(m, standard_taps(m)).shapes(x) for n, m in models.items()}
    return models, shapes


def _spec(zoo, teacher, student):
    _, shapes = zoo
    return ShapeSpec(student=shapes[student], teacher=shapes[teacher], num_classes=10,
                     extra={"teacher_arch": teacher, "student_arch": student})


def _features(zoo, teacher, student, s_taps, t_taps):
    models, _ = zoo
    s_model, t_model = models[student].train(), models[teacher].eval()
    s_model.zero_grad(set_to_none=True)
    x = torch.randn(4, 3, 32, 32)
    with FeatureTaps(s_model, s_taps) as taps:
        s = taps(x) if s_taps else {}
    with torch.no_grad(), FeatureTaps(t_model, t_taps) as taps:
        t = taps(x)
    return s, t, s_model


def _student_has_grad(s_model):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in s_model.parameters())


@pytest.mark.parametrize("method,teacher,student",
                         [(m, *pair) for m in METHODS for pair in PAIRS[m]], ids=str)
def test_real_pair_forward_backward(zoo, method, teacher, student):
    distiller = build_distiller(method, _spec(zoo, teacher, student)).train()
    stage = distiller.init_stage()
    if stage is not None:
        s, t, s_model = _features(zoo, teacher, student, stage.student_taps, stage.teacher_taps)
        loss = distiller.total(distiller.init_forward(s, t, {"epoch": 1.0}))
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        assert _student_has_grad(s_model) == stage.trains_student
        for p in stage.parameters:
            assert p.grad is not None and p.grad.abs().sum() > 0
        distiller.finish_init_stage()
    if method in ("ab", "fsp"):  # init-stage-only methods: no main-stage term, nothing tapped
        assert distiller.student_taps == () and distiller.teacher_taps == ()
        assert distiller({}, {}, {"epoch": 1.0}) == {}
        return
    distiller.zero_grad(set_to_none=True)
    s, t, s_model = _features(zoo, teacher, student, distiller.student_taps, distiller.teacher_taps)
    out = distiller(s, t, {"epoch": 30.0})
    loss = distiller.total(out)
    assert out and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert _student_has_grad(s_model)
    trained = [p for p in distiller.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)


@pytest.mark.parametrize("method", sorted(MISMATCHED))
def test_mismatched_pair_is_a_clear_error(zoo, method):
    (teacher, student), message = MISMATCHED[method]
    with pytest.raises(ValueError) as info:
        build_distiller(method, _spec(zoo, teacher, student))
    assert message in str(info.value)


# -- initialisation stages ---------------------------------------------------------------------
def test_init_stage_parameters_are_exactly_what_the_stage_trains(zoo):
    ab = build_distiller("ab", _spec(zoo, "wrn_40_2", "ShuffleV2"))
    stage = ab.init_stage()
    assert {id(p) for p in stage.parameters} == {id(p) for p in ab.connectors.parameters()}
    assert stage.parameters and stage.trains_student and stage.lr is None and stage.epochs == 30
    assert stage.student_taps == stage.teacher_taps == ("stages_preact",)

    fsp = build_distiller("fsp", _spec(zoo, *LIGHT), init_epochs=5)
    stage = fsp.init_stage()
    assert stage.parameters == [] and stage.trains_student and stage.lr is None and stage.epochs == 5
    assert stage.student_taps == stage.teacher_taps == ("stem", "stages")

    ft = build_distiller("ft", _spec(zoo, *LIGHT))
    stage = ft.init_stage()
    assert {id(p) for p in stage.parameters} == {id(p) for p in ft.paraphraser.parameters()}
    assert not stage.trains_student and stage.student_taps == () and stage.teacher_taps == ("last_map",)


@pytest.mark.parametrize("teacher,student,lr", [("resnet56", "resnet20", 0.01),
                                                 ("wrn_40_2", "wrn_16_2", 0.01), ("wrn_40_2", "vgg8", None)])
def test_ft_init_lr_rule(zoo, teacher, student, lr):
    """0.01 for CIFAR ResNet/WRN students (the reference's init routine), else the main lr."""
    assert build_distiller("ft", _spec(zoo, teacher, student)).init_stage().lr == lr


def test_finish_init_stage_freezes(zoo):
    ab = build_distiller("ab", _spec(zoo, "wrn_40_2", "ShuffleV2"))
    ab.finish_init_stage()
    assert all(not p.requires_grad for p in ab.connectors.parameters())

    ft = build_distiller("ft", _spec(zoo, *LIGHT)).train()
    ft.finish_init_stage()
    assert all(not p.requires_grad for p in ft.paraphraser.parameters())
    ft.train()  # the trainer switching modes keeps the frozen paraphraser in eval mode
    assert not ft.paraphraser.training and ft.translator.training


def test_ft_precomputed_factor_equals_the_paraphraser_encoding():
    spec = ShapeSpec(student={"last_map": (8, 4, 4)}, teacher={"last_map": (12, 2, 2)})
    ft = build_distiller("ft", spec).eval()
    f_s, f_t = torch.randn(3, 8, 4, 4), torch.randn(3, 12, 2, 2)
    factor = ft.paraphraser.encoder(f_t).detach()
    assert factor.shape[1] == 6
    torch.testing.assert_close(ft({"last_map": f_s}, {"last_map": f_t}),
                               ft({"last_map": f_s}, {"factor": factor}))
    pre = build_distiller("ft", ShapeSpec(student={"last_map": (8, 4, 4)}, teacher={"factor": (6, 2, 2)}))
    assert pre.paraphraser is None and pre.init_stage() is None and pre.teacher_taps == ("factor",)


# -- method details ----------------------------------------------------------------------------
def test_reviewkd_warmup_and_weight():
    spec = ShapeSpec(student={"stages": [(4, 8, 8), (8, 4, 4)], "pooled": (8,)},
                     teacher={"stages_preact": [(6, 8, 8), (10, 2, 2)], "pooled": (10,)})
    s = {"stages": [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)], "pooled": torch.randn(2, 8)}
    t = {"stages_preact": [torch.randn(2, 6, 8, 8), torch.randn(2, 10, 2, 2)], "pooled": torch.randn(2, 10)}
    torch.manual_seed(1)
    base = build_distiller("reviewkd", spec, reviewkd_weight=1.0).eval()
    torch.manual_seed(1)
    heavy = build_distiller("reviewkd", spec, reviewkd_weight=5.0, warmup=10).eval()
    full = base(s, t)["reviewkd"]
    torch.testing.assert_close(base(s, t, {"epoch": 25.0})["reviewkd"], full)
    torch.testing.assert_close(heavy(s, t, {"epoch": 2.0})["reviewkd"], 5.0 * 0.2 * full)
    assert len(base.abfs) == 3 and base.abfs[0].att_conv is None


def test_kdsvd_serves_non_square_maps():
    spec = ShapeSpec(student={"stages": [(4, 6, 4), (8, 3, 2)]}, teacher={"stages": [(4, 4, 6), (8, 2, 2)]})
    kdsvd = build_distiller("kdsvd", spec)
    s = {"stages": [torch.randn(3, 4, 6, 4, requires_grad=True), torch.randn(3, 8, 3, 2, requires_grad=True)]}
    t = {"stages": [torch.randn(3, 4, 4, 6), torch.randn(3, 8, 2, 2)]}
    loss = kdsvd.total(kdsvd(s, t))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(f.grad).all() for f in s["stages"])


def test_ab_connector_size_error_names_the_stage():
    spec = ShapeSpec(student={"stages_preact": [(4, 8, 8), (4, 3, 3)]},
                     teacher={"stages_preact": [(4, 8, 8), (4, 8, 8)]})
    with pytest.raises(ValueError, match="AB cannot connect stage 2"):
        build_distiller("ab", spec)


@pytest.mark.parametrize("method,options", [
    ("ab", {"init_epochs": -1}), ("ab", {"margin": 0.0}), ("fsp", {"init_epochs": 2.5}),
    ("ft", {"init_epochs": "30"}), ("kdsvd", {"k": 0}), ("reviewkd", {"warmup": -1}),
    ("reviewkd", {"reviewkd_weight": -1.0}),
])
def test_bad_options_are_clear_errors(zoo, method, options):
    with pytest.raises(ValueError, match=rf"{method}: option {next(iter(options))}=.* is not accepted"):
        build_distiller(method, _spec(zoo, *LIGHT), **options)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_names_the_accepted_ones(zoo, method):
    with pytest.raises(TypeError, match="accepted"):
        build_distiller(method, _spec(zoo, *LIGHT), no_such_option=1)
