"""An exact store of a frozen teacher's small per-sample outputs, keyed by (sample, view).

Why: a CIFAR-style training view is fully described by (sample index, view id), view id
``(dy * (2p+1) + dx) * 2 + flip`` (data/device_loader.py). The teacher is frozen and in
eval mode, so its output for one (index, view) never changes: once computed, its taps
(``logits`` [num_classes], ``pooled`` [C]) can be read back instead of running the teacher
again. CIFAR has 50000 x 162 such entries, so a run of 240 epochs meets most of them
several times.

This module holds what a store is for (its key, which taps fit, the teacher in front of
it); engine/store_files.py its folder (one per :func:`store_key`: meta.json and per-tap
values, checksums and filled bitmaps, created under an ``fcntl.flock`` on ``<dir>.lock``,
which is not reliable across machines on NFS); engine/store_entries.py the verified reads
and the writes that fail with an error, never SIGBUS. Taps have their own files, so one
store filled with logits and pooled serves KD and CRD alike, and a new tap later adds files
to the same store. Processes on one machine (DDP ranks, two runs) share a store through
MAP_SHARED memmaps and ``pwrite`` on the same files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from engine.store_entries import TeacherStore, checksums  # noqa: F401  (the store's public names live here)
from engine.store_files import DTYPES, FORMAT, StoreError, StoreSpaceError, json_roundtrip  # noqa: F401


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


def store_key(teacher: nn.Module, dataset_name: str, num_samples: int, mean: Sequence[float],
              std: Sequence[float], scheme: Dict[str, Any], dtype: str = "float32",
              data_options: Optional[Dict[str, Any]] = None,
              encoding: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything a stored value depends on: the teacher's weights and architecture, the
    images (dataset, its size and options such as ``synthetic``'s seed), how a view is
    rendered (padding, crop size, flip, normalisation) and the storage dtype.

    The one definition shared by scripts/fill_teacher_store.py and the trainer, so a
    store filled offline is found and accepted by the run that reads it. ``scheme`` is the
    loader's description of its view ids (:attr:`data.loaders.ViewScheme.description`: CIFAR's
    padding, size and flip; ImageNet's seeded random-resized crops: seed, size, scale, ratio).
    ``encoding``: how a tap's rows are encoded when not as they are (engine/store_topk.py), by tap.
    """
    extra = {"encoding": dict(encoding)} if encoding else {}  # absent for exact stores: their keys unchanged
    return json_roundtrip({**extra,
        "teacher": teacher_fingerprint(teacher),
        "teacher_arch": str(getattr(teacher, "arch", type(teacher).__name__)),
        "dataset": dataset_name,
        "data_options": dict(data_options or {}),
        "num_samples": int(num_samples),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "views": dict(scheme),
        "dtype": str(dtype),
    })


def default_store_dir(run_root: str, key: Dict[str, Any]) -> str:
    """``<run_root>/teacher_store/<16 hex of sha256 of the key>``: one folder per key, so
    runs of another teacher or dataset never meet a store that is not theirs."""
    text = json.dumps(json_roundtrip(key), sort_keys=True)
    return os.path.join(run_root, "teacher_store", hashlib.sha256(text.encode()).hexdigest()[:16])


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


class StoredTeacher:
    """The teacher's taps for a batch, read from the store where verified, computed elsewhere.

    Runs ``teacher_forward`` (e.g. the teacher's FeatureTaps) only on the rows that missed
    (not yet stored, or corrupt: failing their checksum or not finite), not at all when every
    row hits, writes those rows and returns every tap for the whole batch in batch order,
    float32 on ``x``'s device. Missed rows are returned as stored (rounded through the
    storage dtype), so a run sees the same value for an entry whether it computed or read it.

    A tap with a codec in ``store.codecs`` (engine/store_topk.py: top-k logits) is stored encoded and
    returned decoded, computed rows included.

    Results equal a direct teacher forward within float tolerance, not bitwise: a conv
    over a sub-batch (or on another rank) may pick other kernels and summation orders, and
    float16 storage rounds to ~3 significant digits.

    When the store cannot be written any more (a full disk, a file-size limit, an I/O
    error), it turns itself off with one line through ``log`` (default: stderr) and from
    then on returns ``teacher_forward(x)`` for every batch, as a run without a store does;
    :attr:`off_reason` says why (empty while on).
    """

    def __init__(self, teacher_forward: Callable[[torch.Tensor], Dict[str, torch.Tensor]],
                 store: TeacherStore, taps: Sequence[str], log: Optional[Callable[[str], Any]] = None):
        self.teacher_forward, self.store, self.taps = teacher_forward, store, tuple(taps)
        self.codecs = dict(getattr(store, "codecs", None) or {})
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.off_reason = ""

    @property
    def active(self) -> bool:
        """Whether batches are still served through the store."""
        return not self.off_reason

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.off_reason:
            fresh = self.teacher_forward(x)
            return {tap: fresh[tap] for tap in self.taps}
        hit, values = self.store.lookup(self.taps, index, view)
        values = {tap: self._decoded(tap, v.to(x.device)) for tap, v in values.items()}
        missed = torch.nonzero(~hit.cpu()).squeeze(1)
        if len(missed):
            fresh = self.teacher_forward(x[missed.to(x.device)])
            rows = {tap: self._encoded(tap, fresh[tap]).to(self.store.dtype).float() for tap in self.taps}
            try:
                self.store.write(torch.as_tensor(index).cpu()[missed], torch.as_tensor(view).cpu()[missed], rows)
            except StoreError as err:
                self.turn_off(str(err))
            for tap in self.taps:
                values[tap][missed.to(x.device)] = self._decoded(tap, rows[tap]).to(x.device)
        return values

    def _encoded(self, tap: str, value: torch.Tensor) -> torch.Tensor:
        return self.codecs[tap].encode(value) if tap in self.codecs else value

    def _decoded(self, tap: str, rows: torch.Tensor) -> torch.Tensor:
        return self.codecs[tap].decode(rows) if tap in self.codecs else rows

    def turn_off(self, why: str) -> None:
        """Stop using the store for the rest of the run, saying so in one line."""
        self.off_reason = why
        self.log(f"teacher store off for the rest of this run: {why.split('; ')[0]}; the teacher runs on every "
                 "batch from here, as without a store")
