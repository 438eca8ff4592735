"""A non-finite loss, noticed on the device and reported at the next check.

Why: asking ``if torch.isfinite(loss)`` every step makes the host wait for the GPU every
step. Instead each step records, on the loss's device, whether its loss was finite and the
terms of the first step that was not; the trainer reads that record at a check (every
step on the CPU, where reading costs nothing; every ``every`` steps on a GPU; and always
before a checkpoint is written), so a bad step never reaches a checkpoint. On the CPU the
check runs before the optimizer step, so the bad step does not reach the weights either.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch


class NonFiniteLoss(ValueError):
    """Raised by :meth:`FiniteWatch.check`; ``where`` and ``terms`` say which step and what."""

    def __init__(self, loss: float, where: str, terms: Dict[str, float], steps_after: int):
        self.loss, self.where, self.terms, self.steps_after = loss, where, terms, steps_after
        super().__init__(f"the loss is {loss} at {where}")


class FiniteWatch:
    """Device-side record of the first non-finite loss since the last :meth:`check`."""

    def __init__(self, every: int = 1):
        self.every = max(1, int(every))
        self._steps: List[Tuple[str, Tuple[str, ...]]] = []  # (where, term names) of each step since the check
        self._first_bad: Optional[torch.Tensor] = None  # index into _steps, -1 when all finite
        self._bad_values: Optional[torch.Tensor] = None  # [loss, *terms] of that step

    def record(self, loss: torch.Tensor, terms: Dict[str, torch.Tensor], where: str) -> None:
        """Note this step's loss without reading it on the host."""
        names = tuple(k for k in terms if k != "logits")
        values = torch.stack([loss.detach().float().reshape(())]
                             + [terms[k].detach().float().reshape(()) for k in names])
        if self._bad_values is not None and self._bad_values.shape != values.shape:
            self.check()  # another stage's terms: settle the record so far first
        step = len(self._steps)
        self._steps.append((where, names))
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=values.device)
            self._bad_values = torch.zeros_like(values)
        first = ~torch.isfinite(values[0]) & (self._first_bad < 0)
        self._first_bad = torch.where(first, torch.full_like(self._first_bad, step), self._first_bad)
        self._bad_values = torch.where(first, values, self._bad_values)

    def due(self) -> bool:
        """Whether the next check is due (every ``every`` recorded steps)."""
        return len(self._steps) >= self.every

    def check(self) -> None:
        """Read the record (one host sync) and start a new one; raise :class:`NonFiniteLoss` if a
        recorded loss was not finite."""
        if self._first_bad is None:
            self._steps.clear()
            return
        first = int(self._first_bad)
        steps, values = self._steps, self._bad_values
        self._steps, self._first_bad, self._bad_values = [], None, None
        if first < 0:
            return
        where, names = steps[first]
        numbers = values.tolist()
        raise NonFiniteLoss(numbers[0], where, dict(zip(names, numbers[1:])), len(steps) - 1 - first)
