"""The accuracy-vs-cost picture: top-1 against training cost for one teacher/student pair.

Every method's mean ± std over trials (filled) next to its published number (hollow), at the cost
of its training step relative to a vanilla student step, read from ``benchmarks/cost_table.py``'s
``cost_table.csv`` (measured on resnet32x4 → resnet8x4; an init stage's steps are spread over the
run). matplotlib is imported only when a picture is drawn (``pip install -e .[plot]``).
"""
from __future__ import annotations

import csv
import math
import os
from typing import Dict, List, Optional, Tuple

from engine.results.cells import Cell
from engine.results.labels import option_specs, published
from engine.results.runs import as_number
from engine.results.tables import Tables, pair_header

#: The cost table of a checkout (an installed copy has none: pass --cost-table).
DEFAULT_COST_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                  "benchmarks", "results", "cost_table.csv")
INIT_SUFFIX = " (init stage)"


def read_cost_table(path: str) -> Dict[str, Dict[str, float]]:
    """benchmarks/cost_table.py's ``cost_table.csv``: {variant: {column: number}} (``kd``, ``vanilla``,
    ``ab (init stage)``, ...); ``x_vanilla`` is the median ratio of the variant's step to a vanilla step."""
    out: Dict[str, Dict[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out[row["variant"]] = {k: as_number(v) for k, v in row.items()
                                   if k not in ("variant", "note", "ms_per_round")}
    if not out or "x_vanilla" not in next(iter(out.values())):
        raise ValueError(f"{path}: not a cost_table.py CSV (no variant/x_vanilla columns)")
    return out


def run_cost(method: str, cost: Dict[str, Dict[str, float]], epochs: Optional[int] = None,
             options=()) -> Optional[float]:
    """A run's training cost relative to a vanilla run: its step's x_vanilla, plus, for a method with an
    initialisation stage, that stage's step cost times init_epochs / epochs (240 if unknown)."""
    if method not in cost or math.isnan(cost[method].get("x_vanilla", float("nan"))):
        return None
    x = cost[method]["x_vanilla"]
    init = cost.get(method + INIT_SUFFIX)
    if init is not None:
        stage = {k: spec.default for k, spec in option_specs(method).items() if spec.stage_epochs}
        stage_epochs = next((dict(options).get(k, default) for k, default in stage.items()), 0)
        x += init["x_vanilla"] * float(stage_epochs or 0) / float(epochs or 240)
    return x


def plot_accuracy_vs_cost(cells: List[Cell], cost: Dict[str, Dict[str, float]], pair: Tuple[str, str],
                          path: str, which: str = "last", dataset: str = "cifar100") -> Dict:
    """Draw top-1 against training cost for ``pair`` into the PNG ``path``; returns what was drawn.

    One point per results row of the pair (the labels of the tables): ours = mean ± std over trials
    (filled, with its label), the published number of the same row (results.md, hollow) at the same
    cost joined to it; the vanilla student at cost 1 and the teacher as a dashed line when their runs
    are there. Rows whose method is not in the cost table are left out and listed in ``skipped``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    tables = Tables(cells)
    rows = tables.rows(dataset, [pair])
    points, skipped, student, teacher = [], [], None, None
    for label, by_pair in rows:
        cell = by_pair.get(pair)
        if cell is None:
            continue
        mean, std = cell.stats(which)
        if label == "Teacher":
            teacher = {"top1": mean, "std": std, "trials": len(cell.runs)}
            continue
        if label == "Student":
            student = {"label": "Student (vanilla)", "cost": 1.0, "top1": mean, "std": std, "trials": len(cell.runs)}
            continue
        x = run_cost(cell.method, cost, cell.schedule[0], cell.options)
        if x is None:
            skipped.append((label, f"{cell.method} is not in the cost table"))
            continue
        ref = published(label, pair) if dataset == "cifar100" else None
        points.append({"label": label, "method": cell.method, "cost": x, "top1": mean,
                       "std": None if math.isnan(std) else std, "trials": len(cell.runs),
                       "published": ref[0] if ref else None, "source": ref[1] if ref else None})
    if not points and student is None:
        raise ValueError(f"no run of {pair_header(*pair)} on {dataset} with a method in the cost table")

    fig, ax = plt.subplots(figsize=(11, 7), dpi=110)
    ours_color, ref_color = "#1f5fa8", "#d9822b"
    for p in points:
        if p["published"] is not None:
            ax.plot([p["cost"], p["cost"]], [p["top1"], p["published"]], color="0.7", lw=1, zorder=1)
    ax.errorbar([p["cost"] for p in points], [p["top1"] for p in points],
                yerr=[p["std"] or 0.0 for p in points], fmt="o", ms=7, color=ours_color, ecolor=ours_color,
                elinewidth=1, capsize=3, zorder=3, label=f"ours: {which}-epoch top-1, mean ± std over trials")
    refs = [p for p in points if p["published"] is not None]
    if refs:
        ax.scatter([p["cost"] for p in refs], [p["published"] for p in refs], s=60, facecolors="none",
                   edgecolors=ref_color, linewidths=1.5, marker="D", zorder=2,
                   label="published (results.md; source in the CSV/markdown)")
    if student is not None:
        ax.errorbar([1.0], [student["top1"]], yerr=[0.0 if math.isnan(student["std"]) else student["std"]],
                    fmt="s", ms=8, color="black", capsize=3, zorder=3, label="vanilla student (cost 1)")
    if teacher is not None:
        ax.axhline(teacher["top1"], color="0.35", ls="--", lw=1, zorder=0,
                   label=f"teacher {pair[0]}: {teacher['top1']:.2f}")

    # y range first: the labels' spacing is computed in data units from it
    labelled = points + ([student] if student else [])
    ys = [p["top1"] for p in labelled] + [p["published"] for p in points if p["published"] is not None]
    span = (max(ys) - min(ys)) or 1.0
    y_lo, y_hi = min(ys) - span * 0.06, max(ys + ([teacher["top1"]] if teacher else [])) + span * 0.06
    ax.set_ylim(y_lo, y_hi)
    costs = [p["cost"] for p in labelled]
    ax.set_xscale("log", base=2)
    lo, hi = min(costs + [1.0]) / 1.15, max(costs + [1.0]) * 1.6
    ax.set_xlim(lo, hi)
    # labels: points of similar cost form a column; its labels stand to the right of the column,
    # in the points' order, at least one text line apart, each joined to its point by a thin line
    axis_height_pt = fig.get_figheight() * 72 * 0.8
    gap = (y_hi - y_lo) * 10.0 / axis_height_pt
    columns: List[List[Dict]] = []
    for p in sorted(labelled, key=lambda p: p["cost"]):
        if columns and math.log2(p["cost"]) - math.log2(columns[-1][-1]["cost"]) < 0.12:
            columns[-1].append(p)
        else:
            columns.append([p])
    for column in columns:
        column.sort(key=lambda p: p["top1"])
        text_x = max(p["cost"] for p in column) * (1.05 if len(column) > 1 else 1.035)
        text_y = [p["top1"] for p in column]
        for i in range(1, len(text_y)):
            text_y[i] = max(text_y[i], text_y[i - 1] + gap)
        overflow = text_y[-1] - (y_hi - gap / 2)
        if overflow > 0:
            text_y = [y - overflow for y in text_y]
        for p, y in zip(column, text_y):
            ax.annotate(p["label"], (p["cost"], p["top1"]), xytext=(text_x, y), textcoords="data", fontsize=8,
                        va="center", arrowprops=dict(arrowstyle="-", color="0.65", lw=0.5, shrinkA=0, shrinkB=3))

    ticks = [t for t in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.set_xlabel("training cost: time of one training step relative to a vanilla student step (log scale)\n"
                  "from benchmarks/cost_table.py (resnet32x4 → resnet8x4, batch 64, CPU); "
                  "init stages (AB, FT, FSP) spread over the run", fontsize=9)
    ax.set_ylabel(f"{dataset} test top-1 (%), {which} epoch")
    ax.set_title(f"{dataset}, {pair_header(*pair)}: accuracy against training cost", fontsize=12)
    ax.grid(True, which="major", color="0.92", zorder=0)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {"points": points, "student": student, "teacher": teacher, "skipped": skipped, "path": path}
