"""Shared fixtures: paths to ../shared and deterministic torch."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DISTILLERS_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
#: Golden files the project generated itself from fetched reference code (tests/golden/README.md).
OWN_GOLDEN = REPO / "tests" / "golden"


def golden_files():
    """Every golden file: the shared reference set, then the project's own."""
    return sorted(GOLDEN.glob("*.pt")) + sorted(OWN_GOLDEN.glob("*.pt"))


def golden_file(method: str) -> Path:
    """The golden file of ``method`` (shared first, then the project's own)."""
    for folder in (GOLDEN, OWN_GOLDEN):
        if (folder / f"{method}.pt").exists():
            return folder / f"{method}.pt"
    raise FileNotFoundError(f"no golden file for method '{method}' under {GOLDEN} or {OWN_GOLDEN}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
