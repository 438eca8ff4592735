"""The neutral core: the generic registry and the tap-point declarations.

It imports no method, no model and no dataset, so that ``models/`` and ``data/`` can
register themselves and declare their taps without loading anything else:
models/ and data/ import only ``core``; ``distillers`` imports ``core``; ``engine``
imports everything; the command lines import ``engine`` (``tests/test_imports.py``).
"""
