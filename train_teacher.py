#!/usr/bin/env python
"""Train a teacher (or a vanilla baseline) from scratch. ``python train_teacher.py --help``."""
import sys

from engine.cli import teacher

if __name__ == "__main__":
    sys.exit(teacher())
