"""Run folders, resume checks and user errors: one clear line, never a traceback, nothing lost."""
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml

from engine import cli
from engine.checkpoint import load, save_atomic
from engine.run_folder import RunFolder

PLUGIN = str(Path(__file__).parent / "plugins" / "nan_model.py")
TINY = ["--dataset", "synthetic", "--data_opt", "train_size=64", "--data_opt", "test_size=32",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard", "--epochs", "1"]
TEACHER = TINY + ["--model", "resnet8"]
TWO_EPOCHS = TINY[:-2] + ["--epochs", "2", "--model", "resnet8"]


def error_line(capsys, entry, argv, code=2):
    """Run, expect ``code``, and return stderr, which must be one line."""
    try:
        got = entry(argv)
    except SystemExit as exit_:  # argparse's own errors (a flag's type) exit from the parser
        got = exit_.code
    err = capsys.readouterr().err
    assert got == code, err
    lines = [line for line in err.strip().splitlines() if "Warning" not in line and line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    assert cli.teacher(TEACHER + ["--save_dir", str(folder)]) == 0
    return folder


# ------------------------------------------------------------------ one run per folder
def test_a_live_run_holds_its_folder(tmp_path, capsys):
    holder = RunFolder(str(tmp_path / "run"), log=lambda *_: None)
    holder.acquire()
    try:
        line = error_line(capsys, cli.teacher, TEACHER + ["--save_dir", str(tmp_path / "run")])
        assert "is in use by another run" in line and f"pid {os.getpid()}" in line
    finally:
        holder.release()
    assert cli.teacher(TEACHER + ["--save_dir", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run" / ".lock").exists()  # a finished run leaves no lock file


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("pid 999999 on elsewhere since 2026-01-01 00:00:00\n")
    assert cli.teacher(TEACHER + ["--save_dir", str(folder)]) == 0
    assert "taking over the lock of a run that is no longer alive (pid 999999" in capsys.readouterr().out
    assert not (folder / ".lock").exists()


def test_a_finished_run_is_never_overwritten_silently(finished, capsys):
    before = load(finished / "latest.pth")["model"]
    line = error_line(capsys, cli.teacher, TEACHER + ["--save_dir", str(finished)])
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert all(torch.equal(v, load(finished / "latest.pth")["model"][k]) for k, v in before.items())


def test_overwrite_starts_over(tmp_path, capsys):
    folder = tmp_path / "run"
    assert cli.teacher(TEACHER + ["--save_dir", str(folder)]) == 0
    (folder / "stale_marker").write_text("mine")  # not a run file: left alone
    assert cli.teacher(TEACHER + ["--save_dir", str(folder), "--overwrite", "--seed", "5"]) == 0
    assert load(folder / "latest.pth")["config"]["seed"] == 5 and (folder / "stale_marker").exists()


def test_the_seed_is_in_the_default_run_name(tmp_path):
    assert cli.teacher(TEACHER + ["--save_root", str(tmp_path), "--seed", "1"]) == 0
    assert cli.teacher(TEACHER + ["--save_root", str(tmp_path)]) == 0
    names = sorted(p.name for p in (tmp_path / "teachers").iterdir())
    assert len(names) == 2 and names[0].endswith("_trial_0") and names[1].endswith("_trial_0_seed_1")


# ---------------------------------------------------------------------------- resume
def test_resume_refuses_changed_hyperparameters(finished, capsys):
    line = error_line(capsys, cli.teacher, TEACHER + ["--save_dir", str(finished), "--resume",
                                                      "--learning_rate", "0.2", "--lr_decay_epochs", "1"])
    assert "--learning_rate is 0.2 here, the run was started with 0.05" in line
    assert "--lr_decay_epochs is [1] here" in line


def test_resume_of_a_run_from_before_the_loader_default_names_the_flag(finished, tmp_path, capsys):
    folder = tmp_path / "old"
    os.makedirs(folder)
    state = load(finished / "latest.pth")
    state["config"]["loader"] = "dataloader"  # what runs recorded before --loader auto was the default
    torch.save(state, folder / "latest.pth")
    line = error_line(capsys, cli.teacher, TWO_EPOCHS + ["--save_dir", str(folder), "--resume"])
    assert "--loader is 'auto' here, the run was started with 'dataloader'" in line
    assert "pass --loader dataloader to continue it" in line
    assert cli.teacher(TWO_EPOCHS + ["--save_dir", str(folder), "--resume", "--loader", "dataloader"]) == 0


def test_resume_of_a_finished_run_reports_it(finished, capsys):
    assert cli.teacher(TEACHER + ["--save_dir", str(finished), "--resume"]) == 0
    out = capsys.readouterr().out
    acc = load(finished / "latest.pth")["acc"]
    assert "is finished (1 epochs)" in out and f"final test top1 {acc:.2f}" in out and "nan" not in out
    assert "resumed from" not in out  # no "main epoch 2" for a run that has only one


def test_resume_with_only_best_pth_refuses_to_start_over(finished, tmp_path, capsys):
    folder = tmp_path / "only_best"
    os.makedirs(folder)
    shutil.copy(finished / "best.pth", folder / "best.pth")
    line = error_line(capsys, cli.teacher, TEACHER + ["--save_dir", str(folder), "--resume"])
    assert "holds best.pth but no latest.pth" in line and f"--resume {folder / 'best.pth'}" in line
    assert "--overwrite" in line
    line = error_line(capsys, cli.teacher, TEACHER + ["--save_dir", str(folder)])
    assert "already holds a run (best.pth)" in line
    assert cli.teacher(TWO_EPOCHS + ["--save_dir", str(folder), "--resume", str(folder / "best.pth")]) == 0
    assert "resumed from" in capsys.readouterr().out and (folder / "latest.pth").exists()
    assert load(folder / "latest.pth")["epoch"] == 3  # continued from best.pth's epoch 1, not from scratch


def test_resume_with_more_epochs_continues_with_a_warning(finished, tmp_path, capsys):
    folder = tmp_path / "longer"
    os.makedirs(folder)
    torch.save(load(finished / "latest.pth"), folder / "latest.pth")
    assert cli.teacher(TWO_EPOCHS + ["--save_dir", str(folder), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "warning: --resume: --epochs is 2 here, the run was started with 1" in out
    assert load(folder / "latest.pth")["epoch"] == 3


def test_resume_errors_name_the_file(finished, tmp_path, capsys):
    state = load(finished / "latest.pth")
    del state["optimizer"]
    save_atomic(state, str(tmp_path / "partial.pth"))
    line = error_line(capsys, cli.teacher, TEACHER + ["--save_dir", str(tmp_path / "a"),
                                                      "--resume", str(tmp_path / "partial.pth")])
    assert "partial.pth' cannot be resumed: it lacks optimizer" in line
    student = TINY + ["--path_t", str(finished / "latest.pth"), "--model_s", "resnet8"]
    assert cli.student(student + ["--save_dir", str(tmp_path / "kd"), "--distill", "kd"]) == 0
    capsys.readouterr()
    line = error_line(capsys, cli.student, student + ["--save_dir", str(tmp_path / "crd"), "--distill", "crd",
                                                      "--nce_k", "16", "--resume", str(tmp_path / "kd/latest.pth")])
    assert "is a kd run, this run is crd" in line


# ----------------------------------------------------------------------- bad input
def test_bad_numbers_fail_before_any_folder(tmp_path, capsys):
    for flags, text in ((["--batch_size", "0"], "--batch_size 0: must be a positive integer"),
                        (["--learning_rate", "-1"], "--learning_rate -1.0: must be positive"),
                        (["--epochs", "0"], "--epochs 0: must be a positive integer"),
                        (["--lr_decay_epochs", "5,3"], "--lr_decay_epochs 5,3: must be increasing")):
        line = error_line(capsys, cli.teacher, TEACHER + ["--save_root", str(tmp_path)] + flags)
        assert text in line
    assert not list(tmp_path.iterdir())


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    assert "not valid YAML at line 2" in error_line(capsys, cli.teacher, ["--config", str(bad)])
    marker = tmp_path / "pwned"
    bad.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "not valid YAML" in error_line(capsys, cli.teacher, ["--config", str(bad)])
    assert not marker.exists()
    bad.write_text("epoch: 3\n")
    assert "unknown key 'epoch'. Did you mean 'epochs'?" in error_line(capsys, cli.teacher, ["--config", str(bad)])
    assert "invalid int value" in error_line(capsys, cli.teacher, ["--epochs", "three"])


def test_a_text_file_is_not_a_checkpoint(tmp_path, capsys):
    text = tmp_path / "teacher.pth"
    text.write_text("not a model\n")
    line = error_line(capsys, cli.student, TINY + ["--path_t", str(text), "--save_dir", str(tmp_path / "s")])
    assert "is not a PyTorch checkpoint" in line and not (tmp_path / "s").exists()


def test_a_save_folder_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = error_line(capsys, cli.teacher, TEACHER + ["--save_dir", str(tmp_path / "file" / "run")])
    assert "run folder" in line and "is not a folder" in line


def test_disk_full_during_a_save_is_one_line_and_keeps_the_old_file(finished, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    os.makedirs(folder)
    torch.save(load(finished / "latest.pth"), folder / "latest.pth")
    before = (folder / "latest.pth").read_bytes()

    def full_disk(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 1600 vs 1536")

    monkeypatch.setattr(torch, "save", full_disk)
    line = error_line(capsys, cli.teacher, TWO_EPOCHS + ["--save_dir", str(folder), "--resume"])
    assert "cannot write checkpoint" in line and "Is the disk full?" in line
    assert (folder / "latest.pth").read_bytes() == before and not list(folder.glob(".tmp-*"))


def test_a_nan_loss_stops_with_where_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAN_AT", "3")  # the 3rd training forward: epoch 2, batch 1 (2 batches per epoch)
    argv = TINY[:-2] + ["--epochs", "2", "--model", "test_nan_after", "--plugin", PLUGIN, "--save_dir", str(tmp_path)]
    line = error_line(capsys, cli.teacher, argv)
    assert "the loss is nan at epoch 2, batch 1 (terms: ce nan)" in line and "is kept" in line
    state = load(tmp_path / "latest.pth")
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values()
                                       if v.is_floating_point())


# ---------------------------------------------------------------------------- files
def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_atomic({"x": torch.zeros(1)}, str(tmp_path / "a.pth"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == 0o644


def test_malicious_checkpoint_payload_does_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    line = error_line(capsys, cli.student, TINY + ["--path_t", str(tmp_path / "evil.pth"),
                                                   "--save_dir", str(tmp_path / "s")])
    assert "refusing to load" in line and not marker.exists()
