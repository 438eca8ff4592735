"""``--ema DECAY``: an exponential moving average of the trained network's weights (timm's ModelEmaV2).

After every optimiser step, each parameter of the average becomes ``DECAY * ema + (1 - DECAY) * model``
and each buffer (BatchNorm statistics) is copied from the model. Under DDP every rank follows identical
weights, so every rank keeps the identical average; the copied buffers of a rank's own last batch are
replaced by rank 0's before the average is evaluated, as the model's are.

It is a stateful part of the run (``ema`` in every checkpoint: ``weights``, a state_dict loadable into the
architecture, plus its decay and scores), so ``--resume`` continues it bit for bit. At each evaluation the
average is scored beside the model (``test_ema/*`` in TensorBoard, one log line). ``best.pth`` is still
chosen on the model's own score (DeiT's choice, not timm's): a checkpoint's ``model``, its card, ``acc``,
``--evaluate`` and ``--path_t`` all describe the same weights; the average's best score is recorded as
``ema.best``, and its weights are in every checkpoint.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from engine.distributed import broadcast_buffers


class ModelEma:
    """The moving average of ``model`` (a frozen copy in eval mode), updated by :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"--ema {decay}: the decay must be in (0, 1)")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.last: Dict[str, float] = {}
        self.best = -math.inf

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = decay * ema + (1 - decay) * model`` for every parameter; buffers copied."""
        mine = [p.detach() for p in self.module.parameters()]
        theirs = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(mine, self.decay)
        torch._foreach_add_(mine, theirs, alpha=1.0 - self.decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def report(self, evaluate: Callable, head: Optional[nn.Module], score_key: str, log, epoch: int,
               describe: Callable[[Dict[str, float]], str]) -> Dict[str, float]:
        """Score the average with ``evaluate(model, head)`` (every rank), log it, keep its best."""
        broadcast_buffers(self.module)  # every rank evaluates with rank 0's copied statistics
        self.last = dict(evaluate(self.module, head))
        self.best = max(self.best, self.last[score_key])
        log.scalars("test_ema", self.last, epoch)
        log(f"  EMA {self.decay:g}: test {describe(self.last)} (best {self.best:.2f})")
        return self.last

    def state_dict(self) -> Dict[str, Any]:
        return {"weights": self.module.state_dict(), "decay": self.decay, "last": dict(self.last),
                "best": self.best}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.last, self.best = dict(state.get("last") or {}), float(state.get("best", -math.inf))
