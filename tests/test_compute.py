"""How a step computes (issue 13 §3): bf16/fp16 autocast, the fp16 loss scaler, channels_last,
torch.compile, no host synchronisation per step, and the non-finite-loss check."""
import pytest
import torch

from engine import cli, config
from engine.checkpoint import load
from engine.distributed import DistInfo
from engine.finite_watch import FiniteWatch, NonFiniteLoss
from engine.precision import Precision
from engine.loop import Trainer

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard", "--loader", "device", "--model", "resnet8"]


def teacher_run(tmp, *extra, steps=None):
    """A teacher trainer with each step's loss recorded (``steps``: stop after that many)."""
    trainer = Trainer(config.parse(config.teacher_parser(), TINY + ["--save_dir", str(tmp)] + list(extra)),
                      DistInfo(), "teacher")
    trainer.step_losses = []
    step = trainer.stepper.step

    def recorded(*args, **kwargs):
        out = step(*args, **kwargs)
        trainer.step_losses.append(out[0].item())
        return out

    trainer.stepper.step = recorded
    return trainer


def test_bf16_autocast_trains_close_to_float32(tmp_path):
    plain = teacher_run(tmp_path / "fp32", "--epochs", "2")
    bf16 = teacher_run(tmp_path / "bf16", "--epochs", "2", "--amp", "bf16")
    seen = {}
    forward = bf16.run.model.forward

    def spy(x):
        out = forward(x)
        seen["train" if bf16.run.model.training else "eval"] = out.dtype
        return out

    bf16.run.model.forward = spy
    plain.fit()
    bf16.fit()
    assert seen == {"train": torch.bfloat16, "eval": torch.bfloat16}  # training and evaluation ran in bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.run.model.parameters())  # weights stay float32
    a, b = torch.tensor(plain.step_losses), torch.tensor(bf16.step_losses)
    assert len(a) == 8 and not torch.equal(a, b)
    assert torch.allclose(a, b, rtol=0.03)  # bfloat16 keeps ~3 significant digits


def test_fp16_scaler_skips_an_overflowing_step_and_resumes_with_its_scale(tmp_path):
    precision = Precision("fp16", torch.device("cpu"))
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    with precision.autocast():
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.float16
    scale = precision.scaler.get_scale()
    precision.backward(out.float().sum() * float("inf"))  # every gradient overflows
    precision.step(optimizer)
    assert torch.equal(model.weight, before) and precision.scaler.get_scale() == scale / 2  # skipped, halved
    optimizer.zero_grad()
    with precision.autocast():
        loss = model(torch.randn(3, 4)).float().mean() * 0.01  # scaled by 32768, still finite in float16
    precision.backward(loss)
    precision.step(optimizer)
    assert not torch.equal(model.weight, before)  # a finite step is taken, unscaled
    # a run with --amp fp16 keeps the scaler in its checkpoint, and a resume continues with it
    assert cli.teacher(TINY + ["--epochs", "1", "--amp", "fp16", "--save_dir", str(tmp_path / "run")]) == 0
    saved = load(tmp_path / "run/latest.pth")["scaler"]
    assert saved["scale"] > 0 and "_growth_tracker" in saved
    resumed = Trainer(config.parse(config.teacher_parser(), TINY + ["--epochs", "2", "--amp", "fp16", "--resume",
                                                                    "--save_dir", str(tmp_path / "run")]),
                      DistInfo(), "teacher")
    resumed.resume(str(tmp_path / "run/latest.pth"))
    assert resumed.run.precision.scaler.state_dict() == saved


def test_fp16_with_dot_is_refused(tmp_path, capsys):
    teacher = tmp_path / "t"
    assert cli.teacher(TINY + ["--epochs", "1", "--save_dir", str(teacher)]) == 0
    argv = [a for a in TINY if a not in ("--model", "resnet8")]
    code = cli.student(argv + ["--model_s", "resnet8", "--path_t", str(teacher / "latest.pth"), "--dot",
                               "--amp", "fp16", "--save_dir", str(tmp_path / "s")])
    assert code == 2 and "--dot hands two gradients to its optimiser" in capsys.readouterr().err


def test_channels_last_trains_the_same_model(tmp_path):
    plain = teacher_run(tmp_path / "a", "--epochs", "1")
    nhwc = teacher_run(tmp_path / "b", "--epochs", "1", "--channels_last")
    conv = nhwc.run.model.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain.fit()
    nhwc.fit()
    assert torch.allclose(torch.tensor(plain.step_losses), torch.tensor(nhwc.step_losses), rtol=1e-4)


def test_compile_trains_close_to_eager(tmp_path):
    eager = teacher_run(tmp_path / "a", "--epochs", "1")
    compiled = teacher_run(tmp_path / "b", "--epochs", "1", "--compile")
    eager.fit()
    compiled.fit()
    assert compiled.stepper.compiled_once
    assert torch.allclose(torch.tensor(eager.step_losses), torch.tensor(compiled.step_losses), rtol=1e-3)


def test_a_model_that_cannot_compile_stops_with_one_line(tmp_path, monkeypatch, capsys):
    def broken(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("Unsupported: a graph break this backend cannot handle\n  (long trace)")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    code = cli.teacher(TINY + ["--epochs", "1", "--compile", "--save_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--compile: torch.compile cannot compile resnet8 (RuntimeError: Unsupported" in err
    assert "run without --compile" in err


def test_a_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    """No host synchronisation per step: the number of tensor reads (item, float, bool, tolist)
    in an epoch does not grow with its number of steps."""
    reads = {"n": 0}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            reads["n"] += 1
            return original(self, *args, **kwargs)
        return read

    def reads_in_epoch(size):
        argv = [a if a != "train_size=128" else f"train_size={size}" for a in TINY]
        trainer = Trainer(config.parse(config.teacher_parser(), argv + ["--save_dir", str(tmp_path / str(size))]),
                          DistInfo(), "teacher")
        trainer.stepper.watch.every = 10 ** 6  # as on a GPU: the finiteness record is read at the epoch's end
        with monkeypatch.context() as patch:
            for name in ("item", "__float__", "__bool__", "tolist", "__int__"):
                patch.setattr(torch.Tensor, name, counting(name))
            reads["n"] = 0
            trainer.train_epoch(trainer.run.optimizer)
        return reads["n"], len(trainer.run.train_loader)

    few, few_steps = reads_in_epoch(64)
    many, many_steps = reads_in_epoch(256)
    assert many_steps == 4 * few_steps and many == few


def test_the_finiteness_record_names_the_first_bad_step_at_the_next_check():
    watch = FiniteWatch(every=3)
    good = torch.tensor(1.5)
    watch.record(good, {"ce": good}, "epoch 1, batch 1")
    assert not watch.due()
    watch.record(torch.tensor(float("nan")), {"ce": torch.tensor(float("nan"))}, "epoch 1, batch 2")
    watch.record(torch.tensor(float("inf")), {"ce": torch.tensor(float("inf"))}, "epoch 1, batch 3")
    assert watch.due()
    with pytest.raises(NonFiniteLoss) as bad:
        watch.check()
    assert bad.value.where == "epoch 1, batch 2" and bad.value.steps_after == 1 and bad.value.loss != bad.value.loss
    watch.record(good, {"ce": good}, "epoch 1, batch 4")
    watch.check()  # a fresh record: all finite


def test_amp_is_validated(tmp_path, capsys):
    with pytest.raises(SystemExit):
        config.parse(config.teacher_parser(), TINY + ["--amp", "fp8"])
    assert "--amp" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected one of bf16, fp16"):
        Precision("fp8", torch.device("cpu"))
