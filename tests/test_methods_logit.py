"""dist, wsld, nkd and logit standardisation (``logit_std``): properties of each loss, option errors.

Parity with the reference code is checked for every golden file by test_golden.py and
test_methods_training.py (tests/golden/make_logit_goldens.py made these files).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from distillers.base import ShapeSpec, build_distiller
from distillers.methods._logits import standardize
from engine import config

CLASSES = 10
#: methods whose whole loss sees standardised logits (MLKD standardises its instance level only, as its
#: reference: tests/test_methods_ctkd_mlkd_dot.py)
LOGIT_METHODS = ["kd", "dkd", "dist", "wsld", "nkd", "ctkd"]


def spec(classes=CLASSES, batch_size=None):
    return ShapeSpec(student={"logits": (classes,)}, teacher={"logits": (classes,)}, batch_size=batch_size)


def loss_of(method, z_s, z_t, labels, **options):
    distiller = build_distiller(method, spec(z_s.shape[1]), **options).double()
    out = distiller({"logits": z_s}, {"logits": z_t}, {"labels": labels})
    return distiller.total(out), out


@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(3)
    z_s = 2 * torch.randn(6, CLASSES, generator=gen, dtype=torch.float64)
    z_t = 3 * torch.randn(6, CLASSES, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (6,), generator=gen)
    return z_s, z_t, labels


# -- logit standardisation ------------------------------------------------------------------------
def test_standardize_is_the_per_sample_z_score_with_unbiased_std():
    z = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    expected = (z - 3.0) / (1e-7 + math.sqrt(14 / 3))  # deviations -2,-1,0,3: sum of squares 14, n-1 = 3
    assert torch.allclose(standardize(z), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("method", LOGIT_METHODS)
def test_logit_std_makes_the_loss_blind_to_per_sample_scale_and_shift(method, logits):
    z_s, z_t, labels = logits
    scale_s, scale_t = torch.rand(6, 1, dtype=torch.float64) * 3 + 0.2, torch.rand(6, 1, dtype=torch.float64) * 3 + 0.2
    shift_s, shift_t = torch.randn(6, 1, dtype=torch.float64) * 5, torch.randn(6, 1, dtype=torch.float64) * 5
    moved_s, moved_t = scale_s * z_s + shift_s, scale_t * z_t + shift_t
    plain, _ = loss_of(method, z_s, z_t, labels, logit_std=True)
    moved, _ = loss_of(method, moved_s, moved_t, labels, logit_std=True)
    assert torch.allclose(plain, moved, rtol=1e-6, atol=0)
    # without it the same change moves the loss: the property comes from the option
    off, _ = loss_of(method, z_s, z_t, labels)
    off_moved, _ = loss_of(method, moved_s, moved_t, labels)
    assert not torch.allclose(off, off_moved, rtol=1e-3, atol=0)


@pytest.mark.parametrize("method", LOGIT_METHODS)
def test_logit_std_is_the_method_on_standardised_logits(method, logits):
    z_s, z_t, labels = logits
    on, _ = loss_of(method, z_s, z_t, labels, logit_std=True)
    off, _ = loss_of(method, standardize(z_s), standardize(z_t), labels)
    assert torch.allclose(on, off, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", LOGIT_METHODS)
def test_logit_std_is_off_by_default(method):
    assert build_distiller(method, spec()).logit_std is False


# -- option errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("method,option,value", [
    ("kd", "logit_std", 1), ("dkd", "logit_std", "yes"), ("dist", "logit_std", None),
    ("wsld", "logit_std", "true"), ("nkd", "logit_std", 0), ("ctkd", "logit_std", 1), ("mlkd", "logit_std", "on"),
    ("kd", "kd_T", 0), ("dist", "dist_tau", 0.0), ("dist", "dist_beta", -1.0), ("dist", "dist_gamma", "1"),
    ("wsld", "wsld_T", -2.0), ("nkd", "nkd_T", 0), ("nkd", "nkd_gamma", -0.5),
])
def test_a_bad_option_value_is_an_error_naming_the_option(method, option, value):
    with pytest.raises(ValueError, match=rf"{method}: option {option}=.* is not accepted"):
        build_distiller(method, spec(), **{option: value})


@pytest.mark.parametrize("method", ["dist", "wsld", "nkd"])
def test_logits_over_different_classes_are_refused(method):
    bad = ShapeSpec(student={"logits": (10,)}, teacher={"logits": (100,)})
    with pytest.raises(ValueError, match=rf"{method} needs student and teacher logits over the same classes"):
        build_distiller(method, bad)


def test_dist_refuses_a_batch_of_one():
    with pytest.raises(ValueError, match="batch size 1"):
        build_distiller("dist", spec(batch_size=1))


def test_method_options_do_not_collide_with_the_loss_weight_flags():
    args = config.parse(config.student_parser(), [
        "--distill", "dist", "--dist_beta", "2", "--dist_gamma", "3", "--dist_tau", "1",
        "-r", "0.5", "-a", "0.25", "-b", "4", "--logit_std", "true"])
    assert (args.gamma, args.alpha, args.beta) == (0.5, 0.25, 4.0)
    assert config.method_options(args) == {"dist_beta": 2, "dist_gamma": 3, "dist_tau": 1, "logit_std": True}
    # a method's options are flags only with that method (the command line names the owner otherwise)
    for method, flag, value in (("nkd", "nkd_gamma", 1.5), ("wsld", "wsld_T", 2.0)):
        args = config.parse(config.student_parser(), ["--distill", method, f"--{flag}", str(value), "-b", "4"])
        assert config.method_options(args) == {flag: value} and args.beta == 4.0


# -- dist -------------------------------------------------------------------------------------------
def test_dist_is_zero_when_predictions_match_and_per_sample_shifts_do_not_matter(logits):
    _, z_t, labels = logits
    shifted = z_t + torch.randn(6, 1, dtype=torch.float64) * 4  # a per-sample shift: same softmax
    loss, out = loss_of("dist", shifted.clone().requires_grad_(True), z_t, labels)
    assert loss.abs().item() < 1e-4  # not exactly 0: the reference's 1e-8 in the cosine's denominator
    assert set(out) == {"dist_inter", "dist_intra"}


def test_dist_terms_are_bounded_by_anticorrelation(logits):
    z_s, z_t, labels = logits
    tau = 4.0
    _, out = loss_of("dist", z_s, z_t, labels, dist_tau=tau)
    for term in out.values():
        assert 0 <= term.item() <= 2 * tau ** 2
    # intra with the class-probability columns reversed in sign around their mean: correlation -1
    z_t = z_t / 3  # flat enough that every mirrored probability stays positive
    y_t = F.softmax(z_t / tau, dim=1)
    y_s = 2 * y_t.mean(0, keepdim=True) - y_t  # each column mirrored: rows still sum to 1
    _, out = loss_of("dist", tau * y_s.clamp_min(1e-12).log(), z_t, labels, dist_tau=tau, dist_beta=0.0)
    assert (y_s > 0).all()
    assert math.isclose(out["dist_intra"].item(), 2 * tau ** 2, rel_tol=1e-4)  # up to the 1e-8 in the cosine


def test_dist_weights_scale_their_own_term(logits):
    z_s, z_t, labels = logits
    _, base = loss_of("dist", z_s, z_t, labels)
    _, scaled = loss_of("dist", z_s, z_t, labels, dist_beta=3.0, dist_gamma=0.5)
    assert torch.allclose(scaled["dist_inter"], 3 * base["dist_inter"])
    assert torch.allclose(scaled["dist_intra"], 0.5 * base["dist_intra"])


# -- wsld -------------------------------------------------------------------------------------------
def test_wsld_student_equal_to_teacher_weights_every_sample_by_one_minus_inverse_e(logits):
    _, z_t, labels = logits
    T = 4.0
    loss, _ = loss_of("wsld", z_t.clone(), z_t, labels, wsld_T=T)
    p = F.softmax(z_t / T, dim=1)
    entropy = -(p * p.log()).sum(1).mean()  # the soft cross-entropy of a distribution with itself
    assert torch.allclose(loss, (1 - math.exp(-1)) * T * T * entropy, rtol=1e-6)  # 1e-7 in the weight's ratio


def test_wsld_a_student_sure_of_the_label_gets_almost_no_soft_loss(logits):
    z_s, z_t, labels = logits
    sure = z_s.clone()
    sure[torch.arange(6), labels] = 60.0  # student cross-entropy ~ e^-50: weight ~ 0
    loss, _ = loss_of("wsld", sure, z_t, labels)
    assert loss.item() < 1e-12
    assert loss_of("wsld", z_s, z_t, labels)[0].item() > 1.0


def test_wsld_weight_carries_no_gradient(logits):
    z_s, z_t, labels = logits
    T = 4.0
    leaf = z_s.clone().requires_grad_(True)
    loss_of("wsld", leaf, z_t, labels, wsld_T=T)[0].backward()
    with torch.no_grad():
        w = 1 - torch.exp(-F.cross_entropy(z_s, labels, reduction="none") / F.cross_entropy(z_t, labels, reduction="none"))
        expected = T * (w[:, None] * (F.softmax(z_s / T, 1) - F.softmax(z_t / T, 1))) / z_s.shape[0]
    assert torch.allclose(leaf.grad, expected, rtol=1e-6, atol=1e-12)


# -- nkd --------------------------------------------------------------------------------------------
def test_nkd_non_target_term_ignores_the_target_logit(logits):
    z_s, z_t, labels = logits
    _, out = loss_of("nkd", z_s, z_t, labels)
    moved = z_s.clone()
    moved[torch.arange(6), labels] += 7.0
    _, out_moved = loss_of("nkd", moved, z_t, labels)
    assert torch.allclose(out["nkd_non_target"], out_moved["nkd_non_target"], rtol=1e-12)
    assert not torch.allclose(out["nkd_target"], out_moved["nkd_target"])


def test_nkd_non_target_term_is_smallest_when_non_target_logits_match(logits):
    _, z_t, labels = logits
    T, gamma = 3.0, 3.5
    student = z_t + 2.0  # same non-target logits up to a shift: same renormalised distribution
    student[torch.arange(6), labels] -= 9.0  # whatever the target logit
    _, out = loss_of("nkd", student, z_t, labels, nkd_T=T, nkd_gamma=gamma)
    keep = ~F.one_hot(labels, CLASSES).bool()
    q_t = F.softmax(z_t[keep].reshape(6, -1) / T, dim=1)
    entropy = -(q_t * q_t.log()).sum(1).mean()
    assert torch.allclose(out["nkd_non_target"], gamma * T * T * entropy, rtol=1e-12)
    p_t = F.softmax(z_t, 1)[torch.arange(6), labels]
    log_p_s = F.log_softmax(student, 1)[torch.arange(6), labels]
    assert torch.allclose(out["nkd_target"], -(p_t * log_p_s).mean(), rtol=1e-12)
