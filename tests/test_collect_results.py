"""The collector (engine/results/) on fabricated run folders, and the launchers in DRY_RUN mode.

The fabricated checkpoints carry the keys the trainer writes (format, arch, dataset, epoch,
phase, acc, best_acc, config, weights, distiller_name, shape_spec); the tables' numbers are
checked against means and sample standard deviations computed by hand.
"""
import csv
import json
import os
import struct
import subprocess

import pytest
import torch

from conftest import REPO
from engine.checkpoint import FORMAT
from engine.results.cells import collect
from engine.results.cli import main
from engine.results.labels import canonical_options, published, reference_settings, variant_name
from engine.results.plot import plot_accuracy_vs_cost, read_cost_table, run_cost
from engine.results.tables import Tables

METHOD_KEYS = ("nce_k", "factor", "init_epochs")  # a few method__* config keys, unset unless given


def fake_run(root, name, *, arch, last, best, method="", teacher="resnet32x4", dataset="cifar100",
             weights=(1.0, 0.0, 0.0), seed=0, epochs=240, epoch=None, phase="main", options=None,
             best_file=True, path_t="/ckpt/resnet32x4_vanilla/ckpt_epoch_240.pth", spec=True, lr=0.05, kd_T=4.0):
    """A run folder as the trainer leaves it: latest.pth (+ best.pth)."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {"epochs": epochs, "batch_size": 64, "learning_rate": lr, "seed": seed, "trial": str(seed),
              "dataset": dataset, "kd_T": kd_T, "path_t": path_t if method else None, "model_t": None}
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
    cells, skipped = collect([str(runs / "students" / "*"), str(runs / "teachers" / "*")])
    text = Tables(cells).markdown()
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
    cells, _ = collect([str(runs / "students" / "*")])
    lines = [line for line in Tables(cells).protocol() if line.startswith("| cifar100 |")]
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
    code = main([str(runs / "students" / "*"), str(runs / "teachers" / "*"), "-o", str(out),
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
    cells, _ = collect([str(tmp_path / "s" / "*")])
    assert sorted(c.pair for c in cells) == [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1")]
    header, rows = table(Tables(cells).markdown(), "cifar100, same architecture family: top-1 (%), last")
    assert header == ["method", "wrn-40-2→wrn-16-2", "wrn-40-2→wrn-40-1", "src"]  # results.md spelling and order
    assert rows["KD"] == ["74.00", "73.00", "ours"]


def test_no_runs_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "*")]) == 1
    assert "no finished run" in capsys.readouterr().err


# ------------------------------------------------------------- new methods, labels, picture
def new_method_runs(root):
    """Runs of the new methods as the configs launch them (options written out) and as a user might."""
    s = root / "students"
    for seed, last in enumerate([76.0, 77.0]):  # configs/cifar100/kd_ls: -r 0.1 -a 9, T 2, logit_std
        fake_run(s, f"kdls_{seed}", arch="resnet8x4", method="kd", weights=(0.1, 9.0, 0.0), seed=seed, kd_T=2.0,
                 options={"logit_std": True}, last=last, best=last + 0.5)
    fake_run(s, "dist_0", arch="resnet8x4", method="dist", weights=(1.0, 0.0, 2.0), last=76.5, best=76.75,
             options={"dist_tau": 4.0, "dist_beta": 1.0, "dist_gamma": 1.0, "logit_std": False})
    fake_run(s, "dkd_cfg", arch="resnet8x4", method="dkd", weights=(1.0, 0.0, 1.0), last=76.0, best=76.25,
             options={"dkd_beta": 8.0, "dkd_alpha": 1.0, "warmup": 20})  # from the config: beta written out
    fake_run(s, "dkd_cli", arch="resnet8x4", method="dkd", weights=(1.0, 0.0, 1.0), seed=1, last=76.5, best=76.75)
    fake_run(s, "dkd_b4", arch="resnet8x4", method="dkd", weights=(1.0, 0.0, 1.0), seed=2, last=75.0, best=75.5,
             options={"dkd_beta": 4.0})  # not the reference's beta: its own row
    ctkd = {"t_start": 1.0, "t_end": 20.0, "decay_loops": 10.0}
    fake_run(s, "ctkd_0", arch="resnet8x4", method="ctkd", weights=(0.1, 0.0, 0.9), last=73.5, best=73.75,
             options={**ctkd, "ctkd_base": "kd"})
    fake_run(s, "ctkd_dkd", arch="resnet8x4", method="ctkd", weights=(1.0, 0.0, 1.0), last=76.0, best=76.5,
             options={**ctkd, "ctkd_base": "dkd"})
    fake_run(s, "ofd_0", arch="resnet8x4", method="ofd", weights=(1.0, 0.0, 0.001), options={"ofd_kernel": 1},
             last=74.5, best=74.75)
    return root


def write_cost_csv(path, ratios):
    """A cost_table.py CSV (the columns it writes) with the given x_vanilla per variant."""
    fields = ["variant", "ms_per_step", "ms_q25", "ms_q75", "x_vanilla", "x_vanilla_q25", "x_vanilla_q75", "x_kd",
              "x_kd_q25", "x_kd_q75", "step_peak_mib", "x_vanilla_memory", "extra_trainable_params",
              "persistent_extra_mib", "note", "ms_per_round"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for variant, x in ratios.items():
            writer.writerow({**{k: "nan" for k in fields}, "variant": variant, "ms_per_step": f"{1000 * x:.0f}",
                             "x_vanilla": f"{x:.4g}", "note": "", "ms_per_round": "1;2"})
    return path


COST = {"hand-written vanilla": 1.01, "vanilla": 1.0, "kd": 2.5, "crd": 4.75, "dist": 2.625, "dkd": 2.75,
        "ctkd": 2.5, "ofd": 3.0, "fsp": 1.0, "fsp (init stage)": 2.75}  # no simkd: left out of the picture


def test_logit_standardised_runs_take_the_results_md_row_names():
    name = variant_name
    assert name("kd", (0.1, 9.0, 0.0), (("logit_std", True),)) == "KD+LS"
    assert name("ctkd", (0.1, 0.0, 9.0), (("logit_std", True),)) == "CTKD+LS"
    assert name("ctkd", (1.0, 0.0, 1.0), (("ctkd_base", "dkd"), ("logit_std", True))) == "DKD+CTKD+LS"
    assert name("mlkd", (0.1, 0.0, 9.0), (("logit_std", True),)) == "MLKD+LS"
    assert published("CTKD+LS", ("resnet32x4", "resnet8x4")) == (76.67, "L")
    # a run with the CTKD+LS config's values has no extra options: it is that cell
    settings = reference_settings("CTKD+LS", ("resnet32x4", "resnet8x4"))
    options = {k: v for k, v in settings.items() if k not in ("distill", "model_s", "model_t", "dataset",
                                                              "gamma", "alpha", "beta")}
    kept = canonical_options("ctkd", ("resnet32x4", "resnet8x4"), (0.1, 0.0, 9.0), options)
    assert [k for k, _ in kept] == ["logit_std"]  # the row-defining option only


def test_labels_of_the_new_methods_and_their_reference_settings(runs):
    new_method_runs(runs)
    cells, _ = collect([str(runs / "students" / "*")])
    pair = ("resnet32x4", "resnet8x4")
    labels = {c.label(): c for c in cells if c.pair == pair}
    # options at the registry default or at the row's reference value are not part of the label
    assert {"KD+LS", "DIST", "DKD", "DKD (dkd_beta=4.0)", "KD+CTKD", "DKD+CTKD", "OFD"} <= set(labels)
    assert labels["KD+LS"].options == (("logit_std", "True"),) and len(labels["KD+LS"].runs) == 2
    assert labels["DIST"].options == () and labels["OFD"].options == ()
    assert sorted(r.folder.name if hasattr(r.folder, "name") else os.path.basename(r.folder)
                  for r in labels["DKD"].runs) == ["dkd_cfg", "dkd_cli"]  # config and command line: one cell
    assert published("KD+LS", pair) == (76.62, "L")
    assert published("DIST", pair) == (76.31, "D")
    assert published("KD+CTKD", pair) == (73.39, "C, L")
    assert published("OFD", pair) == (74.95, "N")
    assert published("CAT-KD", pair) is None  # no CAT-KD number in results.md


def test_plot_accuracy_against_cost(runs, tmp_path):
    pytest.importorskip("matplotlib")
    new_method_runs(runs)
    cells, _ = collect([str(runs / "students" / "*"), str(runs / "teachers" / "*")])
    cost = read_cost_table(str(write_cost_csv(tmp_path / "cost.csv", COST)))
    png = tmp_path / "acc_vs_cost.png"
    drawn = plot_accuracy_vs_cost(cells, cost, ("resnet32x4", "resnet8x4"), str(png))

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 2400 and 500 <= height <= 1600 and len(data) > 20_000
    import matplotlib.image
    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (height, width) and pixels[..., :3].std() > 0.05  # not blank

    points = {p["label"]: p for p in drawn["points"]}
    assert set(points) == {"KD", "KD [30 ep, batch 64, lr 0.05]", "KD+LS", "CRD", "CRD+KD", "DKD",
                           "DKD (dkd_beta=4.0)", "KD+CTKD", "DKD+CTKD", "DIST", "OFD"}
    assert drawn["skipped"] == [("SimKD (f=4)", "simkd is not in the cost table")]
    expect = {  # label: (cost, our mean, trials, published, source)
        "KD": (2.5, 73.5, 3, 73.33, "R"), "KD+LS": (2.5, 76.5, 2, 76.62, "L"), "CRD": (4.75, 75.0, 1, 75.51, "R"),
        "CRD+KD": (4.75, 76.0, 2, 75.46, "G (from the CRD paper)"), "DKD": (2.75, 76.25, 2, 76.32, "M"),
        "DIST": (2.625, 76.5, 1, 76.31, "D"), "KD+CTKD": (2.5, 73.5, 1, 73.39, "C, L"),
        "OFD": (3.0, 74.5, 1, 74.95, "N"), "DKD (dkd_beta=4.0)": (2.75, 75.0, 1, None, None),
    }
    for label, (x, mean, trials, ref, source) in expect.items():
        p = points[label]
        assert (p["cost"], p["trials"], p["published"], p["source"]) == (x, trials, ref, source), label
        assert p["top1"] == pytest.approx(mean), label
    assert points["KD+LS"]["std"] == pytest.approx(0.7071, abs=1e-4) and points["CRD"]["std"] is None
    assert drawn["student"]["cost"] == 1.0 and drawn["student"]["top1"] == pytest.approx(72.5)
    assert drawn["teacher"]["top1"] == pytest.approx(79.0)

    best = plot_accuracy_vs_cost(cells, cost, ("resnet32x4", "resnet8x4"), str(tmp_path / "b.png"), which="best")
    assert {p["label"]: p["top1"] for p in best["points"]}["KD+LS"] == pytest.approx(77.0)


def test_init_stage_cost_is_spread_over_the_run():
    cost = {"fsp": {"x_vanilla": 1.0}, "fsp (init stage)": {"x_vanilla": 2.75}, "kd": {"x_vanilla": 2.5}}
    assert run_cost("fsp", cost, 240) == pytest.approx(1.0 + 2.75 * 30 / 240)
    assert run_cost("kd", cost, 240) == 2.5 and run_cost("crd", cost) is None


def test_cli_plot_and_builtin_compare(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    new_method_runs(runs)
    csv_path, png, out = write_cost_csv(tmp_path / "cost.csv", COST), tmp_path / "p.png", tmp_path / "t.md"
    code = main([str(runs / "students" / "*"), str(runs / "teachers" / "*"), "--compare", "-o", str(out), "--plot",
                 str(png), "--cost-table", str(csv_path), "--csv", str(tmp_path / "t.csv")])
    assert code == 0 and png.is_file()
    assert "drew 11 methods of resnet32x4→resnet8x4" in capsys.readouterr().err
    _, side = table(out.read_text(encoding="utf-8"), "cifar100, same architecture family: last epoch (ours) next to")
    assert side["KD+LS"] == ["76.50±0.71 / 76.62 (-0.12)"] and side["DIST"] == ["76.50 / 76.31 (+0.19)"]
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        rows = {r["label"]: r for r in csv.DictReader(fh) if r["student"] == "resnet8x4"}
    assert (rows["OFD"]["published_top1"], rows["OFD"]["published_source"]) == ("74.95", "N")
    assert main([str(runs / "students" / "*"), "--plot", str(png), "--plot-pair", "vgg13:vgg8",
                 "--cost-table", str(csv_path)]) == 1  # no run of that pair


def test_json_lines_carry_what_reruns_each_cell(runs, tmp_path, capsys):
    """--json: one JSON line per cell on stdout (the markdown then only to -o), with what reruns the cell."""
    new_method_runs(runs)
    out = tmp_path / "t.md"
    assert main([str(runs / "students" / "*"), str(runs / "teachers" / "*"), "--json", "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]  # nothing but JSON on stdout
    cells, _ = collect([str(runs / "students" / "*"), str(runs / "teachers" / "*")])
    assert len(records) == len(cells) == len({(r["teacher"], r["student"], r["label"], r["epochs"]) for r in records})
    assert "## Protocol per cell" in out.read_text(encoding="utf-8")
    by = {(r["label"], r["student"], r["epochs"]): r for r in records}

    kd = by[("KD", "resnet8x4", 240)]
    assert (kd["dataset"], kd["method"], kd["teacher"]) == ("cifar100", "kd", "resnet32x4")
    assert kd["teacher_checkpoints"] == ["/ckpt/resnet32x4_vanilla/ckpt_epoch_240.pth"]
    assert kd["weights"] == {"gamma": 0.1, "alpha": 0.9, "beta": 0.0} and kd["options"] == {}
    assert (kd["seeds"], kd["trials"], kd["batch_size"], kd["learning_rate"]) == ([0, 1, 2], 3, 64, 0.05)
    assert kd["code_versions"] == ["0.1.0+test"] and len(kd["runs"]) == 3
    assert kd["last"]["mean"] == pytest.approx(73.5) and kd["last"]["std"] == pytest.approx(0.5)
    assert kd["best"]["mean"] == pytest.approx(74.0) and kd["last"]["values"] == [73.0, 73.5, 74.0]
    assert kd["published"] == {"top1": 73.33, "source": "R"}
    assert kd["reference_settings"]["kd_T"] == 4.0 and kd["reference_settings"]["distill"] == "kd"

    kdls = by[("KD+LS", "resnet8x4", 240)]  # launched from its config: the recipe is the reference's
    assert kdls["options"] == {"logit_std": True} and kdls["recorded_options"] == {"kd_T": 2.0, "logit_std": True}
    assert {k: kdls["reference_settings"][k] for k in ("alpha", "kd_T", "logit_std")} == \
        {"alpha": 9.0, "kd_T": 2.0, "logit_std": True}
    assert kdls["published"] == {"top1": 76.62, "source": "L"}
    dkd = by[("DKD", "resnet8x4", 240)]  # one run from the config (values written out), one from the command line
    assert dkd["options"] == {} and dkd["recorded_options"]["dkd_beta"] == 8.0 and dkd["trials"] == 2
    assert by[("DKD (dkd_beta=4.0)", "resnet8x4", 240)]["options"] == {"dkd_beta": 4.0}
    crd = by[("CRD", "resnet8x4", 240)]
    assert crd["last"]["std"] is None and crd["trials"] == 1  # one trial: no std (JSON has no NaN)
    short = by[("KD", "resnet8x4", 30)]  # another recipe: its own cell, as in the CSV
    assert short["last"]["values"] == [60.0] and short["runs"][0].endswith("kd_short")
    teacher = by[("vanilla", "resnet32x4", 240)]
    assert teacher["teacher"] is None and teacher["method"] == "vanilla" and teacher["reference_settings"] is None

    path = tmp_path / "cells.jsonl"  # to a file: the markdown stays on stdout
    assert main([str(runs / "students" / "*"), "--json", str(path)]) == 0
    assert "## Protocol per cell" in capsys.readouterr().out
    assert [json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines()].count("KD+LS") == 1


# ------------------------------------------------------------------------ launchers
def dry_run(script, **env):
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, check=True,
                            env={**os.environ, "DRY_RUN": "1", **env})
    return [line[2:].split() for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_launchers_cover_every_method_with_seeded_trials(tmp_path):
    from test_smoke_matrix import INAPPLICABLE, classification_methods

    cmds = dry_run("distill_cifar100.sh", TRIALS="2", SAVE_ROOT=str(tmp_path))
    methods = {c[c.index("--distill") + 1] for c in cmds}
    from distillers.base import DISTILLERS
    built_in = {m for m in classification_methods() if DISTILLERS.get(m).__module__.startswith("distillers.")}
    # (methods that other tests register from plugins are not the launchers'; deit trains a DeiT student's
    # distillation head, which no CIFAR-zoo student has, and vitkd needs ViT token features on both sides)
    assert methods == built_in - {"deit", "vitkd"}
    assert all(c[c.index("--seed") + 1] == c[c.index("--trial") + 1] for c in cmds)
    assert {c[c.index("--model_s") + 1] for c in cmds} == {"resnet8x4"}
    crd = [c for c in cmds if c[c.index("--distill") + 1] == "crd"]
    configs = [c[c.index("--config") + 1] if "--config" in c else None for c in crd]
    # CRD and CRD+KD, two trials each, from their published cells' configs (CRD+KD: alpha 1)
    assert sorted(configs) == sorted(["configs/cifar100/crd/resnet32x4_resnet8x4.yaml"] * 2
                                     + ["configs/cifar100/crd_kd/resnet32x4_resnet8x4.yaml"] * 2)
    assert len({c[c.index("--save_dir") + 1] for c in cmds}) == len(cmds)
    for c in cmds:
        method = c[c.index("--distill") + 1]
        if "--config" in c:
            path = REPO / c[c.index("--config") + 1]
            row = path.parent.name  # the method, or a row of it (crd_kd: CRD with -a 1)
            assert path.is_file() and (row == method or row.split("_")[0] in (method, "kd")), path
        else:  # no published cell on this pair: the registry's reference values
            assert method in ("crd_queue", "kdsvd", "mlkd", "wsld", "nkd", "ickd", "srrl", "semckd", "simkd",
                              "sdd_dkd", "mgd", "srd", "ofa"), c
    used = {c[c.index("--config") + 1].split("/")[2] for c in cmds if "--config" in c}
    assert {"kd_ls", "dkd_ls", "ctkd_ls", "mlkd", "mlkd_ls", "ofd", "dist", "ctkd", "catkd"} <= used  # new ones

    cross = dry_run("distill_cifar100_cross.sh", TRIALS="1", SAVE_ROOT=str(tmp_path))
    pairs = {(os.path.basename(os.path.dirname(c[c.index("--path_t") + 1])), c[c.index("--model_s") + 1])
             for c in cross}
    assert len(pairs) == 6
    ran = {(c[c.index("--distill") + 1], d.replace("_vanilla", ""), s) for c in cross
           for d, s in [(os.path.basename(os.path.dirname(c[c.index("--path_t") + 1])), c[c.index("--model_s") + 1])]}
    assert not ran & set(INAPPLICABLE)  # the launcher leaves out the cells that cannot apply
    assert {m for m, _, _ in ran} == methods - {"fsp", "kdsvd", "fcfd"}  # FCFD serves one cross pair: see the script
    dkd = [c for c in cross if c[c.index("--distill") + 1] == "dkd" and c[c.index("--model_s") + 1] == "ShuffleV2"]
    assert [c[c.index("--config") + 1] for c in dkd] == ["configs/cifar100/dkd/resnet32x4_ShuffleV2.yaml",
                                                         "configs/cifar100/dkd_ls/resnet32x4_ShuffleV2.yaml"]
    result = subprocess.run(["bash", str(REPO / "scripts" / "distill_cifar100_cross.sh")], capture_output=True,
                            text=True, check=True, env={**os.environ, "DRY_RUN": "1", "TRIALS": "1",
                                                        "SAVE_ROOT": str(tmp_path)})
    assert "skipped kd+ls on resnet32x4 -> ShuffleV1: no config" in result.stderr  # unpublished: not guessed

    teachers = dry_run("train_cifar100_teachers.sh", STUDENTS="all", TRIALS="2", GPU="0", SAVE_ROOT=str(tmp_path))
    models = [c[c.index("--model") + 1] for c in teachers]
    assert models[:6] == ["resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"]
    assert len(models) == 6 + 9 * 2 and all("--gpu_id" in c for c in teachers)


def test_plot_picks_the_pairs_present_and_errors_name_the_flags(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    s = tmp_path / "students"
    for seed, last in enumerate([70.0, 71.0]):
        fake_run(s, f"dkd_{seed}", arch="vgg8", teacher="ResNet50", method="dkd", seed=seed,
                 weights=(1.0, 0.0, 1.0), last=last, best=last + 1, path_t="/ckpt/ResNet50.pth")
    cost = write_cost_csv(tmp_path / "cost.csv", COST)
    png = tmp_path / "p.png"
    assert main([str(s / "*"), "--plot", str(png), "--cost-table", str(cost)]) == 0  # the default pair is absent
    assert png.is_file() and "drew 1 methods of ResNet50→vgg8 on cifar100" in capsys.readouterr().err

    fake_run(s, "kd_syn", arch="resnet8", teacher="resnet20", method="kd", dataset="synthetic",
             weights=(0.1, 0.9, 0.0), last=80.0, best=81.0)
    assert main([str(s / "*"), "--plot", str(png), "--cost-table", str(cost)]) == 0
    assert (tmp_path / "p_ResNet50_vgg8.png").is_file() and (tmp_path / "p_resnet20_resnet8.png").is_file()
    assert "resnet20→resnet8 on synthetic" in capsys.readouterr().err

    assert main([str(s / "*"), "--plot", str(png), "--plot-pair", "vgg13:vgg8", "--cost-table", str(cost)]) == 1
    err = capsys.readouterr().err
    assert "no run of vgg13→vgg8 on cifar100" in err
    assert "--plot-pair ResNet50:vgg8 --compare-dataset cifar100" in err
    assert "--plot-pair resnet20:resnet8 --compare-dataset synthetic" in err


def test_compare_says_when_no_run_matches(tmp_path, capsys):
    s = tmp_path / "students"
    fake_run(s, "kd_syn", arch="resnet8", teacher="resnet20", method="kd", dataset="synthetic",
             weights=(0.1, 0.9, 0.0), last=80.0, best=81.0)
    assert main([str(s / "*"), "--compare", "-o", str(tmp_path / "t.md")]) == 0
    err = capsys.readouterr().err
    assert "--compare: no run on cifar100 (the runs are on synthetic)" in err and "--compare-dataset" in err
    fake_run(s, "dkd_odd", arch="resnet8x4", method="dkd", weights=(1.0, 0.0, 3.0), last=70.0, best=71.0)
    assert main([str(s / "*"), "--compare", "-o", str(tmp_path / "t.md")]) == 0
    assert "no run on cifar100 matches a published cell" in capsys.readouterr().err
    fake_run(s, "dkd_ref", arch="resnet8x4", method="dkd", weights=(1.0, 0.0, 1.0), last=76.0, best=76.5)
    assert main([str(s / "*"), "--compare", "-o", str(tmp_path / "t.md")]) == 0
    assert "--compare:" not in capsys.readouterr().err
