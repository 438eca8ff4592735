"""Exclusive file locks that leave no lock file behind.

Every lock of the project (a run folder, a teacher store, the local teacher zoo, the recorded
download hashes) is an ``flock`` on a small file, released by the kernel even when its holder is
SIGKILLed. Deleting a lock file is the classic race: a process waiting on it would wake up
holding a lock on a file that no longer exists while a newcomer locks a new one. So the holder
unlinks the file while it still holds the lock, and whoever acquires checks that the file it
locked is still the one at the path, and tries again otherwise.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator


def acquire(path: str, blocking: bool = True) -> int:
    """Lock ``path`` (created if needed) and return its descriptor; with ``blocking=False``
    a lock held elsewhere raises BlockingIOError at once."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:  # its holder removed it while we waited
            current = False
        if current:
            return fd
        os.close(fd)


def release(path: str, fd: int) -> None:
    """Remove the lock file, then unlock (in this order: see the module docstring)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def locked(path: str) -> Iterator[int]:
    """Hold an exclusive lock on ``path`` for the block (waiting for other holders)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = acquire(path)
    try:
        yield fd
    finally:
        release(path, fd)
