"""``--plugin``: user modules imported before the command line is built, so that their
methods, models and datasets (and the methods' options) are known to it."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Sequence


def load_plugins(plugins: Sequence[str]) -> None:
    """Import user modules (dotted names or .py files) once each, so their registrations take effect."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            if not os.path.isfile(plugin):
                raise FileNotFoundError(f"--plugin {plugin}: no such file")
            name = "distillers_plugin_" + os.path.splitext(os.path.basename(plugin))[0]
            if name in sys.modules and getattr(sys.modules[name], "__file__", None) == os.path.abspath(plugin):
                continue
            spec = importlib.util.spec_from_file_location(name, os.path.abspath(plugin))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(plugin)
