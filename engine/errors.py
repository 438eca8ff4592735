"""The errors a run reports as one ``error:`` line (exit code 2) instead of a traceback."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad flag, config key or flag combination, reported before training starts."""


class TrainingError(ValueError):
    """The run cannot go on (a non-finite loss); the message says where and what to do."""
