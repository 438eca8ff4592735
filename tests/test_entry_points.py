"""The console entry points of setup.py: each target imports and is callable, and each passes the command
line through and exits with the command's code (``pip install -e .`` makes them the installed commands)."""
import ast
import importlib
import sys

import pytest

from conftest import REPO

EXPECTED = {"distillers-train-teacher": "engine.cli:teacher_main",
            "distillers-train-student": "engine.cli:student_main",
            "distillers-collect": "engine.results.cli:main"}


def console_scripts():
    """{command: "module:function"} from setup.py's ``entry_points`` (read, not run)."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    return dict(tuple(part.strip() for part in line.split("=")) for line in entry_points["console_scripts"])


def target(spec):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def test_setup_declares_the_three_commands_and_their_targets_are_callables():
    scripts = console_scripts()
    assert scripts == EXPECTED
    for spec in scripts.values():
        assert callable(target(spec)), spec


@pytest.mark.parametrize("command,inner", [("distillers-train-teacher", "teacher"),
                                           ("distillers-train-student", "student")])
def test_train_commands_pass_argv_and_exit_with_its_code(monkeypatch, command, inner):
    import engine.cli

    seen = []
    monkeypatch.setattr(engine.cli, inner, lambda argv: seen.append(list(argv)) or 7)
    monkeypatch.setattr(sys, "argv", [command, "--model", "resnet8", "--epochs", "1"])
    with pytest.raises(SystemExit) as stop:
        target(EXPECTED[command])()
    assert stop.value.code == 7 and seen == [["--model", "resnet8", "--epochs", "1"]]


def test_collect_command_reads_the_command_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["distillers-collect", str(tmp_path / "*")])
    assert target(EXPECTED["distillers-collect"])() == 1  # the console wrapper exits with it
    assert f"no finished run under {tmp_path / '*'}" in capsys.readouterr().err


def test_quick_start_then_collect_its_runs(tmp_path):
    """The README's first command (with one epoch instead of four), then its collecting command on
    the three run folders: two scripts, one workflow, as a user runs them."""
    import subprocess

    save = tmp_path / "quickstart"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "quickstart.py"), "--epochs", "1",
                           "--save_root", str(save)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "synthetic test top-1 after 1 epochs each" in done.stdout
    assert f"distillers-collect '{save}/*'" in done.stdout
    for run in ("teacher", "vanilla", "kd"):
        assert (save / run / "latest.pth").is_file() and (save / run / "tb").is_dir()
    cells = tmp_path / "cells.jsonl"
    collected = subprocess.run([sys.executable, str(REPO / "scripts" / "collect_results.py"), f"{save}/*",
                                "--json", str(cells)], capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stderr
    table = collected.stdout.split("## synthetic, same architecture family: top-1 (%), last epoch")[1]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert "resnet20→resnet8" in rows["method"] and {"Teacher", "Student", "KD"} <= set(rows)
    for label in ("Teacher", "Student", "KD"):
        assert 0.0 <= float(rows[label]) <= 100.0
    import json

    from engine.checkpoint import load
    kd = next(r for r in map(json.loads, cells.read_text().splitlines()) if r["method"] == "kd")
    teacher_hash = load(save / "teacher" / "latest.pth")["card"]["weights_sha256"]
    assert (kd["world_sizes"], kd["lr_rules"], kd["teacher_sha256"]) == ([1], ["keep"], [teacher_hash])
    assert f"(sha256 {teacher_hash[:12]})" in collected.stdout  # the protocol table names the teacher's weights


def test_every_data_file_of_the_packages_is_installed():
    """A non-editable install carries only what package_data names: a file the code reads at run
    time (the teacher manifest) must be in it."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    declared = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    found = {}
    for top in ("core", "distillers", "models", "data", "engine"):
        for path in (REPO / top).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
                package = ".".join(path.parent.relative_to(REPO).parts)
                found.setdefault(package, []).append(path.name)
    assert found, "no data file found: the walk is wrong"
    for package, names in found.items():
        assert sorted(names) == sorted(declared.get(package, [])), (package, names)
