"""scripts/reproduce.py: a published cell's commands, one per seed, resumable, and its summary.

The real run is one seed of one epoch of KD on 256 synthetic images (about 25 s here), with a
teacher registered in a local zoo and named ``tiny@synthetic``.
"""
import importlib.util
import json
import os

import pytest

from engine import checkpoint as ckpt
from engine.teachers import card as cards, local
from models import create_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--epochs", "1", "--batch_size", "32", "--data_opt", "train_size=256", "--data_opt", "test_size=128",
        "--no_tensorboard", "--num_workers", "0", "--device", "cpu"]


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", os.path.join(REPO, "scripts", "reproduce.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = load_script()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test's zoo cache is its own (nothing read from or written to ~/.cache)."""
    monkeypatch.setenv("DISTILLERS_TEACHERS", str(tmp_path / "cache"))


@pytest.fixture
def toy(tmp_path):
    """A toy cell config, and a resnet8 teacher registered as tiny@synthetic in the private cache."""
    model = create_model("resnet8", num_classes=10, family="cifar")
    card = cards.make_card(model, arch="resnet8", model_options={}, dataset="synthetic", num_classes=10,
                           mean=(0.52, 0.50, 0.52), std=(0.25, 0.25, 0.24), input_size=32, crop=32, top1=10.0,
                           top5=50.0, recipe={}, world_size=1, batch_per_process=64, seed=0, code_version="test")
    teacher = str(tmp_path / "teacher.pth")
    ckpt.save_atomic({"format": ckpt.FORMAT, "arch": "resnet8", "num_classes": 10, "model": model.state_dict(),
                      "card": card}, teacher)
    local.register_local(card, teacher, name="tiny")
    config = tmp_path / "cells" / "kd" / "resnet8_resnet8.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("# KD on a toy cell.\n# Published top-1: 50.0 (test; nowhere)\ndistill: kd\nmodel_s: resnet8\n"
                      "model_t: resnet8\ndataset: synthetic\ngamma: 0.1\nalpha: 0.9\nbeta: 0.0\n")
    return {"config": str(config), "teacher": teacher, "card": card, "save": str(tmp_path / "save"),
            "cells": str(tmp_path / "cells")}


def test_dry_run_prints_one_command_per_seed_for_a_published_cell(capsys):
    assert reproduce.main(["kd/resnet56_resnet20", "--teacher", "resnet56@cifar100", "--seeds", "0", "1", "4",
                           "--save_root", "/tmp/nowhere", "--dry-run", "--", "--gpu_id", "0"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("+ ")]
    assert len(commands) == 3
    for seed, line in zip((0, 1, 4), commands):
        assert f"--seed {seed} --trial {seed}" in line and line.endswith("--gpu_id 0")
        assert "configs/cifar100/kd/resnet56_resnet20.yaml" in line and "resnet56_vanilla/ckpt_epoch_240.pth" in line
        assert f"/tmp/nowhere/reproduce/kd/resnet56_resnet20/seed_{seed}" in line and "--resume" not in line
    assert "results: /tmp/nowhere/reproduce/kd/resnet56_resnet20" in out and "not there yet" in out


@pytest.mark.parametrize("argv, message", [
    (["kd/resnet56_resnet2", "--teacher", "resnet56@cifar100"], "Did you mean 'resnet56_resnet20'?"),
    (["kdd/resnet56_resnet20", "--teacher", "resnet56@cifar100"], "Unknown cell row 'kdd'. Did you mean 'kd'?"),
    (["kd/resnet56_resnet20", "--teacher", "resnet110@cifar100"], "is a resnet110, the cell distils a resnet56"),
    (["kd/resnet56_resnet20", "--teacher", "resnet110@cifar100", "--dry-run"], "is a resnet110"),
    (["kd/resnet56_resnet20", "--teacher", "/no/such/file.pth"], "neither an existing checkpoint nor a zoo name"),
    (["kd/resnet56_resnet20", "--teacher", "resnet56@cifar100", "--seeds", "1", "1"], "lists a seed twice"),
])
def test_bad_cells_and_teachers_are_one_line_errors(argv, message, capsys):
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_tiny_real_run_then_skip_and_resume(toy, capfd):
    argv = [toy["config"], "--teacher", "tiny@synthetic", "--seeds", "3", "--save_root", toy["save"], "--", *FAST]
    assert reproduce.main(argv) == 0
    out = capfd.readouterr().out
    folder = os.path.join(toy["save"], "reproduce", "kd", "resnet8_resnet8", "seed_3")
    state = ckpt.load(os.path.join(folder, "latest.pth"))
    assert state["finished"] and state["config"]["seed"] == 3
    record = json.loads(out.strip().splitlines()[-1])
    assert record["cell"] == "kd/resnet8_resnet8" and record["reported"] == 50.0 and record["seeds"] == [3]
    assert record["last"]["values"] == [pytest.approx(state["acc"])]
    assert record["best"]["values"] == [pytest.approx(state["best_acc"])]
    assert record["teacher_sha256"] == toy["card"]["weights_sha256"] and record["teacher_path"] == toy["teacher"]
    assert record["world_size"] == [1] and record["global_batch"] == [32] and record["unfinished_seeds"] == []
    assert record["rerun"].startswith("python scripts/reproduce.py ") and "--epochs 1" in record["rerun"]

    # seed 3 is finished: skipped; seed 5 holds an interrupted run (its checkpoint, unfinished): resumed
    other = os.path.join(toy["save"], "reproduce", "kd", "resnet8_resnet8", "seed_5")
    os.makedirs(other)
    ckpt.save_atomic({**state, "finished": False}, os.path.join(other, "latest.pth"))
    dry = [toy["config"], "--teacher", "tiny@synthetic", "--seeds", "3", "5", "--save_root", toy["save"],
           "--dry-run", "--", *FAST]
    assert reproduce.main(dry) == 0
    out = capfd.readouterr().out
    assert f"seed 3: finished in {folder}, skipped" in out
    commands = [line for line in out.splitlines() if line.startswith("+ ")]
    assert len(commands) == 1 and "--seed 5" in commands[0] and commands[0].endswith("--resume")


def test_summary_counts_an_unfinished_seed_as_not_reproduced(toy, capsys):
    folders = {0: os.path.join(toy["save"], "a"), 1: os.path.join(toy["save"], "b")}
    model = create_model("resnet8", num_classes=10, family="cifar")
    for seed, (acc, best, finished) in zip(folders, ((70.0, 71.0, True), (69.0, 69.5, False))):
        ckpt.save_atomic({"format": ckpt.FORMAT, "model": model.state_dict(), "acc": acc, "best_acc": best,
                          "finished": finished, "world_size": 2, "config": {"batch_size": 128}},
                         os.path.join(folders[seed], "latest.pth"))
    record = reproduce.summarise("kd/x_y", "x.yaml", folders, 71.5, "R", {"teacher_sha256": None},
                                 log=lambda _: None)
    assert record["last"]["values"] == [70.0] and record["best"]["mean"] == 71.0 and record["unfinished_seeds"] == [1]
    assert record["world_size"] == [2] and record["global_batch"] == [128]


def test_published_number_is_read_from_a_generated_config():
    label, path = reproduce.cell_config("dkd/resnet32x4_resnet8x4")
    assert label == "dkd/resnet32x4_resnet8x4" and os.path.isfile(path)
    assert reproduce.published(path) == (76.32, "M")
