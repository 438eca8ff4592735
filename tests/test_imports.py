"""The package structure: which package may import which, no cycles, and an engine and data
path that know no method by name.

core (registry, taps, batch, requests, options) imports nothing of the project; models/ and data/
import only core; distillers/ imports core; engine/ imports everything; the command lines (the
root scripts, scripts/, benchmarks/) import the packages, and nothing imports them. Imports are
read whole: absolute and relative ``import`` statements, lazy ones inside functions, and modules
named to ``importlib.import_module``/``__import__``.
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
COMMANDS = ("scripts", "benchmarks")  # command lines, with the root scripts: the top layer
ALLOWED = {"core": set(), "models": {"core"}, "data": {"core"}, "distillers": {"core"},
           "engine": {"core", "models", "data", "distillers"}}


def modules():
    """Every project module: dotted name -> path (the command lines under their folder's name)."""
    out = {}
    for package in PACKAGES + COMMANDS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    for path in sorted(REPO.glob("*.py")):
        if path.name != "setup.py":
            out[path.stem] = path
    return out


MODULES = modules()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(path: Path, top_level_only: bool, name: str = ""):
    """Project modules imported by the file (``from pkg import sub`` counts as ``pkg.sub``): absolute and
    relative imports, and string literals given to ``importlib.import_module`` or ``__import__``."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                base = _package_of(name, path).split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([p for p in base if p] + ([module] if module else []))
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                found.add(full if full in MODULES else module)
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.add(node.args[0].value)
    return {m for m in found if m and m.split(".")[0] in PACKAGES + COMMANDS + tuple(
        k for k in MODULES if "." not in k)}


def _dynamic_import(node: ast.Call) -> bool:
    """``importlib.import_module("pkg.mod")`` or ``__import__("pkg.mod")`` with a literal name."""
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id in ("__import__", "import_module"))
    return named and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)


def _layer(name: str) -> str:
    top = name.split(".")[0]
    return top if top in PACKAGES else "command"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_import_directions(name):
    layer = _layer(name)
    for target in imports(MODULES[name], top_level_only=False, name=name):  # lazy imports count too
        other = _layer(target)
        if layer == "command":  # a command line may import any package, never another command line
            assert other != "command" or target.split(".")[0] == name.split(".")[0] and other == "command" and \
                target.split(".")[0] in COMMANDS, f"{name} imports the command line {target}"
            continue
        assert other == layer or other in ALLOWED[layer], f"{name} imports {target}"


def test_the_reader_sees_relative_and_dynamic_imports(tmp_path):
    """The checks above read what Python would import: a relative import and importlib with a literal."""
    sample = tmp_path / "mod.py"
    sample.write_text("from . import loop\nfrom ..data import loaders\nimport importlib\n"
                      "importlib.import_module('engine.assembly')\n__import__('models.registry')\n")
    found = imports(sample, top_level_only=False, name="engine.mod")  # a module of engine/
    assert {"engine.loop", "data.loaders", "engine.assembly", "models.registry"} <= found


def test_no_import_cycles():
    graph = {name: {t for t in imports(path, top_level_only=True, name=name)
                    if t in MODULES and not name.startswith(t + ".")}
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
    """String constants, attribute names, identifiers and keyword-argument names of a file."""
    tree = ast.parse(path.read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.add(node.value)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.Name) and len(node.id) > 2:  # a letter (k, p) names nothing
            used.add(node.id)
        elif isinstance(node, ast.keyword) and node.arg and len(node.arg) > 2:
            used.add(node.arg)
    return used


#: Words that are method names or options and also plain words of the engine: the task named
#: "metric" (metric learning), a metric's "loss" key, ``dist`` (torch.distributed); one- and
#: two-letter identifiers (k, p, at) are never read as names.
GENERIC = {"metric", "loss", "dist"}  # dist: also torch.distributed's usual alias


def test_engine_and_data_name_no_method_and_no_method_option():
    methods = set(DISTILLERS.names())
    options = {o for n in methods for o in DISTILLERS.get(n).option_names()}
    specific = {n for n in (methods | options) - GENERIC - set(TASKS.names()) if len(n) > 2}  # a letter names nothing
    for name, path in MODULES.items():
        if name.split(".")[0] in ("engine", "data"):
            found = sorted(_names_used(path) & specific)
            assert not found, f"{path.relative_to(REPO)} names method(s)/option(s) {found}"


def test_distillers_exports_the_plugin_interface():
    for name in ("Distiller", "Option", "DataRequest", "register_distiller", "FeatureTaps", "TapPoint"):
        assert hasattr(distillers, name)
