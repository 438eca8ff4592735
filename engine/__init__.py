"""The training engine: configuration, launch, checkpoints and the one trainer loop."""

from engine import metric_learning_task, tasks  # noqa: E402,F401  (register the tasks: every registry complete on import)
