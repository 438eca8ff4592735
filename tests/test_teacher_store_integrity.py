"""A teacher store that verifies what it serves (issue 19 §2): values damaged on disk (a sign
flip, zeros, one flipped bit, random bytes, a NaN) are never served but recomputed, rewritten
and counted, so a run over a damaged store equals one without; a file-size limit while the
store is created or grown is one line (an error, or the store turned off), never a traceback
or a signal. A full disk cannot be made here without root (a small tmpfs or loop device):
ENOSPC takes the same path as EFBIG (engine/store_files.py ``space_error``)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.taps import FeatureTaps
from data.device_loader import crop_flip_normalize, decode_views
from engine import config
from engine.checkpoint import load, save_atomic
from engine.distributed import DistInfo
from engine.teacher_store import StoredTeacher, StoreError, TeacherStore, checksums, store_key
from engine.loop import Trainer
from models import create_model
from conftest import REPO
from test_teacher_store_training import TINY, cold_entries, student, stored_key, teacher  # noqa: F401

KINDS = ("sign", "zero", "bit", "random", "nan", "nan_with_checksum")


def damage(folder, tap, flat, kind, seed=0):
    """Change the stored bytes of entries ``flat`` (index * views + view) of ``tap`` in place,
    as a failing disk or a stray writer would; ``nan_with_checksum`` also rewrites the checksum,
    as a writer that stored a NaN would."""
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype({"float32": np.float32, "float16": np.float16}[meta["dtype"]])
    width = int(np.prod(meta["taps"][tap])) * dtype.itemsize
    rng = np.random.default_rng(seed)
    with open(folder / f"{tap}.bin", "r+b") as fh:
        for pos in np.atleast_1d(flat).tolist():
            fh.seek(pos * width)
            row = np.frombuffer(fh.read(width), dtype).copy()
            if kind == "sign":
                row = -row
            elif kind == "zero":
                row[:] = 0
            elif kind == "bit":
                raw = row.view(np.uint8)
                raw[rng.integers(raw.size)] ^= np.uint8(1 << int(rng.integers(8)))
            elif kind == "random":
                row = rng.integers(0, 256, width, dtype=np.uint8).view(dtype)
            else:
                row[rng.integers(row.size)] = np.nan
            fh.seek(pos * width)
            fh.write(row.tobytes())
            if kind == "nan_with_checksum":
                with open(folder / f"{tap}.sum", "r+b") as sums:
                    sums.seek(pos * 4)
                    sums.write(checksums(row[None], np.array([pos])).tobytes())


def open_store(path, samples=20, shapes=None, dtype=torch.float32):
    key = {"teacher": "abc", "dtype": str(dtype)[6:]}
    return TeacherStore.open(str(path), key, samples, 162, shapes or {"logits": (10,)}, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_each_kind_of_damage_is_a_counted_miss_and_is_rewritten(tmp_path, dtype):
    store = open_store(tmp_path / "s", dtype=dtype)
    flat = torch.randperm(20 * 162, generator=torch.Generator().manual_seed(0))[:60]
    index, view = flat // 162, flat % 162
    values = torch.randn(60, 10) * 3
    store.write(index, view, {"logits": values})
    store.close()
    damaged = np.zeros(60, dtype=bool)
    for k, kind in enumerate(KINDS):  # three entries of each kind
        rows = np.arange(k * 3, k * 3 + 3)
        damage(tmp_path / "s", "logits", flat[rows].numpy(), kind, seed=k)
        damaged[rows] = True
    store = open_store(tmp_path / "s", dtype=dtype)
    hit, got = store.lookup(["logits"], index, view)
    assert torch.equal(hit, torch.from_numpy(~damaged))
    assert torch.equal(got["logits"][hit], values[hit].to(dtype).float())
    assert store.corrupt_recomputed == 18 and store.filled(["logits"], index, view).sum() == 42
    store.reset_counters()
    assert store.corrupt_recomputed == 0
    # the teacher's recomputed rows: damaged entries are rewritten, intact ones keep their first value
    store.write(index, view, {"logits": values * 2})
    hit, got = store.lookup(["logits"], index, view)
    assert hit.all() and store.corrupt_recomputed == 0
    expect = torch.where(torch.from_numpy(damaged)[:, None], values * 2, values).to(dtype).float()
    assert torch.equal(got["logits"], expect)


def test_a_row_moved_to_another_entry_fails_its_checksum(tmp_path):
    """The checksum starts from the entry's position: a row written to the wrong place is caught."""
    store = open_store(tmp_path / "s")
    store.write(torch.tensor([0]), torch.tensor([0]), {"logits": torch.randn(1, 10)})
    store.close()
    for name, width in (("logits.bin", 40), ("logits.sum", 4), ("logits.filled", 1)):  # entry 0 copied to entry 1
        with open(tmp_path / "s" / name, "r+b") as fh:
            first = fh.read(width)
            fh.write(first)
    hit, _ = open_store(tmp_path / "s").lookup(["logits"], torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert hit.tolist() == [True, False]


def test_a_non_finite_row_is_not_stored(tmp_path):
    store = open_store(tmp_path / "s")
    rows = torch.randn(3, 10)
    rows[1, 4] = float("inf")
    store.write(torch.tensor([1, 2, 3]), torch.tensor([5, 5, 5]), {"logits": rows})
    assert store.lookup(["logits"], torch.tensor([1, 2, 3]), torch.tensor([5, 5, 5]))[0].tolist() == [True, False, True]


def test_an_old_format_store_is_refused_with_one_line(tmp_path):
    open_store(tmp_path / "s").close()
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    (tmp_path / "s" / "meta.json").write_text(json.dumps({**meta, "format": "distillers/teacher-store/1"}))
    with pytest.raises(StoreError, match=r"earlier version of distillers \(format 1, without per-entry checksums\)"
                                         r".*: delete it or pass another --teacher_store$"):
        open_store(tmp_path / "s")


# ---------------------------------------------------------------- a real store, filled by the fill script
def test_stored_teacher_recomputes_damaged_entries_of_a_filled_store(tmp_path, teacher):
    """The fill script fills views of 12 samples; damaged entries are recomputed by the teacher
    (only those rows), served equal to a direct forward, counted, and rewritten."""
    import data
    from engine.teachers.loading import load_teacher

    folder = tmp_path / "store"
    command = [sys.executable, "scripts/fill_teacher_store.py", "--path_t", teacher, "--dataset", "synthetic",
               "--data_opt", "train_size=128", "--data_opt", "test_size=32", "--taps", "logits", "pooled",
               "--teacher_store", str(folder), "--limit", "12", "--views", "0", "40", "161", "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    index, view = torch.arange(12).repeat_interleave(3), torch.tensor([0, 40, 161]).repeat(12)
    flat = (index * 162 + view).numpy()
    chosen = {kind: flat[[k * 5, k * 5 + 2]] for k, kind in enumerate(KINDS)}  # 12 of the 36 entries
    for k, (kind, entries) in enumerate(chosen.items()):
        damage(folder, "logits" if k % 2 else "pooled", entries, kind, seed=k)
    model = load_teacher(teacher, None, "cifar", 10).eval()
    train = data.build_dataset("synthetic", "unused", "train", train_size=128, test_size=32)
    info = data.dataset_info("synthetic")
    x = crop_flip_normalize(train.images, index, decode_views(view), torch.tensor(info["mean"]).view(3, 1, 1),
                            torch.tensor(info["std"]).view(3, 1, 1), 4)
    with FeatureTaps(model, ["logits", "pooled"]) as taps, torch.no_grad():
        direct = taps(x)
        store = TeacherStore.open(str(folder), stored_key(folder), 128, 162, {"logits": (10,), "pooled": (64,)})
        rows = []
        stored = StoredTeacher(lambda batch: rows.append(len(batch)) or taps(batch), store, ["logits", "pooled"])
        got = stored(x, index, view)
        assert rows == [12] and store.corrupt_recomputed == 12
        for tap in ("logits", "pooled"):
            torch.testing.assert_close(got[tap], direct[tap], rtol=0, atol=1e-5)
        stored(x, index, view)
        assert rows == [12] and store.hit_rate == pytest.approx(60 / 72)  # the second call: all rewritten


# ---------------------------------------------------------------- a training run over a damaged store
def test_a_run_over_a_damaged_store_equals_a_run_without_one(tmp_path, teacher, monkeypatch, capsys):
    plain = student(tmp_path / "plain", teacher, "kd", "--no_teacher_store")
    cold = student(tmp_path / "cold", teacher, "kd", "--teacher_store", str(tmp_path / "store"))
    folder = tmp_path / "store"
    filled = np.flatnonzero(np.fromfile(folder / "logits.filled", np.uint8))
    assert len(filled) == cold_entries(cold)
    chosen = np.random.default_rng(0).choice(filled, 18, replace=False)  # ~7% of the entries the run reads
    for k, kind in enumerate(KINDS):
        damage(folder, "logits", chosen[k * 3:k * 3 + 3], kind, seed=k)
    counts = []  # the trainer resets the counters every epoch: record each epoch's count first
    reset = TeacherStore.reset_counters

    def recorded_reset(self):
        counts.append(getattr(self, "corrupt_recomputed", 0))
        reset(self)

    monkeypatch.setattr(TeacherStore, "reset_counters", recorded_reset)
    capsys.readouterr()
    warm = student(tmp_path / "warm", teacher, "kd", "--teacher_store", str(folder))
    assert warm.teacher_rows == 18 and sum(counts) == 18  # the teacher ran on the damaged entries only
    said = [line for line in capsys.readouterr().out.splitlines() if "corrupt entries recomputed" in line]
    assert said and sum(int(line.split()[2]) for line in said) == 18  # "teacher store: N corrupt ..." per epoch
    assert torch.allclose(torch.tensor(warm.step_losses), torch.tensor(plain.step_losses), rtol=1e-5, atol=1e-6)
    for key, value in plain.run.model.state_dict().items():
        assert torch.allclose(warm.run.model.state_dict()[key].float(), value.float(), rtol=1e-4, atol=1e-5), key
    store = TeacherStore.open(str(folder), stored_key(folder), 128, 162, {"logits": (10,)})
    assert store.filled(["logits"], torch.from_numpy(chosen // 162), torch.from_numpy(chosen % 162)).all()


# ---------------------------------------------------------------- a file-size limit, in real processes
LIMITED = ("import resource, os, sys; limit = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "os.execv(sys.executable, [sys.executable] + sys.argv[2:])")


def limited(limit, script, argv):
    """``script argv`` in a process whose files may not grow past ``limit`` bytes: (code, out, err)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", LIMITED, str(limit), str(REPO / script)] + argv, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


def error_lines(err):
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if "error:" in line]


def test_a_file_size_limit_while_creating_the_store_is_one_line(tmp_path, teacher):
    argv = TINY + ["--model_s", "resnet8", "--path_t", teacher, "--epochs", "1", "--save_dir", str(tmp_path / "run"),
                   "--teacher_store", str(tmp_path / "store")]
    code, out, err = limited(64 << 10, "train_student.py", argv)  # logits.bin is 0.8 MB
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("train_student.py: error: teacher store ") and str(tmp_path / "store") in lines[0]
    assert "file-size limit while creating the store (needs up to 0.9 MB" in lines[0]
    assert lines[0].endswith("pass --teacher_store DIR (on another disk) or --no_teacher_store")
    assert not (tmp_path / "store").exists() and not (tmp_path / "run").exists()


def test_a_file_size_limit_while_the_store_grows_turns_it_off_and_the_run_goes_on(tmp_path):
    """The store exists (created without a limit); the run may not write past 3 MB of its 8.3 MB
    logits file (100 classes: an entry of sample i at 64,800 * i bytes): the first failed write
    turns the store off with one line, and the run ends as one without a store does."""
    torch.manual_seed(0)
    save_atomic({"arch": "resnet8", "model": create_model("resnet8", num_classes=100).state_dict()},
                str(tmp_path / "teacher.pth"))
    base = TINY + ["--data_opt", "num_classes=100", "--model_s", "resnet8", "--path_t", str(tmp_path / "teacher.pth"),
                   "--epochs", "1"]
    store = tmp_path / "store"
    Trainer(config.parse(config.student_parser(), base + ["--save_dir", str(tmp_path / "create"),
                                                          "--teacher_store", str(store)]), DistInfo(), "student")
    assert os.path.getsize(store / "logits.bin") == 128 * 162 * 400
    code, out, err = limited(3 << 20, "train_student.py",
                             base + ["--save_dir", str(tmp_path / "run"), "--teacher_store", str(store)])
    assert code == 0, err
    off = [line for line in (out + err).splitlines() if "teacher store off" in line]
    assert len(off) == 1 and "file-size limit while writing tap 'logits'" in off[0], out + err
    code, _, err = limited(3 << 20, "train_student.py",
                           base + ["--save_dir", str(tmp_path / "plain"), "--no_teacher_store"])
    assert code == 0, err
    run, plain = load(tmp_path / "run/latest.pth")["model"], load(tmp_path / "plain/latest.pth")["model"]
    for key, value in plain.items():
        assert torch.allclose(run[key].float(), value.float(), rtol=1e-4, atol=1e-5), key


def test_the_fill_script_stops_with_one_line_at_a_file_size_limit_and_resumes(tmp_path, teacher):
    """Views 0 and 1 of 128 samples, 16 samples a batch; logits.bin is 0.8 MB, an entry of sample
    i at 6480 * i bytes: under a 300 KiB limit the batches of samples 0..47 are written, the
    fourth fails, and a rerun without the limit fills the rest."""
    base = ["--path_t", teacher, "--dataset", "synthetic", "--data_opt", "train_size=128", "--taps", "logits",
            "--teacher_store", str(tmp_path / "store"), "--batch_size", "32", "--device", "cpu"]
    argv = base + ["--views", "0", "1"]
    fill = "scripts/fill_teacher_store.py"
    code, _, err = limited(16 << 10, fill, argv)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "file-size limit while creating the store" in lines[0], err
    assert lines[0].startswith("error: teacher store ")
    import data
    from engine.teachers.loading import load_teacher

    info = data.dataset_info("synthetic")
    key = store_key(load_teacher(teacher, None, "cifar", 10), "synthetic", 128, info["mean"], info["std"],
                    {"padding": 4, "size": 32, "flip": True}, data_options={"train_size": 128})
    TeacherStore.open(str(tmp_path / "store"), key, 128, 162, {"logits": (10,)}).close()  # the script's store
    code, _, err = limited(300 << 10, fill, argv)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "file-size limit while writing tap 'logits'" in lines[0], err
    code, out, err = limited(1 << 20, fill, argv)
    assert code == 0 and "filled 160 entries (256/256 requested entries present)" in out, out + err
