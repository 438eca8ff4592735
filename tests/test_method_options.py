"""Every method's options are declared (``Option``): a meaning for --help, the values they accept,
and one check for all of them (``Option.check`` at construction), with no hand validation in the
method files. Generic over the registry, so a new method is covered as soon as it registers.
"""
import re

import pytest
import torch

from core.taps import FeatureTaps, standard_taps
from distillers.base import DISTILLERS, Option, ShapeSpec, build_distiller
from models import create_model

METHODS = DISTILLERS.names()
#: The metric objective's defaults enable no loss (every ratio 0): building it needs one ratio set.
BUILD_WITH = {"metric": {"triplet_ratio": 1.0}}


def _shapes(arch, **model_options):
    model = create_model(arch, num_classes=10, **model_options)
    with FeatureTaps(model, standard_taps(model)) as taps:
        return taps.shapes(torch.zeros(2, 3, 32, 32))


def _metric_side(widths, embedding):
    sizes = (16, 8, 4, 2)
    stages = [(c, s, s) for c, s in zip(widths, sizes)]
    return {"stages": stages, **{f"stage{i}": shape for i, shape in enumerate(stages, 1)}, "logits": (embedding,)}


@pytest.fixture(scope="module")
def specs():
    """A spec every method of a task can be built from: a real CIFAR pair with equal stage widths
    (FSP, KDSVD) and every tap (OFD's BatchNorms, the classifiers), or an embedding-net pair."""
    classification = ShapeSpec(_shapes("resnet8"), _shapes("resnet20"), num_classes=10, num_data=64, batch_size=8,
                               extra={"student_arch": "resnet8", "teacher_arch": "resnet20"})
    metric = ShapeSpec(_metric_side((8, 16, 32, 64), 16), _metric_side((8, 16, 32, 64), 32), batch_size=8)
    return {"classification": classification, "metric": metric}


def _spec(specs, method):
    spec = specs[DISTILLERS.meta(method).get("task", "classification")]
    if method == "deit":  # its student is a distilled DeiT: two heads, tapped by module path
        classes = spec.num_classes
        return ShapeSpec({**spec.student, "head:output": (classes,), "head_dist:output": (classes,)}, spec.teacher,
                         num_classes=classes, num_data=spec.num_data, batch_size=spec.batch_size,
                         extra={**spec.extra, "student_arch": "timm:deit_tiny_distilled_patch16_224"})
    if method == "vitkd":  # token features on both sides: a small timm ViT pair (tests/plugins/tiny_timm.py's)
        vit = _shapes("timm:vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4)
        return ShapeSpec(vit, vit, num_classes=spec.num_classes, extra={"student_arch": "test_vit_t4",
                                                                        "teacher_arch": "test_vit_t4"})
    return spec


def _options(method):
    return sorted(DISTILLERS.get(method).option_specs().items())


def _bad_numbers(option: Option, kind):
    """A number just outside each of the option's bounds, of the option's own type."""
    step = 1 if kind is int else 0.5
    return [kind(bad) for bad in (option.above, None if option.min is None else option.min - step,
                                  None if option.max is None else option.max + step, option.below)
            if bad is not None]


def _bad_values(option: Option):
    """Values outside what the option declares: not among its choices, or beyond a bound."""
    kind = option.kind
    if option.choices is not None:
        if all(isinstance(c, str) for c in option.choices):
            return ["no_such_choice"]
        if all(isinstance(c, tuple) for c in option.choices):  # lists (SDD's scales): a longer one
            return [max(option.choices, key=len) + (1 + max(max(c) for c in option.choices),)]
        return [max(option.choices) + 1, min(option.choices) - 1]
    if kind is tuple:
        return [v for bad in _bad_numbers(option, float) for v in ((bad,), tuple(option.default) + (bad,))]
    return _bad_numbers(option, kind) if kind in (int, float) else []


BOUNDED = [(m, name, value) for m in METHODS for name, option in _options(m) for value in _bad_values(option)]


def test_every_method_is_covered():
    assert len(METHODS) >= 30
    assert {m for m, _, _ in BOUNDED} >= {m for m in METHODS if any(
        o.choices is not None or {o.min, o.above, o.max, o.below} != {None} for _, o in _options(m))}


@pytest.mark.parametrize("method", METHODS)
def test_every_option_has_a_one_line_meaning(method):
    for name, option in _options(method):
        assert isinstance(option, Option) and option.help.strip(), f"{method}: option {name} has no help text"
        assert "\n" not in option.help, f"{method}: the help of {name} is not one line"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_says_what_it_computes(method):
    """``train_student.py --help`` lists each method with the first line of its docstring."""
    doc = DISTILLERS.get(method).__dict__.get("__doc__") or ""
    assert doc.strip(), f"{method} has no docstring"


@pytest.mark.parametrize("method", METHODS)
def test_every_default_passes_its_own_check(method, specs):
    for name, option in _options(method):
        assert option.check(method, name, option.default) == option.default, name
    options = {name: option.default for name, option in _options(method)}
    distiller = build_distiller(method, _spec(specs, method), **{**options, **BUILD_WITH.get(method, {})})
    for name, option in _options(method):
        if option.default is not None and name not in BUILD_WITH.get(method, {}):
            assert getattr(distiller, name) == option.default, name


@pytest.mark.parametrize("method,name,value", BOUNDED, ids=[f"{m}-{n}={v!r}" for m, n, v in BOUNDED])
def test_a_value_outside_the_declaration_is_refused_at_construction(specs, method, name, value):
    option = DISTILLERS.get(method).option_specs()[name]
    with pytest.raises(ValueError) as info:
        build_distiller(method, _spec(specs, method), **{name: value})
    message = str(info.value)
    assert message == f"{method}: option {name}={value!r} is not accepted; expected {option.accepted()}"
    if option.choices is not None:
        assert all(str(choice) in message for choice in option.choices)
    else:
        bounds = [f"{sign} {bound:g}" for sign, bound in ((">", option.above), (">=", option.min),
                                                           ("<=", option.max), ("<", option.below))
                  if bound is not None]
        assert bounds and all(b in message for b in bounds)


@pytest.mark.parametrize("method", METHODS)
def test_a_value_of_the_wrong_type_is_refused(method, specs):
    """A string for a number, a number for a flag, a float for an integer: refused, never guessed."""
    wrong = {int: [2.5, "2", True], float: ["1.0", False], bool: [1, "true"], str: [1], tuple: [1.0, "3,5"]}
    for name, option in _options(method):
        for value in wrong.get(option.kind, []):
            with pytest.raises(ValueError, match=re.escape(f"{method}: option {name}={value!r} is not accepted")):
                build_distiller(method, _spec(specs, method), **{name: value})


def test_ints_are_taken_for_float_options_and_lists_for_tuples(specs):
    at = build_distiller("at", specs["classification"], p=3)
    assert at.p == 3.0 and isinstance(at.p, float)
    mlkd = build_distiller("mlkd", specs["classification"], mlkd_T=[3, 5])
    assert mlkd.mlkd_T == (3.0, 5.0)
    with pytest.raises(ValueError, match=re.escape("mlkd: option mlkd_T=(3, 0) is not accepted; expected a list "
                                                   "of numbers > 0")):
        build_distiller("mlkd", specs["classification"], mlkd_T=(3, 0))


def test_unset_options_are_filled_by_the_method(specs):
    """Options whose default is None (unset) take the method's own per-pair value."""
    dkd = build_distiller("dkd", specs["classification"])
    assert dkd.dkd_beta == 8.0
    catkd = build_distiller("catkd", specs["classification"])
    assert (catkd.cat_weight, catkd.cam_resolution, catkd.cam_normalize) == (400.0, 2, True)
    assert build_distiller("catkd", specs["classification"], cam_normalize=False).cam_normalize is False


@pytest.mark.parametrize("method,argv,expected", [
    ("simkd", ["-f", "4"], {"factor": 4}), ("simkd", ["--factor", "4"], {"factor": 4}),
    ("semckd", ["-s", "0.5"], {"soft": 0.5}), ("at", ["--p", "3"], {"p": 3.0}),
])
def test_declared_flags_reach_the_command_line(method, argv, expected):
    """The method's group is built from the declarations: extra spellings (SimKD's -f, SemCKD's -s) and
    converters (a float ``p``) included."""
    from engine import config

    args = config.parse(config.student_parser(), ["--distill", method, *argv])
    assert config.method_options(args) == expected
