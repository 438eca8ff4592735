"""What a run reports: rank-0 printing and TensorBoard scalars, and the running sums of an
epoch's train metrics (kept in checkpoints, so a resumed epoch reports over all its batches)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from engine.distributed import DistInfo, all_reduce_sum


class Logger:
    """Rank-0 printing and TensorBoard scalars; silent on other ranks.

    The event file is opened at the first scalar, so a run that fails before it
    leaves no ``tb/`` folder; a resumed run purges events written after its checkpoint.
    """

    def __init__(self, info: DistInfo, run_dir: Optional[str], tensorboard: bool):
        self.info = info
        self.run_dir, self.tensorboard = run_dir, tensorboard
        self.writer = None
        self.purge_step: Optional[int] = None

    def __call__(self, *msg: Any) -> None:
        if self.info.is_main:
            print(*msg, flush=True)

    def scalars(self, prefix: str, values: Dict[str, float], step: int) -> None:
        if not (self.info.is_main and self.run_dir and self.tensorboard):
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(self.run_dir, "tb"), purge_step=self.purge_step)
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


class EpochTotals:
    """Running sums of one epoch's train metrics, kept in checkpoints so that an epoch
    resumed in the middle still reports over all of its batches.

    Values given as tensors (the loss, its terms, the correct count) are summed on their
    device in float64, so a step never waits for the GPU; :attr:`values` reads them (at log
    points, checkpoints and the end of the epoch). The sums are those of Python floats, bit
    for bit (float64 additions in the same order), so a resumed epoch reports the same.
    """

    def __init__(self, values: Optional[Dict[str, float]] = None):
        self._sums: Dict[str, Any] = dict(values or {})

    @property
    def values(self) -> Dict[str, float]:
        return {k: float(v) for k, v in self._sums.items()}

    def add(self, n: int, correct: Any, loss: Any, terms: Dict[str, Any], seconds: float,
            waited: float = 0.0) -> None:
        """One step: ``seconds`` from the end of the previous step, ``waited`` of them for the batch."""
        for key, value in (("seen", n), ("correct", _float64(correct)), ("seconds", seconds), ("waited", waited),
                           ("loss", _float64(loss) * n)):
            self._sums[key] = self._sums.get(key, 0.0) + value
        for key, value in terms.items():
            self._sums["term/" + key] = self._sums.get("term/" + key, 0.0) + _float64(value) * n

    def metrics(self, train_accuracy: bool) -> Dict[str, float]:
        """Per-sample means over every rank, top-1 if the task has one, and images per second."""
        values = self.values
        keys = sorted(values)
        totals = all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64))
        summed = dict(zip(keys, totals.tolist()))
        seen = max(summed.get("seen", 0.0), 1.0)
        out = {k[len("term/"):]: v / seen for k, v in summed.items() if k.startswith("term/")}
        out["loss"] = summed.get("loss", 0.0) / seen
        if train_accuracy:
            out["top1"] = 100.0 * summed.get("correct", 0.0) / seen
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        out["images_per_s"] = summed.get("seen", 0.0) / max(summed.get("seconds", 0.0) / world, 1e-9)
        out["data_wait"] = summed.get("waited", 0.0) / max(summed.get("seconds", 0.0), 1e-9)
        return out


def _float64(value: Any) -> Any:
    """A tensor as a float64 scalar on its device (a Python number as is): the sums' precision."""
    return value.detach().reshape(()).to(torch.float64) if isinstance(value, torch.Tensor) else value
