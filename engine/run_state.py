"""Where a run is, and the stateful parts a checkpoint holds: one list that saving and resuming walk.

:class:`RunState` is the run's position (epoch, step, phase, the init stage's progress, the best
and last scores, the epoch's running sums). A :class:`Part` is one stateful piece of the run
under its checkpoint key (``model``, ``optimizer``, ``scheduler``, ``scaler``, ``distiller``):
:meth:`engine.assembly.Run.parts` lists them, :func:`engine.resume.snapshot` saves each, and
:func:`engine.resume.restore` loads each back. Per-rank state (RNG streams, running sums, the
buffers a rank holds alone) is gathered by the snapshot separately.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, NamedTuple

from engine.run_log import EpochTotals


@dataclass
class RunState:
    """The run's position; ``epoch``/``step`` name the next batch to train (1-based epoch)."""

    epoch: int = 1
    step: int = 0            # batches of that epoch already done (a mid-epoch resume)
    phase: str = "main"      # "init" while an initialisation stage (AB, FT, FSP) runs
    init_done: int = 0       # initialisation epochs completed
    best_acc: float = 0.0
    last_acc: float = math.nan  # score of the last evaluation
    last_top5: float = math.nan  # its top-5, where the task has one (the checkpoint's card records it)
    totals: EpochTotals = field(default_factory=EpochTotals)

    def start_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` starts at its first batch with fresh sums."""
        self.epoch, self.step, self.totals = epoch, 0, EpochTotals()

    def record(self) -> Dict[str, Any]:
        """The counters as checkpoint keys (the running sums are per rank: see the snapshot)."""
        return {"epoch": self.epoch, "step": self.step, "phase": self.phase, "init_done": self.init_done,
                "best_acc": self.best_acc, "acc": self.last_acc, "top5": self.last_top5}

    @classmethod
    def from_record(cls, state: Dict[str, Any], totals: Dict[str, float]) -> "RunState":
        return cls(epoch=state["epoch"], step=state["step"], phase=state["phase"], init_done=state["init_done"],
                   best_acc=state["best_acc"], last_acc=state.get("acc", math.nan),
                   last_top5=state.get("top5", math.nan), totals=EpochTotals(totals))


class Part(NamedTuple):
    """One stateful piece of a run: its checkpoint key, how to read its state and how to put it back."""

    key: str
    state_dict: Callable[[], Dict[str, Any]]
    load_state_dict: Callable[[Dict[str, Any]], None]
