"""Interrupts that never leave a half-applied step: SIGINT and SIGTERM are deferred.

A signal handler only records the request; the trainer looks at it at safe points
(after an optimizer step, after an epoch's evaluation and checkpoint), where the
weights, buffers, scheduler and RNG states describe one consistent moment. There it
writes ``latest.pth`` and stops. Under DDP every rank must stop at the same step, so
the ranks agree on the request with one small all-reduce (on a CPU ``gloo`` group, so
a GPU run never synchronises its stream for it). A second signal of the same kind
while the first is pending exits at once (KeyboardInterrupt / SystemExit) without
writing: the last checkpoint on disk stays the valid one. A repeated SIGTERM is not
escalated (schedulers and launchers may deliver it to every process more than once).

``fault_point`` is the test hook: with ``DISTILLERS_FAULT=SIGNAL:PHASE[:EPOCH[:STEP[:RANK[:TARGET]]]]``
in the environment, the process sends itself ``SIGNAL`` when it reaches ``PHASE`` (e.g.
``SIGTERM:train_step:2:3`` after the 3rd step of epoch 2; ``SIGKILL:save`` while a
checkpoint is half written); TARGET ``parent`` signals its parent instead (the launcher of
spawned ranks, as a scheduler would), ``group`` its whole process group (what SLURM's
``scancel`` and Kubernetes do: DataLoader workers included). The tests use it to interrupt real child processes at
chosen moments instead of sleeping and hoping.
"""
from __future__ import annotations

import os
import signal
from typing import Optional

import torch
import torch.distributed as dist

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """What the signal handlers recorded: the first signal's name, or None."""

    def __init__(self):
        self.signal: Optional[str] = None
        self._previous = {}
        self._group = None

    # ------------------------------------------------------------ handlers
    def install(self) -> "StopRequest":
        """Defer SIGINT/SIGTERM from now on (main thread only; elsewhere a no-op)."""
        try:
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread of the main interpreter
            self._previous = {}
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            if signum == signal.SIGINT and self.signal == name:  # Ctrl-C twice: the user means now
                raise KeyboardInterrupt
            return
        self.signal = name

    def __enter__(self) -> "StopRequest":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    # ------------------------------------------------------------ agreement
    def agreed(self) -> bool:
        """True on every rank as soon as any rank was asked to stop (a collective under DDP)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.signal is not None
        if self._group is None:
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        # the signal's number, so every rank stops for the same reason (SIGTERM outranks SIGINT)
        mine = int(getattr(signal, self.signal)) if self.signal in signal.Signals.__members__ else 0
        flag = torch.tensor([mine], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        if flag.item() and self.signal is None:
            self.signal = signal.Signals(int(flag.item())).name
        return bool(flag.item())


class RunInterrupted(Exception):
    """The run stopped at a safe point on request; ``latest.pth`` holds that point."""

    def __init__(self, message: str, signal_name: Optional[str]):
        super().__init__(message)
        self.exit_code = 128 + int(getattr(signal, signal_name or "", signal.SIGINT))


#: The process's one stop request (handlers are per process anyway).
STOP = StopRequest()


def fault_point(phase: str, epoch: Optional[int] = None, step: Optional[int] = None,
                rank: int = 0) -> None:
    """Test hook: signal this process here if ``DISTILLERS_FAULT`` names this moment."""
    spec = os.environ.get("DISTILLERS_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    name, where = parts[0], parts[1:]
    wanted = (where + [None] * 5)[:5]
    if wanted[0] != phase:
        return
    for want, have in zip(wanted[1:4], (epoch, step, rank)):
        if want not in (None, "", "*") and str(want) != str(have):
            return
    os.environ.pop("DISTILLERS_FAULT")  # once per process
    if wanted[4] == "group":
        os.killpg(os.getpgid(0), getattr(signal, name))
    else:
        os.kill(os.getppid() if wanted[4] == "parent" else os.getpid(), getattr(signal, name))
