"""Method-specific checks of CTKD, MLKD and the DOT optimiser (their golden files are checked by
test_golden.py, their training step and resume by test_methods_training.py)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillers import build_distiller
from distillers.base import ShapeSpec
from distillers.methods._logits import standardize
from distillers.methods.ctkd import dkd_at, instance_kd_loss, reversal_lambda
from distillers.methods.dkd import DKD
from distillers.methods.kd import kd_loss
from distillers.methods.mlkd import confidence_fractions
from distillers.optim import DistillationOrientedTrainer
from conftest import OWN_GOLDEN

B, C = 8, 10


def spec(classes=C):
    return ShapeSpec(student={"logits": (classes,)}, teacher={"logits": (classes,)})


def logits(seed, n=B, classes=C, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g, dtype=torch.float64) * scale


# ---------------------------------------------------------------------------- CTKD
def cosine(epoch, loops=10.0, high=0.0, low=-1.0):
    i = min(max(epoch, 0), loops)
    return (math.cos(math.pi * i / loops) + 1) / 2 * (high - low) + low


@pytest.mark.parametrize("epoch", [0, 1, 2, 5, 9, 10, 11, 240])
def test_ctkd_lambda_follows_the_cosine_schedule(epoch):
    assert reversal_lambda(epoch) == pytest.approx(cosine(epoch), abs=1e-15)
    assert reversal_lambda(epoch, 0.5, -2.0, 20.0) == pytest.approx(cosine(epoch, 20.0, 0.5, -2.0), abs=1e-15)
    ctkd = build_distiller("ctkd", spec())
    assert ctkd.grl_lambda({"epoch": epoch + 0.7}) == reversal_lambda(epoch)  # fractional progress: its epoch
    assert ctkd.grl_lambda({}) == -1.0  # no epoch: the end of the curriculum


def test_ctkd_lambda_matches_the_reference_numbers():
    record = torch.load(OWN_GOLDEN / "ctkd.pt", weights_only=True)
    epochs = [record["inputs"]["epoch"], record["extra"]["step2"]["inputs"]["epoch"]]
    ours = [reversal_lambda(math.floor(float(e))) for e in epochs]
    assert torch.allclose(torch.tensor(ours, dtype=torch.float64), record["extra"]["lambda"], atol=1e-15)


def test_ctkd_linear_schedule_is_the_references():
    # LinearDecay.get_value: i clamped to [0, loops - 1], value = -i (max - min) / loops
    assert [reversal_lambda(e, 0.0, -1.0, 10.0, 0) for e in (0, 5, 9, 10, 50)] == [0.0, -0.5, -0.9, -0.9, -0.9]


def _theta_grad_unreversed(ctkd, z_s, z_t, labels=None):
    """d loss / d theta without the reversal layer."""
    theta = ctkd.global_T.detach().clone().requires_grad_(True)
    T = ctkd.t_start + ctkd.t_end * torch.sigmoid(theta)
    if ctkd.ctkd_base == "dkd":
        loss = sum(dkd_at(z_s, z_t, labels, T, ctkd.dkd_alpha, ctkd.dkd_beta))
    else:
        loss = kd_loss(z_s, z_t, T)
    return torch.autograd.grad(loss.sum(), theta)[0]


@pytest.mark.parametrize("epoch", [0, 3, 12])
def test_ctkd_temperature_gets_the_reversed_gradient(epoch):
    ctkd = build_distiller("ctkd", spec()).double()
    z_s, z_t = logits(1).requires_grad_(True), logits(2)
    ctkd.total(ctkd({"logits": z_s}, {"logits": z_t}, {"epoch": epoch})).backward()
    plain = _theta_grad_unreversed(ctkd, z_s.detach(), z_t)
    assert torch.allclose(ctkd.global_T.grad, reversal_lambda(epoch) * plain, rtol=1e-12, atol=1e-15)
    if epoch:
        assert (ctkd.global_T.grad * plain < 0).all()  # the temperature ascends the KD loss
    else:
        assert ctkd.global_T.grad.abs().max() == 0  # lambda(0) = 0
    # the student's gradient is KD's at the current temperature, not reversed
    T = (1 + 20 * torch.sigmoid(ctkd.global_T)).detach()
    z = z_s.detach().clone().requires_grad_(True)
    kd_loss(z, z_t, T).sum().backward()
    assert torch.allclose(z_s.grad, z.grad, atol=1e-15)


def test_ctkd_temperature_stays_in_range_under_adversarial_training():
    ctkd = build_distiller("ctkd", spec()).double()
    opt = torch.optim.SGD(ctkd.parameters(), lr=1e4)  # absurdly large: drives theta to the extremes
    z_s, z_t = logits(3), logits(4)
    for step in range(20):
        opt.zero_grad()
        ctkd.total(ctkd({"logits": z_s}, {"logits": z_t}, {"epoch": 20})).backward()
        opt.step()
        T = ctkd.temperature(z_s, z_t, 1.0)
        assert ((T >= ctkd.t_start) & (T <= ctkd.t_start + ctkd.t_end)).all(), (step, T)
    assert ctkd.global_T.item() != 1.0


def test_ctkd_dkd_base_reuses_dkd_and_has_a_finite_temperature_gradient():
    labels = torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(5))
    ctkd = build_distiller("ctkd", spec(), ctkd_base="dkd", dkd_beta=2.0).double()
    z_s, z_t = logits(6).requires_grad_(True), logits(7)
    out = ctkd({"logits": z_s}, {"logits": z_t}, {"epoch": 4, "labels": labels})
    T = float(1 + 20 * torch.sigmoid(ctkd.global_T.detach()))
    dkd = build_distiller("dkd", spec(), dkd_alpha=1.0, dkd_beta=2.0, kd_T=T, warmup=0).double()
    ref = dkd({"logits": z_s}, {"logits": z_t}, {"labels": labels})
    for key in ("tckd", "nckd"):
        assert torch.allclose(out[key].reshape(()), ref[key], atol=1e-13)
    ctkd.total(out).backward()
    # the reference's DKD gives NaN here (its probability-space KL); ours is the true derivative
    assert torch.isfinite(ctkd.global_T.grad).all()
    plain = _theta_grad_unreversed(ctkd, z_s.detach(), z_t, labels)
    assert torch.allclose(ctkd.global_T.grad, reversal_lambda(4) * plain, rtol=1e-12)
    eps, theta = 1e-6, ctkd.global_T.detach()
    f = lambda th: sum(dkd_at(z_s.detach(), z_t, labels, 1 + 20 * torch.sigmoid(th), 1.0, 2.0)).item()  # noqa: E731
    numeric = (f(theta + eps) - f(theta - eps)) / (2 * eps)
    assert plain.item() == pytest.approx(numeric, rel=1e-6)


def test_ctkd_instance_variant():
    ctkd = build_distiller("ctkd", spec(), mlp_name="instance").double()
    assert not hasattr(ctkd, "global_T")
    z_s, z_t = logits(8).requires_grad_(True), logits(9)
    T = ctkd.temperature(z_s, z_t, 1.0)
    assert T.shape == (B, 1) and ((T > 1) & (T < 21)).all()
    ctkd.total(ctkd({"logits": z_s}, {"logits": z_t}, {"epoch": 10})).backward()
    reversed_grads = [p.grad.clone() for p in ctkd.mlp.parameters()]
    ctkd.zero_grad()
    T_plain = 1 + 20 * torch.sigmoid(ctkd.mlp(torch.cat([z_t, z_s], 1).detach()))
    instance_kd_loss(z_s.detach(), z_t, T_plain).backward()
    for rev, p in zip(reversed_grads, ctkd.mlp.parameters()):  # lambda(10) = -1
        assert torch.allclose(rev, -p.grad, atol=1e-15)
    # one temperature for every sample: the README's per-sample KL is KD up to its 1e-7 smoothing
    same = torch.full((B, 1), 4.0, dtype=torch.float64)
    assert instance_kd_loss(z_s, z_t, same).item() == pytest.approx(kd_loss(z_s, z_t, 4.0).item(), abs=1e-4)
    with pytest.raises(ValueError, match="instance-wise"):
        build_distiller("ctkd", spec(), mlp_name="instance", ctkd_base="dkd")


@pytest.mark.parametrize("options", [{}, {"ctkd_base": "dkd", "dkd_beta": 2.0}, {"mlp_name": "instance"}])
def test_ctkd_logit_std_is_ctkd_on_standardised_logits_at_the_same_temperature(options):
    labels = torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(14))
    torch.manual_seed(0)
    on = build_distiller("ctkd", spec(), logit_std=True, **options).double()
    off = copy.deepcopy(on)
    off.logit_std = False
    z_s, z_t = logits(15).requires_grad_(True), logits(16)
    batch = {"epoch": 12, "labels": labels}
    got = on({"logits": z_s}, {"logits": z_t}, batch)
    # the loss reads standardised logits; the temperature (the instance MLP's input) the raw ones
    T_raw = off.temperature(z_s, z_t, 1.0)
    if options.get("mlp_name") == "instance":
        expected = {"ctkd": instance_kd_loss(standardize(z_s), standardize(z_t), T_raw)}
        assert not torch.allclose(T_raw, off.temperature(standardize(z_s), standardize(z_t), 1.0))
    else:
        expected = off({"logits": standardize(z_s)}, {"logits": standardize(z_t)}, batch)
    assert set(got) == set(expected)
    for key in got:
        assert torch.allclose(got[key], expected[key], rtol=1e-12, atol=0), key
    assert build_distiller("ctkd", spec()).logit_std is False


def test_ctkd_logit_std_is_blind_to_per_sample_scale_and_shift():
    ctkd = build_distiller("ctkd", spec(), logit_std=True).double()
    z_s, z_t = logits(17), logits(18)
    g = torch.Generator().manual_seed(19)
    scale, shift = torch.rand(B, 1, generator=g, dtype=torch.float64) * 3 + 0.2, torch.randn(B, 1, generator=g,
                                                                                            dtype=torch.float64)
    plain = ctkd.total(ctkd({"logits": z_s}, {"logits": z_t}, {"epoch": 12}))
    moved = ctkd.total(ctkd({"logits": z_s * scale + shift}, {"logits": z_t / scale - shift}, {"epoch": 12}))
    assert moved.item() == pytest.approx(plain.item(), rel=1e-6)


# ---------------------------------------------------------------------------- MLKD
TEMPS = (4.0, 3.0, 5.0, 2.0, 6.0)


def test_mlkd_declares_two_views_and_the_reference_weights():
    mlkd = build_distiller("mlkd", spec())
    assert [(r.name, type(r.augment).__name__) for r in mlkd.data_requests()] == [("strong", "RandAugment")]
    assert (mlkd.kd_T, *mlkd.mlkd_T) == TEMPS
    assert type(mlkd).default_weights == {"gamma": 0.1, "alpha": 0.0, "beta": 0.9}


def test_mlkd_masks_scale_by_the_kept_fraction():
    frac_sample, frac_class = confidence_fractions(logits(10))
    assert frac_sample.item() == 0.5 and frac_class.item() == 0.5  # median of 8 / 10 distinct values
    frac_sample, _ = confidence_fractions(logits(11, n=7))
    assert frac_sample.item() == pytest.approx(4 / 7)


def test_mlkd_single_view_instance_term_is_kd_summed_over_temperatures():
    mlkd = build_distiller("mlkd", spec()).double()
    z_s, z_t = logits(12), logits(13)
    out = mlkd({"logits": z_s}, {"logits": z_t}, {})
    kd_sum = sum(kd_loss(z_s, z_t, T) for T in TEMPS)
    # weak view masked (x 1/2) + the same view as the strong one (unmasked)
    assert out["mlkd_instance"].item() == pytest.approx(1.5 * kd_sum.item(), rel=1e-12)
    same = mlkd({"logits": z_s}, {"logits": z_t}, {"strong": {"s": {"logits": z_s}, "t": {"logits": z_t}}})
    assert all(torch.equal(out[k], same[k]) for k in out)
    twin = mlkd({"logits": z_t}, {"logits": z_t}, {})
    assert all(abs(v.item()) < 1e-12 for v in twin.values())  # a student equal to its teacher: no loss


@pytest.mark.parametrize("name,options", [("mlkd", {}), ("mlkd_ls", {"kd_T": 2.0, "logit_std": True})])
def test_mlkd_two_views_match_the_reference(name, options):
    record = torch.load(OWN_GOLDEN / f"{name}.pt", weights_only=True)
    ref = record["extra"]["two_views"]
    z_s = record["inputs"]["logit_s"].clone().requires_grad_(True)
    z_s_strong = ref["inputs"]["logit_s_strong"].clone().requires_grad_(True)
    views = ({"logits": z_s}, {"logits": record["inputs"]["logit_t"]},
             {"strong": {"s": {"logits": z_s_strong}, "t": {"logits": ref["inputs"]["logit_t_strong"]}}})
    mlkd = build_distiller("mlkd", spec(), **options).double()
    mlkd.strong_levels_on_weak = (3, 4)  # the reference's slip (its T 2 and 6)
    out = mlkd(*views)
    mlkd.total(out).backward()
    tol = dict(rtol=1e-10, atol=1e-10)
    assert torch.allclose(mlkd.total(out), ref["loss"], **tol)
    for ours, theirs in (("mlkd_instance", "loss_kd"), ("mlkd_batch", "loss_bc"), ("mlkd_class", "loss_cc")):
        assert torch.allclose(out[ours], ref[theirs], **tol), ours
    assert torch.allclose(z_s.grad, ref["grads"]["logit_s"], **tol)
    assert torch.allclose(z_s_strong.grad, ref["grads"]["logit_s_strong"], **tol)
    # the default reads the strong view at every temperature
    default = build_distiller("mlkd", spec(), **options).double()(*views)
    (zs_w, zt_w), (zs_s, zt_s) = (z_s.detach(), views[1]["logits"]), (z_s_strong.detach(), ref["inputs"]["logit_t_strong"])
    if options.get("logit_std"):
        zs_w, zt_w, zs_s, zt_s = map(standardize, (zs_w, zt_w, zs_s, zt_s))
    shift = sum(kd_loss(zs_s, zt_s, T) - kd_loss(zs_w, zt_w, T) for T in (mlkd.mlkd_T[2], mlkd.mlkd_T[3]))
    assert (default["mlkd_instance"] - out["mlkd_instance"]).item() == pytest.approx(shift.item(), rel=1e-10)


def test_mlkd_logit_std_standardises_the_instance_level_only():
    z_s, z_t = logits(20), logits(21)
    strong = {"strong": {"s": {"logits": logits(22)}, "t": {"logits": logits(23)}}}
    for batch in ({}, strong):
        on = build_distiller("mlkd", spec(), logit_std=True).double()({"logits": z_s}, {"logits": z_t}, batch)
        off = build_distiller("mlkd", spec()).double()({"logits": z_s}, {"logits": z_t}, batch)
        # batch and class levels (and the masks) read the raw logits, as the reference's cc_loss/bc_loss
        assert torch.equal(on["mlkd_batch"], off["mlkd_batch"]) and torch.equal(on["mlkd_class"], off["mlkd_class"])
        std_batch = {"strong": {side: {"logits": standardize(v["logits"])} for side, v in batch["strong"].items()}} \
            if batch else {}
        std = build_distiller("mlkd", spec()).double()({"logits": standardize(z_s)}, {"logits": standardize(z_t)},
                                                       std_batch)
        frac_raw, _ = confidence_fractions(z_t)
        frac_std, _ = confidence_fractions(standardize(z_t))
        if frac_raw == frac_std:  # same masks: the instance level is MLKD's on standardised logits
            assert torch.allclose(on["mlkd_instance"], std["mlkd_instance"], rtol=1e-12, atol=0)
        assert not torch.allclose(on["mlkd_instance"], off["mlkd_instance"])
    assert build_distiller("mlkd", spec()).logit_std is False


# ---------------------------------------------------------------------------- DOT
def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _losses(model, head, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    logits_ = model(x)
    task = F.cross_entropy(logits_, y)
    distill = kd_loss(logits_, torch.randn(6, 3, generator=g, dtype=torch.float64), 4.0)
    if head is not None:
        distill = distill + F.mse_loss(head(model[1](model[0](x))), torch.zeros(6, 2, dtype=torch.float64))
    return task, distill


def _run_dot(model, head, steps, **kw):
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = DistillationOrientedTrainer(params, **kw)
    for step in range(steps):
        task, distill = _losses(model, head, step)
        opt.zero_grad(set_to_none=True)
        distill.backward(retain_graph=True)
        opt.step_kd()
        opt.zero_grad(set_to_none=True)
        task.backward()
        opt.step()
    return opt


def _run_sgd(model, head, steps, lr, momentum, weight_decay):
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for step in range(steps):
        task, distill = _losses(model, head, step)
        opt.zero_grad()
        (task + distill).backward()
        opt.step()


@pytest.mark.parametrize("with_kd_only_head,weight_decay", [(False, 5e-4), (True, 0.0)])
def test_dot_with_delta_zero_is_sgd_momentum_on_the_summed_gradient(with_kd_only_head, weight_decay):
    a, b = _model(0), _model(0)
    head_a = nn.Linear(4, 2).double() if with_kd_only_head else None
    head_b = copy.deepcopy(head_a)
    _run_dot(a, head_a, 4, lr=0.1, momentum=0.9, delta=0.0, weight_decay=weight_decay)
    _run_sgd(b, head_b, 4, lr=0.1, momentum=0.9, weight_decay=weight_decay)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-13)
    if head_a is not None:
        for p, q in zip(head_a.parameters(), head_b.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=1e-13)


def test_dot_first_distillation_step_skips_weight_decay_on_distillation_only_parameters():
    """The reference's quirk: a parameter only the distillation loss reaches starts its buffer
    from the bare gradient, so its first step lacks the lr * wd * p that SGD takes."""
    model_a, model_b = _model(0), _model(0)
    torch.manual_seed(1)
    head_a = nn.Linear(4, 2).double()
    head_b = copy.deepcopy(head_a)
    before = copy.deepcopy(head_a)
    _run_dot(model_a, head_a, 1, lr=0.1, momentum=0.9, delta=0.0, weight_decay=0.01)
    _run_sgd(model_b, head_b, 1, lr=0.1, momentum=0.9, weight_decay=0.01)
    for p, q, p0 in zip(head_a.parameters(), head_b.parameters(), before.parameters()):
        assert torch.allclose(p - q, 0.1 * 0.01 * p0, atol=1e-15)


def test_dot_delta_splits_the_momenta():
    model = _model(0)
    opt = _run_dot(model, None, 2, lr=0.1, momentum=0.9, delta=0.075)
    p = next(model.parameters())
    state = opt.state[p]
    assert set(state) == {"momentum_buffer", "momentum_kd_buffer"}
    # second step by hand from the first step's buffers
    model2 = _model(0)
    opt2 = _run_dot(model2, None, 1, lr=0.1, momentum=0.9, delta=0.075)
    q = next(model2.parameters())
    b_task, b_kd = opt2.state[q]["momentum_buffer"].clone(), opt2.state[q]["momentum_kd_buffer"].clone()
    task, distill = _losses(model2, None, 1)
    g_kd = torch.autograd.grad(distill, q, retain_graph=True)[0]
    g_task = torch.autograd.grad(task, q)[0]
    assert torch.allclose(state["momentum_buffer"], (0.9 - 0.075) * b_task + g_task, atol=1e-15)
    assert torch.allclose(state["momentum_kd_buffer"], (0.9 + 0.075) * b_kd + g_kd, atol=1e-15)


def test_dot_step_with_equals_the_two_step_api_and_resumes_from_its_state_dict():
    a, b = _model(0), _model(0)
    opt_a = _run_dot(a, None, 2, lr=0.05, momentum=0.9, delta=0.075, weight_decay=5e-4)
    opt_b = DistillationOrientedTrainer(list(b.parameters()), lr=0.05, momentum=0.9, delta=0.075, weight_decay=5e-4)
    for step in range(2):
        task, distill = _losses(b, None, step)
        params = list(b.parameters())
        g_kd = torch.autograd.grad(distill, params, retain_graph=True)
        opt_b.step_with(torch.autograd.grad(task, params), g_kd)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    # resume: a fresh optimiser loaded from the state dict continues exactly
    c = copy.deepcopy(a)
    opt_c = DistillationOrientedTrainer(list(c.parameters()), lr=0.05, momentum=0.9, delta=0.075, weight_decay=5e-4)
    opt_c.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for model, opt in ((a, opt_a), (c, opt_c)):
        task, distill = _losses(model, None, 2)
        opt.zero_grad(set_to_none=False)  # step_kd copies, so zeroing in place is safe
        distill.backward(retain_graph=True)
        opt.step_kd()
        opt.zero_grad(set_to_none=False)
        task.backward()
        opt.step()
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)
