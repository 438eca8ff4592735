"""One JSON record per cell: everything needed to rerun it, and its reproduced next to its published number.

A cell is rerun by its row's recipe (``reference_settings``: the flag values of the row's generated
config on this pair, or None for a row without one: the registry's defaults), the cell's own
``options`` (those that differ from that recipe) and ``weights``, on the teacher checkpoint(s), with
the same seeds, schedule and code version. ``collect_results --json`` prints these, one line each.
"""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional

from engine.results.cells import Cell
from engine.results.labels import published, reference_settings, variant_name
from engine.results.runs import VANILLA


def _value(text: str):
    """A recorded option value (``"4.0"``, ``"True"``, ``"[3.0, 5.0]"``) as the JSON value it stands for."""
    try:
        import yaml

        return yaml.safe_load(text)
    except Exception:  # not YAML: the text
        return text


def _number(x: float) -> Optional[float]:
    """A number, or None for NaN (one trial's std, an unfinished run's accuracy): JSON has no NaN."""
    return None if math.isnan(x) else x


def _summary(cell: Cell, which: str) -> Dict:
    mean, std = cell.stats(which)
    return {"mean": _number(mean), "std": _number(std), "values": [_number(v) for v in cell.values(which)]}


def record(cell: Cell) -> Dict:
    """The cell as a JSON-ready dict (see the module's docstring)."""
    vanilla = cell.method == VANILLA
    label = "vanilla" if vanilla else cell.label()
    settings: Optional[Dict] = None
    ref = None
    if not vanilla:
        settings = reference_settings(variant_name(cell.method, cell.weights, cell.options), cell.pair)
        ref = published(label, cell.pair) if cell.dataset == "cifar100" else None
    recorded = sorted({o for r in cell.runs for o in r.recorded} | set(cell.options))
    epochs, batch_size, learning_rate = cell.schedule
    return {
        "dataset": cell.dataset, "label": label, "method": cell.method,
        "teacher": cell.teacher, "student": cell.student,
        "teacher_checkpoints": sorted({r.teacher_checkpoint for r in cell.runs}) if cell.teacher else [],
        "weights": dict(zip(("gamma", "alpha", "beta"), cell.weights)),
        "options": {k: _value(v) for k, v in cell.options},
        "recorded_options": {k: _value(v) for k, v in recorded},
        "reference_settings": settings,
        "seeds": [r.seed for r in cell.runs], "trials": len(cell.runs),
        "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "code_versions": sorted({r.code_version for r in cell.runs}),
        "world_sizes": sorted({r.world_size for r in cell.runs if r.world_size is not None}),
        "lr_rules": sorted({r.lr_rule for r in cell.runs if r.lr_rule}),
        "teacher_sha256": sorted({r.teacher_sha256 for r in cell.runs if r.teacher_sha256}),
        "last": _summary(cell, "last"), "best": _summary(cell, "best"),
        "published": {"top1": ref[0], "source": ref[1]} if ref else None,
        "runs": [str(r.folder) for r in cell.runs],
    }


def json_lines(cells: List[Cell]) -> List[str]:
    """One JSON line per cell, in the order of the CSV (dataset, teacher, student, published row order)."""
    ordered = sorted(cells, key=lambda c: (c.dataset, c.teacher or "", c.student, c.sort_key()))
    return [json.dumps(record(c), ensure_ascii=False, allow_nan=False) for c in ordered]
