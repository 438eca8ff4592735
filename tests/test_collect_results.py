"""scripts/collect_results.py on fabricated run folders, and the launchers in DRY_RUN mode.

The fabricated checkpoints carry the keys the trainer writes (format, arch, dataset, epoch,
phase, acc, best_acc, config, weights, distiller_name, shape_spec); the tables' numbers are
checked against means and sample standard deviations computed by hand.
"""
import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from engine.checkpoint import FORMAT

sys.path.insert(0, str(REPO / "scripts"))
import collect_results  # noqa: E402

METHOD_KEYS = ("nce_k", "factor", "init_epochs")  # a few method__* config keys, unset unless given


def fake_run(root, name, *, arch, last, best, method="", teacher="resnet32x4", dataset="cifar100",
             weights=(1.0, 0.0, 0.0), seed=0, epochs=240, epoch=None, phase="main", options=None,
             best_file=True, path_t="/ckpt/resnet32x4_vanilla/ckpt_epoch_240.pth", spec=True, lr=0.05):
    """A run folder as the trainer leaves it: latest.pth (+ best.pth)."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {"epochs": epochs, "batch_size": 64, "learning_rate": lr, "seed": seed, "trial": str(seed),
              "dataset": dataset, "kd_T": 4.0, "path_t": path_t if method else None, "model_t": None}
    config.update({f"method__{k}": None for k in METHOD_KEYS})
    config.update({f"method__{k}": v for k, v in (options or {}).items()})
    state = {"format": FORMAT, "arch": arch, "num_classes": 100, "dataset": dataset,
             "epoch": epochs + 1 if epoch is None else epoch, "step": 0, "phase": phase, "init_done": 0,
             "model": {"w": torch.zeros(2)}, "distiller_name": method, "config": config,
             "weights": dict(zip(("gamma", "alpha", "beta"), weights)), "code_version": "0.1.0+test",
             "shape_spec": ({"extra": {"teacher_arch": teacher, "student_arch": arch}} if method and spec else {}),
             "acc": last, "best_acc": best}
    torch.save(state, folder / "latest.pth")
    if best_file:
        torch.save({**state, "acc": best}, folder / "best.pth")
    return folder


@pytest.fixture
def runs(tmp_path):
    s, t = tmp_path / "students", tmp_path / "teachers"
    for seed, (last, best) in enumerate([(73.0, 73.5), (73.5, 74.0), (74.0, 74.5)]):
        fake_run(s, f"kd_{seed}", arch="resnet8x4", method="kd", weights=(0.1, 0.9, 0.0), seed=seed,
                 last=last, best=best)
    fake_run(s, "crd_0", arch="resnet8x4", method="crd", weights=(1.0, 0.0, 0.8), last=75.0, best=75.25)
    for seed, last in enumerate([75.5, 76.5]):
        fake_run(s, f"crdkd_{seed}", arch="resnet8x4", method="crd", weights=(1.0, 1.0, 0.8), seed=seed,
                 last=last, best=last + 0.5, best_file=seed == 0)
    for seed, last in enumerate([70.0, 71.0]):
        fake_run(s, f"dkd_{seed}", arch="vgg8", teacher="ResNet50", method="dkd", seed=seed,
                 weights=(1.0, 0.0, 1.0), last=last, best=last + 1, path_t="/ckpt/ResNet50.pth")
    fake_run(s, "simkd_f4", arch="resnet8x4", method="simkd", weights=(0.0, 0.0, 1.0), options={"factor": 4},
             last=77.0, best=77.5)
    fake_run(s, "kd_short", arch="resnet8x4", method="kd", weights=(0.1, 0.9, 0.0), epochs=30, last=60.0, best=61.0)
    fake_run(s, "unfinished", arch="resnet8x4", method="kd", weights=(0.1, 0.9, 0.0), epoch=101, last=50.0,
             best=52.0)
    fake_run(s, "in_init", arch="resnet8x4", method="fsp", weights=(1.0, 0.0, 50.0), epoch=3, phase="init",
             last=float("nan"), best=0.0)
    fake_run(t, "resnet32x4_vanilla", arch="resnet32x4", last=79.0, best=79.5)
    for seed, last in enumerate([72.0, 73.0]):
        fake_run(t, f"resnet8x4_vanilla_trial_{seed}", arch="resnet8x4", seed=seed, last=last, best=last + 0.25)
    return tmp_path


def table(text, title_start):
    """{row label: [cells]} and the header of the first markdown table under a '## ' title."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## " + title_start))
    rows, header = {}, None
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                rows[cells[0]] = cells[1:]
    return header, rows


def test_table_numbers(runs):
    cells, skipped = collect_results.collect([str(runs / "students" / "*"), str(runs / "teachers" / "*")])
    text = collect_results.Tables(cells).markdown()
    header, last = table(text, "cifar100, same architecture family: top-1 (%), last epoch")
    assert header == ["method", "resnet32x4→resnet8x4", "src"]
    assert last["Teacher"] == ["79.00", "ours"]
    assert last["Student"] == ["72.50±0.71", "ours"]
    assert last["KD"] == ["73.50±0.50", "ours"]
    assert last["CRD"] == ["75.00", "ours"]            # one trial: no ±
    assert last["CRD+KD"] == ["76.00±0.71", "ours"]    # -a 1 on CRD is its own row
    assert last["SimKD (f=4)"] == ["77.00", "ours"]
    assert last["KD [30 ep, batch 64, lr 0.05]"] == ["60.00", "ours"]  # another recipe is not averaged in
    assert list(last)[:3] == ["Teacher", "Student", "KD"]
    _, best = table(text, "cifar100, same architecture family: top-1 (%), best epoch")
    assert best["KD"] == ["74.00±0.50", "ours"]
    assert best["CRD+KD"] == ["76.50±0.71", "ours"]   # trial 1 has no best.pth: latest's best_acc
    assert best["Student"] == ["72.75±0.71", "ours"]
    header, cross = table(text, "cifar100, different architecture families: top-1 (%), last epoch")
    assert header == ["method", "ResNet50→vgg8", "src"]
    assert cross["DKD"] == ["70.50±0.71", "ours"] and "Student" not in cross  # no vanilla vgg8 run: no row
    assert sorted(os.path.basename(s.folder) for s in skipped) == ["in_init", "unfinished"]
    assert any("epoch 100 of 240" in s.reason for s in skipped)


def test_protocol_records_weights_trials_and_teacher(runs):
    cells, _ = collect_results.collect([str(runs / "students" / "*")])
    lines = [line for line in collect_results.Tables(cells).protocol() if line.startswith("| cifar100 |")]
    crd_kd = next(line for line in lines if "| CRD+KD |" in line)
    assert "1·CE + 1·KD + 0.8·crd" in crd_kd and "| 2 (0,1) |" in crd_kd
    assert "/ckpt/resnet32x4_vanilla/ckpt_epoch_240.pth" in crd_kd
    kd = next(line for line in lines if "| KD |" in line and "| 240 |" in line)
    assert "0.1·CE + 0.9·KD |" in kd and "| 3 (0,1,2) |" in kd
    dkd = next(line for line in lines if "| DKD |" in line)
    assert "ResNet50→vgg8" in dkd and "/ckpt/ResNet50.pth" in dkd
    simkd = next(line for line in lines if "SimKD (f=4)" in line)
    assert "0·CE + 0·KD + 1·simkd" in simkd and "factor=4" in simkd


def test_cli_csv_and_side_by_side(runs, tmp_path):
    reference = tmp_path / "results.md"
    reference.write_text("## 1\n\n| method | wrn-40-2→wrn-16-2 | resnet32x4→resnet8x4 | src |\n|---|---|---|---|\n"
                         "| KD | 74.92 | 73.33 | R |\n| CRD+KD | 75.64 | 75.46 | G |\n"
                         "| DKD | – | 76.32 (76.0 in X) | M |\n\n## 2\n\n| method | ResNet50→vgg8 | src |\n"
                         "|---|---|---|\n| DKD | 71.00±0.10 | M |\n", encoding="utf-8")
    out, csv_path = tmp_path / "table.md", tmp_path / "table.csv"
    code = collect_results.main([str(runs / "students" / "*"), str(runs / "teachers" / "*"), "-o", str(out),
                                 "--csv", str(csv_path), "--compare", str(reference)])
    assert code == 0
    text = out.read_text(encoding="utf-8")
    _, side = table(text, "cifar100, same architecture family: last epoch (ours) next to results.md")
    assert side["KD"] == ["73.50±0.50 / 73.33 (+0.17)"]
    assert side["CRD+KD"] == ["76.00±0.71 / 75.46 (+0.54)"]
    _, side = table(text, "cifar100, different architecture families: last epoch (ours) next to")
    assert side["DKD"] == ["70.50±0.71 / 71.00 (-0.50)"]
    assert "Skipped run folders" in text and "unfinished (epoch 100 of 240)" in text
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    kd = next(r for r in rows if r["label"] == "KD" and r["epochs"] == "240")
    assert (kd["teacher"], kd["student"], kd["trials"], kd["seeds"]) == ("resnet32x4", "resnet8x4", "3", "0;1;2")
    assert float(kd["last_mean"]) == pytest.approx(73.5) and float(kd["last_std"]) == pytest.approx(0.5)
    assert float(kd["best_mean"]) == pytest.approx(74.0) and kd["last_values"] == "73.0000;73.5000;74.0000"
    assert (kd["gamma"], kd["alpha"], kd["beta"]) == ("0.1", "0.9", "0.0")
    crd = next(r for r in rows if r["label"] == "CRD")
    assert crd["last_std"] == "" and crd["trials"] == "1"


def test_teacher_arch_without_shape_spec(tmp_path):
    """kd runs record no shape spec: the teacher comes from --model_t, the run name or the teacher checkpoint."""
    teacher = tmp_path / "t" / "my_teacher.pth"
    teacher.parent.mkdir()
    torch.save({"arch": "wrn_40_2", "model": {}}, teacher)
    fake_run(tmp_path / "s", "anything", arch="wrn_16_2", method="kd", weights=(0.1, 0.9, 0.0), spec=False,
             path_t=str(teacher), last=74.0, best=74.5)
    fake_run(tmp_path / "s", "S_wrn_40_1_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_trial_0", arch="wrn_40_1",
             method="kd", weights=(0.1, 0.9, 0.0), spec=False, path_t="/missing.pth", last=73.0, best=73.5)
    cells, _ = collect_results.collect([str(tmp_path / "s" / "*")])
    assert sorted(c.pair for c in cells) == [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1")]
    header, rows = table(collect_results.Tables(cells).markdown(), "cifar100, same architecture family: top-1 (%), last")
    assert header == ["method", "wrn-40-2→wrn-16-2", "wrn-40-2→wrn-40-1", "src"]  # results.md spelling and order
    assert rows["KD"] == ["74.00", "73.00", "ours"]


def test_no_runs_is_an_error(tmp_path, capsys):
    assert collect_results.main([str(tmp_path / "*")]) == 1
    assert "no finished run" in capsys.readouterr().err


# ------------------------------------------------------------------------ launchers
def dry_run(script, **env):
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, check=True,
                            env={**os.environ, "DRY_RUN": "1", **env})
    return [line[2:].split() for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_launchers_cover_every_method_with_seeded_trials(tmp_path):
    from test_smoke_matrix import INAPPLICABLE, classification_methods

    cmds = dry_run("distill_cifar100.sh", TRIALS="2", SAVE_ROOT=str(tmp_path))
    methods = {c[c.index("--distill") + 1] for c in cmds}
    assert methods == set(classification_methods())
    assert all(c[c.index("--seed") + 1] == c[c.index("--trial") + 1] for c in cmds)
    assert {c[c.index("--model_s") + 1] for c in cmds} == {"resnet8x4"}
    crd = [c for c in cmds if c[c.index("--distill") + 1] == "crd"]
    assert len(crd) == 4 and sum("-a" in c for c in crd) == 2  # CRD and CRD+KD, two trials each
    assert len({c[c.index("--save_dir") + 1] for c in cmds}) == len(cmds)

    cross = dry_run("distill_cifar100_cross.sh", TRIALS="1", SAVE_ROOT=str(tmp_path))
    pairs = {(os.path.basename(os.path.dirname(c[c.index("--path_t") + 1])), c[c.index("--model_s") + 1])
             for c in cross}
    assert len(pairs) == 6
    ran = {(c[c.index("--distill") + 1], d.replace("_vanilla", ""), s) for c in cross
           for d, s in [(os.path.basename(os.path.dirname(c[c.index("--path_t") + 1])), c[c.index("--model_s") + 1])]}
    assert not ran & set(INAPPLICABLE)  # the launcher leaves out the cells that cannot apply

    teachers = dry_run("train_cifar100_teachers.sh", STUDENTS="all", TRIALS="2", GPU="0", SAVE_ROOT=str(tmp_path))
    models = [c[c.index("--model") + 1] for c in teachers]
    assert models[:6] == ["resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"]
    assert len(models) == 6 + 9 * 2 and all("--gpu_id" in c for c in teachers)
