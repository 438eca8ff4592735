"""The package structure: which package may import which, no cycles, and an engine and data
path that know no method by name.

core (registry, taps) imports nothing of the project; models/ and data/ import only core;
distillers/ imports core; engine/ imports everything; the command lines import engine.
"""
import ast
from pathlib import Path

import pytest

import data  # noqa: F401  (registries complete after these imports)
import distillers
import engine  # noqa: F401
import models  # noqa: F401
from distillers.base import DISTILLERS
from engine.tasks import TASKS
from conftest import REPO

PACKAGES = ("core", "models", "data", "distillers", "engine")
ALLOWED = {"core": set(), "models": {"core"}, "data": {"core"}, "distillers": {"core"},
           "engine": {"core", "models", "data", "distillers"}}


def modules():
    """Every project module: dotted name -> path."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(path: Path, top_level_only: bool):
    """Project modules imported by the file (``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in MODULES else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_import_directions(name):
    package = name.split(".")[0]
    for target in imports(MODULES[name], top_level_only=False):  # lazy imports count too
        other = target.split(".")[0]
        assert other == package or other in ALLOWED[package], f"{name} imports {target}"


def test_no_import_cycles():
    graph = {name: {t for t in imports(path, top_level_only=True) if t in MODULES and not name.startswith(t + ".")}
             for name, path in MODULES.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_registries_are_complete_after_importing_the_packages():
    assert "crd" in DISTILLERS and "metric" in TASKS and "classification" in TASKS
    assert data.dataset_info("cub200")["task"] == "metric"  # no engine import needed to know it
    assert "resnet8" in models.list_models("cifar")


def _names_used(path: Path):
    """String constants and attribute names of a file (not local variable names)."""
    tree = ast.parse(path.read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.add(node.value)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
    return used


#: Words that are method names or options and also plain words of the engine: the task named
#: "metric" (metric learning), a metric's "loss" key, "p"/"k"-style letters never used as such.
GENERIC = {"metric", "loss"}


def test_engine_and_data_name_no_method_and_no_method_option():
    methods = set(DISTILLERS.names())
    options = {o for n in methods for o in DISTILLERS.get(n).option_names()}
    specific = (methods | options) - GENERIC - set(TASKS.names())
    for name, path in MODULES.items():
        if name.split(".")[0] in ("engine", "data"):
            found = sorted(_names_used(path) & specific)
            assert not found, f"{path.relative_to(REPO)} names method(s)/option(s) {found}"


def test_distillers_exports_the_plugin_interface():
    for name in ("Distiller", "Option", "BatchNeeds", "register_distiller", "FeatureTaps", "TapPoint"):
        assert hasattr(distillers, name)
