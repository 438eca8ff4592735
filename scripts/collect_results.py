#!/usr/bin/env python
"""Turn finished run folders into the results tables, in the format of results.md.

    python scripts/collect_results.py                       # save/students/* and save/teachers/*
    python scripts/collect_results.py 'runs/*/students/*' --csv results.csv
    python scripts/collect_results.py --compare ../shared/reference/results.md
    python scripts/collect_results.py --compare          # the built-in copy of results.md §1-2
    python scripts/collect_results.py --plot accuracy_vs_cost.png [--plot-pair resnet32x4:resnet8x4]

A run folder holds ``latest.pth`` (and ``best.pth``) as written by the trainer. Runs are
grouped into cells by (dataset, teacher arch, student arch, method, loss weights, method
options set on the command line); each cell reports, over its trials, mean ± sample std of

* the **last-epoch** top-1: ``latest.pth['acc']`` (the RepDistiller convention), and
* the **best-epoch** top-1: ``best.pth['acc']`` (= ``latest.pth['best_acc']``; mdistiller's),

and a protocol table records per cell the weight convention (γ·CE + α·KD + β·method), the
number of trials and their seeds, the schedule, and the teacher checkpoint(s). Vanilla runs
(``train_teacher.py``) fill the Teacher and Student rows.

Row labels are those of results.md: a method option at its registry default, or at the value of
the reference recipe of the run's row (``scripts/make_configs.py``: the settings of the generated
``configs/cifar100/<row>/<pair>.yaml``), is not part of the label, so a run launched from a config
and one launched with the same values on the command line share a cell. ``logit_std`` makes
``KD`` ``KD+LS`` (``DKD+LS``, ``MLKD+LS``), ``-a`` > 0 on a method without a KD term adds ``+KD``, and CTKD is
``KD+CTKD`` (``DKD+CTKD`` with ``ctkd_base dkd``; ``CTKD+LS`` with ``logit_std``, results.md's name). The published numbers (``--compare`` without a
file, and the picture) are make_configs.PUBLISHED, a verbatim copy of results.md §1-2 with sources.

``--plot`` draws top-1 against training cost for one pair: every method's mean ± std over trials
(filled) next to its published number (hollow), at the cost of its training step relative to a
vanilla student step, read from ``benchmarks/cost_table.py``'s ``cost_table.csv`` (measured on
resnet32x4 → resnet8x4; an init stage's steps are spread over the run). Unfinished runs (interrupted, or
still in their initialisation stage) are left out and listed. Checkpoints are read with
``torch.load(weights_only=True)`` through :func:`engine.checkpoint.load`.
"""
from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import re
import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import checkpoint as ckpt  # noqa: E402

#: Column order of results.md §1.1 (same family) and §2 (cross family).
SAME_FAMILY = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
               ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
               ("vgg13", "vgg8")]
CROSS_FAMILY = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"),
                ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
#: Options whose value is part of the row label (KD+LS, DKD+CTKD, KD+DOT), not listed as extras.
VARIANT_OPTIONS = ("logit_std", "ctkd_base", "dot")
#: Options of the KD term that -a adds to any method, with their defaults.
KD_TERM_DEFAULTS = {"kd_T": 4.0, "logit_std": False}
OPTION_SHORT = {"factor": "f"}  # SimKD (f=4), as results.md §3
GREEK = (("gamma", "γ"), ("alpha", "α"), ("beta", "β"))
VANILLA = "vanilla"


# ---------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    folder: str
    dataset: str
    teacher: Optional[str]  # None for a vanilla run
    student: str
    method: str             # distiller name, or VANILLA
    weights: Tuple[float, float, float]
    options: Tuple[Tuple[str, str], ...]  # method options set on the command line
    last: float
    best: float
    seed: Optional[int]
    trial: str
    epochs: Optional[int]
    batch_size: Optional[int]
    learning_rate: Optional[float]
    teacher_checkpoint: str
    code_version: str
    recorded: Tuple[Tuple[str, str], ...] = ()  # options as recorded (before dropping reference values)


@dataclass
class Skipped:
    folder: str
    reason: str


def _teacher_arch(state: dict, folder: str, config: dict) -> str:
    """The teacher's architecture: recorded in the shape spec, given with --model_t, named in the
    trainer's run-folder name, recorded in the teacher checkpoint, or parsed from its path."""
    extra = (state.get("shape_spec") or {}).get("extra") or {}
    if extra.get("teacher_arch"):
        return str(extra["teacher_arch"])
    if config.get("model_t"):
        return str(config["model_t"])
    match = re.match(r"S_.+?_T_(.+?)_" + re.escape(str(state.get("dataset", ""))) + "_", os.path.basename(folder))
    if match:
        return match.group(1)
    path_t = config.get("path_t") or ""
    if path_t and os.path.isfile(path_t):
        try:
            arch = ckpt.load(path_t).get("arch")
            if arch:
                return str(arch)
        except ckpt.CheckpointError:
            pass
    return (ckpt.arch_from_path(path_t) if path_t else None) or "?"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_run(folder: str, include_unfinished: bool = False):
    """A :class:`Run`, or a :class:`Skipped` saying why the folder does not count."""
    latest = os.path.join(folder, "latest.pth")
    try:
        state = ckpt.load(latest)
    except ckpt.CheckpointError as err:
        return Skipped(folder, str(err))
    if state.get("format") != ckpt.FORMAT:
        return Skipped(folder, "latest.pth is not a distillers training checkpoint")
    config = state.get("config") or {}
    epochs = config.get("epochs")
    last = _number(state.get("acc"))
    finished = state.get("phase", "main") == "main" and (epochs is None or state.get("epoch", 0) > epochs)
    if not include_unfinished and (not finished or math.isnan(last)):
        where = (f"{state.get('phase')} stage" if state.get("phase") != "main" else
                 f"epoch {state.get('epoch', 0) - 1} of {epochs}")
        return Skipped(folder, f"unfinished ({where})")
    best = _number(state.get("best_acc"))
    best_path = os.path.join(folder, "best.pth")
    if os.path.isfile(best_path):
        try:
            recorded = _number(ckpt.load(best_path).get("acc"))
        except ckpt.CheckpointError as err:
            return Skipped(folder, str(err))
        if not math.isnan(best) and abs(recorded - best) > 1e-6:
            print(f"collect_results: {folder}: best.pth acc {recorded} != latest.pth best_acc {best}; "
                  "using best.pth", file=sys.stderr)
        best = recorded
    method = state.get("distiller_name") or VANILLA
    weights = state.get("weights") or {}
    w = tuple(float(weights.get(k, d)) for k, d in (("gamma", 1.0), ("alpha", 0.0), ("beta", 0.0)))
    options = tuple(sorted((k[len("method__"):], str(v)) for k, v in config.items()
                           if k.startswith("method__") and v is not None))
    if method != VANILLA and config.get("kd_T") not in (None, 4.0) and (w[1] or "kd_T" in _option_names(method)):
        options = tuple(sorted(options + (("kd_T", str(config["kd_T"])),)))
    if method != VANILLA and config.get("dot") and "dot" not in dict(options):  # the DOT optimiser flag
        options = tuple(sorted(options + (("dot", "True"),)))
    teacher = None if method == VANILLA else _teacher_arch(state, folder, config)
    student = str(state.get("arch", "?"))
    recorded = options
    if method != VANILLA:
        options = canonical_options(method, (teacher, student), w, options)
    seed = config.get("seed")
    return Run(folder=folder, dataset=str(state.get("dataset", config.get("dataset", "?"))),
               teacher=teacher, student=student, method=method, weights=w, options=options,
               last=last, best=best, seed=int(seed) if seed is not None else None,
               trial=str(config.get("trial", "")), epochs=epochs, batch_size=config.get("batch_size"),
               learning_rate=config.get("learning_rate"),
               teacher_checkpoint=str(config.get("path_t") or ""), code_version=str(state.get("code_version", "")),
               recorded=recorded)


def find_run_folders(patterns: Sequence[str]) -> List[str]:
    folders = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path) and os.path.basename(path) == "latest.pth":
                path = os.path.dirname(path)
            if os.path.isfile(os.path.join(path, "latest.pth")) and path not in folders:
                folders.append(path)
    return folders


# ------------------------------------------------------------------------------- cells
def _registry_defaults(method: str) -> Dict[str, float]:
    try:
        from distillers.base import DISTILLERS
        return dict(DISTILLERS.get(method).default_weights)
    except Exception:  # unknown (plugin) method: the trainer's base defaults
        return {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}


def _option_names(method: str) -> Sequence[str]:
    try:
        from distillers.base import DISTILLERS
        return DISTILLERS.get(method).option_names()
    except Exception:
        return ()


def _all_options(method: str) -> Dict:
    try:
        from distillers.base import DISTILLERS
        return dict(DISTILLERS.get(method).all_options())
    except Exception:
        return {}


def _fmt_number(x: float) -> str:
    return f"{x:g}"


def _canon(value):
    """An option value as recorded (``"4.0"``, ``"True"``, ``"[3.0, 5.0]"``) or given, in a comparable form."""
    if isinstance(value, str):
        try:
            import yaml

            value = yaml.safe_load(value)
        except Exception:  # not YAML: compare the text
            return value.strip().lower()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_canon(v) for v in value)
    return str(value).strip().lower()


def _make_configs():
    """scripts/make_configs.py (the reference settings per row and pair, the published numbers), or None."""
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import make_configs
        return make_configs
    except Exception:  # pragma: no cover  (a stripped-down copy of the script)
        return None


def reference_settings(label: str, pair: Tuple[Optional[str], str]) -> Optional[Dict]:
    """The flag values of results.md row ``label`` on ``pair`` as the references ran it, or None."""
    mc = _make_configs()
    if mc is None or label not in mc.ROWS or pair[0] is None:
        return None
    try:
        return mc.settings(label, pair)
    except Exception:  # e.g. CAT-KD on a pair its fork has no config for
        return None


def published(label: str, pair: Tuple[Optional[str], str]) -> Optional[Tuple[float, str]]:
    """(published top-1, source key) of results.md §1-2 for a row label and pair, or None."""
    mc = _make_configs()
    return None if mc is None else mc.PUBLISHED.get(label, {}).get(pair)


def display_name(method: str) -> str:
    """The method's name in published tables, declared beside it (``Distiller.display_name``)."""
    try:
        from distillers.base import DISTILLERS
        cls = DISTILLERS.get(method)
    except Exception:  # a run of a plugin method that is not loaded: its registry name
        return method
    return cls.display_name or method


def method_order() -> List[str]:
    """Methods in the order of the published tables' rows (results.md), then the others by name."""
    from distillers.base import DISTILLERS
    from distillers.reference import ROWS

    mc = _make_configs()
    labels = list(mc.PUBLISHED) if mc is not None else []
    ordered = [ROWS[label].distill for label in labels if label in ROWS]
    return list(dict.fromkeys(ordered + DISTILLERS.names()))


def variant_name(method: str, weights: Tuple[float, float, float], options) -> str:
    """results.md's row name of a run: KD, KD+LS, CRD+KD, DKD+LS, KD+CTKD, KD+DOT, ...: the method's
    own row name (``Distiller.row_name``), then the suffixes every method shares."""
    opts = {k: _canon(v) for k, v in dict(options).items()}
    try:
        from distillers.base import DISTILLERS
        name = DISTILLERS.get(method).row_name(opts)
    except Exception:  # a plugin method that is not loaded
        name = method
    if method != "kd" and weights[1] > 0 and not _registry_defaults(method).get("alpha", 0.0):
        name += "+KD"
    if opts.get("logit_std") is True and not name.endswith("+LS"):
        name += "+LS"
    if opts.get("dot") is True:
        name += "+DOT"
    return name


def canonical_options(method: str, pair, weights, options) -> Tuple[Tuple[str, str], ...]:
    """The options that make a run differ from its row's recipe: those at the registry's default, or at
    the reference value of the run's row on its pair, are dropped (the row-defining ones are kept)."""
    opts = dict(options)
    defaults = dict(KD_TERM_DEFAULTS)
    defaults.update({k: v for k, v in _all_options(method).items() if v is not None})
    for key in list(opts):
        if key in defaults and _canon(opts[key]) == _canon(defaults[key]):
            del opts[key]
    reference = reference_settings(variant_name(method, weights, opts), pair) or {}
    for key in list(opts):
        if key not in VARIANT_OPTIONS and key in reference and _canon(opts[key]) == _canon(reference[key]):
            del opts[key]
    return tuple(sorted(opts.items()))


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
        defaults = _registry_defaults(self.method)
        alpha = self.weights[1]
        plus_kd = self.method != "kd" and alpha > 0 and not defaults.get("alpha", 0.0)
        reference = reference_settings(name, self.pair)
        extras = [f"{OPTION_SHORT.get(k, k)}={v}" for k, v in self.options if k not in VARIANT_OPTIONS]
        for (key, symbol), value in zip(GREEK, self.weights):
            if reference is not None:
                default = reference[key]
            else:
                default = 1.0 if (key == "alpha" and plus_kd) else defaults.get(key, 0.0)
            if value != default:
                extras.append(f"{symbol}={_fmt_number(value)}")
        return f"{name} ({', '.join(extras)})" if extras else name

    def convention(self) -> str:
        g, a, b = (_fmt_number(x) for x in self.weights)
        if self.method == VANILLA:
            return "CE"
        return f"{g}·CE + {a}·KD" + ("" if self.method == "kd" else f" + {b}·{self.method}")

    def sort_key(self):
        order = method_order()
        rank = order.index(self.method) if self.method in order else len(order)
        return (rank, self.method, self.label())


def group(runs: Iterable[Run]) -> List[Cell]:
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


# ------------------------------------------------------------------------------ tables
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
               "| dataset | method | pair | weights | trials (seeds) | epochs | batch | lr | teacher checkpoint "
               "| options |", "|---|---|---|---|---|---|---|---|---|---|"]
        cells = sorted(self.students, key=lambda c: (c.dataset, c.pair, c.sort_key()))
        vanilla = sorted(self.vanilla_all, key=lambda c: (c.dataset, c.student, str(c.schedule)))
        for cell in vanilla + cells:
            seeds = ",".join(str(r.seed) for r in sorted(cell.runs, key=lambda r: (r.seed is None, r.seed)))
            teachers = "; ".join(sorted({r.teacher_checkpoint for r in cell.runs})) if cell.teacher else "–"
            pair = pair_header(cell.teacher, cell.student) if cell.teacher else f"{cell.student} (vanilla)"
            label = cell.label() if cell.method != VANILLA else "vanilla"
            recorded = sorted({o for r in cell.runs for o in r.recorded} | set(cell.options))
            options = ", ".join(f"{k}={v}" for k, v in recorded) or "defaults"
            out.append(f"| {cell.dataset} | {label} | {pair} | {cell.convention()} | {len(cell.runs)} ({seeds}) | "
                       f"{_join({r.epochs for r in cell.runs})} | {_join({r.batch_size for r in cell.runs})} | "
                       f"{_join({r.learning_rate for r in cell.runs})} | {teachers} | {options} |")
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


# ------------------------------------------------------------------- published tables
def read_reference(path: str) -> Dict[str, Dict[Tuple[str, str], float]]:
    """results.md's tables whose columns are teacher→student pairs: {row label: {pair: value}}.

    A cell's first number counts ('74.85 (74.84 in the DKD paper)' -> 74.85, '76.31±0.19' -> 76.31);
    '–' and 'N/A' are absent. The first table that has a (row, pair) wins.
    """
    table: Dict[str, Dict[Tuple[str, str], float]] = {}
    cols: Optional[List[Optional[Tuple[str, str]]]] = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line.startswith("|"):
                cols = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cols is None:
                if cells and cells[0].lower() == "method" and any("→" in c for c in cells):
                    cols = []
                    for c in cells[1:]:
                        if "→" in c:
                            t, s = (re.sub(r"^wrn-(\d+)-(\d+)$", r"wrn_\1_\2", x.strip()) for x in c.split("→"))
                            cols.append((t, s))
                        else:
                            cols.append(None)
                continue
            if set("".join(cells)) <= set("-: "):
                continue
            row = table.setdefault(cells[0], {})
            for pair, text in zip(cols, cells[1:]):
                match = re.match(r"\s*(\d+(?:\.\d+)?)", text)
                if pair is not None and match and pair not in row:
                    row[pair] = float(match.group(1))
    return table


# ------------------------------------------------------------------ accuracy vs cost
DEFAULT_COST_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                                  "results", "cost_table.csv")
INIT_SUFFIX = " (init stage)"


def read_cost_table(path: str) -> Dict[str, Dict[str, float]]:
    """benchmarks/cost_table.py's ``cost_table.csv``: {variant: {column: number}} (``kd``, ``vanilla``,
    ``ab (init stage)``, ...); ``x_vanilla`` is the median ratio of the variant's step to a vanilla step."""
    out: Dict[str, Dict[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out[row["variant"]] = {k: _number(v) for k, v in row.items() if k not in ("variant", "note",
                                                                                   "ms_per_round")}
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
        init_epochs = dict(options).get("init_epochs", _all_options(method).get("init_epochs", 0))
        x += init["x_vanilla"] * float(init_epochs or 0) / float(epochs or 240)
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


# -------------------------------------------------------------------------------- main
def collect(patterns: Sequence[str], include_unfinished: bool = False):
    runs, skipped = [], []
    for folder in find_run_folders(patterns):
        result = read_run(folder, include_unfinished)
        (runs if isinstance(result, Run) else skipped).append(result)
    return group(runs), skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="*", default=["save/students/*", "save/teachers/*"],
                        help="run folders or globs (default: save/students/* save/teachers/*)")
    parser.add_argument("--csv", default=None, help="also write one row per cell to this CSV file")
    parser.add_argument("--output", "-o", default=None, help="write the markdown here instead of stdout")
    parser.add_argument("--compare", nargs="?", const="builtin", default=None, metavar="RESULTS_MD",
                        help="add a side-by-side table with the published numbers of this results.md "
                             "(without a file: the built-in copy of results.md §1-2, scripts/make_configs.py)")
    parser.add_argument("--compare-dataset", default="cifar100",
                        help="the dataset whose runs --compare sets beside the published numbers (default cifar100)")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="count runs that did not reach their last epoch (their latest accuracy)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw top-1 against training cost for --plot-pair into this PNG (needs "
                             "matplotlib: pip install -e .[plot])")
    parser.add_argument("--plot-pair", default="resnet32x4:resnet8x4", metavar="TEACHER:STUDENT",
                        help="the pair of the picture (default resnet32x4:resnet8x4)")
    parser.add_argument("--plot-epoch", choices=["last", "best"], default="last",
                        help="which top-1 the picture shows (default last)")
    parser.add_argument("--cost-table", default=DEFAULT_COST_TABLE, metavar="CSV",
                        help="benchmarks/cost_table.py's cost_table.csv (default: benchmarks/results/cost_table.csv)")
    args = parser.parse_args(argv)

    cells, skipped = collect(args.runs, args.include_unfinished)
    if not cells:
        print(f"collect_results: no finished run under {' '.join(args.runs)}", file=sys.stderr)
        for s in skipped:
            print(f"  skipped {s.folder}: {s.reason}", file=sys.stderr)
        return 1
    tables = Tables(cells)
    if args.compare == "builtin":
        mc = _make_configs()
        reference = {label: {pair: value for pair, (value, _) in row.items()} for label, row in mc.PUBLISHED.items()}
        reference_name = "results.md (built-in copy)"
    else:
        reference = read_reference(args.compare) if args.compare else None
        reference_name = os.path.basename(args.compare or "")
    text = tables.markdown(reference, reference_name, args.compare_dataset)
    if skipped:
        text += "\nSkipped run folders:\n\n" + "".join(f"- `{s.folder}`: {s.reason}\n" for s in skipped)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    if args.plot:
        teacher, _, student = args.plot_pair.partition(":")
        try:
            cost = read_cost_table(args.cost_table)
            drawn = plot_accuracy_vs_cost(cells, cost, (teacher, student), args.plot, args.plot_epoch,
                                          args.compare_dataset)
        except ImportError:
            print("collect_results: --plot needs matplotlib: pip install -e .[plot]", file=sys.stderr)
            return 1
        except (OSError, ValueError, KeyError) as err:
            print(f"collect_results: --plot: {err}", file=sys.stderr)
            return 1
        print(f"collect_results: drew {len(drawn['points'])} methods of {pair_header(teacher, student)} into "
              f"{args.plot}", file=sys.stderr)
        for label, why in drawn["skipped"]:
            print(f"  left out {label}: {why}", file=sys.stderr)
    if args.csv:
        rows = tables.csv_rows()
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
