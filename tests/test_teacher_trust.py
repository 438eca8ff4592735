"""Teachers you can trust, end to end through the command lines (issue 23): train_teacher.py writes a
card, --path_t takes a zoo name served by a real local HTTP server, the pre-flight check refuses a
tampered teacher and a card 20 points off, passes a correct one and skips the evaluation the second
time, a resume with another teacher is refused, and every checkpoint records how to reproduce it."""
import os
import subprocess
import sys

import pytest
import torch
import yaml

import data
from engine import cli
from engine.checkpoint import load, save_atomic
from engine.teachers import zoo
from engine.teachers.card import weights_sha256
from conftest import REPO
from test_teachers import Server

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=64",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard", "--epochs", "1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A resnet8 trained here for 2 epochs: its run folder."""
    folder = tmp_path_factory.mktemp("teacher")
    assert cli.teacher(TINY[:-1] + ["2", "--model", "resnet8", "--save_dir", str(folder)]) == 0
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh teacher cache (downloads and pre-flight results) for the test."""
    monkeypatch.setenv("DISTILLERS_TEACHERS", str(tmp_path / "cache"))
    return tmp_path / "cache"


def student(tmp_path, path_t, *extra, name="s"):
    return cli.student(TINY + ["--path_t", str(path_t), "--model_s", "resnet8", "--save_dir", str(tmp_path / name)]
                       + list(extra))


def test_train_teacher_writes_a_card_the_card_cli_reads(teacher, capsys):
    state = load(teacher / "best.pth")
    card = state["card"]
    meta = data.dataset_info("synthetic")
    assert card["arch"] == "resnet8" and card["dataset"] == "synthetic" and card["num_classes"] == 10
    assert card["mean"] == pytest.approx(list(meta["mean"])) and card["input_size"] == card["crop"] == 32
    assert card["weights_sha256"] == weights_sha256(state["model"])  # the weights it travels with
    assert card["top1"] == pytest.approx(state["acc"]) and card["top5"] is not None
    assert card["world_size"] == 1 and card["batch_per_process"] == card["global_batch"] == 32
    assert card["recipe"]["epochs"] == 2 and card["recipe"]["data_opts"] == {"train_size": 128, "test_size": 64}
    assert card["seed"] == 0 and card["code_version"] == state["code_version"]
    done = subprocess.run([sys.executable, "-m", "engine.teachers.card", str(teacher / "best.pth")], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0 and card["weights_sha256"] in done.stdout


def test_preflight_passes_the_right_teacher_and_the_second_run_reads_the_cache(teacher, cache, tmp_path, capsys):
    assert student(tmp_path, teacher, name="a") == 0
    first = capsys.readouterr().out
    assert "teacher check on synthetic/test: measured top-1" in first and "from its card (within 0.5)" in first
    assert student(tmp_path, teacher, name="b") == 0
    assert "cached teacher check on synthetic/test" in capsys.readouterr().out  # no second evaluation
    state = load(tmp_path / "a" / "latest.pth")
    record = state["record"]
    assert state["teacher_sha256"] == record["teacher_sha256"] == load(teacher / "best.pth")["card"]["weights_sha256"]
    assert (record["world_size"], record["batch_per_process"], record["global_batch"]) == (1, 32, 32)
    assert record["lr_rule"].startswith("kept: lr 0.05") and record["best_acc"] == state["best_acc"]


def test_preflight_refuses_a_tampered_teacher_and_a_card_20_points_off(teacher, cache, tmp_path, capsys):
    state = load(teacher / "best.pth")
    tampered = dict(state, model={k: v.clone() for k, v in state["model"].items()})
    tampered["model"]["fc.weight"][0, 0] += 0.5  # weights changed after the card was written
    save_atomic(tampered, str(tmp_path / "tampered.pth"))
    assert student(tmp_path, tmp_path / "tampered.pth", name="t") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are not the ones its card describes" in err[0] and "Traceback" not in err[0]
    off = dict(state, card={**state["card"], "top1": state["card"]["top1"] + 20})
    save_atomic(off, str(tmp_path / "off.pth"))
    assert student(tmp_path, tmp_path / "off.pth", name="o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"vs {state['card']['top1'] + 20:.2f}% from its card" in err[0]
    assert "--teacher_tolerance" in err[0] and "--no_teacher_check" in err[0]
    assert student(tmp_path, tmp_path / "off.pth", "--teacher_tolerance", "25", name="o2") == 0
    assert student(tmp_path, tmp_path / "off.pth", "--no_teacher_check", name="o3") == 0


def test_a_zoo_name_downloads_from_a_local_server_and_is_checked(teacher, cache, tmp_path, monkeypatch, capsys):
    state = load(teacher / "best.pth")
    body = open(teacher / "best.pth", "rb").read()
    meta = data.dataset_info("synthetic")
    server = Server()
    try:
        server.files["/tiny.pth"] = body
        manifest = {"format": zoo.FORMAT,
                    "datasets": {"synthetic": {"dataset": "synthetic", "num_classes": 10, "mean": list(meta["mean"]),
                                               "std": list(meta["std"]), "input_size": 32, "crop": 32}},
                    "teachers": {"synthetic": {"tiny": {"arch": "resnet8", "url": server.url("/tiny.pth"),
                                                        "sha256": None, "top1": state["card"]["top1"]}}}}
        path = tmp_path / "manifest.yaml"
        path.write_text(yaml.safe_dump(manifest))
        monkeypatch.setenv("DISTILLERS_TEACHER_MANIFEST", str(path))
        assert student(tmp_path, "tiny@synthetic", name="z") == 0
        out = capsys.readouterr().out
        assert "teacher tiny@synthetic:" in out and "teacher check on synthetic/test" in out
        assert len(server.requests) == 1 and (cache / "synthetic" / "tiny.pth").read_bytes() == body
        assert student(tmp_path, "tiny@synthetic", name="z2") == 0
        assert len(server.requests) == 1  # the cached, hash-checked file
        capsys.readouterr()
        assert student(tmp_path, "nosuch@synthetic", name="z3") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Unknown synthetic teacher 'nosuch'" in err[0]
    finally:
        server.close()


def test_resuming_with_another_teacher_is_refused(teacher, cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILLERS_FAULT", "SIGTERM:train_step:1:2")
    assert student(tmp_path, teacher, name="r") == 143
    monkeypatch.delenv("DISTILLERS_FAULT", raising=False)
    torch.manual_seed(5)
    other = load(teacher / "best.pth")
    other = {"arch": "resnet8", "model": {k: v + 0.01 if v.is_floating_point() else v for k, v in other["model"].items()}}
    save_atomic(other, str(tmp_path / "other.pth"))
    capsys.readouterr()
    assert student(tmp_path, tmp_path / "other.pth", "--resume", "--no_teacher_check", name="r") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was distilled from the teacher whose weights hash" in err[0]
    assert student(tmp_path, teacher, "--resume", name="r") == 0


def test_a_config_model_t_that_disagrees_with_the_checkpoint_is_one_line(teacher, tmp_path, capsys):
    config = tmp_path / "cell.yaml"
    config.write_text("model_t: resnet32x4\n")
    assert student(tmp_path, teacher, "--config", str(config), name="c") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model_t resnet32x4 (from --config) disagrees" in err[0] and "'resnet8'" in err[0]


def test_the_linear_lr_rule_scales_with_the_global_batch(teacher, tmp_path):
    assert student(tmp_path, teacher, "--lr_rule", "linear", "--no_teacher_check", name="l") == 0
    record = load(tmp_path / "l" / "latest.pth")["record"]
    assert record["learning_rate"] == pytest.approx(0.05 * 32 / 64) and record["lr_rule"].startswith("linear")
    assert os.path.isfile(tmp_path / "l" / "best.pth")
