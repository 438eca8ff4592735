"""MGD, ITRD, SRD and FCFD (issue 22): their golden files, where their gradients go, their options,
MGD's masks and FCFD's paths from torch's generator, and short training runs through train_student.py."""
import copy

import pytest
import torch
from torch import nn

from core.taps import FeatureTaps, TapPoint
from distillers import build_distiller, golden
from distillers.base import ShapeSpec
from distillers.golden import GoldenCase
from engine import cli, config
from engine.assembly import shape_spec
from engine.checkpoint import save_atomic
from engine.distributed import DistInfo
from engine.loop import Trainer
from models import create_model, register_model
from conftest import OWN_GOLDEN

GOLDEN_FILES = {"mgd": "mgd", "mgd_spatial": "mgd", "itrd": "itrd", "itrd_same_width": "itrd", "srd": "srd",
                "srd_exponent2_T2": "srd", "fcfd": "fcfd", "fcfd_all_paths": "fcfd"}
METHODS = ("mgd", "itrd", "srd", "fcfd")


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_golden_file_passes(name):
    record = torch.load(OWN_GOLDEN / f"{name}.pt", weights_only=True)
    assert golden.TABLE[record["method"]].distiller == GOLDEN_FILES[name]
    outcome = golden.check_file(str(OWN_GOLDEN / f"{name}.pt"))
    assert outcome.ok, outcome.problems


def test_golden_files_with_draws_need_their_generator_state():
    """Another generator state draws other masks or paths, and the file fails: the comparison is not vacuous."""
    for name in ("mgd", "fcfd"):
        record = torch.load(OWN_GOLDEN / f"{name}.pt", weights_only=True)
        drawn = set(record["extra"].get("paths", ()))
        for seed in range(100):  # a state whose first draw of FCFD's paths is another pair of paths
            torch.manual_seed(seed)
            record["rng_state"] = torch.get_rng_state()
            names = ["0.0.1.1", "0.0.0.1", "1.1.0.0", "1.1.1.0"]
            if {names[i] for i in torch.randperm(4)[:2].tolist()} != drawn:
                break
        assert not GoldenCase(record).run().ok, name


# ---------------------------------------------------------------------------- gradients
def _spec(student, teacher):
    example = torch.zeros(2, 3, 32, 32)
    return ShapeSpec(student=shape_spec(student, example), teacher=shape_spec(teacher, example), num_classes=10,
                     num_data=64, batch_size=8, extra={"student_arch": "", "teacher_arch": ""})


def _step(method, student="resnet8", teacher="resnet20", terms=None, **options):
    """One forward of ``method`` on a student and a frozen eval-mode teacher through the taps; backward of
    ``terms`` (all by default). Returns (student, teacher, distiller, terms, student BN buffers after the
    student's forward, the same after the method's forward)."""
    torch.manual_seed(0)
    t_model = create_model(teacher, num_classes=10).eval().requires_grad_(False)
    s_model = create_model(student, num_classes=10).train()
    distiller = build_distiller(method, _spec(s_model, t_model), **options).train()
    x = torch.randn(8, 3, 32, 32)
    with FeatureTaps(s_model, distiller.student_taps) as s_taps, \
            FeatureTaps(t_model, distiller.teacher_taps, stop_early=True) as t_taps:
        with torch.no_grad():
            t = t_taps(x)
        s = s_taps(x)
        buffers = copy.deepcopy(dict(s_model.named_buffers()))
        out = distiller(s, t, {"epoch": 30})
    after = dict(s_model.named_buffers())
    loss = sum(v for k, v in out.items() if terms is None or k in terms)
    loss.backward()
    return s_model, t_model, distiller, out, buffers, after


def _nonzero(grad):
    return grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("method,student,options", [
    ("mgd", "resnet8x4", {}), ("mgd", "resnet8", {"mgd_mask": "spatial"}), ("itrd", "resnet8x4", {}),
    ("itrd", "resnet8", {}), ("srd", "resnet8x4", {}), ("fcfd", "resnet8x4", {"extra_paths": 4}),
])
def test_gradients_reach_the_student_and_the_parts_never_the_teacher(method, student, options):
    s_model, t_model, distiller, out, _, _ = _step(method, student, **options)
    assert all(torch.isfinite(v) for v in out.values())
    assert _nonzero(s_model.conv1.weight.grad)  # through the tapped features, down to the student's stem
    parts = [(n, p) for n, p in distiller.named_parameters() if p.requires_grad]
    assert parts and all(_nonzero(p.grad) for _, p in parts), [n for n, p in parts if not _nonzero(p.grad)]
    assert all(p.grad is None for p in t_model.parameters())


def test_fcfd_gradients_cross_the_frozen_teacher_stages():
    """Student-to-teacher paths only, function term only: the student learns through the teacher's stages
    and head (stage 1 and 2 bridged), the teacher's parameters get nothing, student stage 3 nothing."""
    s_model, t_model, distiller, out, _, _ = _step("fcfd", "resnet8x4", extra_type="s2t", extra_paths=2,
                                                   terms=("fcfd_func",))
    assert out["fcfd_func"] > 0
    assert _nonzero(s_model.layer1[0].conv1.weight.grad) and _nonzero(s_model.layer2[0].conv1.weight.grad)
    assert not _nonzero(s_model.layer3[0].conv1.weight.grad)
    assert all(p.grad is None for p in t_model.parameters())
    assert _nonzero(distiller.to_teacher[0][0].weight.grad) and distiller.to_student[0][0].weight.grad is None


def test_fcfd_student_stages_on_teacher_maps_keep_their_running_statistics():
    """Teacher-to-student paths run the student's stages 2-3 on bridged maps; its BatchNorm statistics
    stay those of its own forward (the reference's ghost BN traces), and the student's head learns."""
    s_model, _, distiller, out, before, after = _step("fcfd", extra_type="t2s", extra_paths=2, terms=("fcfd_func",))
    assert out["fcfd_func"] > 0 and _nonzero(s_model.fc.weight.grad)
    assert _nonzero(s_model.layer3[0].conv1.weight.grad)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fcfd_refuses_pairs_it_cannot_bridge():
    s, t = create_model("vgg8", num_classes=10), create_model("resnet20", num_classes=10)
    with pytest.raises(ValueError, match="the student has 4 stages, the teacher 3"):
        build_distiller("fcfd", _spec(s, t))
    s = create_model("ShuffleV2", num_classes=10)
    with pytest.raises(ValueError, match=r"stage3 \(464x4x4\) is not the map they read \(last_map, 1024x4x4\)"):
        build_distiller("fcfd", _spec(s, t))
    spec = _spec(create_model("resnet8", num_classes=10), t)
    spec.student = {k: v for k, v in spec.student.items() if not k.startswith("stage")}
    with pytest.raises(ValueError, match="the student needs two or more spatial stage taps"):
        build_distiller("fcfd", spec)


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("method,option,value,accepted", [
    ("mgd", "lambda_mgd", 1.0, "a number >= 0 and < 1"), ("mgd", "mgd_mask", "pixel", "one of channel, spatial"),
    ("itrd", "alpha_it", 0.0, "a number > 0"), ("itrd", "lambda_mutual", -1.0, "a number >= 0"),
    ("srd", "srd_exponent", -4.0, "a number > 0"), ("srd", "srd_T", 0.0, "a number > 0"),
    ("fcfd", "extra_type", "all", "one of bi, s2t, t2s, nomix"), ("fcfd", "stage_input", "relu", "one of afterrelu"),
    ("fcfd", "extra_paths", -1, "an integer >= 0"), ("fcfd", "fcfd_T", 0.0, "a number > 0"),
])
def test_bad_option_names_the_value_and_the_accepted_ones(method, option, value, accepted):
    spec = _spec(create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10))
    with pytest.raises(ValueError, match=f"{method}: option {option}={value!r} is not accepted; expected {accepted}"):
        build_distiller(method, spec, **{option: value})


def test_fcfd_extra_paths_beyond_the_candidates_names_both():
    spec = _spec(create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10))
    with pytest.raises(ValueError, match="extra_paths=3 exceeds the 2 candidate paths of extra_type t2s with 3 stages"):
        build_distiller("fcfd", spec, extra_paths=3, extra_type="t2s")


# ---------------------------------------------------------------------------- draws
def _mgd(**options):
    c, hw = 8, (5, 5)
    spec = ShapeSpec(student={"last_map": (c, *hw)}, teacher={"last_map": (c, *hw)})
    distiller = build_distiller("mgd", spec, **options)
    s = {"last_map": torch.randn(4, c, *hw)}
    t = {"last_map": torch.randn(4, c, *hw)}
    return distiller, s, t


def test_mgd_masks_come_from_the_global_generator():
    """Same seed, same masks and loss; another seed, another loss; a saved generator state (what a
    checkpoint holds) replays the same masks."""
    distiller, s, t = _mgd()
    losses = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        losses.append(distiller(s, t)["mgd"])
    assert torch.equal(losses[0], losses[1]) and not torch.equal(losses[0], losses[2])
    state = torch.get_rng_state()
    first = distiller(s, t)["mgd"]
    second = distiller(s, t)["mgd"]  # the generator moved on
    torch.set_rng_state(state)
    assert torch.equal(distiller(s, t)["mgd"], first) and not torch.equal(first, second)


@pytest.mark.parametrize("mask,ratio", [("channel", 0.15), ("spatial", 0.65)])
def test_mgd_mask_ratio_is_respected(mask, ratio):
    distiller, _, _ = _mgd(mgd_mask=mask, lambda_mgd=ratio)
    torch.manual_seed(0)
    keep = distiller.keep_mask(500, 16, 6, 6)
    assert keep.shape == ((500, 16, 1, 1) if mask == "channel" else (500, 1, 6, 6))
    assert abs((~keep).double().mean().item() - ratio) < 0.01  # 8000 or 18000 draws: std under 0.004
    torch.manual_seed(0)
    draws = torch.rand(keep.shape)
    assert torch.equal(keep, draws >= ratio if mask == "channel" else draws <= 1 - ratio)


def test_fcfd_paths_come_from_the_global_generator():
    spec = _spec(create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10))
    distiller = build_distiller("fcfd", spec)
    assert distiller.candidates() == [("t2s", 1), ("t2s", 2), ("s2t", 1), ("s2t", 2)]
    torch.manual_seed(3)
    first = distiller.draw_paths()
    torch.manual_seed(3)
    assert distiller.draw_paths() == first and len(first) == 2 == len(set(first))
    seen = {path for _ in range(50) for path in distiller.draw_paths()}
    assert seen == set(distiller.candidates())


# ---------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "resnet20.pth"
    torch.manual_seed(1)
    save_atomic({"arch": "resnet20", "model": create_model("resnet20", num_classes=10).state_dict()}, str(path))
    return str(path)


@pytest.mark.parametrize("method", METHODS)
def test_a_short_training_run_finishes(method, teacher_path, tmp_path):
    argv = ["--dataset", "synthetic", "--data_opt", "train_size=48", "--data_opt", "test_size=16",
            "--batch_size", "16", "--num_workers", "0", "--no_tensorboard", "--epochs", "1",
            "--model_s", "resnet8", "--path_t", teacher_path, "--distill", method, "--save_dir", str(tmp_path)]
    assert cli.student(argv) == 0
    state = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert state["distiller_name"] == method and state["epoch"] == 2  # the next epoch: the one epoch finished


# ---------------------------------------------------------------------------- FCFD's step vs the adapter
class ConvStages(nn.Module):
    """A network whose stem and three stages are single 3x3 convs (chained), pooled then classified:
    its stages are what FCFD's golden file stands a stage in by, so a training step can be checked
    against the golden adapter."""

    def __init__(self, widths, num_classes=10):
        super().__init__()
        self.block0 = nn.Conv2d(3, widths[0], 3, padding=1)
        for k in range(1, 4):
            setattr(self, f"block{k}", nn.Conv2d(widths[k - 1], widths[k], 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def tap_points(self):
        points = {"stem": TapPoint("block0"), "last_map": TapPoint("pool", "input"), "pooled": TapPoint("fc", "input"),
                  "logits": TapPoint(""), "classifier": TapPoint("fc", "module")}
        points.update({f"stage{k}": TapPoint(f"block{k}") for k in range(1, 4)})
        return points

    def forward(self, x):
        for k in range(4):
            x = getattr(self, f"block{k}")(x)
        return self.fc(self.pool(x).flatten(1))


register_model("test_fcfd_convs_s", family="cifar", override=True)(lambda num_classes=10: ConvStages((3, 4, 5, 6),
                                                                                                        num_classes))
register_model("test_fcfd_convs_t", family="cifar", override=True)(lambda num_classes=10: ConvStages((4, 6, 8, 10),
                                                                                                        num_classes))


def test_fcfd_training_step_matches_the_golden_adapter(tmp_path):
    """The loss of a real trainer step (taps, ``stageK:module`` modules, drawn paths) equals the golden
    adapter's on the captured features, modules and generator state: the code the golden files check."""
    path = tmp_path / "t.pth"
    torch.manual_seed(2)
    save_atomic({"arch": "test_fcfd_convs_t", "model": create_model("test_fcfd_convs_t", num_classes=10).state_dict()}, str(path))
    argv = ["--dataset", "synthetic", "--data_opt", "train_size=32", "--data_opt", "test_size=8",
            "--batch_size", "8", "--num_workers", "0", "--no_tensorboard", "--epochs", "1", "--model_s",
            "test_fcfd_convs_s", "--path_t", str(path), "--distill", "fcfd", "--save_dir", str(tmp_path / "run"),
            "--extra_paths", "3"]
    trainer = Trainer(config.parse(config.student_parser(), argv), DistInfo(), "student")
    method, entry = trainer.run.method, golden.TABLE["fcfd"]
    captured = {}
    forward = method.forward

    def spy(s, t, batch=None):
        rng_state = torch.get_rng_state()
        out = forward(s, t, batch)
        captured.update(inputs=golden.record_inputs(entry, s, t, batch), rng_state=rng_state, loss=method.total(out))
        return out

    method.forward = spy
    params = {k: v.double() if v.is_floating_point() else v for k, v in copy.deepcopy(method.state_dict()).items()}
    trainer.stepper.forward(next(iter(trainer.run.train_loader)).to(trainer.info.device))
    trainer.stepper.close()
    inverse = {ours: ref for ref, ours in entry.renames}
    params = {next(inverse[p] + k[len(p):] for p in inverse if k.startswith(p)): v for k, v in params.items()}
    record = {"method": "fcfd", "hparams": {key: getattr(method, opt) for opt, key in entry.hparam_options.items()},
              "inputs": captured["inputs"], "params": params, "loss": captured["loss"].detach().double(),
              "tolerance": 1e-4, "extra": {}, "rng_state": captured["rng_state"]}
    outcome = GoldenCase(record).run()
    assert outcome.ok, outcome.problems
    assert captured["loss"] > 0
