"""engine/teacher_store.py: the on-disk store of teacher outputs keyed by (sample, view)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from core.taps import FeatureTaps
from data.device_loader import crop_flip_normalize, decode_views
from data.view_keys import num_views
from engine.teacher_store import (StoredTeacher, StoreError, TeacherStore, default_store_dir, storable_taps,
                                  store_key, teacher_fingerprint)

#: The device loader's CIFAR view scheme (data.device_loader: the store's key describes the loader's views).
CIFAR_VIEWS = {"padding": 4, "size": 32, "flip": True}
from models import create_model

REPO = Path(__file__).resolve().parents[1]
KEY = {"teacher": "abc", "dataset": "synthetic", "dtype": "float32"}


def open_store(path, key=KEY, samples=20, views=162, shapes=None, dtype=torch.float32):
    return TeacherStore.open(str(path), key, samples, views, shapes or {"logits": (10,), "pooled": (8,)}, dtype)


def entries(n, samples=20, views=162, seed=0):
    """``n`` distinct (index, view) pairs."""
    flat = torch.randperm(samples * views, generator=torch.Generator().manual_seed(seed))[:n]
    return flat // views, flat % views


# ---------------------------------------------------------------- keys
def test_fingerprint_follows_the_weights_not_the_object(tmp_path):
    model = create_model("resnet8", num_classes=10)
    path = tmp_path / "t.pth"
    torch.save({"model": model.state_dict()}, path)
    copy = create_model("resnet8", num_classes=10)
    copy.load_state_dict(torch.load(path)["model"])
    assert teacher_fingerprint(copy) == teacher_fingerprint(model)
    with torch.no_grad():
        copy.fc.bias[0] += 1e-6
    assert teacher_fingerprint(copy) != teacher_fingerprint(model)


def test_store_key_and_default_dir():
    model = create_model("resnet8", num_classes=10)
    key = store_key(model, "cifar100", 50000, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), CIFAR_VIEWS)
    assert key["teacher"] == teacher_fingerprint(model) and key["views"] == CIFAR_VIEWS
    assert num_views(4) == 162
    folder = default_store_dir("save", key)
    assert folder == default_store_dir("save", dict(reversed(list(key.items()))))  # key order does not matter
    assert os.path.dirname(folder) == os.path.join("save", "teacher_store") and len(os.path.basename(folder)) == 16
    assert default_store_dir("save", {**key, "dtype": "float16"}) != folder


# ---------------------------------------------------------------- files
def test_creation_is_sparse_and_grows_with_writes(tmp_path):
    store = open_store(tmp_path / "s", samples=50000, shapes={"logits": (100,)})
    assert os.path.getsize(tmp_path / "s" / "logits.bin") == 50000 * 162 * 100 * 4  # 3.24 GB apparent
    assert os.path.getsize(tmp_path / "s" / "logits.sum") == 50000 * 162 * 4  # a CRC32 per entry
    assert store.size_on_disk() < 1 << 20
    index, view = entries(64, samples=50000)
    store.write(index, view, {"logits": torch.randn(64, 100)})
    store.flush()
    assert 64 * 400 <= store.size_on_disk() < 64 * 4 * 4096 + (1 << 20)  # values, checksums, bits: a page each
    assert not list(tmp_path.glob("s.tmp-*"))  # the temporary build folder was renamed into place


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_write_then_lookup_round_trip(tmp_path, dtype):
    store = open_store(tmp_path / "s", key={**KEY, "dtype": str(dtype)[6:]}, dtype=dtype)
    index, view = entries(12)
    values = {"logits": torch.randn(12, 10) * 5, "pooled": torch.rand(12, 8)}
    store.write(index, view, values)
    hit, got = store.lookup(["logits", "pooled"], index, view)
    assert hit.all() and got["logits"].dtype == torch.float32
    for tap in values:
        if dtype == torch.float32:
            assert torch.equal(got[tap], values[tap])
        else:
            assert torch.equal(got[tap], values[tap].half().float())
            torch.testing.assert_close(got[tap], values[tap], rtol=1e-3, atol=1e-4)
    store.close()
    reopened = open_store(tmp_path / "s", key={**KEY, "dtype": str(dtype)[6:]}, dtype=dtype)
    assert torch.equal(reopened.lookup(["logits"], index, view)[1]["logits"], got["logits"])


def test_hit_mask_partial_and_multi_tap_fills(tmp_path):
    store = open_store(tmp_path / "s")
    index, view = entries(10)
    store.write(index[:6], view[:6], {"logits": torch.ones(6, 10)})
    store.write(index[3:8], view[3:8], {"pooled": torch.ones(5, 8)})
    expect_logits = torch.arange(10) < 6
    expect_both = (torch.arange(10) >= 3) & (torch.arange(10) < 6)
    assert torch.equal(store.lookup(["logits"], index, view)[0], expect_logits)
    assert torch.equal(store.lookup(["pooled"], index, view)[0], (torch.arange(10) >= 3) & (torch.arange(10) < 8))
    assert torch.equal(store.lookup(["logits", "pooled"], index, view)[0], expect_both)
    assert store.lookups == 30 and store.hits == 6 + 5 + 3
    assert store.hit_rate == pytest.approx(14 / 30)
    store.reset_counters()
    assert store.lookups == 0 and store.filled(["logits"], index, view).sum() == 6 and store.lookups == 0
    assert store.filled_fraction("logits") == pytest.approx(6 / (20 * 162))


def test_rewriting_a_filled_entry_keeps_the_first_value(tmp_path):
    store = open_store(tmp_path / "s")
    index, view = entries(4)
    store.write(index, view, {"logits": torch.ones(4, 10)})
    store.write(index, view, {"logits": torch.full((4, 10), 2.0)})
    assert torch.equal(store.lookup(["logits"], index, view)[1]["logits"], torch.ones(4, 10))


def test_out_of_range_entries_are_refused(tmp_path):
    store = open_store(tmp_path / "s")
    with pytest.raises(IndexError, match="sample index"):
        store.lookup(["logits"], torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(IndexError, match="view id"):
        store.write(torch.tensor([0]), torch.tensor([162]), {"logits": torch.zeros(1, 10)})


def test_another_key_size_or_shape_is_refused(tmp_path):
    open_store(tmp_path / "s").close()
    with pytest.raises(StoreError, match=r"key\.teacher: stored \"abc\" vs this run \"xyz\".*delete it"):
        open_store(tmp_path / "s", key={**KEY, "teacher": "xyz"})
    with pytest.raises(StoreError, match="num_samples: stored 20 vs this run 21"):
        open_store(tmp_path / "s", samples=21)
    with pytest.raises(StoreError, match=r"tap 'logits' is stored with shape \(10,\) vs \(100,\)"):
        open_store(tmp_path / "s", shapes={"logits": (100,)})


def test_truncated_file_and_missing_meta_are_detected(tmp_path):
    open_store(tmp_path / "s").close()
    os.truncate(tmp_path / "s" / "pooled.bin", 100)
    with pytest.raises(StoreError, match=r"corrupt: 'pooled.bin' is 100 bytes.*truncated"):
        open_store(tmp_path / "s")
    open_store(tmp_path / "t").close()
    os.unlink(tmp_path / "t" / "logits.filled")
    with pytest.raises(StoreError, match="partial: 'logits.filled' of tap 'logits' is missing"):
        open_store(tmp_path / "t")
    open_store(tmp_path / "v").close()
    os.unlink(tmp_path / "v" / "pooled.sum")
    with pytest.raises(StoreError, match="partial: 'pooled.sum' of tap 'pooled' is missing"):
        open_store(tmp_path / "v")
    (tmp_path / "u").mkdir()
    with pytest.raises(StoreError, match="has no meta.json"):
        open_store(tmp_path / "u")


def test_a_new_tap_joins_an_existing_store(tmp_path):
    store = open_store(tmp_path / "s", shapes={"logits": (10,)})
    index, view = entries(5)
    store.write(index, view, {"logits": torch.ones(5, 10)})
    store.close()
    store = open_store(tmp_path / "s", shapes={"pooled": (8,)})
    assert set(store.shapes) == {"logits", "pooled"}
    assert store.lookup(["logits"], index, view)[0].all()
    assert not store.lookup(["logits", "pooled"], index, view)[0].any()
    store.write(index, view, {"pooled": torch.zeros(5, 8)})
    assert open_store(tmp_path / "s").lookup(["logits", "pooled"], index, view)[0].all()


# ---------------------------------------------------------------- which taps fit
def test_storable_taps_reasons():
    shapes = {"logits": (100,), "pooled": (256,), "stage2": (64, 16, 16), "stages": [(16, 32, 32), (32, 16, 16)],
              "classifier": (100, 256)}
    assert storable_taps(shapes, ["logits", "pooled"]) == (True, "")
    ok, reason = storable_taps(shapes, ["logits", "stage2"], reader="--distill fitnet")
    assert not ok and reason.startswith("--distill fitnet reads the teacher's feature map 'stage2' (64x16x16")
    assert "small per-sample outputs only" in reason
    assert "group of 2 maps" in storable_taps(shapes, ["stages"])[1]
    assert "module 'classifier'" in storable_taps(shapes, ["classifier"], modules={"classifier"})[1]
    assert "shape is unknown" in storable_taps(shapes, ["attention"])[1]
    assert storable_taps(shapes, ["pooled"], limit=100)[0] is False


# ---------------------------------------------------------------- the teacher in front of the store
@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=10).eval()


def render(images, index, view):
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    return crop_flip_normalize(images, index, decode_views(view), mean, std, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stored_teacher_runs_the_teacher_on_misses_only(tmp_path, teacher, dtype):
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    taps = FeatureTaps(teacher, ["logits", "pooled"])
    rows = []

    def forward(x):
        rows.append(len(x))
        return taps(x)

    store = open_store(tmp_path / "s", key={**KEY, "dtype": str(dtype)[6:]}, shapes={"logits": (10,), "pooled": (64,)},
                       dtype=dtype)
    stored = StoredTeacher(forward, store, ["logits", "pooled"])
    index, view = entries(16)
    first = index[:8], view[:8]
    overlap = index[4:12], view[4:12]  # half of it seen in the first batch
    tol = dict(rtol=0, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=1e-3)
    for (i, v), expect_rows in ((first, [8]), (overlap, [8, 4]), (first, [8, 4]), (overlap, [8, 4])):
        x = render(images, i, v)
        got = stored(x, i, v)
        assert rows == expect_rows
        with torch.no_grad():
            direct = taps(x)
        for tap in ("logits", "pooled"):
            assert got[tap].shape == direct[tap].shape and got[tap].dtype == torch.float32
            torch.testing.assert_close(got[tap], direct[tap], **tol)
    assert store.hit_rate == pytest.approx((0 + 4 + 8 + 8) / 32)


# ---------------------------------------------------------------- processes sharing a store
SHARER = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {repo!r})
    from engine.teacher_store import TeacherStore
    folder, me, other = sys.argv[1], int(sys.argv[2]), 1 - int(sys.argv[2])
    def value(index, view):
        return (index * 1000 + view).float()[:, None] + torch.arange(4.0)
    def mine(rank):  # each writes its own samples and both write samples 8..9
        index = torch.tensor([rank * 4 + k for k in range(4)] + [8, 9])
        return index, (index * 7 + 3) % 162
    store = TeacherStore.open(folder, {{"k": 1}}, 10, 162, {{"logits": (4,)}})
    index, view = mine(me)
    store.write(index, view, {{"logits": value(index, view)}})
    open(os.path.join(folder, "done%d" % me), "w").close()
    while not os.path.exists(os.path.join(folder, "done%d" % other)):
        time.sleep(0.05)
    index, view = mine(other)
    hit, values = store.lookup(["logits"], index, view)
    assert hit.all(), hit
    assert torch.equal(values["logits"], value(index, view))
    print("ok", me)
""")


def test_two_processes_share_one_store(tmp_path):
    script = tmp_path / "share.py"
    script.write_text(SHARER.format(repo=str(REPO)))
    folder = str(tmp_path / "s")
    procs = [subprocess.Popen([sys.executable, str(script), folder, str(rank)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for rank, (proc, (out, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, err
        assert out.strip() == f"ok {rank}"
    assert TeacherStore.open(folder, {"k": 1}, 10, 162, {"logits": (4,)}).filled_fraction("logits") == 10 / 1620


# ---------------------------------------------------------------- scripts/fill_teacher_store.py
FILL = textwrap.dedent("""
    import sys
    sys.path.insert(0, {scripts!r})
    import fill_teacher_store
    code = fill_teacher_store.main(sys.argv[1:])
    assert "engine.loop" not in sys.modules, "the fill script must not import the training loop"
    sys.exit(code)
""")


def test_fill_script_stores_the_teachers_outputs_and_resumes(tmp_path, teacher):
    import data

    checkpoint = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict()}, checkpoint)
    folder = tmp_path / "store"
    args = ["--path_t", str(checkpoint), "--model_t", "resnet8", "--dataset", "synthetic", "--data_opt",
            "train_size=30", "--teacher_store", str(folder), "--limit", "12", "--views", "0", "77", "161",
            "--batch_size", "16", "--device", "cpu"]
    run = lambda *cmd: subprocess.run([sys.executable, *cmd, *args], capture_output=True, text=True,  # noqa: E731
                                      timeout=120)
    first = run("-c", FILL.format(scripts=str(REPO / "scripts")))
    assert first.returncode == 0, first.stderr
    assert "filled 36 entries (36/36 requested entries present)" in first.stdout

    train = data.build_dataset("synthetic", "unused", "train", train_size=30)
    info = data.dataset_info("synthetic")
    key = store_key(teacher, "synthetic", 30, info["mean"], info["std"], CIFAR_VIEWS, data_options={"train_size": 30})
    store = TeacherStore.open(str(folder), key, 30, 162, {"logits": (10,), "pooled": (64,)})
    index = torch.arange(12).repeat_interleave(3)
    view = torch.tensor([0, 77, 161]).repeat(12)
    hit, stored = store.lookup(["logits", "pooled"], index, view)
    assert hit.all()
    x = crop_flip_normalize(train.images, index, decode_views(view), torch.tensor(info["mean"]).view(3, 1, 1),
                            torch.tensor(info["std"]).view(3, 1, 1), 4)
    with FeatureTaps(teacher, ["logits", "pooled"]) as taps, torch.no_grad():
        direct = taps(x)
    for tap in ("logits", "pooled"):
        torch.testing.assert_close(stored[tap], direct[tap], rtol=0, atol=1e-5)
    assert not store.lookup(["logits"], torch.tensor([12, 0]), torch.tensor([0, 1]))[0].any()  # beyond the request
    assert store.filled_fraction("logits") == 36 / (30 * 162)

    second = run(str(REPO / "scripts" / "fill_teacher_store.py"))
    assert second.returncode == 0, second.stderr
    assert "filled 0 entries (36/36 requested entries present)" in second.stdout
    assert not list(tmp_path.rglob("*.lock"))  # the fill's locks are gone once it is done


def test_concurrent_creators_and_tap_adders_meet_one_store(tmp_path):
    """Threads stand in for processes: each open() takes its own flock on <dir>.lock."""
    import threading

    start, errors, stores = threading.Barrier(8), [], []

    def open_one(k):
        start.wait()
        try:
            stores.append(open_store(tmp_path / "s", shapes={"logits": (10,), f"tap{k % 2}": (3,)}))
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=open_one, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert set(open_store(tmp_path / "s").shapes) == {"logits", "pooled", "tap0", "tap1"}
    assert not list(tmp_path.glob("s.tmp-*")) and not list((tmp_path / "s").glob(".tmp-*"))
    assert not (tmp_path / "s.lock").exists()
