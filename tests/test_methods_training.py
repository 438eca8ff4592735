"""Every golden-mapped method inside a real training step of the trainer.

For each method: the loss of a training step equals what the golden adapter
computes from the features the taps captured in that step (one implementation);
every parameter the golden file lists in ``grads`` gets a gradient and moves in
that step; the distiller's parts and buffers survive a checkpoint and ``--resume``.
Pair: resnet20 -> resnet8 on tiny synthetic data, batch 16 (AB: resnet20 -> resnet8x4,
since its connectors are the identity where channels and sizes already match).
"""
import copy

import pytest
import torch

from distillers import golden
from distillers.golden import GoldenCase
from engine import config
from engine.checkpoint import save_atomic
from engine.distributed import DistInfo
from engine.loop import Trainer
from models import create_model
from conftest import golden_file

BATCH = 16
MEMORY = {"nce_k": 32}  # small memories/queues (a multiple of the batch for the queues)
STUDENT = {"ab": "resnet8x4", "mgd": "resnet8x4"}  # MGD: unequal widths, so its align conv (in the golden file) exists
#: Methods whose golden file stands a module in by tensors that a real network's module is not: FCFD's stages
#: are single convs there; tests/test_methods_wave2_feature.py checks its training step on such networks.
STAND_INS = {"fcfd"}


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "resnet20.pth"
    torch.manual_seed(1)
    save_atomic({"arch": "resnet20", "model": create_model("resnet20", num_classes=10).state_dict()}, str(path))
    return str(path)


def _flags(options):
    flags = []
    for key, value in options.items():
        flags += [f"--{key}", str(value)]
    return flags


def golden_options(method, entry):
    """The options the method's golden file was recorded at (the adapter's reading of its hparams)."""
    hparams = torch.load(golden_file(method), weights_only=True).get("hparams", {})
    return golden.entry_options(entry, hparams, [])


def build_trainer(method, entry, teacher_path, tmp_path, resume=False):
    options = golden_options(method, entry)
    options.pop("warmup", None)  # the step is taken at full weight (--warmup 0 below)
    options.update({k: MEMORY[k] for k in entry.hparam_options if k in MEMORY})
    argv = ["--dataset", "synthetic", "--data_opt", "train_size=64", "--data_opt", "test_size=16",
            "--batch_size", str(BATCH), "--num_workers", "0", "--no_tensorboard",
            "--model_s", STUDENT.get(method, "resnet8"), "--path_t", teacher_path, "--distill", entry.distiller,
            "--save_dir", str(tmp_path), "--epochs", "1", "--warmup", "0"]
    if "warmup" not in type_options(entry.distiller):
        argv = argv[:-2]
    if "kd_T" in options:
        argv += ["--kd_T", str(options.pop("kd_T"))]
    if resume:
        argv += ["--resume"]
    args = config.parse(config.student_parser(), argv + _flags(options))
    return Trainer(args, DistInfo(), "student")


def type_options(name):
    from distillers.base import DISTILLERS
    return DISTILLERS.get(name).option_names()


def _inverse_rename(key, renames):
    best = None
    for ref, ours in renames:
        if key.startswith(ours) and (best is None or len(ours) > len(best[1])):
            best = (ref, ours)
    return key if best is None else best[0] + key[len(best[1]):]


def _record(method_name, entry, captured, params_before, method, trainer):
    """A golden-format record built from what the trainer's step captured."""
    s, t, batch = captured["s"], dict(captured["t"]), captured["batch"]
    if method_name == "ft":  # the golden file gives the paraphraser's encoding as an input
        with torch.no_grad():
            t["factor"] = method.paraphraser.encoder(t["last_map"])
    inputs = golden.record_inputs(entry, s, t, batch)
    hparams = {key: getattr(method, opt) for opt, key in entry.hparam_options.items()}
    hparams.update({key: getattr(trainer.run.spec, f) for f, key in entry.spec_from_hparams.items()})
    params = {_inverse_rename(k, entry.renames): v.double() if v.is_floating_point() else v
              for k, v in params_before.items()
              if k not in entry.state_from_inputs and not (method_name == "ft" and k.startswith("paraphraser."))}
    return {"method": method_name, "hparams": hparams, "inputs": inputs, "params": params,
            "loss": captured["loss"].detach().double(), "tolerance": 1e-4, "extra": {},
            "rng_state": captured["rng_state"]}


METHODS = sorted(m for m, e in golden.TABLE.items() if e.task == "classification")  # metric: test_metric_learning.py


@pytest.mark.parametrize("method_name", [m for m in METHODS if m not in STAND_INS])
def test_training_step_matches_adapter_and_trains_golden_params(method_name, teacher_path, tmp_path):
    entry = golden.TABLE[method_name]
    trainer = build_trainer(method_name, entry, teacher_path, tmp_path)
    method = trainer.run.added_term if entry.distiller == "kd" else trainer.run.method  # -a's KD term
    stage = method.init_stage() if entry.call == "init_forward" else None
    optimizer = trainer.enter_stage(stage)  # an init stage's own optimizer, or the main one after it
    captured = {}
    call = getattr(method, entry.call)

    def spy(s, t, batch=None):
        rng_state = torch.get_rng_state()  # what a method that draws (MGD's masks) draws from
        out = call(s, t, batch)
        # student modules (CAT-KD's classifier) as they were in this step, before the optimizer moves them
        s = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in s.items()}
        captured.update(s=s, t=t, batch=batch, loss=method.total(out), rng_state=rng_state)
        return out

    setattr(method, entry.call, spy)
    params_before = copy.deepcopy(method.state_dict())
    batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
    loss, _, _ = trainer.stepper.forward(batch, stage)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    named = dict(method.named_parameters())
    grads = {k: named[k].grad.clone() for k in named if named[k].grad is not None}
    optimizer.step()

    record = _record(method_name, entry, captured, params_before, method, trainer)
    outcome = GoldenCase(record).run()
    assert outcome.ok, outcome.problems

    reference = torch.load(golden_file(method_name), weights_only=True)
    listed = [golden._rename(k[len("params."):], entry.renames) for k in reference["grads"]
              if k.startswith("params.")]
    for name in listed:
        assert name in grads and grads[name].abs().sum() > 0, f"{name} got no gradient"
        assert not torch.equal(named[name].detach(), params_before[name]), f"{name} did not change"
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, param in named.items():
        if param.requires_grad:
            assert id(param) in in_optimizer, f"{name} is trainable but not optimised"


@pytest.mark.parametrize("method_name", [m for m in METHODS if golden.TABLE[m].distiller != "kd"])
def test_parts_and_buffers_survive_checkpoint_and_resume(method_name, teacher_path, tmp_path):
    entry = golden.TABLE[method_name]
    trainer = build_trainer(method_name, entry, teacher_path, tmp_path)
    stage = trainer.run.method.init_stage() if trainer.state.phase == "init" else None
    trainer.enter_stage(stage)
    batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
    loss, _, _ = trainer.stepper.forward(batch, stage)
    loss.backward()
    trainer.run.optimizer.step()
    trainer.save("latest.pth", 0.0)
    saved = copy.deepcopy(trainer.run.method.state_dict())
    resumed = build_trainer(method_name, entry, teacher_path, tmp_path, resume=True)
    resumed.resume(str(tmp_path / "latest.pth"))
    restored = resumed.run.method.state_dict()
    assert saved.keys() == restored.keys()
    has_state = bool(torch.load(golden_file(method_name), weights_only=True)["params"])
    assert bool(saved) == has_state
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key
