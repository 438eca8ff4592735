"""The pre-flight check: a teacher is what its card says before any student step is spent on it.

Why: a teacher evaluated with another normalisation, on another split, or loaded from another
file still produces logits, and the student trains on them without an error (RepDistiller #29:
a wrong-accuracy file; FKD's README asks to evaluate every teacher first). So before the first
step the teacher is scored on the run's test set and compared with its card (or its zoo
entry's published accuracy); beyond a tolerance (0.5 points) the run is refused with one line.

The evaluation runs once per (teacher weights hash, dataset key): its result is cached as JSON
in ``cache_dir``, so the runs of a sweep pay for it once.

:func:`check_normalisation` says whether the teacher needs its own input normalisation (given by
:func:`models.teacher_input.attach_teacher_input`, a forward pre-hook on the teacher).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from engine.teacher_store import teacher_fingerprint

DEFAULT_TOLERANCE = 0.5


class PreflightError(ValueError):
    """A teacher that is not the one its card or zoo entry describes; one line with both numbers."""


@dataclass
class PreflightResult:
    """What the check measured and against what; ``cached`` when no evaluation ran."""

    teacher_sha256: str
    measured_top1: float
    measured_top5: Optional[float]
    expected_top1: Optional[float]
    cached: bool
    message: str


def _key_text(dataset_key: Union[str, Mapping[str, Any]]) -> str:
    return dataset_key if isinstance(dataset_key, str) else json.dumps(dataset_key, sort_keys=True, default=str)


def _cache_file(cache_dir: str, sha: str, key_text: str) -> str:
    return os.path.join(cache_dir, f"{sha[:16]}-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.json")


def _read_cached(path: str, sha: str, key_text: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None  # absent or unreadable: evaluate again (and overwrite it)
    if not isinstance(record, dict) or record.get("teacher") != sha or record.get("dataset_key") != key_text:
        return None
    return record if isinstance(record.get("top1"), (int, float)) else None


def _write_cached(path: str, record: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _scores(value: Any) -> Dict[str, Optional[float]]:
    """``evaluate_fn``'s result (a number, or a dict with ``top1`` and maybe ``top5``) as floats."""
    if isinstance(value, Mapping):
        top1, top5 = value.get("top1"), value.get("top5")
    else:
        top1, top5 = value, None
    if top1 is None or not math.isfinite(float(top1)):
        raise PreflightError(f"the teacher evaluation returned no finite top-1 ({value!r})")
    return {"top1": float(top1), "top5": None if top5 is None else float(top5)}


def preflight(teacher_model: nn.Module, card_or_zoo_accuracy: Union[Mapping[str, Any], float, None],
              evaluate_fn: Callable[[nn.Module], Any], dataset_key: Union[str, Mapping[str, Any]],
              cache_dir: str, tolerance: float = DEFAULT_TOLERANCE, *, write_cache: bool = True,
              log: Callable[[str], None] = print) -> PreflightResult:
    """Check ``teacher_model`` against its card (a dict) or a published top-1 (a number).

    1. With a card: the weights' hash must be the card's ``weights_sha256``, else the file was
       changed after its card was written (or is another file): refused.
    2. The test top-1 comes from the cache for (hash, ``dataset_key``), else from
       ``evaluate_fn(teacher_model)`` (a number or ``{'top1', 'top5'}``), then cached
       (``write_cache``: False on DDP ranks other than 0, which still evaluate).
    3. ``|measured - expected| > tolerance`` points is refused with both numbers and the
       likely causes. No expected accuracy: the measured one is reported, nothing refused.

    ``dataset_key`` names the evaluation set (dataset, split, size, options, mean/std): another
    key is another measurement.
    """
    sha = teacher_fingerprint(teacher_model)
    card = card_or_zoo_accuracy if isinstance(card_or_zoo_accuracy, Mapping) else None
    if card is not None and card.get("weights_sha256") and card["weights_sha256"] != sha:
        raise PreflightError(
            f"teacher weights (sha256 {sha[:16]}...) are not the ones its card describes ({card['weights_sha256'][:16]}"
            f"...): the file was changed after its card was written, or it is another file; refusing it")
    expected = card.get("top1") if card is not None else card_or_zoo_accuracy
    expected = None if expected is None else float(expected)
    key_text = _key_text(dataset_key)
    path = _cache_file(cache_dir, sha, key_text)
    record = _read_cached(path, sha, key_text)
    cached = record is not None
    if record is None:
        started = time.monotonic()
        teacher_model.eval()
        with torch.no_grad():
            scores = _scores(evaluate_fn(teacher_model))
        record = {"teacher": sha, "dataset_key": key_text, **scores, "seconds": round(time.monotonic() - started, 3),
                  "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if write_cache:
            _write_cached(path, record)
    top1, top5 = float(record["top1"]), record.get("top5")
    where = f"{'cached ' if cached else ''}teacher check on {_short_key(dataset_key)}"
    if expected is None:
        message = f"{where}: measured top-1 {top1:.2f}%; no recorded accuracy to compare with"
        log(message)
        return PreflightResult(sha, top1, top5, None, cached, message)
    gap = top1 - expected
    what = "its card" if card is not None else "the zoo's published"
    if abs(gap) > tolerance:
        causes = ("another normalisation (the card's mean/std vs this run's), another split or label order"
                  if card is not None else
                  "another file than the published one, another normalisation, or another split")
        raise PreflightError(
            f"{where}: measured top-1 {top1:.2f}% vs {expected:.2f}% from {what}, off by {abs(gap):.2f} > "
            f"{tolerance:g} points (teacher sha256 {sha[:12]}...); likely {causes}. Change the tolerance or skip "
            "the check by flag if this is intended")
    message = f"{where}: measured top-1 {top1:.2f}% vs {expected:.2f}% from {what} (within {tolerance:g})"
    log(message)
    return PreflightResult(sha, top1, top5, expected, cached, message)


def _short_key(dataset_key: Union[str, Mapping[str, Any]]) -> str:
    if isinstance(dataset_key, Mapping):
        parts = [str(dataset_key.get(k)) for k in ("dataset", "split") if dataset_key.get(k) is not None]
        return "/".join(parts) or "the test set"
    return str(dataset_key)


# ---------------------------------------------------------------- normalisation
@dataclass
class NormalisationCheck:
    """``action``: 'same' (feed the batch as it is), 'renormalize' (the teacher's own, through its input hook),
    'refuse' (the card says nothing, or another input size); ``message`` is one line."""

    action: str
    message: str
    teacher_mean: Optional[Sequence[float]] = None
    teacher_std: Optional[Sequence[float]] = None


def check_normalisation(card: Mapping[str, Any], dataset_mean: Sequence[float], dataset_std: Sequence[float],
                        *, input_size: Optional[int] = None, atol: float = 1e-3) -> NormalisationCheck:
    """What the teacher's input needs, from its card's mean/std (and input size) vs the dataset's.

    Never a silently wrong input: a card without normalisation, or with another input size
    than the run's, gives 'refuse' with the reason; other mean/std give 'renormalize'.
    """
    mean, std = card.get("mean"), card.get("std")
    name = card.get("name") or card.get("arch") or "the teacher"
    if input_size is not None and card.get("input_size") not in (None, input_size):
        return NormalisationCheck("refuse", f"{name} was trained on {card['input_size']}px inputs, this run feeds "
                                            f"{input_size}px: refusing (give the teacher its own input pipeline)")
    if mean is None or std is None:
        return NormalisationCheck("refuse", f"{name}'s card records no input normalisation: give its mean/std "
                                            "(or use a zoo name) rather than guess")
    if "mean" in (card.get("assumed") or []) or "std" in (card.get("assumed") or []):
        note = " (assumed from its dataset, not recorded by its source)"
    else:
        note = ""
    same = all(abs(float(a) - float(b)) <= atol for a, b in zip(list(mean) + list(std),
                                                                  list(dataset_mean) + list(dataset_std)))
    if same:
        return NormalisationCheck("same", f"{name} takes this run's normalisation{note}", mean, std)
    return NormalisationCheck("renormalize", f"{name} was trained with mean {_fmt(mean)} std {_fmt(std)}, this run "
                                             f"normalises with mean {_fmt(dataset_mean)} std {_fmt(dataset_std)}: "
                                             f"the teacher gets its own normalisation{note}", mean, std)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
