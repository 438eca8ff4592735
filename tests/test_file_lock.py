"""engine.file_lock: one holder at a time, and no lock file left once every holder is done."""
import os
import threading

import pytest

from engine import file_lock


def test_holders_never_overlap_and_the_file_goes_away(tmp_path):
    """Threads stand in for processes (each acquire opens its own descriptor, so flock
    separates them): removing the file on release must not let two holders in at once."""
    path = str(tmp_path / "x.lock")
    inside, overlaps, rounds = [0], [], 300
    guard = threading.Lock()

    def worker():
        for _ in range(rounds):
            with file_lock.locked(path):
                with guard:
                    inside[0] += 1
                    if inside[0] > 1:
                        overlaps.append(inside[0])
                os.sched_yield()
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not overlaps
    assert not os.path.exists(path)


def test_a_held_lock_refuses_a_non_blocking_acquire(tmp_path):
    path = str(tmp_path / "run.lock")
    fd = file_lock.acquire(path)
    with pytest.raises(BlockingIOError):
        file_lock.acquire(path, blocking=False)
    file_lock.release(path, fd)
    assert not os.path.exists(path)
    file_lock.release(path, file_lock.acquire(path, blocking=False))
