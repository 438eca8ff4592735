"""The one checkpoint format: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitives::

    format, arch, num_classes, dataset, model, epoch, step, phase, init_done, optimizer,
    scheduler, scaler (--amp fp16), distiller, distiller_name, distiller_options, shape_spec, world_size,
    ranks (per rank: rng, epoch_totals, buffers that differ from rank 0's), rng (rank 0's),
    config, weights, code_version, acc, best_acc, finished

``epoch``/``step`` name the next batch to train: every checkpoint is taken at a moment
where the weights, buffers, optimizer, scheduler and RNG states all describe that point.

Teachers load from this format or from RepDistiller's ``{'model': state_dict}``.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import tempfile
from dataclasses import asdict
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from distillers.base import ShapeSpec
from engine.interrupts import fault_point

FORMAT = "distillers/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit its architecture."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(state: Dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    The old file stays intact until the new one is complete; a write that fails (a full
    disk, a lost mount) is a :class:`CheckpointError` naming the file. The file gets the
    permissions of the umask, like any file the user creates.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint '{path}': {err.strerror or err}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point("save")
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        _discard(tmp)
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise CheckpointError(f"cannot write checkpoint '{path}': {reason}. Is the disk full? "
                              "The previous checkpoint there, if any, is intact") from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str) -> None:
    if os.path.exists(tmp):
        os.unlink(tmp)


#: First bytes of what torch.save writes: a zip archive, or a legacy pickle (protocol 2+).
_MAGIC = (b"PK\x03\x04", b"\x80")


def load(path: str) -> Dict[str, Any]:
    """A checkpoint as a plain dict, read with ``weights_only=True`` (no code runs from the file)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint '{path}': {err.strerror}") from None
    if not head.startswith(_MAGIC):
        raise CheckpointError(f"'{path}' is not a PyTorch checkpoint (a file written by torch.save); "
                              f"it starts with {head!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(f"refusing to load '{path}': it holds Python objects beyond tensors and plain "
                                  f"values, which could run code ({first})") from None
        raise CheckpointError(f"cannot read checkpoint '{path}' (truncated or corrupt?): {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(state).__name__}, expected a dict")
    return state


def require(state: Dict[str, Any], path: str, keys) -> None:
    """A resumable checkpoint has every key the trainer restores."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"'{path}' cannot be resumed: it lacks {', '.join(missing)} (a checkpoint of "
                              "another tool or an older version?); start a new run instead")


def model_state(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model weights of our format, RepDistiller's {'model': ...} or a bare state_dict."""
    weights = state.get("model", state)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError("checkpoint has no model state_dict (expected key 'model')")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}


def arch_from_path(path: str) -> Optional[str]:
    """The reference scripts' folder convention: 'resnet56_vanilla/ckpt_epoch_240.pth' -> 'resnet56'."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    match = re.match(r"(wrn_\d+_\d+)", folder)
    if match:
        return match.group(1)
    match = re.search(r"S_(.+?)_T_", folder)
    if match:
        return match.group(1)
    return folder.split("_")[0] or None


def load_weights(model: nn.Module, weights: Dict[str, torch.Tensor], what: str) -> None:
    """strict load that explains a mismatch instead of dumping a traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint {tuple(weights[k].shape)} "
                         f"vs model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{what} does not fit architecture '{getattr(model, 'arch', type(model).__name__)}': "
                              + "; ".join(parts))
    model.load_state_dict(weights, strict=True)


def rng_state() -> Dict[str, Any]:
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [version, list(keys), gauss],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))


def code_version() -> str:
    import distillers

    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{distillers.__version__}+{rev}" if rev else distillers.__version__


def spec_to_dict(spec: ShapeSpec) -> Dict[str, Any]:
    out = asdict(spec)
    out["extra"] = {k: v for k, v in spec.extra.items() if isinstance(v, (str, int, float, bool))}
    return out


def spec_from_dict(values: Dict[str, Any]) -> ShapeSpec:
    def fix(shapes):
        return {k: ([tuple(s) for s in v] if v and isinstance(v[0], (list, tuple)) else tuple(v))
                for k, v in shapes.items()}
    return ShapeSpec(**{**values, "student": fix(values["student"]), "teacher": fix(values["teacher"])})
