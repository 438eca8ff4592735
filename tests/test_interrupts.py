"""Nothing lost, nothing trained twice: real signals at chosen moments, then ``--resume``.

Each interrupted run is compared with the same run done straight through: model weights
and buffers (BatchNorm's ``num_batches_tracked`` included), optimizer momenta, scheduler,
distiller parts and memories, and the logged train metrics of the interrupted epoch. The
signal is sent by the process to itself at a named moment through the ``DISTILLERS_FAULT``
test hook (:func:`engine.interrupts.fault_point`): SIGINT and SIGTERM in this process
through the CLI entry point (the handlers are the real ones), SIGKILL and the
two-process runs in child processes.
"""
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import cli
from engine.checkpoint import load
from conftest import REPO

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard", "--epochs", "2"]
TEACHER = TINY + ["--model", "resnet8"]


def run(entry, argv, fault=None, monkeypatch=None):
    """An in-process CLI run, with the fault hook armed when ``fault`` is given."""
    if fault:
        monkeypatch.setenv("DISTILLERS_FAULT", fault)
    try:
        return entry(argv)
    finally:
        if monkeypatch is not None:
            monkeypatch.delenv("DISTILLERS_FAULT", raising=False)


def child(script, argv, fault=None):
    """A run in a child process (SIGKILL, DDP): (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DISTILLERS_FAULT", None)
    if fault:
        env["DISTILLERS_FAULT"] = fault
    proc = subprocess.run([sys.executable, str(REPO / script)] + argv, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_run(a, b):
    """Two checkpoints hold the same training state, bit for bit."""
    sa, sb = load(a), load(b)
    for key in ("epoch", "step", "phase", "init_done", "best_acc", "acc"):
        assert sa[key] == sb[key] or (sa[key] != sa[key] and sb[key] != sb[key]), key
    for part in ("model", "distiller"):
        assert sa[part].keys() == sb[part].keys()
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), f"{part}.{k}"
    assert sa["scheduler"] == sb["scheduler"]
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for name, value in oa[k].items():
            assert torch.equal(value, ob[k][name]) if torch.is_tensor(value) else value == ob[k][name]


def train_line(out, epoch):
    """The logged train metrics of ``epoch`` (without the throughput)."""
    line = next(line for line in out.splitlines() if line.startswith(f"epoch {epoch}/"))
    return re.sub(r"\| [\d.]+ img/s.*$", "", line)  # throughput and data-wait are timings


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted teacher run and its log."""
    folder = tmp_path_factory.mktemp("straight")
    code, out, err = child("train_teacher.py", TEACHER + ["--save_dir", str(folder)])
    assert code == 0, err
    return folder, out


@pytest.mark.parametrize("fault, where", [
    ("SIGINT:train_step:2:3", (2, 3)),     # mid-epoch: the step completes, then latest.pth
    ("SIGTERM:train_step:2:1", (2, 1)),    # a scheduler's SIGTERM is a Ctrl-C
    ("SIGTERM:train_step:1:4", (1, 4)),    # after the last step, before the epoch's end
    ("SIGINT:eval:1", (2, 0)),             # during evaluation: the epoch ends first
    ("SIGTERM:epoch_end:1", (2, 0)),       # between epochs
])
def test_signal_then_resume_equals_the_straight_run(straight, tmp_path, monkeypatch, capsys, fault, where):
    folder, straight_out = straight
    argv = TEACHER + ["--save_dir", str(tmp_path)]
    code = run(cli.teacher, argv, fault, monkeypatch)
    captured = capsys.readouterr()
    assert code == 128 + getattr(signal, fault.split(":")[0]), captured.err
    assert "state saved to" in captured.err and "continue with --resume" in captured.err
    assert len(captured.err.strip().splitlines()) == 1  # one line, no traceback
    state = load(tmp_path / "latest.pth")
    assert (state["epoch"], state["step"]) == where
    assert run(cli.teacher, argv + ["--resume"]) == 0
    resumed_out = capsys.readouterr().out
    assert_same_run(folder / "latest.pth", tmp_path / "latest.pth")
    assert_same_run(folder / "best.pth", tmp_path / "best.pth")
    # the resumed epoch reports over all of its batches, exactly as the straight run did
    assert train_line(straight_out, 2) == train_line(resumed_out, 2)


def test_workers_resume_exactly_at_an_epoch_boundary(tmp_path, monkeypatch):
    workers = [a if a != "0" or TEACHER[i - 1] != "--num_workers" else "2" for i, a in enumerate(TEACHER)]
    workers += ["--loader", "dataloader"]  # the DataLoader path with its worker processes
    assert run(cli.teacher, workers + ["--save_dir", str(tmp_path / "a")]) == 0
    argv = workers + ["--save_dir", str(tmp_path / "b")]
    assert run(cli.teacher, argv, "SIGTERM:epoch_end:1", monkeypatch) == 143
    assert run(cli.teacher, argv + ["--resume"]) == 0
    assert_same_run(tmp_path / "a/latest.pth", tmp_path / "b/latest.pth")


def test_signal_before_the_first_step_leaves_no_folder_and_resume_starts_fresh(straight, tmp_path, monkeypatch,
                                                                                 capsys):
    folder = tmp_path / "run"
    argv = TEACHER + ["--save_dir", str(folder)]
    assert run(cli.teacher, argv, "SIGINT:start", monkeypatch) == 130
    assert "before the first step" in capsys.readouterr().err
    assert not folder.exists()
    assert run(cli.teacher, argv + ["--resume"]) == 0
    assert "starting the run from the beginning" in capsys.readouterr().out
    assert_same_run(straight[0] / "latest.pth", folder / "latest.pth")


def test_sigkill_mid_epoch_resumes_from_the_last_epoch(straight, tmp_path):
    argv = TEACHER + ["--save_dir", str(tmp_path)]
    code, _, _ = child("train_teacher.py", argv, "SIGKILL:train_step:2:3")
    assert code == -signal.SIGKILL
    assert (load(tmp_path / "latest.pth")["epoch"], load(tmp_path / "latest.pth")["step"]) == (2, 0)
    code, out, err = child("train_teacher.py", argv + ["--resume"])
    assert code == 0, err
    assert "taking over the lock of a run that is no longer alive" in out
    assert_same_run(straight[0] / "latest.pth", tmp_path / "latest.pth")


def test_sigkill_during_a_checkpoint_write_leaves_the_old_file_and_no_debris(straight, tmp_path):
    argv = TEACHER + ["--save_dir", str(tmp_path)]
    code, _, _ = child("train_teacher.py", argv, "SIGKILL:save")  # the first write: best.pth of epoch 1
    assert code == -signal.SIGKILL
    assert [p.name for p in tmp_path.glob(".tmp-*.pth")] and not (tmp_path / "latest.pth").exists()
    code, out, err = child("train_teacher.py", argv + ["--resume"])
    assert code == 0, err
    assert "removed the partial checkpoint write" in out
    assert not list(tmp_path.glob(".tmp-*.pth"))
    assert_same_run(straight[0] / "latest.pth", tmp_path / "latest.pth")


def test_init_stage_interrupted_and_resumed(tmp_path, straight, monkeypatch, capsys):
    """AB's initialisation stage: SIGTERM mid-stage, resume, same state as a straight run."""
    base = TINY + ["--path_t", str(straight[0] / "latest.pth"), "--model_s", "resnet8", "--distill", "ab",
                   "--init_epochs", "2", "--epochs", "1"]
    assert run(cli.student, base + ["--save_dir", str(tmp_path / "a")]) == 0
    cut = base + ["--save_dir", str(tmp_path / "b")]
    assert run(cli.student, cut, "SIGTERM:init_step:2:2", monkeypatch) == 143
    state = load(tmp_path / "b/latest.pth")
    assert (state["phase"], state["init_done"], state["step"]) == ("init", 1, 2)
    assert run(cli.student, cut + ["--resume"]) == 0
    assert "init epoch 2/2" in capsys.readouterr().out
    assert_same_run(tmp_path / "a/latest.pth", tmp_path / "b/latest.pth")


# ----------------------------------------------------------------------------- two processes
DDP = TINY + ["--nprocs", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def ddp_straight(tmp_path_factory, straight):
    """CRD (memory banks) on two gloo processes, straight through."""
    root = tmp_path_factory.mktemp("ddp")
    argv = DDP + ["--path_t", str(straight[0] / "latest.pth"), "--model_s", "resnet8", "--distill", "crd",
                  "--nce_k", "16"]
    code, _, err = child("train_student.py", argv + ["--save_dir", str(root / "straight"),
                                                     "--dist-url", f"tcp://127.0.0.1:{free_port()}"])
    assert code == 0, err
    return root, argv


@pytest.mark.parametrize("fault, code, where", [
    ("SIGTERM:train_step:2:2:1", 143, (2, 2)),  # mid-epoch, only rank 1 signalled: both stop there
    ("SIGKILL:train_step:2:1:0", -9, (2, 0)),   # rank 0 killed: the epoch boundary survives
])
def test_two_processes_interrupted_and_resumed_equal_the_straight_run(ddp_straight, fault, code, where):
    root, argv = ddp_straight
    folder = root / fault.split(":")[0]
    got, _, err = child("train_student.py", argv + ["--save_dir", str(folder),
                                                    "--dist-url", f"tcp://127.0.0.1:{free_port()}"], fault)
    assert got in (code, 128 - code if code < 0 else code), err
    if code < 0:  # a rank that could not say it died: the launcher says which, in one line
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and "rank 0 (pid" in lines[0] and "killed by SIGKILL" in lines[0], err
    state = load(folder / "latest.pth")
    assert (state["epoch"], state["step"]) == where and state["world_size"] == 2 and len(state["ranks"]) == 2
    got, _, err = child("train_student.py", argv + ["--save_dir", str(folder), "--resume",
                                                    "--dist-url", f"tcp://127.0.0.1:{free_port()}"])
    assert got == 0, err
    assert_same_run(root / "straight/latest.pth", folder / "latest.pth")
    memory = load(folder / "latest.pth")["distiller"]
    assert any("memory" in k for k in memory)  # the CRD banks were compared above


def test_sigterm_to_the_launcher_reaches_every_rank(ddp_straight):
    """A scheduler that signals only the parent process: the parent passes SIGTERM on."""
    root, argv = ddp_straight
    folder = root / "parent"
    got, _, err = child("train_student.py", argv + ["--save_dir", str(folder),
                                                    "--dist-url", f"tcp://127.0.0.1:{free_port()}"],
                        "SIGTERM:train_step:1:1:0:parent")
    assert got == 143, err
    state = load(folder / "latest.pth")
    assert state["epoch"] == 1 and state["step"] >= 1 and len(state["ranks"]) == 2


def test_resume_with_another_process_count_is_refused(ddp_straight, capsys):
    root, argv = ddp_straight
    at = argv.index("--nprocs")
    one = argv[:at] + argv[at + 2:]
    code = cli.student(one + ["--save_dir", str(root / "straight"), "--resume", "--epochs", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "written by 2 process(es), this run has 1" in err


# ---------------------------------------------------------------- a scheduler's stop: SIGTERM to the process group
def group_child(argv, fault):
    """The teacher CLI in its own process group (as a SLURM job step), signalled through the fault hook
    with TARGET ``group``: the main process and its DataLoader workers all get the signal."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISTILLERS_FAULT": fault}
    proc = subprocess.run([sys.executable, str(REPO / "train_teacher.py")] + argv, env=env, capture_output=True,
                          text=True, timeout=600, start_new_session=True)
    return proc.returncode, proc.stdout, proc.stderr


WORKERS = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32", "--batch_size",
           "32", "--no_tensorboard", "--epochs", "2", "--model", "resnet8", "--loader", "dataloader",
           "--num_workers", "2"]


@pytest.mark.parametrize("moment", ["train_step:2:2", "eval:1"])
def test_sigterm_to_the_process_group_with_dataloader_workers_saves_and_resumes_exactly(tmp_path, moment):
    """SLURM's scancel: SIGTERM reaches the workers too. The workers ignore it, the main process stops at its
    safe point (mid-epoch, or after the epoch's evaluation): rc 143, one line, latest.pth there, and the
    resumed run equals the straight one bit for bit although each epoch's augmentations were drawn in
    worker processes (each sample's draw is a function of (seed, epoch, index))."""
    code, _, err = child("train_teacher.py", WORKERS + ["--save_dir", str(tmp_path / "straight")])
    assert code == 0, err
    code, _, err = group_child(WORKERS + ["--save_dir", str(tmp_path / "cut")], f"SIGTERM:{moment}::0:group")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 143 and len(lines) == 1 and "stopped by SIGTERM" in lines[0], err
    assert "Traceback" not in err and (tmp_path / "cut" / "latest.pth").is_file()
    code, _, err = child("train_teacher.py", WORKERS + ["--save_dir", str(tmp_path / "cut"), "--resume"])
    assert code == 0, err
    assert_same_run(tmp_path / "straight" / "latest.pth", tmp_path / "cut" / "latest.pth")
