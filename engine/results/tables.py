"""The results tables in the layout of results.md, the protocol of every cell, the CSV and --compare.

Pairs are split as results.md: same architecture family (§1), different families (§2), in its column
order; rows are Teacher and Student (vanilla runs), then the methods in the published tables' order.
Each cell is mean ± sample std over trials of the last-epoch and of the best-epoch top-1. ``--compare``
sets the last-epoch numbers beside a results.md's (or the built-in copy, :mod:`engine.results.published`).
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple

from engine.results.cells import Cell
from engine.results.labels import published
from engine.results.runs import VANILLA

#: Column order of results.md §1.1 (same family) and §2 (cross family).
SAME_FAMILY = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
               ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
               ("vgg13", "vgg8")]
CROSS_FAMILY = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"),
                ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]


def pair_header(teacher: str, student: str) -> str:
    name = lambda a: re.sub(r"^wrn_(\d+)_(\d+)$", r"wrn-\1-\2", a)  # noqa: E731  (results.md spelling)
    return f"{name(teacher)}→{name(student)}"


def _family(arch: str) -> str:
    return re.match(r"[A-Za-z]*", arch.replace("wrn_", "wrn")).group(0)


def sections(pairs: Iterable[Tuple[str, str]]) -> List[Tuple[str, List[Tuple[str, str]]]]:
    """Pairs split as results.md: same family (§1), different families (§2), in its column order."""
    pairs = set(pairs)
    same = [p for p in SAME_FAMILY if p in pairs] + sorted(
        p for p in pairs if p not in SAME_FAMILY + CROSS_FAMILY and _family(p[0]) == _family(p[1]))
    cross = [p for p in CROSS_FAMILY if p in pairs] + sorted(
        p for p in pairs if p not in SAME_FAMILY + CROSS_FAMILY and _family(p[0]) != _family(p[1]))
    return [(title, cols) for title, cols in (("same architecture family", same),
                                               ("different architecture families", cross)) if cols]


def fmt_cell(cell: Optional[Cell], which: str) -> str:
    if cell is None:
        return "–"
    mean, std = cell.stats(which)
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f}±{std:.2f}"


class Tables:
    def __init__(self, cells: List[Cell]):
        self.students = [c for c in cells if c.method != VANILLA]
        self.vanilla_all = [c for c in cells if c.method == VANILLA]
        # Teacher/Student rows: per (dataset, arch) the vanilla cell of the longest schedule, then most trials
        self.vanilla: Dict[Tuple[str, str], Cell] = {}
        for cell in sorted(self.vanilla_all, key=lambda c: (c.schedule[0] or 0, len(c.runs))):
            self.vanilla[(cell.dataset, cell.student)] = cell

    def datasets(self) -> List[str]:
        return sorted({c.dataset for c in self.students} | {d for d, _ in self.vanilla})

    def rows(self, dataset: str, cols: List[Tuple[str, str]]):
        """[(label, {pair: cell})] in results.md order: Teacher, Student, then the methods."""
        rows = [("Teacher", {p: self.vanilla.get((dataset, p[0])) for p in cols}),
                ("Student", {p: self.vanilla.get((dataset, p[1])) for p in cols})]
        chosen = sorted((c for c in self.students if c.dataset == dataset and c.pair in cols), key=Cell.sort_key)
        # same method and weights under several recipes: the longest (then most trials) keeps the plain
        # label, the others carry their recipe
        main: Dict[Tuple[str, Tuple], Cell] = {}
        for cell in sorted(chosen, key=lambda c: (c.schedule[0] or 0, len(c.runs))):
            main[(cell.label(), cell.pair)] = cell
        by_label: "OrderedDict[str, Dict]" = OrderedDict()
        for cell in chosen:
            label = cell.label()
            if main[(label, cell.pair)] is not cell:
                epochs, batch, lr = cell.schedule
                label += f" [{epochs} ep, batch {batch}, lr {lr}]"
            by_label.setdefault(label, {})[cell.pair] = cell
        rows += list(by_label.items())
        return [(label, cells) for label, cells in rows if any(cells.values())]

    def markdown(self, reference: Optional[Dict] = None, reference_name: str = "",
                 reference_dataset: str = "cifar100") -> str:
        out = []
        for dataset in self.datasets():
            pairs = {c.pair for c in self.students if c.dataset == dataset}
            for title, cols in sections(pairs):
                header = "| method | " + " | ".join(pair_header(*p) for p in cols) + " | src |"
                rule = "|---|" + "---|" * len(cols) + "---|"
                for which, what in (("last", "last epoch"), ("best", "best epoch")):
                    out += [f"## {dataset}, {title}: top-1 (%), {what}, mean ± std over trials", "",
                            header, rule]
                    for label, cells in self.rows(dataset, cols):
                        out.append(f"| {label} | " + " | ".join(fmt_cell(cells.get(p), which) for p in cols)
                                   + " | ours |")
                    out.append("")
                if reference and dataset == reference_dataset:
                    out += [f"## {dataset}, {title}: last epoch (ours) next to {reference_name}", "",
                            header.replace(" | src |", " |"), "|---|" + "---|" * len(cols)]
                    for label, cells in self.rows(dataset, cols):
                        ref = reference.get(label, {})
                        parts = []
                        for p in cols:
                            ours = fmt_cell(cells.get(p), "last")
                            theirs = ref.get(p)
                            if theirs is None:
                                parts.append(ours)
                            elif cells.get(p) is None:
                                parts.append(f"– / {theirs:.2f}")
                            else:
                                delta = cells[p].stats("last")[0] - theirs
                                parts.append(f"{ours} / {theirs:.2f} ({delta:+.2f})")
                        out.append(f"| {label} | " + " | ".join(parts) + " |")
                    out += ["", "Cells: ours (mean±std, last epoch) / published (Δ). results.md §0: R's numbers "
                            "are last-epoch, mdistiller's are the best-epoch mean over 5 runs.", ""]
        out += self.protocol()
        return "\n".join(out).rstrip() + "\n"

    def protocol(self) -> List[str]:
        out = ["## Protocol per cell", "",
               "| dataset | method | pair | weights | trials (seeds) | epochs | global batch | lr | teacher checkpoint "
               "| processes | options |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        cells = sorted(self.students, key=lambda c: (c.dataset, c.pair, c.sort_key()))
        vanilla = sorted(self.vanilla_all, key=lambda c: (c.dataset, c.student, str(c.schedule)))
        for cell in vanilla + cells:
            seeds = ",".join(str(r.seed) for r in sorted(cell.runs, key=lambda r: (r.seed is None, r.seed)))
            teachers = "; ".join(sorted({r.teacher_checkpoint for r in cell.runs})) if cell.teacher else "–"
            hashes = sorted({r.teacher_sha256[:12] for r in cell.runs if r.teacher_sha256})
            if cell.teacher and hashes:
                teachers += f" (sha256 {', '.join(hashes)})"
            worlds = _join({r.world_size for r in cell.runs})
            pair = pair_header(cell.teacher, cell.student) if cell.teacher else f"{cell.student} (vanilla)"
            label = cell.label() if cell.method != VANILLA else "vanilla"
            recorded = sorted({o for r in cell.runs for o in r.recorded} | set(cell.options))
            options = ", ".join(f"{k}={v}" for k, v in recorded) or "defaults"
            out.append(f"| {cell.dataset} | {label} | {pair} | {cell.convention()} | {len(cell.runs)} ({seeds}) | "
                       f"{_join({r.epochs for r in cell.runs})} | {_join({r.batch_size for r in cell.runs})} | "
                       f"{_join({r.learning_rate for r in cell.runs})} | {teachers} | {worlds} | {options} |")
        return out + [""]

    def csv_rows(self) -> List[Dict[str, str]]:
        rows = []
        for cell in sorted(self.vanilla_all + self.students,
                           key=lambda c: (c.dataset, c.teacher or "", c.student, c.sort_key())):
            last, last_std = cell.stats("last")
            best, best_std = cell.stats("best")
            rows.append({
                "dataset": cell.dataset, "teacher": cell.teacher or "", "student": cell.student,
                "method": cell.method, "label": cell.label() if cell.method != VANILLA else "vanilla",
                "gamma": cell.weights[0], "alpha": cell.weights[1], "beta": cell.weights[2],
                "options": ";".join(f"{k}={v}" for k, v in cell.options), "trials": len(cell.runs),
                "seeds": ";".join(str(r.seed) for r in cell.runs),
                "last_mean": f"{last:.4f}", "last_std": "" if math.isnan(last_std) else f"{last_std:.4f}",
                "best_mean": f"{best:.4f}", "best_std": "" if math.isnan(best_std) else f"{best_std:.4f}",
                "last_values": ";".join(f"{v:.4f}" for v in cell.values("last")),
                "best_values": ";".join(f"{v:.4f}" for v in cell.values("best")),
                "epochs": _join({r.epochs for r in cell.runs}), "batch_size": _join({r.batch_size for r in cell.runs}),
                "learning_rate": _join({r.learning_rate for r in cell.runs}),
                "teacher_checkpoints": ";".join(sorted({r.teacher_checkpoint for r in cell.runs})) if cell.teacher
                else "",
                "runs": ";".join(r.folder for r in cell.runs),
            })
            ref = published(rows[-1]["label"], cell.pair) if cell.teacher and cell.dataset == "cifar100" else None
            rows[-1]["published_top1"] = f"{ref[0]:.2f}" if ref else ""
            rows[-1]["published_source"] = ref[1] if ref else ""
        return rows


def _join(values) -> str:
    values = sorted((v for v in values if v is not None), key=str)
    return "/".join(str(v) for v in values) or "?"
