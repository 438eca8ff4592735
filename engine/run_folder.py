"""One run per run folder: a lock for the run's life, and no silent overwrite.

Two runs writing one folder mix their checkpoints and TensorBoard events without
anyone noticing. :class:`RunFolder` takes ``<run>/.lock`` with ``flock`` (released by
the kernel even when the holder is SIGKILLed) and writes the holder's pid, host and
start time into it, so a refusal can say who holds the folder. A lock file left by a
dead process (its holder line is still in the file, yet the lock is free) is
taken over with a message; a clean exit removes it (see :mod:`engine.file_lock`).
A fresh run refuses a folder that already holds a run unless ``--resume`` continues
it or ``--overwrite`` starts it over.
A folder this run created is removed again if the run ends before its first
checkpoint, so failed starts leave nothing behind (nor in TensorBoard).
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import time
from typing import Callable, Optional

from engine import file_lock
from engine.errors import ConfigError

LOCK = ".lock"
#: What a run writes into its folder (``--overwrite`` removes exactly these).
RUN_FILES = ("latest.pth", "best.pth", "tb")


class RunFolder:
    """The run folder of this process (rank 0 only), locked while the run lives."""

    def __init__(self, path: str, log: Callable[[str], None] = print):
        self.path = path
        self.log = log
        self.created = False
        self._fd: Optional[int] = None

    # ---------------------------------------------------------------- checks
    @staticmethod
    def check_writable(path: str) -> None:
        """Fail early, naming the folder, if the run folder cannot be created or written."""
        probe = os.path.abspath(path)
        while not os.path.exists(probe):
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        if not os.path.isdir(probe):
            raise ConfigError(f"run folder '{path}': '{probe}' exists and is not a folder "
                              "(choose another --save_dir / --save_root)")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"run folder '{path}': no permission to write in '{probe}' "
                              "(choose another --save_dir / --save_root)")

    def holds_run(self) -> bool:
        return os.path.isfile(os.path.join(self.path, "latest.pth"))

    # ------------------------------------------------------------------ lock
    def acquire(self) -> None:
        """Create (if needed) and lock the folder; refuse if a live run holds it."""
        self.check_writable(self.path)
        self.created = not os.path.isdir(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create run folder '{self.path}': {err.strerror}") from None
        lock_path = os.path.join(self.path, LOCK)
        try:
            fd = file_lock.acquire(lock_path, blocking=False)
        except BlockingIOError:
            holder = _read_file(lock_path)
            raise ConfigError(f"run folder '{self.path}' is in use by another run ({holder or 'unknown holder'}); "
                              "wait for it, or give this run another --save_dir / --trial / --seed") from None
        previous = _read(fd)
        if previous:
            self.log(f"taking over the lock of a run that is no longer alive ({previous})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        os.fsync(fd)
        self._fd = fd
        self._remove_partial_writes()

    def release(self, keep: bool = True) -> None:
        """Unlock; remove the folder when this run created it and wrote no checkpoint."""
        if self._fd is None:
            return
        file_lock.release(os.path.join(self.path, LOCK), self._fd)
        self._fd = None
        if not keep and self.created and not self.holds_run():
            shutil.rmtree(self.path, ignore_errors=True)

    def _remove_partial_writes(self) -> None:
        """Temporary checkpoint files of an interrupted write (we hold the lock: none is live)."""
        for tmp in glob.glob(os.path.join(self.path, ".tmp-*.pth")):
            os.unlink(tmp)
            self.log(f"removed the partial checkpoint write {tmp} left by an interrupted run")

    # ----------------------------------------------------------- fresh start
    def start_over(self) -> None:
        """``--overwrite``: remove what an earlier run wrote here (the lock stays)."""
        for name in RUN_FILES:
            target = os.path.join(self.path, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.unlink(target)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(512).decode(errors="replace").strip()
    except OSError:
        return ""


def check_run_folder(run_dir: str, resume, overwrite: bool) -> None:
    """Refuse, before any data loader starts, a folder that cannot take this run."""
    RunFolder.check_writable(run_dir)
    latest, best = (os.path.isfile(os.path.join(run_dir, name)) for name in ("latest.pth", "best.pth"))
    if (latest or best) and not resume and not overwrite:
        raise ConfigError(f"run folder '{run_dir}' already holds a run ({'latest.pth' if latest else 'best.pth'}): "
                          "continue it with --resume, start it over with --overwrite, or choose another "
                          "--save_dir / --trial")
    if resume == "auto" and best and not latest:  # starting afresh would replace best.pth
        path = os.path.join(run_dir, "best.pth")
        raise ConfigError(f"--resume: '{run_dir}' holds best.pth but no latest.pth, where a run continues from: "
                          f"continue from the best epoch with --resume {path}, or start over with --overwrite")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run, or start it over")


def run_name(args, kind: str, teacher_arch: str, weights) -> str:
    """The default run folder's name: architecture(s), dataset, method, weights, trial (and seed)."""
    clean = lambda s: str(s).replace(":", "-").replace("/", "-")  # noqa: E731
    seed = "" if str(args.seed) == str(args.trial) else f"_seed_{args.seed}"  # two seeds, two folders
    if kind == "teacher":
        return clean(f"{args.model}_{args.dataset}_lr_{args.learning_rate}_decay_{args.weight_decay}"
                     f"_trial_{args.trial}{seed}")
    return clean(f"S_{args.model_s}_T_{teacher_arch or 'teacher'}_{args.dataset}_{args.distill}"
                 f"_r_{weights['gamma']}_a_{weights['alpha']}_b_{weights['beta']}_trial_{args.trial}{seed}")
