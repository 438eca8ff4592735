"""Cells: the runs of one (dataset, teacher, student, method, weights, options, recipe), over trials.

A cell reports mean ± sample std of its runs' last-epoch and best-epoch top-1; its label is the
published tables' row name (:mod:`engine.results.labels`), with the weights that differ from the
row's reference in brackets. Runs of different recipes (epochs, batch, lr) never share a cell.
"""
from __future__ import annotations

import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

from distillers.base import ADDED_TERM
from engine.results.labels import (adds_kd, method_order, reference_settings, registry_defaults, row_options,
                                   short_name, variant_name)
from engine.results.runs import VANILLA, Run, Skipped, find_run_folders, read_run

GREEK = (("gamma", "γ"), ("alpha", "α"), ("beta", "β"))


def fmt_number(x: float) -> str:
    return f"{x:g}"


@dataclass
class Cell:
    dataset: str
    teacher: Optional[str]
    student: str
    method: str
    weights: Tuple[float, float, float]
    options: Tuple[Tuple[str, str], ...]
    schedule: Tuple = ()  # (epochs, batch size, lr): runs of different recipes never share a cell
    runs: List[Run] = field(default_factory=list)

    @property
    def pair(self) -> Tuple[Optional[str], str]:
        return (self.teacher, self.student)

    def values(self, which: str) -> List[float]:
        return [getattr(r, which) for r in self.runs]

    def stats(self, which: str) -> Tuple[float, float]:
        values = self.values(which)
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        return mean, std

    def label(self) -> str:
        """results.md's row label: KD, CRD, CRD+KD, SimKD (f=4)...; other weights in brackets."""
        if self.method == VANILLA:
            return "Student"
        name = variant_name(self.method, self.weights, self.options)
        defaults = registry_defaults(self.method)
        plus_kd = adds_kd(self.method, self.weights)
        reference = reference_settings(name, self.pair)
        in_name = row_options(self.method)
        extras = [f"{short_name(self.method, k)}={v}" for k, v in self.options if k not in in_name]
        for (key, symbol), value in zip(GREEK, self.weights):
            if reference is not None:
                default = reference[key]
            else:
                default = 1.0 if (key == "alpha" and plus_kd) else defaults.get(key, 0.0)
            if value != default:
                extras.append(f"{symbol}={fmt_number(value)}")
        return f"{name} ({', '.join(extras)})" if extras else name

    def convention(self) -> str:
        g, a, b = (fmt_number(x) for x in self.weights)
        if self.method == VANILLA:
            return "CE"
        return f"{g}·CE + {a}·KD" + ("" if self.method == ADDED_TERM else f" + {b}·{self.method}")

    def sort_key(self):
        order = method_order()
        rank = order.index(self.method) if self.method in order else len(order)
        return (rank, self.method, self.label())


def group(runs: Iterable[Run]) -> List[Cell]:
    """Runs into cells, in the order first seen; warns about a cell whose trials share a seed."""
    cells: "OrderedDict[tuple, Cell]" = OrderedDict()
    for run in runs:
        key = (run.dataset, run.teacher, run.student, run.method, run.weights, run.options,
               (run.epochs, run.batch_size, run.learning_rate))
        cells.setdefault(key, Cell(*key)).runs.append(run)
    for cell in cells.values():
        seeds = [r.seed for r in cell.runs]
        if len(set(seeds)) < len(seeds):
            print(f"collect_results: warning: {cell.label()} {cell.teacher}->{cell.student} has trials with the "
                  f"same seed {seeds} (--trial only names a run; pass --seed to vary it)", file=sys.stderr)
    return list(cells.values())


def collect(patterns: Sequence[str], include_unfinished: bool = False) -> Tuple[List[Cell], List[Skipped]]:
    """(cells, skipped folders) of the run folders that ``patterns`` (globs) name."""
    runs, skipped = [], []
    for folder in find_run_folders(patterns):
        result = read_run(folder, include_unfinished)
        (runs if isinstance(result, Run) else skipped).append(result)
    return group(runs), skipped
