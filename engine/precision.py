"""How a step computes: mixed precision (``--amp``), memory format (``--channels_last``) and
``torch.compile`` (``--compile``), behind one small object the trainer calls.

``--amp bf16`` runs the student's and the teacher's forward and the loss under
``torch.autocast`` in bfloat16 (CPU and recent GPUs; no loss scaling needed: bfloat16 has
float32's range). ``--amp fp16`` uses float16 with a ``GradScaler``: the loss is scaled
before backward, steps whose gradients overflow are skipped and the scale adapts; the
scaler's state is part of the checkpoint, so a resumed run continues with the same scale.
The weights, the optimizer and the method's memory banks stay float32.

``--channels_last`` stores the networks' 4-d weights and the input batch in NHWC order,
the layout tensor cores and oneDNN prefer. ``--compile`` compiles the student's forward
(``torch.compile``, the inductor backend); a model that cannot be compiled fails on the
first step with one line saying so (drop ``--compile`` for it).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast, loss scaling and memory format of one run (``amp``: None, 'bf16' or 'fp16')."""

    def __init__(self, amp: Optional[str], device: torch.device, channels_last: bool = False):
        if amp is not None and amp not in DTYPES:
            raise ValueError(f"--amp {amp!r} is not accepted; expected one of {', '.join(DTYPES)}")
        self.amp, self.device, self.channels_last = amp, device, channels_last
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    @property
    def scales_loss(self) -> bool:
        return self.scaler.is_enabled()

    def autocast(self):
        """The context of every forward of a step (student, teacher, loss)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.amp])

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in this run's memory format (in place)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the (scaled, with fp16) loss."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, clip_grad: Optional[float] = None) -> None:
        """The optimizer step (skipped by the fp16 scaler when a gradient overflowed); ``clip_grad``: the
        global norm of the optimiser's gradients clipped to it first (``--clip_grad``), unscaled first
        under fp16 (a non-finite norm leaves the step to the scaler, which skips it)."""
        if clip_grad:
            if self.scales_loss:
                self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        if self.scales_loss:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict() if self.scales_loss else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.scales_loss and state:
            self.scaler.load_state_dict(state)
