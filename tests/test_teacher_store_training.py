"""The teacher-output store inside training runs (issue 13 §1): the same run with and without
it, a store filled by the script and one filled lazily, two processes sharing one store."""
import json
import re
import subprocess
import sys

import pytest
import torch

from engine import cli, config
from engine.checkpoint import load
from engine.distributed import DistInfo
from engine.teacher_store import TeacherStore
from engine.loop import Trainer
from data.device_loader import view_ids
from conftest import REPO
from test_interrupts import child, free_port

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard", "--loader", "device"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store_teacher")
    assert cli.teacher(TINY + ["--model", "resnet8", "--epochs", "1", "--save_dir", str(folder)]) == 0
    return str(folder / "latest.pth")


def student(tmp, teacher, method, *extra):
    """A KD/CRD student on TINY, run through with every step's loss and teacher rows recorded."""
    argv = TINY + ["--model_s", "resnet8", "--path_t", teacher, "--distill", method, "--epochs", "2",
                   "--save_dir", str(tmp / "run"), "--save_root", str(tmp)] + list(extra)
    if method == "crd":
        argv += ["--nce_k", "16"]
    return fit_recorded(config.parse(config.student_parser(), argv))


def fit_recorded(args) -> Trainer:
    """Build and fit a student, recording each step's loss (``step_losses``) and how many rows
    the teacher's forward saw (``teacher_rows``)."""
    trainer = Trainer(args, DistInfo(), "student")
    trainer.step_losses, trainer.teacher_rows = [], 0
    step, taps = trainer.stepper.step, trainer.stepper.t_taps.__class__.__call__

    def recorded(*args, **kwargs):
        out = step(*args, **kwargs)
        trainer.step_losses.append(out[0].item())
        return out

    def counted(self, x, *args, **kwargs):
        if self is trainer.stepper.t_taps:
            trainer.teacher_rows += x.shape[0]
        return taps(self, x, *args, **kwargs)

    trainer.stepper.step = recorded
    trainer.stepper.t_taps.__class__.__call__ = counted
    try:
        trainer.fit()
    finally:
        trainer.stepper.t_taps.__class__.__call__ = taps
    return trainer


@pytest.mark.parametrize("method, tap", [("kd", "logits"), ("crd", "pooled")])
def test_a_run_with_the_store_equals_one_without_and_a_warm_store_skips_the_teacher(tmp_path, teacher, method, tap):
    plain = student(tmp_path / "plain", teacher, method, "--no_teacher_store")
    cold = student(tmp_path / "cold", teacher, method, "--teacher_store", str(tmp_path / "store"))
    warm = student(tmp_path / "warm", teacher, method, "--teacher_store", str(tmp_path / "store"))
    assert plain.run.store is None and cold.run.store is not None and tap in cold.run.objective.teacher_taps
    steps = len(plain.step_losses)
    assert steps == 8 and plain.teacher_rows == steps * 32  # 2 epochs of 4 batches, the teacher on every row
    # the cold store computes each view once: a view met again in epoch 2 is read, not recomputed
    assert cold.teacher_rows == cold_entries(cold)
    assert warm.teacher_rows == 0  # the same seed replays the same views: every one is stored
    # same losses at every step and the same weights, within float tolerance: a stored row was
    # computed in another (sub-)batch, whose kernels may sum in another order
    for run in (cold, warm):
        assert torch.allclose(torch.tensor(run.step_losses), torch.tensor(plain.step_losses), rtol=1e-5, atol=1e-6)
        for key, value in plain.run.model.state_dict().items():
            assert torch.allclose(run.run.model.state_dict()[key].float(), value.float(), rtol=1e-4, atol=1e-5), key
    store = TeacherStore.open(str(tmp_path / "store"), stored_key(tmp_path / "store"), 128, 162,
                              {tap: warm.run.spec.teacher[tap]})
    assert store.filled_fraction(tap) == pytest.approx(cold_entries(cold) / (128 * 162))


def stored_key(folder):
    return json.loads((folder / "meta.json").read_text())["key"]


def cold_entries(trainer) -> int:
    """Distinct (sample, view) pairs the two epochs visited: what a lazily filled store holds."""
    loader, seen = trainer.run.train_loader, set()
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        order = list(loader.sampler)[:len(loader) * loader.batch_size]
        seen |= set(zip(order, view_ids(loader.seed, epoch, order).tolist()))
    return len(seen)


def test_the_log_reports_hits_size_and_why_the_store_is_off(tmp_path, teacher, capsys):
    base = TINY + ["--model_s", "resnet8", "--path_t", teacher, "--epochs", "1", "--save_root", str(tmp_path)]
    assert cli.student(base + ["--save_dir", str(tmp_path / "a")]) == 0
    assert cli.student(base + ["--save_dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"teacher store \S+teacher_store/[0-9a-f]{16} \(logits, float32\): 0\.0% of the views", out)
    assert "teacher store 100% hits" in out  # the second run, same seed and teacher, reads every view
    assert cli.student(base + ["--save_dir", str(tmp_path / "c"), "--distill", "fitnet"]) == 0
    assert "teacher store off: --distill fitnet reads the teacher's feature map" in capsys.readouterr().out
    dataloader = [a if a != "device" else "dataloader" for a in base]  # --loader dataloader
    assert cli.student(dataloader + ["--save_dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "teacher store off: this loader gives its views no id the store can key" in out
    assert "--loader device (in-memory CIFAR-style sets)" in out
    # MLKD's strong view needs the image: the device loader cannot serve it, and the log does not suggest it
    auto = [a for a in base if a not in ("--loader", "device")]
    assert cli.student(auto + ["--save_dir", str(tmp_path / "e"), "--distill", "mlkd"]) == 0
    out = capsys.readouterr().out
    assert "the device loader cannot serve this run (the method's ExtraView request" in out
    assert "--loader device" not in out
    state = load(tmp_path / "b/latest.pth")
    assert state["epoch"] == 2  # a store run writes ordinary checkpoints


def test_a_store_for_another_teacher_is_refused_with_one_line(tmp_path, teacher, capsys):
    other = tmp_path / "other"
    assert cli.teacher(TINY + ["--model", "resnet8", "--epochs", "1", "--seed", "5", "--save_dir", str(other)]) == 0
    base = TINY + ["--model_s", "resnet8", "--epochs", "1", "--teacher_store", str(tmp_path / "store")]
    assert cli.student(base + ["--path_t", teacher, "--save_dir", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    code = cli.student(base + ["--path_t", str(other / "latest.pth"), "--save_dir", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "was made for another setting (key.teacher: stored" in err and len(err.splitlines()) == 1


def test_the_fill_script_and_a_lazy_fill_hold_the_same_values(tmp_path, teacher):
    lazy = student(tmp_path / "lazy", teacher, "kd", "--teacher_store", str(tmp_path / "lazy_store"))
    command = [sys.executable, "scripts/fill_teacher_store.py", "--path_t", teacher, "--dataset", "synthetic",
               "--data_opt", "train_size=128", "--data_opt", "test_size=32", "--taps", "logits",
               "--teacher_store", str(tmp_path / "full_store"), "--limit", "16", "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    shapes = {"logits": lazy.run.spec.teacher["logits"]}
    key = stored_key(tmp_path / "lazy_store")
    assert stored_key(tmp_path / "full_store") == key  # the script and the trainer build one key
    lazy_store = TeacherStore.open(str(tmp_path / "lazy_store"), key, 128, 162, shapes)
    full_store = TeacherStore.open(str(tmp_path / "full_store"), key, 128, 162, shapes)
    index = torch.arange(16).repeat_interleave(162)
    view = torch.arange(162).repeat(16)
    full_hit, full = full_store.lookup(["logits"], index, view)
    lazy_hit, values = lazy_store.lookup(["logits"], index, view)
    assert full_hit.all() and 0 < lazy_hit.sum() < len(index)
    assert torch.allclose(values["logits"][lazy_hit], full["logits"][lazy_hit], rtol=1e-5, atol=1e-6)


def test_two_processes_share_one_store(tmp_path, teacher):
    argv = TINY + ["--nprocs", "2", "--device", "cpu", "--path_t", teacher, "--model_s", "resnet8",
                   "--epochs", "1", "--teacher_store", str(tmp_path / "store")]
    for name in ("first", "second"):
        code, out, err = child("train_student.py", argv + ["--save_dir", str(tmp_path / name),
                                                          "--dist-url", f"tcp://127.0.0.1:{free_port()}"])
        assert code == 0, err
    # both ranks wrote into the one store: every sample (each rank holds half) has its view
    assert "teacher store 100% hits" in out  # the second run, on both ranks, reads everything
    meta_key = load(tmp_path / "first/latest.pth")["config"]
    assert meta_key["teacher_store"] == str(tmp_path / "store")
    store = TeacherStore.open(str(tmp_path / "store"), stored_key(tmp_path / "store"), 128, 162, {"logits": (10,)})
    hit, _ = store.lookup(["logits"], torch.arange(128), torch.from_numpy(view_ids(0, 1, list(range(128)))))
    assert hit.all()


@pytest.mark.parametrize("dali", [None, "cpu"])
def test_seeded_imagenet_views_replay_from_the_store(tmp_path, dali):
    """Image folders with --data_opt seeded_views=true: each sample's random-resized crop of an
    epoch is drawn from (seed, epoch, index), so a second run with the same seed reads every
    teacher output back (one store slot per epoch), on the torchvision path and in DALI."""
    from models import create_model
    from test_imagenet import _has_dali, make_tree
    if dali and not _has_dali():
        pytest.skip("DALI is not installed (pip install -e .[dali])")
    tree = make_tree(tmp_path / "imagenet")
    teacher = create_model("torchvision:resnet18", num_classes=3)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    argv = ["--dataset", "imagenet", "--data-root", str(tree), "--data_opt", "crop=32", "--data_opt",
            "val_resize=36", "--data_opt", "seeded_views=true", "--path_t", str(tmp_path / "teacher.pth"),
            "--model_t", "torchvision:resnet18", "--model_s", "ResNet18", "--epochs", "2", "--batch_size", "8",
            "--num_workers", "1", "--no_tensorboard", "--teacher_store", str(tmp_path / "store")]
    argv += ["--dali", dali, "--device", "cpu"] if dali else []
    runs = {}
    for name in ("cold", "warm", "plain"):
        extra = ["--no_teacher_store"] if name == "plain" else []
        runs[name] = fit_recorded(config.parse(config.student_parser(),
                                               argv + extra + ["--save_dir", str(tmp_path / name)]))
    cold, warm, plain = runs["cold"], runs["warm"], runs["plain"]
    served = len(warm.run.train_loader) * 8  # samples per epoch (the last partial batch dropped)
    assert plain.run.store is None and warm.run.store.num_views == 2  # one slot per epoch
    assert plain.teacher_rows == cold.teacher_rows == 2 * served and warm.teacher_rows == 0
    assert warm.run.store.filled_fraction("logits") == pytest.approx(served / len(warm.run.train_set))
    for run in (cold, warm):
        assert torch.allclose(torch.tensor(run.step_losses), torch.tensor(plain.step_losses), rtol=1e-5, atol=1e-6)
