"""CRLD (two views: weak and strong) and ViTKD (ViT token features): golden files, options, and training runs.

Golden numbers come only from tests/golden/crld.pt, vitkd.pt and vitkd_same_width.pt, made from the official
code by tests/golden/make_crld_vitkd_goldens.py. CRLD trains on resnet8 from a resnet8 teacher on the
built-in synthetic data; ViTKD on the small test ViTs of tests/plugins/tiny_timm.py (test_vit_t4: 4 blocks,
an 8x8 patch grid, a class token).
"""
import copy
import re

import pytest
import torch

from distillers import build_distiller, golden
from distillers.base import ShapeSpec
from distillers.golden import GoldenCase, check_file
from distillers.methods.kd import kd_per_sample
from engine import cli, config
from engine.checkpoint import save_atomic
from engine.config import ConfigError
from engine.distributed import DistInfo
from engine.loop import Trainer
from engine.plugins import load_plugins
from models import create_model
from conftest import OWN_GOLDEN, REPO

TINY_TIMM = str(REPO / "tests" / "plugins" / "tiny_timm.py")
CLASSES = 10


def tiny_args(*extra, batch=8, train_size=16):
    return ["--dataset", "synthetic", "--data_opt", f"train_size={train_size}", "--data_opt", "test_size=8",
            "--batch_size", str(batch), "--num_workers", "0", "--no_tensorboard", "--epochs", "1", *extra]


def logit_spec(classes=11):
    return ShapeSpec(student={"logits": (classes,)}, teacher={"logits": (classes,)}, num_classes=classes)


def vit_spec(d_s=192, d_t=192, grid=(8, 8), prefix=1, cnn_teacher=False):
    """Shapes of two token models (raw block outputs, the final patch tokens as a map), or of a CNN teacher."""
    def tokens(d):
        return {"stage1_tokens": (prefix + grid[0] * grid[1], d), "last_map": (d, *grid), "logits": (CLASSES,)}

    teacher = {"stage1": (16, 32, 32), "last_map": (64, 8, 8), "logits": (CLASSES,)} if cnn_teacher else tokens(d_t)
    return ShapeSpec(student=tokens(d_s), teacher=teacher, num_classes=CLASSES,
                     extra={"student_arch": "test_vit_t4",
                            "teacher_arch": "resnet56" if cnn_teacher else "test_vit_t4"})


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "resnet8.pth"
    torch.manual_seed(1)
    save_atomic({"arch": "resnet8", "model": create_model("resnet8", num_classes=CLASSES).state_dict()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory):
    load_plugins([TINY_TIMM])
    path = tmp_path_factory.mktemp("t") / "test_vit_t4.pth"
    torch.manual_seed(2)
    save_atomic({"arch": "test_vit_t4", "model": create_model("test_vit_t4", num_classes=CLASSES).state_dict()},
                str(path))
    return str(path)


# ----------------------------------------------------------------------------- golden files
@pytest.mark.parametrize("name", ["crld", "vitkd", "vitkd_same_width"])
def test_golden_file_passes_the_strict_adapter(name):
    outcome = check_file(str(OWN_GOLDEN / f"{name}.pt"))
    assert outcome.ok, outcome.problems


def test_vitkd_golden_depends_on_the_recorded_generator_state():
    """The masks come from the generator: another state draws other masks and the loss no longer matches."""
    record = torch.load(OWN_GOLDEN / "vitkd.pt", weights_only=True)
    other = copy.deepcopy(record)
    torch.manual_seed(123)
    other["rng_state"] = torch.get_rng_state()
    outcome = GoldenCase(other).run()
    assert not outcome.ok and any(p.startswith("loss") for p in outcome.problems)


# ----------------------------------------------------------------------------- CRLD
def test_crld_reference_defaults_and_its_strong_view():
    crld = build_distiller("crld", logit_spec())
    assert (crld.kd_T, crld.tau_w, crld.tau_s, crld.wv_weight, crld.cv_weight) == (4.0, 0.9, 0.2, 2.0, 0.5)
    assert type(crld).default_weights == {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    [view] = crld.data_requests()
    assert view.name == "strong" and type(view.augment).__name__ == "RandAugment"
    assert (view.augment.num_ops, view.augment.magnitude) == (2, 10)


def test_crld_masks_gate_each_pair_of_terms_by_its_teacher():
    """A sample the weak teacher is unsure of leaves the within-view terms, one the strong teacher is unsure
    of leaves the cross-view terms; a sample both drop gets no gradient at all."""
    torch.manual_seed(0)
    b, c = 4, 11
    t_w = torch.zeros(b, c, dtype=torch.float64)
    t_w[0, 0] = t_w[1, 0] = 20.0  # weak teacher confident on samples 0, 1 only
    t_s = torch.zeros(b, c, dtype=torch.float64)
    t_s[0, 1] = t_s[2, 1] = 20.0  # strong teacher confident (>= 0.2) on samples 0, 2 only
    s_w = torch.randn(b, c, dtype=torch.float64, requires_grad=True)
    s_s = torch.randn(b, c, dtype=torch.float64, requires_grad=True)
    crld = build_distiller("crld", logit_spec(c))
    out = crld({"logits": s_w}, {"logits": t_w}, {"strong": {"s": {"logits": s_s}, "t": {"logits": t_s}}})
    T = 4.0
    within = kd_per_sample(s_w, t_w, T) + kd_per_sample(s_s, t_s, T)
    cross = kd_per_sample(s_s, t_w, T) + kd_per_sample(s_w, t_s, T)
    assert torch.allclose(out["crld_wv"], 2.0 * within[:2].sum() / b)
    assert torch.allclose(out["crld_cv"], 0.5 * cross[[0, 2]].sum() / b)
    crld.total(out).backward()
    assert s_w.grad[3].abs().max() == 0 and s_s.grad[3].abs().max() == 0  # dropped by both masks
    assert all(s_w.grad[i].abs().max() > 0 for i in range(3))


def test_crld_with_one_view_uses_it_as_both():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(5, 11), 4 * torch.randn(5, 11)
    crld = build_distiller("crld", logit_spec(), tau_w=0.0, tau_s=0.0)
    one = crld({"logits": z_s}, {"logits": z_t}, {})
    both = crld({"logits": z_s}, {"logits": z_t}, {"strong": {"s": {"logits": z_s}, "t": {"logits": z_t}}})
    assert all(torch.equal(one[k], both[k]) for k in one)
    assert torch.allclose(one["crld_wv"] / 2.0, 2 * kd_per_sample(z_s, z_t, 4.0).mean())


@pytest.mark.parametrize("option, value, accepted", [
    ("tau_w", 1.5, "a number >= 0 and <= 1"), ("tau_s", -0.1, "a number >= 0 and <= 1"),
    ("kd_T", 0.0, "a number > 0"), ("cv_weight", "high", "a number >= 0")])
def test_crld_bad_option_names_the_value(option, value, accepted):
    with pytest.raises(ValueError, match=re.escape(f"crld: option {option}={value!r} is not accepted; "
                                                   f"expected {accepted}")):
        build_distiller("crld", logit_spec(), **{option: value})


def test_crld_refuses_a_pair_with_other_classes():
    spec = ShapeSpec(student={"logits": (10,)}, teacher={"logits": (11,)})
    with pytest.raises(ValueError, match=re.escape("crld needs student and teacher logits over the same classes; "
                                                   "got (10,) and (11,)")):
        build_distiller("crld", spec)


def test_crld_step_sees_two_views_trains_the_student_not_the_teacher(cnn_teacher, tmp_path):
    args = config.parse(config.student_parser(), tiny_args("--model_s", "resnet8", "--path_t", cnn_teacher,
                                                           "--distill", "crld", "--save_dir", str(tmp_path)))
    trainer = Trainer(args, DistInfo(), "student")
    try:
        assert trainer.run.settings.loader == "dataloader"  # a second view: the DataLoader path, chosen by itself
        batch = next(iter(trainer.run.train_loader))
        assert set(batch.views) == {"strong"} and not torch.equal(batch.views["strong"], batch.images)
        seen = {}
        forward = trainer.run.method.forward

        def spy(s, t, b=None):
            seen.update(weak=s["logits"], strong=b["strong"]["s"]["logits"])
            return forward(s, t, b)

        trainer.run.method.forward = spy
        loss, _, terms = trainer.stepper.forward(batch.to(trainer.info.device))
        assert set(terms) == {"ce", "crld_wv", "crld_cv"} and torch.isfinite(loss)
        assert not torch.allclose(seen["weak"], seen["strong"])
        loss.backward()
        assert all(p.grad is not None for p in trainer.run.model.parameters() if p.requires_grad)
        assert trainer.run.model.conv1.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in trainer.run.teacher.parameters())
        assert not list(trainer.run.method.parameters())  # CRLD adds no trainable part
    finally:
        trainer.stepper.close()


def test_crld_short_run_through_train_student(cnn_teacher, tmp_path, capsys):
    argv = tiny_args("--model_s", "resnet8", "--path_t", cnn_teacher, "--distill", "crld", "--tau_s", "0.3",
                     "--save_dir", str(tmp_path / "run"))
    assert cli.student(argv) == 0
    assert "crld(kd_T=4.0, tau_w=0.9, tau_s=0.3, wv_weight=2.0, cv_weight=0.5)" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["distiller_name"] == "crld" and state["distiller_options"]["tau_s"] == 0.3


def test_crld_bad_option_on_the_command_line_is_one_line(cnn_teacher, tmp_path, capsys):
    argv = tiny_args("--model_s", "resnet8", "--path_t", cnn_teacher, "--distill", "crld", "--tau_w", "2",
                     "--save_dir", str(tmp_path / "run"))
    assert cli.student(argv) == 2
    err = capsys.readouterr().err
    assert "tau_w" in err and "2" in err and "<= 1" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- ViTKD
def test_vitkd_reference_defaults_and_parts():
    vitkd = build_distiller("vitkd", vit_spec(d_s=192, d_t=384))
    assert (vitkd.alpha_vitkd, vitkd.beta_vitkd, vitkd.lambda_vitkd) == (3e-5, 3e-6, 0.5)
    assert [tuple(m.weight.shape) for m in vitkd.align2] == [(384, 192), (384, 192)]
    assert tuple(vitkd.align.weight.shape) == (384, 192) and torch.equal(vitkd.mask_token, torch.zeros(1, 1, 384))
    assert [type(m).__name__ for m in vitkd.generation] == ["Conv2d", "ReLU", "Conv2d"]
    same = build_distiller("vitkd", vit_spec())
    assert same.align is None and same.align2 is None


def test_vitkd_refuses_a_cnn_and_unequal_grids():
    with pytest.raises(ValueError, match=re.escape("vitkd needs ViT token features on both sides (the raw outputs "
                                                   "of blocks 0 and 1 and the final patch tokens of a timm ViT/DeiT); "
                                                   "the teacher resnet56 has none")):
        build_distiller("vitkd", vit_spec(cnn_teacher=True))
    spec = vit_spec()
    spec.teacher = {"stage1_tokens": (17, 384), "last_map": (384, 4, 4)}
    with pytest.raises(ValueError, match=re.escape("vitkd compares tokens one to one: the student has a 8x8 patch "
                                                   "grid, the teacher 4x4")):
        build_distiller("vitkd", spec)


@pytest.mark.parametrize("option, value, accepted", [
    ("lambda_vitkd", 1.0, "a number > 0 and < 1"), ("lambda_vitkd", 0.0, "a number > 0 and < 1"),
    ("alpha_vitkd", -1e-5, "a number >= 0")])
def test_vitkd_bad_option_names_the_value(option, value, accepted):
    with pytest.raises(ValueError, match=re.escape(f"vitkd: option {option}={value!r} is not accepted; "
                                                   f"expected {accepted}")):
        build_distiller("vitkd", vit_spec(), **{option: value})


def test_vitkd_masks_the_reference_share_of_tokens():
    vitkd = build_distiller("vitkd", vit_spec(), lambda_vitkd=0.7)
    masked = vitkd.mask(6, 25)
    assert masked.shape == (6, 25) and torch.equal(masked.sum(1), torch.full((6,), 25.0 - int(25 * 0.3)))


def _vit_trainer(vit_teacher, tmp_path, *extra):
    load_plugins([TINY_TIMM])
    args = config.parse(config.student_parser(), tiny_args("--model_s", "test_vit_t4", "--path_t", vit_teacher,
                                                           "--distill", "vitkd", "--save_dir", str(tmp_path),
                                                           *extra, batch=4, train_size=8))
    return Trainer(args, DistInfo(), "student")


def test_vitkd_step_equals_the_adapter_and_trains_the_student_not_the_teacher(vit_teacher, tmp_path):
    """The trainer's step on test_vit_t4 -> test_vit_t4: the taps are the blocks' raw outputs (their patch tokens
    are the stage maps of this 4-block model), the loss is the golden adapter's on the captured features, and
    gradients reach the student and ViTKD's parts, never the teacher."""
    trainer = _vit_trainer(vit_teacher, tmp_path, "--alpha_vitkd", "0.01", "--beta_vitkd", "0.02")
    method = trainer.run.method
    try:
        captured = {}
        forward = method.forward

        def spy(s, t, batch=None):
            state = torch.get_rng_state()
            out = forward(s, t, batch)
            captured.update(s=s, t=t, batch=batch, loss=method.total(out), rng_state=state)
            return out

        method.forward = spy
        before = {k: v.detach().clone() for k, v in method.state_dict().items()}
        batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
        loss, _, terms = trainer.stepper.forward(batch)
        assert set(terms) == {"ce", "vitkd_mimic", "vitkd_gen"} and all(v > 0 for v in terms.values())
        s = captured["s"]
        assert s["blocks.0"].shape == (4, 65, 192) and s["last_map"].shape == (4, 192, 8, 8)
        entry = golden.TABLE["vitkd"]
        record = {"method": "vitkd", "hparams": {"alpha_vitkd": 0.01, "beta_vitkd": 0.02, "lambda_vitkd": 0.5},
                  "inputs": golden.record_inputs(entry, s, captured["t"], captured["batch"]),
                  "params": {k: v.double() for k, v in before.items()}, "loss": captured["loss"].detach().double(),
                  "tolerance": 1e-4, "extra": {}, "rng_state": captured["rng_state"]}
        outcome = GoldenCase(record).run()
        assert outcome.ok, outcome.problems
        loss.backward()
        assert trainer.run.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        assert trainer.run.model.patch_embed.proj.weight.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
        assert all(p.grad is None for p in trainer.run.teacher.parameters())
        in_optimizer = {id(p) for group in trainer.run.optimizer.param_groups for p in group["params"]}
        assert all(id(p) in in_optimizer for p in method.parameters())
    finally:
        trainer.stepper.close()


def test_vitkd_shallow_taps_are_the_stage_maps_of_a_four_block_vit(vit_teacher):
    """On test_vit_t4 (blocks 0..3 are stages 1..4) the patch tokens ViTKD takes from ``blocks.0``/``blocks.1``
    are exactly the standard ``stage1``/``stage2`` maps' tokens, and the last map's are the final norm's."""
    from core.taps import FeatureTaps

    load_plugins([TINY_TIMM])
    torch.manual_seed(0)
    model = create_model("test_vit_t4", num_classes=CLASSES).eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, ["blocks.0", "blocks.1", "stage1", "stage2", "last_map"]) as taps:
        out = taps(x)
    grid = out["last_map"].shape[-2:]
    for k, tap in enumerate(("blocks.0", "blocks.1"), start=1):
        tokens = type(build_distiller("vitkd", vit_spec())).patch_tokens(out[tap], grid)
        assert torch.equal(tokens, out[f"stage{k}"].flatten(2).transpose(1, 2))
    with torch.no_grad():
        tokens = model.forward_features(x)  # the final norm's output, class token first
    assert torch.allclose(out["last_map"].flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-6)


def test_vitkd_short_run_through_train_student(vit_teacher, tmp_path, capsys):
    argv = tiny_args("--plugin", TINY_TIMM, "--model_s", "test_vit_t4", "--path_t", vit_teacher, "--distill", "vitkd",
                     "--lambda_vitkd", "0.75", "--save_dir", str(tmp_path / "run"), batch=4, train_size=8)
    assert cli.student(argv) == 0
    assert "vitkd(alpha_vitkd=3e-05, beta_vitkd=3e-06, lambda_vitkd=0.75)" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["distiller_name"] == "vitkd" and state["distiller_options"]["lambda_vitkd"] == 0.75
    assert {k.split(".")[0] for k in state["distiller"]} == {"mask_token", "generation"}  # equal widths: no align


def test_vitkd_on_a_cnn_pair_is_one_line(cnn_teacher, tmp_path, capsys):
    argv = tiny_args("--model_s", "resnet8", "--path_t", cnn_teacher, "--distill", "vitkd",
                     "--save_dir", str(tmp_path / "run"))
    assert cli.student(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_student.py: error: --distill vitkd with teacher resnet8 and student resnet8: "
                          "vitkd needs ViT token features on both sides") and "Traceback" not in err


def test_vitkd_refusal_is_a_config_error(cnn_teacher, tmp_path):
    with pytest.raises(ConfigError, match="vitkd needs ViT token features on both sides .* student resnet8 has none"):
        Trainer(config.parse(config.student_parser(), tiny_args("--model_s", "resnet8", "--path_t", cnn_teacher,
                                                                "--distill", "vitkd", "--save_dir", str(tmp_path))),
                DistInfo(), "student")
