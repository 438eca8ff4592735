"""An exact store of a frozen teacher's small per-sample outputs, keyed by (sample, view).

Why: a CIFAR-style training view is fully described by (sample index, view id), view id
``(dy * (2p+1) + dx) * 2 + flip`` (data/device_loader.py). The teacher is frozen and in
eval mode, so its output for one (index, view) never changes: once computed, its taps
(``logits`` [num_classes], ``pooled`` [C]) can be read back instead of running the teacher
again. CIFAR has 50000 x 162 such entries, so a run of 240 epochs meets most of them
several times.

Layout of a store directory (one per :func:`store_key`)::

    meta.json         format, key, num_samples, num_views, storage dtype, {tap: shape}
    <tap>.bin         values, a memmap [num_samples, num_views, *shape] (float32 or float16)
    <tap>.filled      uint8 [num_samples, num_views]: 1 once that entry's values are written

Files are sparse (truncated to size, never zero-filled), so a lazily filled store takes
disk only for what it holds. Taps have their own files, so one store filled with logits
and pooled serves KD and CRD alike, and a new tap later adds files to the same store.
Values are written before their filled bit, so a crash (SIGKILL included: the page cache
of a killed process still reaches the disk) never leaves a bit over unwritten values.
A power loss or kernel crash may (the kernel writes dirty pages back in any order):
delete the store after one. Processes on one machine (DDP ranks, two runs) share a store
through MAP_SHARED memmaps; creating it or adding a tap holds an ``fcntl.flock`` on
``<dir>.lock`` (flock is not reliable across machines on NFS).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

FORMAT = "distillers/teacher-store/1"
META = "meta.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_TAP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")  # a file name on every filesystem we use
_REMEDY = "delete it or pass another --teacher_store"


class StoreError(ValueError):
    """A teacher store that does not fit this run, or is corrupt or partial."""


# ---------------------------------------------------------------- keys
def teacher_fingerprint(model: nn.Module) -> str:
    """sha256 of ``model``'s state_dict: every key, dtype, shape and raw bytes, in key order.

    Why: the store is valid for exactly these weights; a file path or an epoch number
    would survive a retrained teacher, the bytes do not. A re-saved copy hashes the same.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def num_views(padding: int = 4) -> int:
    """Size of the view-id space: (2p+1)^2 crops x 2 flip bits (162 for CIFAR's p=4).

    Without flips the ids are the even ones of the same space (``view_ids``), so it keeps its size.
    """
    return (2 * padding + 1) ** 2 * 2


def store_key(teacher: nn.Module, dataset_name: str, num_samples: int, mean: Sequence[float],
              std: Sequence[float], padding: int = 4, size: int = 32, flip: bool = True,
              dtype: str = "float32", data_options: Optional[Dict[str, Any]] = None,
              scheme: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything a stored value depends on: the teacher's weights and architecture, the
    images (dataset, its size and options such as ``synthetic``'s seed), how a view is
    rendered (padding, crop size, flip, normalisation) and the storage dtype.

    The one definition shared by scripts/fill_teacher_store.py and the trainer, so a
    store filled offline is found and accepted by the run that reads it. ``scheme``
    replaces the CIFAR view description (padding, size, flip) for other view schemes
    (ImageNet's seeded random-resized crops: their seed, size, scale and ratio).
    """
    return _as_json({
        "teacher": teacher_fingerprint(teacher),
        "teacher_arch": str(getattr(teacher, "arch", type(teacher).__name__)),
        "dataset": dataset_name,
        "data_options": dict(data_options or {}),
        "num_samples": int(num_samples),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "views": scheme or {"padding": int(padding), "size": int(size), "flip": bool(flip)},
        "dtype": str(dtype),
    })


def default_store_dir(run_root: str, key: Dict[str, Any]) -> str:
    """``<run_root>/teacher_store/<16 hex of sha256 of the key>``: one folder per key, so
    runs of another teacher or dataset never meet a store that is not theirs."""
    text = json.dumps(_as_json(key), sort_keys=True)
    return os.path.join(run_root, "teacher_store", hashlib.sha256(text.encode()).hexdigest()[:16])


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so comparisons are fair."""
    return json.loads(json.dumps(value, sort_keys=True))


# ---------------------------------------------------------------- which taps fit
def storable_taps(shapes: Dict[str, Any], taps: Sequence[str], limit: int = 4096, *,
                  modules: Iterable[str] = (), reader: str = "the method") -> Tuple[bool, str]:
    """Whether every tap in ``taps`` is a per-sample tensor of at most ``limit`` values.

    ``shapes`` maps a tap to its per-sample shape (``ShapeSpec.teacher``): a tuple of ints.
    A list of shapes is a group of feature maps and anything else is not data. A ShapeSpec
    records a module tap (``classifier``) by its weight's shape, so name module taps in
    ``modules`` (those whose ``TapPoint.io`` is ``'module'``). ``reader`` opens the reason,
    e.g. ``"--distill fitnet"``. Returns ``(True, "")`` or ``(False, reason)`` naming the
    first tap that cannot be stored.
    """
    modules = set(modules)
    tail = "the store holds small per-sample outputs only"
    for tap in taps:
        shape = shapes.get(tap)
        if tap in modules or isinstance(shape, nn.Module):
            return False, f"{reader} reads the teacher's module '{tap}' (weights, not per-sample data): {tail}"
        if isinstance(shape, list):
            return False, (f"{reader} reads the teacher's feature maps '{tap}' (a group of {len(shape)} maps "
                           f"per sample): {tail}")
        if not (isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)):
            return False, f"{reader} reads the teacher's tap '{tap}', whose per-sample shape is unknown: {tail}"
        numel = math.prod(shape)
        if numel > limit:
            dims = "x".join(map(str, shape))
            return False, (f"{reader} reads the teacher's feature map '{tap}' ({dims} = {numel} values per "
                           f"sample, over the limit of {limit}): {tail}")
    return True, ""


# ---------------------------------------------------------------- the store
class TeacherStore:
    """Memmapped per-tap values and filled bitmaps of one store directory; see the module doc.

    Build it with :meth:`open`. ``lookup`` and ``write`` take (index, view) pairs as tensors
    on any device; the memmaps are indexed on the host with numpy.
    """

    def __init__(self, directory: str, meta: Dict[str, Any]):
        self.directory = directory
        self.num_samples, self.num_views = meta["num_samples"], meta["num_views"]
        self.dtype = DTYPES[meta["dtype"]]
        self.shapes = {tap: tuple(shape) for tap, shape in meta["taps"].items()}
        self._values: Dict[str, np.memmap] = {}
        self._filled: Dict[str, np.memmap] = {}
        for tap, shape in self.shapes.items():
            grid = (self.num_samples, self.num_views)
            self._values[tap] = np.memmap(_values_path(directory, tap), _np_dtype(meta["dtype"]), "r+",
                                          shape=grid + shape)
            self._filled[tap] = np.memmap(_filled_path(directory, tap), np.uint8, "r+", shape=grid)
        self.reset_counters()

    @classmethod
    def open(cls, directory: str, key: Dict[str, Any], num_samples: int, num_views: int,
             shapes: Dict[str, Tuple[int, ...]], dtype: torch.dtype = torch.float32) -> "TeacherStore":
        """Create the store for ``key`` or open the existing one, adding taps it lacks.

        An existing store made for another key, size or dtype, or one that is corrupt or
        partial, is a :class:`StoreError`: it is never silently used or replaced.
        """
        dtype_name = next((n for n, d in DTYPES.items() if d == dtype), None)
        if dtype_name is None:
            raise ValueError(f"a teacher store holds {' or '.join(DTYPES)}, not {dtype}")
        if "dtype" in key and key["dtype"] != dtype_name:
            raise ValueError(f"the key says dtype {key['dtype']!r} but the store is opened as {dtype_name!r}")
        shapes = {tap: tuple(int(s) for s in shape) for tap, shape in shapes.items()}
        for tap in shapes:
            _check_tap_name(tap)
        directory = os.path.abspath(directory)
        wanted = {"format": FORMAT, "key": _as_json(key), "num_samples": int(num_samples),
                  "num_views": int(num_views), "dtype": dtype_name}
        with _locked(directory):
            if not os.path.exists(directory):
                _create(directory, {**wanted, "taps": {tap: list(s) for tap, s in shapes.items()}})
            meta = _read_meta(directory)
            _check_identity(directory, meta, wanted)
            _check_files(directory, meta)
            for tap, shape in shapes.items():
                recorded = meta["taps"].get(tap)
                if recorded is None:
                    meta = _add_tap(directory, meta, tap, shape)
                elif tuple(recorded) != shape:
                    raise StoreError(f"teacher store '{directory}': tap '{tap}' is stored with shape "
                                     f"{tuple(recorded)} vs {shape} in this run: {_REMEDY}")
        return cls(directory, meta)

    # ------------------------------------------------------------ reading
    def filled(self, taps: Sequence[str], index, view) -> torch.Tensor:
        """Bool [B] on the host: every tap in ``taps`` is written for that (index, view).
        Not counted in the hit rate (the fill script uses it to skip done entries)."""
        return torch.from_numpy(self._all_filled(taps, *self._host(index, view)))

    def lookup(self, taps: Sequence[str], index, view) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(hit [B], {tap: float32 [B, *shape]}) on ``index``'s device.

        ``hit`` is true where every requested tap is filled; rows of misses hold anything.
        """
        idx, vw = self._host(index, view)
        hit = self._all_filled(taps, idx, vw)
        values = {tap: torch.from_numpy(np.asarray(self._values[tap][idx, vw])).float() for tap in taps}
        self.lookups += len(idx)
        self.hits += int(np.count_nonzero(hit))
        device = torch.as_tensor(index).device
        return torch.from_numpy(hit).to(device), {tap: v.to(device) for tap, v in values.items()}

    # ------------------------------------------------------------ writing
    def write(self, index, view, values: Dict[str, torch.Tensor]) -> None:
        """Store ``values[tap]`` [B, *shape] of the entries (index, view) not yet filled.

        Values first, then the filled bits. Filled entries are left as they are, so a value
        never changes once readable (two ranks writing one entry: the first one wins).
        """
        idx, vw = self._host(index, view)
        for tap, value in values.items():
            bitmap = self._bitmap(tap)
            rows = np.asarray(value.detach().to("cpu", self.dtype).numpy())
            if rows.shape != (len(idx),) + self.shapes[tap]:
                raise ValueError(f"tap '{tap}': got values {tuple(rows.shape)} for {len(idx)} entries of "
                                 f"shape {self.shapes[tap]}")
            todo = np.flatnonzero(bitmap[idx, vw] == 0)
            if todo.size:
                self._values[tap][idx[todo], vw[todo]] = rows[todo]
                bitmap[idx[todo], vw[todo]] = 1

    # ------------------------------------------------------------ bookkeeping
    def reset_counters(self) -> None:
        self.hits = self.lookups = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up entries that were hits since the last reset (nan before any)."""
        return self.hits / self.lookups if self.lookups else float("nan")

    def filled_fraction(self, tap: str) -> float:
        """Fraction of all (sample, view) entries of ``tap`` that are filled."""
        bitmap = self._bitmap(tap)
        return np.count_nonzero(bitmap) / bitmap.size

    def size_on_disk(self) -> int:
        """Bytes the store's files actually occupy (allocated blocks, not apparent sizes)."""
        return sum(os.stat(path).st_blocks * 512 for path in glob.glob(os.path.join(self.directory, "*")))

    def flush(self) -> None:
        """Push written pages to the disk: values before bitmaps, as in :meth:`write`."""
        for memmaps in (self._values, self._filled):
            for memmap in memmaps.values():
                memmap.flush()

    def close(self) -> None:
        self.flush()
        self._values, self._filled = {}, {}  # unmapped once the last reference goes

    def __enter__(self) -> "TeacherStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _bitmap(self, tap: str) -> np.memmap:
        if tap not in self._filled:
            raise KeyError(f"teacher store '{self.directory}' was opened without tap '{tap}' "
                           f"(it has {', '.join(self._filled) or 'none'})")
        return self._filled[tap]

    def _all_filled(self, taps: Sequence[str], idx: np.ndarray, vw: np.ndarray) -> np.ndarray:
        hit = np.ones(len(idx), dtype=bool)
        for tap in taps:
            hit &= self._bitmap(tap)[idx, vw] != 0
        return hit

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


class StoredTeacher:
    """The teacher's taps for a batch, read from the store where filled, computed elsewhere.

    Runs ``teacher_forward`` (e.g. the teacher's FeatureTaps) only on the rows that missed,
    not at all when every row hits, writes those rows and returns every tap for the whole
    batch in batch order, float32 on ``x``'s device. Missed rows are returned as stored
    (rounded through the storage dtype), so a run sees the same value for an entry
    whether it computed or read it.

    Results equal a direct teacher forward within float tolerance, not bitwise: a conv
    over a sub-batch (or on another rank) may pick other kernels and summation orders, and
    float16 storage rounds to ~3 significant digits.
    """

    def __init__(self, teacher_forward: Callable[[torch.Tensor], Dict[str, torch.Tensor]],
                 store: TeacherStore, taps: Sequence[str]):
        self.teacher_forward, self.store, self.taps = teacher_forward, store, tuple(taps)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor) -> Dict[str, torch.Tensor]:
        hit, values = self.store.lookup(self.taps, index, view)
        values = {tap: v.to(x.device) for tap, v in values.items()}
        missed = torch.nonzero(~hit.cpu()).squeeze(1)
        if len(missed):
            fresh = self.teacher_forward(x[missed.to(x.device)])
            rows = {tap: fresh[tap].to(self.store.dtype).float() for tap in self.taps}
            self.store.write(torch.as_tensor(index).cpu()[missed], torch.as_tensor(view).cpu()[missed], rows)
            for tap in self.taps:
                values[tap][missed.to(x.device)] = rows[tap].to(x.device)
        return values


# ---------------------------------------------------------------- files
def _np_dtype(name: str):
    return {"float32": np.float32, "float16": np.float16}[name]


def _values_path(directory: str, tap: str) -> str:
    return os.path.join(directory, f"{tap}.bin")


def _filled_path(directory: str, tap: str) -> str:
    return os.path.join(directory, f"{tap}.filled")


def _expected_sizes(meta: Dict[str, Any], tap: str) -> Tuple[int, int]:
    """Bytes of ``tap``'s values file and of its bitmap."""
    entries = meta["num_samples"] * meta["num_views"]
    per_entry = math.prod(meta["taps"][tap]) * np.dtype(_np_dtype(meta["dtype"])).itemsize
    return entries * per_entry, entries


def _check_tap_name(tap: str) -> None:
    if not _TAP_NAME.match(tap):
        raise ValueError(f"tap name {tap!r} cannot name a store file (letters, digits, '_', '.', ':', '-')")


@contextlib.contextmanager
def _locked(directory: str):
    """Hold an exclusive flock on ``<directory>.lock`` (the lock file is left in place:
    removing it would let a waiting process lock an unlinked file)."""
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    fd = os.open(directory + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sparse_file(path: str, size: int) -> None:
    """A file of ``size`` bytes that reads as zeros and occupies no blocks yet."""
    with open(path, "wb") as fh:
        fh.truncate(size)


def _write_tap_files(directory: str, meta: Dict[str, Any], tap: str, prefix: str = "") -> None:
    values, bitmap = _expected_sizes(meta, tap)
    _sparse_file(os.path.join(directory, prefix + os.path.basename(_values_path(directory, tap))), values)
    _sparse_file(os.path.join(directory, prefix + os.path.basename(_filled_path(directory, tap))), bitmap)


def _write_meta(directory: str, meta: Dict[str, Any]) -> None:
    """meta.json via a temporary file and a rename: readers see the old or the new one."""
    tmp = os.path.join(directory, f".{META}.tmp")
    with open(tmp, "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(directory, META))


def _create(directory: str, meta: Dict[str, Any]) -> None:
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
        _write_meta(tmp, meta)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _add_tap(directory: str, meta: Dict[str, Any], tap: str, shape: Tuple[int, ...]) -> Dict[str, Any]:
    """New empty files for ``tap``, then the meta that lists it (under the lock). A crash
    in between leaves unlisted files that the next attempt replaces."""
    meta = {**meta, "taps": {**meta["taps"], tap: list(shape)}}
    _write_tap_files(directory, meta, tap, prefix=".tmp-")
    for path in (_values_path(directory, tap), _filled_path(directory, tap)):
        os.replace(os.path.join(directory, ".tmp-" + os.path.basename(path)), path)
    _write_meta(directory, meta)
    return meta


def _read_meta(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, META)
    if not os.path.isdir(directory):
        raise StoreError(f"teacher store '{directory}' exists but is not a folder: {_REMEDY}")
    if not os.path.isfile(path):
        raise StoreError(f"teacher store '{directory}' is partial or not a teacher store: it has no {META}; "
                         f"{_REMEDY}")
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        raise StoreError(f"teacher store '{directory}' is corrupt: cannot read {META} ({err}); {_REMEDY}") from None
    missing = [f for f in ("format", "key", "num_samples", "num_views", "dtype", "taps")
               if not isinstance(meta, dict) or f not in meta]
    if missing:
        raise StoreError(f"teacher store '{directory}' is corrupt: {META} lacks {', '.join(missing)}; {_REMEDY}")
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


def _check_identity(directory: str, meta: Dict[str, Any], wanted: Dict[str, Any]) -> None:
    """The store was made for this run's key, size and dtype, else say which fields differ."""
    stored = {field: meta[field] for field in wanted}
    diffs = list(_differences(stored, wanted, ""))
    if diffs:
        raise StoreError(f"teacher store '{directory}' was made for another setting ({'; '.join(diffs)}): "
                         f"{_REMEDY}")


def _check_files(directory: str, meta: Dict[str, Any]) -> None:
    """Every listed tap has both files at their exact sizes (else the store is partial or truncated)."""
    for tap in meta["taps"]:
        for path, size in zip((_values_path(directory, tap), _filled_path(directory, tap)),
                              _expected_sizes(meta, tap)):
            if not os.path.isfile(path):
                raise StoreError(f"teacher store '{directory}' is partial: '{os.path.basename(path)}' of tap "
                                 f"'{tap}' is missing; {_REMEDY}")
            actual = os.path.getsize(path)
            if actual != size:
                raise StoreError(f"teacher store '{directory}' is corrupt: '{os.path.basename(path)}' is {actual} "
                                 f"bytes, expected {size} (truncated?); {_REMEDY}")
