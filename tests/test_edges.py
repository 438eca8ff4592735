"""Edges an operator or a first-day user meets (issue 19): one line and exit code 2 at every boundary,
intent honoured (an explicit --dataset), checks made once before processes are spawned, the README's
config keys."""
import os
import subprocess
import sys

import pytest
import torch

from engine import cli
from engine.checkpoint import save_atomic
from models import create_model
from conftest import REPO

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=64", "--data_opt", "test_size=32",
        "--batch_size", "16", "--num_workers", "0", "--no_tensorboard", "--epochs", "1"]


def script(name, argv, cwd=None, env=None):
    """A real command line in a child process: (exit code, stdout, stderr lines)."""
    done = subprocess.run([sys.executable, str(REPO / name)] + list(argv), capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)
    return done.returncode, done.stdout, [line for line in done.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "teacher.pth"
    torch.manual_seed(0)
    save_atomic({"arch": "resnet8", "model": create_model("resnet8", num_classes=10).state_dict()}, str(path))
    return str(path)


def test_a_batch_the_processes_cannot_split_is_said_once_before_spawning():
    code, _, err = script("train_teacher.py", ["--dataset", "synthetic", "--batch_size", "33", "--nprocs", "2",
                                               "--device", "cpu", "--model", "resnet8"])
    assert code == 2 and err == ["train_teacher.py: error: --batch_size 33 is not divisible by the 2 processes"]


@pytest.mark.parametrize("option, said", [
    ("train_szie=512", "takes no option 'train_szie'. Did you mean 'train_size'?"),
    ("train_size=abc", "expected an integer for dataset 'synthetic''s option 'train_size'"),
])
def test_a_bad_data_option_is_one_line_listing_the_options(tmp_path, option, said):
    code, _, err = script("train_teacher.py", ["--dataset", "synthetic", "--data_opt", option, "--model", "resnet8",
                                               "--save_dir", str(tmp_path / "run")])
    assert code == 2 and len(err) == 1 and said in err[0] and "test_size (an integer, default 2000)" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_data_option_of_another_dataset_is_one_line(tmp_path):
    code, _, err = script("train_teacher.py", ["--dataset", "cifar100", "--data_opt", "train_size=512",
                                               "--save_dir", str(tmp_path / "run")])
    assert code == 2 and len(err) == 1 and "dataset 'cifar100' takes no option 'train_size'" in err[0]


def test_an_explicit_dataset_is_evaluated_and_named(tmp_path, capsys):
    assert cli.teacher(TINY + ["--model", "resnet8", "--save_dir", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    path = str(tmp_path / "t" / "latest.pth")
    assert cli.student(["--evaluate", "--path_s", path, "--data_opt", "test_size=32"]) == 0
    assert "on synthetic: test top-1" in capsys.readouterr().out  # the recorded dataset, named
    empty = tmp_path / "no_data"
    empty.mkdir()
    code = cli.student(["--evaluate", "--path_s", path, "--dataset", "cifar100", "--data-root", str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and "cifar" in err.lower() and "synthetic" not in err  # cifar100 asked for, cifar100 read


def test_a_plugin_option_named_like_an_engine_flag_is_refused_at_registration(tmp_path):
    (tmp_path / "epochs_plugin.py").write_text(
        "from distillers import Distiller, Option, register_distiller\n\n\n"
        "@register_distiller('with_epochs')\nclass WithEpochs(Distiller):\n"
        "    options = {'epochs': Option(3, 'shadows the engine flag')}\n")
    code, _, err = script("train_student.py", ["--plugin", "epochs_plugin.py", "--distill", "with_epochs"],
                          cwd=tmp_path)
    assert code == 2 and len(err) == 1 and "option 'epochs' is named like the engine's flag --epochs" in err[0]


def test_a_config_names_its_plugin_as_the_readme_does(tmp_path, teacher):
    (tmp_path / "my_method.py").write_text(
        "import torch.nn.functional as F\nfrom distillers import Distiller, register_distiller\n\n\n"
        "@register_distiller('cfg_l1')\nclass CfgL1(Distiller):\n"
        "    def forward(self, s, t, batch=None):\n"
        "        return {'cfg_l1': F.l1_loss(s['logits'], t['logits'])}\n")
    (tmp_path / "run.yaml").write_text("plugin: my_method.py\ndistill: cfg_l1\ndata_opt:\n  train_size: 64\n"
                                       "  test_size: 32\n")
    code, out, err = script("train_student.py", ["--config", "run.yaml", "--path_t", teacher, "--model_s", "resnet8",
                                                 "--dataset", "synthetic", "--batch_size", "16", "--num_workers",
                                                 "0", "--no_tensorboard", "--epochs", "1", "--save_dir", "run"],
                            cwd=tmp_path)
    assert code == 0, err
    assert "cfg_l1" in out and "64 train / 32 test" in out


PLAIN_MODEL = ("import torch\nfrom torch import nn\nfrom models import register_model\n\n\n"
               "class Plain(nn.Module):\n    def __init__(self, num_classes=10):\n        super().__init__()\n"
               "        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),"
               " nn.Flatten())\n        self.head = nn.Linear(8, num_classes)\n\n"
               "    def forward(self, x):\n        return self.head(self.body(x))\n\n\n"
               "@register_model('plain_net', family='cifar')\ndef plain_net(num_classes=10):\n"
               "    return Plain(num_classes)\n")


@pytest.mark.parametrize("method, code, said", [
    ("kd", 0, None),  # logits: any classifier has them
    ("crd", 0, None),  # pooled: the input of its last Linear
    ("fitnet", 2, "fitnet: hint_layer 2 needs tap 'stage2', but the student has no stage taps (its taps: "
                  "classifier, logits, pooled)"),
])
def test_a_model_without_a_tap_map_gets_logits_and_pooled(tmp_path, teacher, method, code, said):
    (tmp_path / "plain.py").write_text(PLAIN_MODEL)
    extra = ["--nce_k", "16"] if method == "crd" else []
    got, _, err = script("train_student.py", TINY + ["--plugin", "plain.py", "--model_s", "plain_net", "--path_t",
                                                     teacher, "--distill", method, "--save_dir", "run"] + extra,
                         cwd=tmp_path)
    assert got == code, err
    if said:
        assert len(err) == 1 and said in err[0]


@pytest.mark.parametrize("body, said", [
    ("return F.l1_loss(s['logits'], t['logits'])", "forward returned a Tensor, not a dict of named loss terms"),
    ("return {'x': s['no_such_tap'].sum()}", "bad_method reads the student's tap(s) no_such_tap, which the student "
                                             "does not have; its taps: classifier, last_map, logits, pooled"),
])
def test_a_plugin_method_that_misuses_the_interface_is_one_line(tmp_path, teacher, body, said):
    taps = "('no_such_tap',)" if "no_such_tap" in body else "('logits',)"
    (tmp_path / "bad.py").write_text(
        "import torch.nn.functional as F\nfrom distillers import Distiller, register_distiller\n\n\n"
        f"@register_distiller('bad_method')\nclass Bad(Distiller):\n    student_taps = {taps}\n\n"
        f"    def forward(self, s, t, batch=None):\n        {body}\n")
    code, _, err = script("train_student.py", TINY + ["--plugin", "bad.py", "--distill", "bad_method", "--model_s",
                                                      "resnet8", "--path_t", teacher, "--save_dir", "run"],
                          cwd=tmp_path)
    assert code == 2 and len(err) == 1 and said in err[0] and "Traceback" not in err[0], err


def test_fill_the_store_once_then_the_launchers_read_every_view(tmp_path):
    """The README's workflow followed literally: train the teacher with the README's command, fill its store
    once with the fill script, run a launcher cell: every view is read from the store (one rule for where a
    teacher's store lives: <save_root>/teacher_store/<key>), and the launcher finds the README's teacher folder."""
    data = ["--data_opt", "train_size=64", "--data_opt", "test_size=32"]
    root = tmp_path / "save"
    env = {"DISTILLERS_SAVE_ROOT": str(tmp_path / "elsewhere")}  # the flags, not the environment, decide
    code, _, err = script("train_teacher.py", ["--model", "resnet8", "--dataset", "synthetic", "--trial", "0",
                                               "--epochs", "1", "--batch_size", "16", "--num_workers", "0",
                                               "--no_tensorboard", "--save_root", str(root)] + data, env=env)
    assert code == 0, err
    (folder,) = (root / "teachers").iterdir()
    assert folder.name == "resnet8_synthetic_lr_0.05_decay_0.0005_trial_0"
    code, _, err = script("scripts/fill_teacher_store.py", ["--path_t", str(folder / "best.pth"), "--dataset",
                                                            "synthetic", "--taps", "logits", "--device", "cpu",
                                                            "--save_root", str(root)] + data, env=env)
    assert code == 0, err
    launcher = subprocess.run(["bash", str(REPO / "scripts" / "distill_cifar100.sh"), "--batch_size", "16",
                               "--num_workers", "0", "--no_tensorboard"] + data,
                              env={**os.environ, **env, "SAVE_ROOT": str(root), "DATASET": "synthetic",
                                   "METHODS": "kd", "PAIRS": "resnet8:resnet8", "TRIALS": "1", "EPOCHS": "1",
                                   "PYTHON": sys.executable}, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert launcher.returncode == 0, launcher.stderr
    assert "teacher store 100% hits" in launcher.stdout and "100.0% of the views filled" in launcher.stdout


def test_progress_lines_when_the_output_is_not_a_terminal(tmp_path):
    """Under nohup or SLURM (stderr not a terminal: tqdm's bar is off) the run still says how far it is."""
    code, out, err = script("train_teacher.py", TINY + ["--model", "resnet8", "--save_dir", str(tmp_path / "run")],
                            env={"DISTILLERS_PROGRESS_SECONDS": "0"})
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("epoch 1/1: batch ")]
    assert len(lines) == 4 and "img/s, epoch ETA" in lines[0] and "loss" in lines[0]  # 64 images, batch 16
