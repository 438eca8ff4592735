#!/usr/bin/env python
"""Turn finished run folders into the results tables: ``distillers-collect`` from a checkout (engine/results/cli.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.results.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
