"""The teacher store's folder: its files, their creation under a lock, and the checks on opening.

Layout of a store directory (format 2)::

    meta.json         format, key, num_samples, num_views, storage dtype, {tap: shape}
    <tap>.bin         values, [num_samples, num_views, *shape] (float32 or float16)
    <tap>.sum         uint32 [num_samples, num_views]: CRC32 of each entry's bytes, started from its position
    <tap>.filled      uint8 [num_samples, num_views]: 1 once that entry's values and checksum are written

Files are sparse (truncated to size, never zero-filled), so a lazily filled store takes disk
only for what it holds. Every error here is one line naming the folder and what to do.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import shutil
import tempfile
from typing import Any, Dict, Tuple

import numpy as np
import torch

from engine import file_lock

FORMAT = "distillers/teacher-store/2"
#: Formats of earlier versions: their entries carry no checksum, so they cannot be verified.
OLD_FORMATS = {"distillers/teacher-store/1": "format 1, without per-entry checksums"}
META = "meta.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
KINDS = {"values": ".bin", "sums": ".sum", "filled": ".filled"}
REMEDY = "delete it or pass another --teacher_store"
SPACE_REMEDY = "pass --teacher_store DIR (on another disk) or --no_teacher_store"


class StoreError(ValueError):
    """A teacher store that does not fit this run, is corrupt or partial, or cannot be written."""


class StoreSpaceError(StoreError):
    """The store's file system is full or a file-size limit is reached: the store cannot grow."""


def json_roundtrip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so comparisons are fair."""
    return json.loads(json.dumps(value, sort_keys=True))


def np_dtype(name: str):
    return {"float32": np.float32, "float16": np.float16}[name]


def tap_files(directory: str, tap: str, prefix: str = "") -> Dict[str, str]:
    """{kind: path} of ``tap``'s values, checksums and filled bitmap."""
    return {kind: os.path.join(directory, f"{prefix}{tap}{suffix}") for kind, suffix in KINDS.items()}


def file_sizes(meta: Dict[str, Any], tap: str) -> Dict[str, int]:
    """{kind: bytes} of ``tap``'s files."""
    entries = meta["num_samples"] * meta["num_views"]
    per_entry = math.prod(meta["taps"][tap]) * np.dtype(np_dtype(meta["dtype"])).itemsize
    return {"values": entries * per_entry, "sums": entries * 4, "filled": entries}


def store_bytes(meta: Dict[str, Any]) -> int:
    """Bytes the store takes once every entry of every tap is written."""
    return sum(sum(file_sizes(meta, tap).values()) for tap in meta["taps"])


def space_error(directory: str, err: OSError, needed: int, doing: str) -> StoreError:
    """One line for an ``OSError`` while creating or growing the store: a :class:`StoreSpaceError`
    for a full disk, a quota or a file-size limit (EFBIG: ``ulimit -f``), else a :class:`StoreError`."""
    where = f"needs up to {_size(needed)} at {directory}, {_size(_free_bytes(directory))} free"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreSpaceError(f"teacher store '{directory}': no space left while {doing} ({where}); "
                               f"free space, {SPACE_REMEDY}")
    if err.errno == errno.EFBIG:
        return StoreSpaceError(f"teacher store '{directory}': a file would exceed this process's file-size limit "
                               f"while {doing} ({where}); raise the limit (ulimit -f), {SPACE_REMEDY}")
    return StoreError(f"teacher store '{directory}': {err.strerror or err} while {doing}; {SPACE_REMEDY}")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _free_bytes(directory: str) -> int:
    path = directory
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        stat = os.statvfs(path or ".")
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def locked(directory: str):
    """Hold an exclusive lock on ``<directory>.lock`` for the block (removed on release)."""
    return file_lock.locked(directory + ".lock")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sparse_file(path: str, size: int) -> None:
    """A file of ``size`` bytes that reads as zeros and occupies no blocks yet."""
    with open(path, "wb") as fh:
        fh.truncate(size)


def _write_tap_files(directory: str, meta: Dict[str, Any], tap: str, prefix: str = "") -> None:
    sizes = file_sizes(meta, tap)
    for kind, path in tap_files(directory, tap, prefix).items():
        _sparse_file(path, sizes[kind])


def write_meta(directory: str, meta: Dict[str, Any]) -> None:
    """meta.json via a temporary file and a rename: readers see the old or the new one."""
    tmp = os.path.join(directory, f".{META}.tmp")
    with open(tmp, "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(directory, META))


def create(directory: str, meta: Dict[str, Any]) -> None:
    """Build the whole store under a temporary name beside ``directory``, then rename it
    into place, so no process ever opens a half-made store. Called under the lock, which
    also makes leftovers of a creator that died safe to remove."""
    parent, name = os.path.split(directory)
    for stale in glob.glob(os.path.join(parent, glob.escape(name) + ".tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=name + ".tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the store from the user's group
        for tap in meta["taps"]:
            _write_tap_files(tmp, meta, tap)
        write_meta(tmp, meta)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def add_tap(directory: str, meta: Dict[str, Any], tap: str, shape: Tuple[int, ...]) -> Dict[str, Any]:
    """New empty files for ``tap``, then the meta that lists it (under the lock). A crash
    in between leaves unlisted files that the next attempt replaces."""
    meta = {**meta, "taps": {**meta["taps"], tap: list(shape)}}
    try:
        _write_tap_files(directory, meta, tap, prefix=".tmp-")
    except BaseException:
        for path in tap_files(directory, tap, ".tmp-").values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    for kind, path in tap_files(directory, tap).items():
        os.replace(tap_files(directory, tap, ".tmp-")[kind], path)
    write_meta(directory, meta)
    return meta


def read_meta(directory: str) -> Dict[str, Any]:
    """The store's meta.json, checked to be one this version reads."""
    path = os.path.join(directory, META)
    if not os.path.isdir(directory):
        raise StoreError(f"teacher store '{directory}' exists but is not a folder: {REMEDY}")
    if not os.path.isfile(path):
        raise StoreError(f"teacher store '{directory}' is partial or not a teacher store: it has no {META}; {REMEDY}")
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        raise StoreError(f"teacher store '{directory}' is corrupt: cannot read {META} ({err}); {REMEDY}") from None
    if isinstance(meta, dict) and meta.get("format") in OLD_FORMATS:
        raise StoreError(f"teacher store '{directory}' was made by an earlier version of distillers "
                         f"({OLD_FORMATS[meta['format']]}), so its entries cannot be verified: {REMEDY}")
    if isinstance(meta, dict) and "format" in meta and meta["format"] != FORMAT:
        raise StoreError(f"teacher store '{directory}' has format {meta['format']!r}, not {FORMAT!r} "
                         f"(made by another version of distillers?): {REMEDY}")
    missing = [f for f in ("format", "key", "num_samples", "num_views", "dtype", "taps")
               if not isinstance(meta, dict) or f not in meta]
    if missing:
        raise StoreError(f"teacher store '{directory}' is corrupt: {META} lacks {', '.join(missing)}; {REMEDY}")
    return meta


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(stored: Any, wanted: Any, field: str):
    """``field: stored X vs this run Y`` for every leaf where two JSON values differ."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for name in sorted(set(stored) | set(wanted)):
            yield from _differences(stored.get(name), wanted.get(name), f"{field}.{name}" if field else name)
    elif stored != wanted:
        yield f"{field}: stored {_short(stored)} vs this run {_short(wanted)}"


def check_identity(directory: str, meta: Dict[str, Any], wanted: Dict[str, Any]) -> None:
    """The store was made for this run's key, size and dtype, else say which fields differ."""
    stored = {field: meta[field] for field in wanted}
    diffs = list(_differences(stored, wanted, ""))
    if diffs:
        raise StoreError(f"teacher store '{directory}' was made for another setting ({'; '.join(diffs)}): {REMEDY}")


def check_files(directory: str, meta: Dict[str, Any]) -> None:
    """Every listed tap has its files at their exact sizes (else the store is partial or truncated)."""
    for tap in meta["taps"]:
        sizes = file_sizes(meta, tap)
        for kind, path in tap_files(directory, tap).items():
            if not os.path.isfile(path):
                raise StoreError(f"teacher store '{directory}' is partial: '{os.path.basename(path)}' of tap "
                                 f"'{tap}' is missing; {REMEDY}")
            actual = os.path.getsize(path)
            if actual != sizes[kind]:
                raise StoreError(f"teacher store '{directory}' is corrupt: '{os.path.basename(path)}' is {actual} "
                                 f"bytes, expected {sizes[kind]} (truncated?); {REMEDY}")
