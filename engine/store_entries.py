"""The teacher store's entries: verified reads, and writes that can fail with an error, never a signal.

Why verified: a value changed on disk (a flipped bit, a zeroed block, a torn write) must never
reach a loss. Each entry carries a CRC32 of its bytes, started from its position, so a row
also cannot be served from another entry's place; a read recomputes it, and an entry that
mismatches or is not finite counts as corrupt: a miss, recomputed by the teacher and
rewritten (:attr:`TeacherStore.corrupt_recomputed` counts them).

Why ``pwrite``: a write through a memory map to a hole on a full file system raises SIGBUS
and kills the process without a word. Entries are read through read-only ``MAP_SHARED``
memmaps and written with ``os.pwrite`` on the same files (one page cache: a reader sees a
write at once), so a full disk or a file-size limit is an ``OSError`` and then a
:class:`~engine.store_files.StoreSpaceError` of one line. Order per tap: values, checksums,
filled bit; so a filled bit never sits over unwritten values once its pages reach the disk
(SIGKILL included), and an entry torn by a power loss or by two writers fails its checksum.
"""
from __future__ import annotations

import glob
import os
import re
import zlib
from typing import Any, Dict, Iterator, Sequence, Tuple

import numpy as np
import torch

from engine import store_files as sf

_TAP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")  # a file name on every filesystem we use


def checksums(rows: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """uint32 CRC32 of each row's bytes, started from its entry's flat position (index * views + view)."""
    rows = np.ascontiguousarray(rows).reshape(len(rows), -1)
    return np.fromiter((zlib.crc32(row, int(pos) & 0xFFFFFFFF) for row, pos in zip(rows, flat)),
                       np.uint32, len(rows))


def _runs(flat: np.ndarray) -> Iterator[Tuple[int, int]]:
    """(start, stop) slices of sorted ``flat`` whose positions are consecutive: one write each."""
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    edges = [0, *breaks.tolist(), len(flat)]
    return zip(edges[:-1], edges[1:])


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


class TeacherStore:
    """Per-tap values, checksums and filled bitmaps of one store directory (engine/store_files.py).

    Build it with :meth:`open`. ``lookup`` and ``write`` take (index, view) pairs as tensors
    on any device; the memmaps are indexed on the host with numpy.
    """

    def __init__(self, directory: str, meta: Dict[str, Any]):
        self.directory, self.meta = directory, meta
        self.num_samples, self.num_views = meta["num_samples"], meta["num_views"]
        self.dtype = sf.DTYPES[meta["dtype"]]
        self.shapes = {tap: tuple(shape) for tap, shape in meta["taps"].items()}
        self._values: Dict[str, np.memmap] = {}
        self._sums: Dict[str, np.memmap] = {}
        self._filled: Dict[str, np.memmap] = {}
        self._fds: Dict[str, Dict[str, int]] = {}
        grid = (self.num_samples, self.num_views)
        for tap, shape in self.shapes.items():
            files = sf.tap_files(directory, tap)
            self._values[tap] = np.memmap(files["values"], sf.np_dtype(meta["dtype"]), "r", shape=grid + shape)
            self._sums[tap] = np.memmap(files["sums"], np.uint32, "r", shape=grid)
            self._filled[tap] = np.memmap(files["filled"], np.uint8, "r", shape=grid)
            self._fds[tap] = {kind: os.open(path, os.O_RDWR) for kind, path in files.items()}
        self.reset_counters()

    @classmethod
    def open(cls, directory: str, key: Dict[str, Any], num_samples: int, num_views: int,
             shapes: Dict[str, Tuple[int, ...]], dtype: torch.dtype = torch.float32) -> "TeacherStore":
        """Create the store for ``key`` or open the existing one, adding taps it lacks.

        An existing store made for another key, size, dtype or format, or one that is corrupt
        or partial, is a :class:`StoreError`: never silently used or replaced. A full disk or
        a file-size limit while creating it is a :class:`StoreSpaceError`.
        """
        dtype_name = next((n for n, d in sf.DTYPES.items() if d == dtype), None)
        if dtype_name is None:
            raise ValueError(f"a teacher store holds {' or '.join(sf.DTYPES)}, not {dtype}")
        if "dtype" in key and key["dtype"] != dtype_name:
            raise ValueError(f"the key says dtype {key['dtype']!r} but the store is opened as {dtype_name!r}")
        shapes = {tap: tuple(int(s) for s in shape) for tap, shape in shapes.items()}
        for tap in shapes:
            if not _TAP_NAME.match(tap):
                raise ValueError(f"tap name {tap!r} cannot name a store file (letters, digits, '_', '.', ':', '-')")
        directory = os.path.abspath(directory)
        wanted = {"format": sf.FORMAT, "key": sf.json_roundtrip(key), "num_samples": int(num_samples),
                  "num_views": int(num_views), "dtype": dtype_name}
        meta = {**wanted, "taps": {tap: list(s) for tap, s in shapes.items()}}
        doing = "opening the store" if os.path.exists(directory) else "creating the store"
        try:
            with sf.locked(directory):
                if not os.path.exists(directory):
                    doing = "creating the store"
                    sf.create(directory, meta)
                meta = sf.read_meta(directory)
                sf.check_identity(directory, meta, wanted)
                sf.check_files(directory, meta)
                for tap, shape in shapes.items():
                    recorded = meta["taps"].get(tap)
                    if recorded is None:
                        meta = sf.add_tap(directory, meta, tap, shape)
                    elif tuple(recorded) != shape:
                        raise sf.StoreError(f"teacher store '{directory}': tap '{tap}' is stored with shape "
                                            f"{tuple(recorded)} vs {shape} in this run: {sf.REMEDY}")
            return cls(directory, meta)
        except OSError as err:
            full = {**meta, "taps": {**meta["taps"], **{t: list(s) for t, s in shapes.items()}}}
            raise sf.space_error(directory, err, sf.store_bytes(full), doing) from None

    # ------------------------------------------------------------ reading
    def filled(self, taps: Sequence[str], index, view) -> torch.Tensor:
        """Bool [B] on the host: every tap in ``taps`` holds a verified value for that (index, view).
        Not counted in the hit rate (the fill script uses it to skip done entries); corrupt
        entries are counted in :attr:`corrupt_recomputed` (the caller recomputes them)."""
        idx, vw = self._host(index, view)
        return torch.from_numpy(self._verified(taps, idx, vw)[0])

    def lookup(self, taps: Sequence[str], index, view) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(hit [B], {tap: float32 [B, *shape]}) on ``index``'s device.

        ``hit`` is true where every requested tap holds a verified, finite value; rows of
        misses (not yet written, or corrupt) hold anything and must be recomputed.
        """
        idx, vw = self._host(index, view)
        hit, rows = self._verified(taps, idx, vw)
        self.lookups += len(idx)
        self.hits += int(np.count_nonzero(hit))
        device = torch.as_tensor(index).device
        values = {tap: torch.from_numpy(rows[tap]).float().to(device) for tap in taps}
        return torch.from_numpy(hit).to(device), values

    def _verified(self, taps: Sequence[str], idx: np.ndarray, vw: np.ndarray):
        """(usable [B], {tap: stored rows}); counts the filled entries that fail a check."""
        usable, corrupt, rows = np.ones(len(idx), dtype=bool), np.zeros(len(idx), dtype=bool), {}
        flat = idx * self.num_views + vw
        for tap in taps:
            filled = self._bitmap(tap)[idx, vw] != 0  # first: its values and checksum were written before it
            rows[tap] = np.asarray(self._values[tap][idx, vw])
            ok = self._intact(tap, filled, rows[tap], idx, vw, flat)
            usable &= ok
            corrupt |= filled & ~ok
        self.corrupt_recomputed += int(np.count_nonzero(corrupt))
        return usable, rows

    def _intact(self, tap: str, filled: np.ndarray, rows: np.ndarray, idx, vw, flat) -> np.ndarray:
        """Filled, matching its checksum and finite: an entry that may be served."""
        ok = filled.copy()
        where = np.flatnonzero(filled)
        if where.size:
            sums = np.asarray(self._sums[tap][idx[where], vw[where]])
            good = checksums(rows[where], flat[where]) == sums
            ok[where] = good & np.isfinite(rows[where].reshape(where.size, -1)).all(1)
        return ok

    # ------------------------------------------------------------ writing
    def write(self, index, view, values: Dict[str, torch.Tensor]) -> None:
        """Store ``values[tap]`` [B, *shape] of the entries (index, view) that hold no verified value.

        A verified entry is left as it is (two ranks writing one entry: the first one wins);
        a corrupt one is rewritten; a non-finite row is not stored. Values, then checksums,
        then filled bits. A full disk or a file-size limit is a :class:`StoreSpaceError`.
        """
        idx, vw = self._host(index, view)
        flat = idx * self.num_views + vw
        _, first = np.unique(flat, return_index=True)  # an entry twice in one batch is written once
        for tap, value in values.items():
            self._bitmap(tap)
            rows = np.asarray(value.detach().to("cpu", self.dtype).numpy())
            if rows.shape != (len(idx),) + self.shapes[tap]:
                raise ValueError(f"tap '{tap}': got values {tuple(rows.shape)} for {len(idx)} entries of "
                                 f"shape {self.shapes[tap]}")
            filled = self._filled[tap][idx[first], vw[first]] != 0
            stored = np.asarray(self._values[tap][idx[first], vw[first]])
            keep = ~self._intact(tap, filled, stored, idx[first], vw[first], flat[first])
            keep &= np.isfinite(rows[first].reshape(len(first), -1)).all(1)
            todo = first[keep]  # sorted by flat position: np.unique's order
            if todo.size:
                self._write_rows(tap, flat[todo], np.ascontiguousarray(rows[todo]))

    def _write_rows(self, tap: str, flat: np.ndarray, rows: np.ndarray) -> None:
        fds, row_bytes = self._fds[tap], rows[0].nbytes
        sums = checksums(rows, flat)
        try:
            for kind in ("values", "sums", "filled"):
                for start, stop in _runs(flat):
                    data = {"values": rows[start:stop], "sums": sums[start:stop],
                            "filled": np.ones(stop - start, np.uint8)}[kind]
                    width = {"values": row_bytes, "sums": 4, "filled": 1}[kind]
                    _pwrite_all(fds[kind], data.tobytes(), int(flat[start]) * width)
        except OSError as err:
            raise sf.space_error(self.directory, err, sf.store_bytes(self.meta),
                                 f"writing tap '{tap}'") from None

    # ------------------------------------------------------------ bookkeeping
    def reset_counters(self) -> None:
        """Zero ``hits``, ``lookups`` and ``corrupt_recomputed`` (the trainer does it every epoch)."""
        self.hits = self.lookups = self.corrupt_recomputed = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up entries that were hits since the last reset (nan before any)."""
        return self.hits / self.lookups if self.lookups else float("nan")

    def filled_fraction(self, tap: str) -> float:
        """Fraction of all (sample, view) entries of ``tap`` whose filled bit is set (not verified)."""
        bitmap = self._bitmap(tap)
        return np.count_nonzero(bitmap) / bitmap.size

    def size_on_disk(self) -> int:
        """Bytes the store's files actually occupy (allocated blocks, not apparent sizes)."""
        return sum(os.stat(path).st_blocks * 512 for path in glob.glob(os.path.join(self.directory, "*")))

    def flush(self) -> None:
        """Push written pages to the disk: values, checksums, then bitmaps, as in :meth:`write`."""
        try:
            for kind in ("values", "sums", "filled"):
                for fds in self._fds.values():
                    os.fsync(fds[kind])
        except OSError as err:  # a delayed allocation that finds the disk full
            raise sf.space_error(self.directory, err, sf.store_bytes(self.meta), "flushing it") from None

    def close(self) -> None:
        try:
            if self._fds:
                self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        for fds in self._fds.values():
            for fd in fds.values():
                os.close(fd)
        self._fds, self._values, self._sums, self._filled = {}, {}, {}, {}  # unmapped once unreferenced

    def __del__(self):
        if getattr(self, "_fds", None):
            self._release()

    def __enter__(self) -> "TeacherStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _bitmap(self, tap: str) -> np.memmap:
        if tap not in self._filled:
            raise KeyError(f"teacher store '{self.directory}' was opened without tap '{tap}' "
                           f"(it has {', '.join(self._filled) or 'none'})")
        return self._filled[tap]

    def _host(self, index, view) -> Tuple[np.ndarray, np.ndarray]:
        """int64 numpy copies of index and view, range-checked (numpy would wrap negatives)."""
        idx = torch.as_tensor(index).detach().cpu().numpy().astype(np.int64).reshape(-1)
        vw = torch.as_tensor(view).detach().cpu().numpy().astype(np.int64).reshape(-1)
        if idx.shape != vw.shape:
            raise ValueError(f"{idx.size} indices but {vw.size} views")
        for name, ids, bound in (("sample index", idx, self.num_samples), ("view id", vw, self.num_views)):
            if ids.size and (ids.min() < 0 or ids.max() >= bound):
                raise IndexError(f"teacher store '{self.directory}': {name} out of range 0..{bound - 1}: "
                                 f"{ids.min()}..{ids.max()}")
        return idx, vw
