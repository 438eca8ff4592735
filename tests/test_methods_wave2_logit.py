"""TTM, WTTM, SDD (SD-KD, SD-DKD, SD-NKD), KD++ and DKD++ (issue 22): golden settings, gradients, option
errors, the properties each loss claims, and a short run of each through ``train_student.py``.

Parity with the official code is the golden files' job (tests/golden/make_wave2_logit_goldens.py made them;
test_golden.py and test_methods_training.py run them too); here: that every method is checked at several
settings, and what the docstrings promise beyond those files.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import OWN_GOLDEN, golden_files
from core.taps import FeatureTaps
from distillers import golden
from distillers.base import ShapeSpec, build_distiller
from distillers.methods.kd import kd_loss
from distillers.methods.sdd import region_features, region_logits
from engine import cli, config
from engine.checkpoint import load, save_atomic
from models import create_model

WAVE = ["ttm", "wttm", "sdd_kd", "sdd_dkd", "sdd_nkd", "kdpp", "dkdpp"]
CLASSES = 10


def _record(path):
    return torch.load(path, weights_only=True)


# -- golden files: every method at several settings ------------------------------------------------------------
@pytest.mark.parametrize("method", WAVE)
def test_each_method_is_checked_against_its_official_code_at_several_settings(method):
    """Files of every entry of the method (SDD's --M [1] files have their own entries, sdd_*_m1: other taps)."""
    files = [p for p in golden_files() if _record(p)["method"] in golden.TABLE
             and golden.TABLE[_record(p)["method"]].distiller == method]
    assert all(p.parent == OWN_GOLDEN for p in files) and method in golden.TABLE
    settings = {repr(sorted(_record(p)["hparams"].items())) for p in files}
    assert len(files) >= 2 and len(settings) == len(files), (method, [p.name for p in files])
    for path in files:
        outcome = golden.check_file(str(path))
        assert outcome.ok, (path.name, outcome.problems)


def test_the_sdd_files_use_maps_whose_side_4_does_not_divide_and_every_weight_case():
    """The 7 x 7 teacher map makes the 4 x 4-first pooling matter; the teacher's region predictions cover
    the four (whole map, region) right/wrong cases, so both weights (1 and 2) are checked."""
    record = _record(OWN_GOLDEN / "sdd_kd.pt")
    assert record["inputs"]["feat_t"].shape[-2:] == (7, 7) and record["inputs"]["feat_s"].shape[-2:] == (5, 5)
    for name in ("sdd_kd", "sdd_dkd", "sdd_nkd"):
        assert (_record(OWN_GOLDEN / f"{name}.pt")["extra"]["teacher_agreement"] > 0).all(), name


# -- real models: shapes from taps, gradients into the student --------------------------------------------------
TAPS = ("logits", "pooled", "last_map", "classifier")  # every tap these methods read


def _taps(model, x):
    with FeatureTaps(model, TAPS) as taps:
        return taps(x)


def _shapes(taps):
    return {k: tuple(v.weight.shape) if isinstance(v, torch.nn.Module) else tuple(v.shape[1:]) for k, v in taps.items()}


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=CLASSES), create_model("resnet14", num_classes=CLASSES)
    teacher.eval()
    x, labels = torch.randn(6, 3, 32, 32), torch.randint(0, CLASSES, (6,))
    with torch.no_grad():
        t = _taps(teacher, x)
    spec = ShapeSpec(_shapes(_taps(student, x)), _shapes(t), num_classes=CLASSES,
                     extra={"student_arch": "resnet8", "teacher_arch": "resnet14"})
    return student, x, labels, t, spec


@pytest.mark.parametrize("method", WAVE)
def test_the_gradient_reaches_the_student(method, pair):
    """Through the tapped logits (logit methods), the map and the classifier (SDD's regions), the penultimate
    feature (the ND term): the student's first convolution and its classifier both get a gradient."""
    student, x, labels, t, spec = pair
    student.zero_grad(set_to_none=True)
    distiller = build_distiller(method, spec).train()
    s = _taps(student, x)
    s["logits"].retain_grad()
    terms = distiller(s, t, {"labels": labels, "epoch": 30})
    distiller.total(terms).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert student.conv1.weight.grad.abs().sum() > 0 and student.fc.weight.grad.abs().sum() > 0
    if "logits" in distiller.student_taps and not method.startswith("sdd"):
        assert s["logits"].grad.abs().sum() > 0


def test_sdd_with_scales_1_reads_only_the_logits(pair):
    student, x, labels, t, spec = pair
    distiller = build_distiller("sdd_kd", spec, M=[1])
    assert distiller.M == (1,) and distiller.student_taps == ("logits",) == distiller.teacher_taps
    s = _taps(student, x)
    assert torch.allclose(distiller(s, t, {"labels": labels})["sdd_kd"], kd_loss(s["logits"], t["logits"], 4.0))


# -- option and shape errors ------------------------------------------------------------------------------------
def _spec(classes=CLASSES, d_s=8, d_t=12, map_s=None):
    """Shapes of a pair: d channels in the last map (student 4 x 4, teacher 8 x 8), the pooled vector and the
    classifier's input."""
    def side(d, hw, last_map=None):
        return {"logits": (classes,), "pooled": (d,), "last_map": last_map or (d, hw, hw), "classifier": (classes, d)}
    return ShapeSpec(side(d_s, 4, map_s), side(d_t, 8), num_classes=classes)


@pytest.mark.parametrize("method,option,value,accepted", [
    ("ttm", "ttm_l", 0.0, "a number > 0"), ("wttm", "ttm_l", -0.2, "a number > 0"), ("ttm", "ttm_l", "0.1", "> 0"),
    ("sdd_kd", "M", (1, 2, 3), "one of (1,), (1, 2), (1, 2, 4)"), ("sdd_dkd", "M", (2, 4), "one of (1,)"),
    ("sdd_nkd", "M", "[1,2]", "one of (1,)"), ("sdd_nkd", "nkd_T", 0.0, "> 0"), ("sdd_dkd", "dkd_beta", -1.0, ">= 0"),
    ("sdd_kd", "kd_T", 0.0, "> 0"), ("kdpp", "nd_center", "mean", "one of class_mean, classifier"),
    ("dkdpp", "nd_dropout", 1.0, "< 1"), ("kdpp", "kd_loss_factor", -0.5, ">= 0"), ("dkdpp", "warmup", -1.0, ">= 0"),
])
def test_a_bad_option_is_an_error_naming_the_value_and_the_accepted_ones(method, option, value, accepted):
    with pytest.raises(ValueError, match=re.escape(f"{method}: option {option}={value!r} is not accepted; "
                                                   f"expected ") + ".*" + re.escape(accepted)):
        build_distiller(method, _spec(), **{option: value})


def test_the_scales_take_the_reference_spelling_on_the_command_line_and_refuse_others(capsys):
    args = config.parse(config.student_parser(), ["--distill", "sdd_dkd", "--M", "[1,2]"])
    assert config.method_options(args) == {"M": (1, 2)}
    with pytest.raises(SystemExit):
        config.parse(config.student_parser(), ["--distill", "sdd_dkd", "--M", "[1,3]"])
    err = capsys.readouterr().err
    assert "(1, 3)" in err and "(1, 2, 4)" in err


@pytest.mark.parametrize("method,spec,message", [
    ("sdd_kd", _spec(map_s=(8,)), "sdd_kd splits the last map into regions: it needs a spatial map (C, H, W); "
                                  "the student's is (8,)"),
    ("sdd_nkd", ShapeSpec({**_spec().student, "classifier": (CLASSES, 5)}, _spec().teacher),
     "sdd_nkd classifies every region with the model's classifier: the student's classifier weight is (10, 5), "
     "its last map has 8 channels"),
    ("sdd_dkd", ShapeSpec(_spec(classes=7).student, _spec().teacher), "sdd_dkd needs the same classes"),
    ("kdpp", ShapeSpec(_spec(classes=7).student, _spec().teacher), "kdpp needs student and teacher logits over the "
                                                                   "same classes; got (7,) and (10,)"),
    ("ttm", ShapeSpec(_spec(classes=7).student, _spec().teacher), "ttm needs student and teacher logits"),
])
def test_features_a_method_cannot_use_are_refused_with_the_shapes(method, spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_distiller(method, spec)


# -- TTM / WTTM ---------------------------------------------------------------------------------------------------
@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(5)
    z_s = 2 * torch.randn(9, CLASSES, generator=gen, dtype=torch.float64)
    z_t = 3 * torch.randn(9, CLASSES, generator=gen, dtype=torch.float64)
    return z_s, z_t, torch.randint(0, CLASSES, (9,), generator=gen)


def _loss(method, z_s, z_t, labels=None, spec=None, **options):
    distiller = build_distiller(method, spec or _spec(), **options).double()
    return distiller.total(distiller({"logits": z_s}, {"logits": z_t}, {"labels": labels}))


def test_ttm_with_exponent_1_is_kd_at_temperature_1_and_the_exponent_is_a_teacher_temperature(logits):
    z_s, z_t, _ = logits
    assert torch.allclose(_loss("ttm", z_s, z_t, ttm_l=1.0), kd_loss(z_s, z_t, 1.0), rtol=1e-12)
    # the power transform is the teacher's softmax at temperature 1/gamma; the student keeps temperature 1
    expected = F.kl_div(F.log_softmax(z_s, 1), F.softmax(0.3 * z_t, 1), reduction="batchmean")
    assert torch.allclose(_loss("ttm", z_s, z_t, ttm_l=0.3), expected, rtol=1e-12)


def test_wttm_weighs_each_sample_by_the_power_sum_of_its_teacher_probabilities(logits):
    z_s, z_t, _ = logits
    flat = torch.zeros_like(z_t)  # a uniform teacher: sum_j (1/C)^gamma = C^(1 - gamma) for every sample
    assert torch.allclose(_loss("wttm", z_s, flat, ttm_l=0.2), CLASSES ** 0.8 * _loss("ttm", z_s, flat, ttm_l=0.2),
                          rtol=1e-12)
    peaked, smooth = z_t.clone(), 0.1 * z_t  # a flatter teacher gets the larger weight
    one = lambda z: _loss("wttm", z_s[:1], z[:1], ttm_l=0.2) / _loss("ttm", z_s[:1], z[:1], ttm_l=0.2)  # noqa: E731
    assert one(smooth) > one(peaked)


# -- SDD ------------------------------------------------------------------------------------------------------------
def test_regions_are_pooled_from_a_4x4_average_first():
    """On an 8 x 8 map that is the regions' own average; on 7 x 7 the coarse regions average overlapping cells."""
    gen = torch.Generator().manual_seed(1)
    for side, equal in ((8, True), (7, False)):
        fmap = torch.randn(2, 3, side, side, generator=gen, dtype=torch.float64)
        regions = region_features(fmap, (1, 2, 4))
        assert regions.shape == (2, 3, 1 + 4 + 16)
        direct = torch.cat([F.adaptive_avg_pool2d(fmap, s).flatten(2) for s in (1, 2)], dim=2)
        assert torch.allclose(regions[:, :, :5], direct, atol=1e-12) is equal, side


def test_sdd_on_maps_constant_over_space_is_its_base_loss_on_the_global_logits(logits):
    """Every region then equals the whole map: every weight is 1 and the mean over regions is the base loss."""
    gen = torch.Generator().manual_seed(2)
    spec = _spec()
    fc_s, fc_t = torch.nn.Linear(8, CLASSES).double(), torch.nn.Linear(12, CLASSES).double()
    v_s, v_t = torch.randn(9, 8, generator=gen, dtype=torch.float64), torch.randn(9, 12, generator=gen,
                                                                                    dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (9,), generator=gen)
    s = {"last_map": v_s[:, :, None, None].expand(9, 8, 4, 4), "classifier": fc_s, "logits": fc_s(v_s)}
    t = {"last_map": v_t[:, :, None, None].expand(9, 12, 8, 8), "classifier": fc_t, "logits": fc_t(v_t)}
    for method in ("sdd_kd", "sdd_dkd", "sdd_nkd"):
        regions = build_distiller(method, spec).double()
        whole = build_distiller(method, spec, M=[1]).double()
        batch = {"labels": labels, "epoch": 40}
        assert torch.allclose(regions.total(regions(s, t, batch)), whole.total(whole(s, t, batch)), rtol=1e-10)
    assert torch.allclose(region_logits(s, (1, 2, 4))[:9], s["logits"], atol=1e-12)


def test_sdd_counts_regions_that_disagree_with_the_whole_map_twice():
    """A teacher right on the whole map and wrong on one 2 x 2 region: that region's rows weigh 2."""
    fc = torch.nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        fc.weight.copy_(torch.eye(2, dtype=torch.float64))
    t_map = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    t_map[0, 0] = 1.0
    t_map[0, 0, :2, :2], t_map[0, 1, :2, :2] = 0.0, 1.0  # class 1 wins in the top-left quarter only
    s_map = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    spec = ShapeSpec({"last_map": (2, 4, 4), "classifier": (2, 2), "logits": (2,)},
                     {"last_map": (2, 4, 4), "classifier": (2, 2), "logits": (2,)})
    distiller = build_distiller("sdd_kd", spec, M=[1, 2], kd_T=1.0)
    loss = distiller({"last_map": s_map, "classifier": fc}, {"last_map": t_map, "classifier": fc},
                     {"labels": torch.tensor([0])})["sdd_kd"]
    rows_s, rows_t = region_logits({"last_map": s_map, "classifier": fc}, (1, 2)), \
        region_logits({"last_map": t_map, "classifier": fc}, (1, 2))
    per_row = F.kl_div(F.log_softmax(rows_s, 1), F.softmax(rows_t, 1), reduction="none").sum(1)
    assert rows_t.argmax(1).tolist() == [0, 1, 0, 0, 0]
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(loss, (weights * per_row).mean(), rtol=1e-12)


def test_sdd_warm_up_and_per_pair_defaults():
    dkd = build_distiller("sdd_dkd", _spec())
    assert dkd.warmup_factor({"epoch": 5}) == 0.25 and dkd.warmup_factor({"epoch": 25}) == 1.0
    assert build_distiller("sdd_kd", _spec()).warmup_factor({"epoch": 1}) == 1.0  # SD-KD has none
    vgg = ShapeSpec(_spec().student, _spec().teacher, extra={"teacher_arch": "vgg13", "student_arch": "MobileNetV2"})
    assert build_distiller("sdd_dkd", vgg).dkd_beta == 6.0 and build_distiller("sdd_nkd", vgg).nkd_gamma == 6.0
    assert build_distiller("sdd_dkd", _spec()).dkd_beta == 8.0 and build_distiller("sdd_nkd", _spec()).nkd_T == 4.0


# -- KD++ / DKD++ ----------------------------------------------------------------------------------------------------
def _nd_inputs(d_s=16, d_t=16, batch=8):
    gen = torch.Generator().manual_seed(3)
    s = {"logits": torch.randn(batch, CLASSES, generator=gen), "pooled": torch.randn(batch, d_s, generator=gen).abs()}
    t = {"logits": torch.randn(batch, CLASSES, generator=gen), "pooled": torch.randn(batch, d_t, generator=gen).abs()}
    return s, t, torch.arange(batch) % 3


def test_class_centres_are_summed_in_the_first_epoch_then_kept():
    s, t, labels = _nd_inputs()
    kdpp = build_distiller("kdpp", _spec(d_s=16, d_t=16)).train()
    kdpp(s, t, {"labels": labels, "epoch": 1})
    expected = torch.zeros(CLASSES, 16).index_add_(0, labels, t["pooled"])
    assert torch.allclose(kdpp.centers, expected)
    kdpp(s, t, {"labels": labels, "epoch": 1})
    assert torch.allclose(kdpp.centers, 2 * expected)
    kdpp(s, t, {"labels": labels, "epoch": 2})
    kdpp.eval()(s, t, {"labels": labels, "epoch": 1})
    assert torch.allclose(kdpp.centers, 2 * expected)


def test_the_nd_term_vanishes_for_a_student_along_its_centre_with_the_larger_norm():
    s, t, labels = _nd_inputs()
    kdpp = build_distiller("kdpp", _spec(d_s=16, d_t=16), nd_center="classifier")
    fc = torch.nn.Linear(16, CLASSES)
    direction = F.normalize(fc.weight[labels], dim=1).detach()
    for scale, zero in ((1.5, True), (0.5, False)):  # (scale x the teacher's norm) along the centre
        along = {**s, "pooled": scale * t["pooled"].norm(dim=1, keepdim=True) * direction}
        nd = kdpp(along, {**t, "classifier": fc}, {"labels": labels, "epoch": 30})["nd"]
        assert (abs(nd.item()) < 1e-6) is zero, scale
    assert kdpp.teacher_taps == ("logits", "pooled", "classifier")


def test_classifier_centres_are_the_class_mean_term_with_those_rows_as_centres():
    s, t, labels = _nd_inputs()
    fc = torch.nn.Linear(16, CLASSES)
    by_rows = build_distiller("dkdpp", _spec(d_s=16, d_t=16), nd_center="classifier")
    by_means = build_distiller("dkdpp", _spec(d_s=16, d_t=16))
    by_means.centers.copy_(fc.weight.detach())
    batch = {"labels": labels, "epoch": 30}
    assert torch.allclose(by_rows(s, {**t, "classifier": fc}, batch)["nd"], by_means(s, t, batch)["nd"])


@pytest.mark.parametrize("method,terms", [("kdpp", ("kd",)), ("dkdpp", ("tckd", "nckd"))])
def test_the_logit_loss_warms_up_from_epoch_0(method, terms):
    s, t, labels = _nd_inputs()
    t = {**t, "classifier": torch.nn.Linear(16, CLASSES)}  # fixed centres (class_mean fills them in epoch 1)
    distiller = build_distiller(method, _spec(d_s=16, d_t=16), nd_center="classifier")
    full = distiller(s, t, {"labels": labels, "epoch": 21})
    for epoch, factor in ((1, 0.0), (11, 0.5), (40, 1.0)):
        out = distiller(s, t, {"labels": labels, "epoch": epoch})
        assert all(torch.allclose(out[k], factor * full[k]) for k in terms), epoch
        assert torch.allclose(out["nd"], full["nd"])  # the ND term has no warm-up


def test_a_projector_maps_the_student_feature_only_when_the_widths_differ():
    assert build_distiller("kdpp", _spec(d_s=16, d_t=16)).projector is None
    wide = build_distiller("dkdpp", _spec(d_s=8, d_t=24))
    assert [type(m).__name__ for m in wide.projector] == ["BatchNorm1d", "Dropout", "Linear"]
    assert wide.projector[2].weight.shape == (24, 8) and wide.projector[1].p == 0.5
    assert sum(p.numel() for p in wide.parameters()) == 2 * 8 + 24 * 8 + 24


def test_kdpp_and_dkdpp_take_the_reference_values_of_a_pair():
    pair = ShapeSpec(_spec().student, _spec().teacher,
                     extra={"teacher_arch": "resnet32x4", "student_arch": "ShuffleV1"})
    kdpp, dkdpp = build_distiller("kdpp", pair), build_distiller("dkdpp", pair)
    assert (kdpp.kd_loss_factor, kdpp.nd_loss_factor) == (2.5, 1.5)
    assert (dkdpp.dkd_alpha, dkdpp.dkd_beta, dkdpp.nd_loss_factor) == (0.5, 8.0, 4.0)
    other = build_distiller("dkdpp", _spec(), dkd_beta=3.0)  # no values for this pair: the script's defaults
    assert (other.dkd_alpha, other.dkd_beta, other.nd_loss_factor) == (1.0, 3.0, 1.0)


# -- a short run of each method through train_student.py -------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "resnet8.pth"
    torch.manual_seed(1)
    save_atomic({"arch": "resnet8", "model": create_model("resnet8", num_classes=CLASSES).state_dict()}, str(path))
    return str(path)


@pytest.mark.parametrize("method", WAVE)
def test_a_short_run_through_train_student_finishes(method, teacher, tmp_path, capsys):
    epochs = 2 if method in ("kdpp", "dkdpp") else 1  # the ND centres are filled in epoch 1, kept after
    argv = ["--dataset", "synthetic", "--data_opt", "train_size=16", "--data_opt", "test_size=8", "--batch_size", "8",
            "--num_workers", "0", "--no_tensorboard", "--epochs", str(epochs), "--model_s", "resnet8",
            "--path_t", teacher, "--distill", method, "--save_dir", str(tmp_path / "run")]
    assert cli.student(argv) == 0
    out = capsys.readouterr().out
    assert f"{method}(" in out  # the objective is printed with the method's options
    state = load(tmp_path / "run/latest.pth")
    assert state["distiller_name"] == method and state["epoch"] == epochs + 1
    if method in ("kdpp", "dkdpp"):
        centers = state["distiller"]["centers"]
        assert int((centers.abs().sum(1) > 0).sum()) >= 2 and math.isfinite(centers.sum().item())
