"""Shared fixtures: paths to ../shared and deterministic torch."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DISTILLERS_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
