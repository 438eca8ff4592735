"""Shared fixtures: paths to ../shared and deterministic torch."""
import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# the teacher cache of the whole test session (zoo downloads, pre-flight results): never the user's own
os.environ.setdefault("DISTILLERS_TEACHERS", tempfile.mkdtemp(prefix="distillers-test-teachers-"))
# and its save root: runs given only --save_dir keep their teacher stores there, not in the checkout
os.environ.setdefault("DISTILLERS_SAVE_ROOT", tempfile.mkdtemp(prefix="distillers-test-save-"))
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


def _registries():
    """Every registry of the project, by name (imported here so that each is complete)."""
    import data.requests
    import distillers
    import distillers.reference
    import engine.optim
    import engine.tasks
    import models.registry

    return {"distillers": distillers.DISTILLERS, "models": models.registry.MODELS, "datasets": data.DATASETS,
            "data requests": data.requests.SERVERS, "tasks": engine.tasks.TASKS,
            "golden entries": distillers.reference.GOLDEN, "published rows": distillers.reference.ROWS,
            "optimizers": engine.optim.OPTIMIZERS, "schedulers": engine.optim.SCHEDULERS}


@pytest.fixture(autouse=True)
def _registries_restored():
    """What a test registers (a plugin's method, model, dataset or data request) is gone after it, and
    so is the plugin module, so no test sees another's registrations (the layering test among them)."""
    import sys

    saved = {name: (dict(r._entries), dict(r._meta)) for name, r in _registries().items()}
    plugins = {k for k in sys.modules if k.startswith("distillers_plugin_")}
    yield
    for name, registry in _registries().items():
        entries, meta = saved[name]
        registry._entries.clear()
        registry._entries.update(entries)
        registry._meta.clear()
        registry._meta.update(meta)
    for key in [k for k in sys.modules if k.startswith("distillers_plugin_") and k not in plugins]:
        del sys.modules[key]
