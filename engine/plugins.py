"""``--plugin``: user modules imported before the command line is built, so that their
methods, models and datasets (and the methods' options) are known to it.

A plugin that cannot be imported is the user's file, not a bug of ours: a syntax error,
an exception at import, a missing module or a name already taken is one
:class:`PluginError` line naming the plugin, the file and line, and what to do.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from typing import Optional, Sequence

from core.registry import DuplicateNameError
from engine.config import ConfigError


class PluginError(ConfigError):
    """A ``--plugin`` that cannot be found or imported (one line, exit code 2)."""


def load_plugins(plugins: Sequence[str]) -> None:
    """Import user modules (dotted names or .py files) once each, so their registrations take effect."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            _load_file(plugin)
        else:
            _load_module(plugin)


def _load_file(plugin: str) -> None:
    if not os.path.isfile(plugin):
        raise FileNotFoundError(f"--plugin {plugin}: no such file")
    path = os.path.abspath(plugin)
    name = "distillers_plugin_" + os.path.splitext(os.path.basename(plugin))[0]
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]  # a later load must not take the half-run module for a loaded one
        raise PluginError(describe(plugin, path, err)) from None


def _load_module(plugin: str) -> None:
    try:
        importlib.import_module(plugin)
    except ModuleNotFoundError as err:
        if err.name and (plugin == err.name or plugin.startswith(err.name + ".")):
            raise PluginError(f"--plugin {plugin}: no module named '{err.name}' on the Python path; to load a "
                              f"file, give its path ending in .py") from None
        raise PluginError(describe(plugin, None, err)) from None
    except Exception as err:
        raise PluginError(describe(plugin, None, err)) from None


def describe(plugin: str, path: Optional[str], err: Exception) -> str:
    """One line: what went wrong in which file and line, and what to do."""
    if isinstance(err, SyntaxError):  # IndentationError and TabError too
        return (f"--plugin {plugin}: syntax error at {_short_path(err.filename)}:{err.lineno}: {err.msg}; "
                "fix the file")
    where = _where(err, path)
    if isinstance(err, DuplicateNameError):
        return f"--plugin {plugin} ({where}): {err}"
    if isinstance(err, ModuleNotFoundError):
        return (f"--plugin {plugin}: {where} imports '{err.name}', which is not installed; install the package "
                "that provides it or remove the import")
    message = (str(err).strip().splitlines() or [""])[0]
    return (f"--plugin {plugin}: importing it raised {type(err).__name__}"
            f"{': ' + message if message else ''} at {where}; fix the plugin")


def _where(err: Exception, path: Optional[str]) -> str:
    """``file:line`` of the deepest frame in the plugin's file (else the deepest of any file we can name)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<")]
    own = [f for f in frames if path and os.path.abspath(f.filename) == path]
    frame = (own or frames or [None])[-1]
    return f"{_short_path(frame.filename)}:{frame.lineno}" if frame else "import"


def _short_path(filename: Optional[str]) -> str:
    """The path relative to the working directory when it lies below it (as the user typed it)."""
    if not filename:
        return "?"
    relative = os.path.relpath(filename)
    return filename if relative.startswith("..") else relative
