"""Golden reference numbers, through the one adapter (`python -m distillers.golden`)."""
import subprocess
import sys

import pytest
import torch

from distillers import golden
from distillers.base import DISTILLERS
from conftest import GOLDEN, REPO, golden_files

GOLDEN_FILES = golden_files()
pytestmark = pytest.mark.skipif(not GOLDEN_FILES, reason=f"no golden files under {GOLDEN}")


def _method(path):
    return torch.load(path, weights_only=True)["method"]


MAPPED = [p for p in GOLDEN_FILES if _method(p) in golden.TABLE]


@pytest.mark.parametrize("path", MAPPED, ids=lambda p: p.stem)
def test_golden_file_passes(path):
    outcome = golden.check_file(str(path))
    assert outcome.ok, outcome.problems
    assert outcome.max_err < float(torch.load(path, weights_only=True)["tolerance"])


def test_table_maps_only_registered_distillers():
    for method, entry in golden.TABLE.items():
        if entry.function:  # a plain function (Recall@K, a sampler), not a loss
            assert callable(golden._resolve(entry.function)), (method, entry.function)
        else:
            assert entry.distiller in DISTILLERS, (method, entry.distiller)


def test_kd_is_mapped():
    assert "kd" in golden.TABLE and any(p.stem == "kd" for p in MAPPED)


def _perturbed(tmp_path, name, mutate):
    record = torch.load(GOLDEN / "kd.pt", weights_only=True)
    mutate(record)
    path = tmp_path / name
    torch.save(record, path)
    return path


def test_perturbed_file_fails_and_the_command_exits_nonzero(tmp_path):
    def bump_loss(r):
        r["loss"] = r["loss"] + 1e-3

    def bump_grad(r):
        r["grads"]["logit_s"][0, 0] += 1e-3

    bad_loss = _perturbed(tmp_path, "renamed_a.pt", bump_loss)
    bad_grad = _perturbed(tmp_path, "renamed_b.pt", bump_grad)
    assert not golden.check_file(str(bad_loss)).ok
    outcome = golden.check_file(str(bad_grad))
    assert not outcome.ok and any("grad logit_s" in p for p in outcome.problems)

    proc = subprocess.run([sys.executable, "-m", "distillers.golden", str(GOLDEN / "kd.pt"),
                           str(bad_loss)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("PASS") and lines[1].startswith("FAIL")
    assert "loss: max abs error" in lines[1]


def test_the_file_name_does_not_matter(tmp_path):
    """Held-out files have other names: the adapter keys on the method field."""
    path = _perturbed(tmp_path, "heldout_0017.pt", lambda r: None)
    assert golden.check_file(str(path)).ok


def test_unmapped_method_fails_clearly(tmp_path):
    path = _perturbed(tmp_path, "x.pt", lambda r: r.update(method="no_such_method"))
    outcome = golden.check_file(str(path))
    assert not outcome.ok and "no mapping for method 'no_such_method'" in outcome.problems[0]
