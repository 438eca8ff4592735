#!/usr/bin/env python
"""Distil a teacher into a student: ``python train_student.py --distill <method> --help``."""
import sys

from engine.cli import student

if __name__ == "__main__":
    sys.exit(student())
