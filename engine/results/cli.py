"""Turn finished run folders into the results tables, in the format of results.md.

    distillers-collect                                   # save/students/* and save/teachers/*
    distillers-collect 'runs/*/students/*' --csv results.csv
    distillers-collect --compare ../shared/reference/results.md
    distillers-collect --compare          # the built-in copy of results.md §1-2
    distillers-collect --plot accuracy_vs_cost.png [--plot-pair resnet32x4:resnet8x4]
    distillers-collect 'save/quickstart/*'   # the quick start's three runs
    distillers-collect --json > cells.jsonl   # one JSON line per cell: everything needed to rerun it

(``python scripts/collect_results.py ...`` from a checkout is the same command.)

A run folder holds ``latest.pth`` (and ``best.pth``) as written by the trainer. Runs are
grouped into cells by (dataset, teacher arch, student arch, method, loss weights, method
options set on the command line); each cell reports, over its trials, mean ± sample std of

* the **last-epoch** top-1: ``latest.pth['acc']`` (the RepDistiller convention), and
* the **best-epoch** top-1: ``best.pth['acc']`` (= ``latest.pth['best_acc']``; mdistiller's),

and a protocol table records per cell the weight convention (γ·CE + α·KD + β·method), the
number of trials and their seeds, the schedule (global batch), the teacher checkpoint(s) with the
sha256 of their weights, and the number of processes (from each checkpoint's ``record``). Vanilla runs
(``train_teacher.py``) fill the Teacher and Student rows.

Row labels are those of results.md: a method option at its registry default, or at the value of
the reference recipe of the run's row (the settings of the generated
``configs/cifar100/<row>/<pair>.yaml``), is not part of the label, so a run launched from a config
and one launched with the same values on the command line share a cell. Logit standardisation makes
``KD`` ``KD+LS`` (``DKD+LS``, ``MLKD+LS``), ``-a`` > 0 on a method without a KD term adds ``+KD``, and CTKD is
``KD+CTKD`` (``DKD+CTKD`` with DKD as its base; ``CTKD+LS`` with logit standardisation, results.md's name): each
method declares these beside itself (``Distiller.row_name``, ``Option.row_suffix``). The published numbers
(``--compare`` without a file, and the picture) are engine.results.published.PUBLISHED, a verbatim copy of
results.md §1-2 with sources.

``--plot`` draws top-1 against training cost for one pair: every method's mean ± std over trials
(filled) next to its published number (hollow), at the cost of its training step relative to a
vanilla student step, read from ``benchmarks/cost_table.py``'s ``cost_table.csv`` (measured on
resnet32x4 → resnet8x4; an init stage's steps are spread over the run). Unfinished runs (interrupted, or
still in their initialisation stage) are left out and listed. Checkpoints are read with
``torch.load(weights_only=True)`` through :func:`engine.checkpoint.load`.

``--json`` prints one JSON line per cell (to stdout, or to a file given after it): dataset, teacher
arch and checkpoint(s), student, method, weights, options, the row's reference settings, seeds,
trials, epochs, batch size, learning rate, process counts, learning-rate rule, teacher weights' sha256,
code versions, last/best mean ± std and the published
number. With ``--json`` to stdout the markdown goes only to ``--output``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from engine.results.cells import collect
from engine.results.plot import DEFAULT_COST_TABLE, plot_accuracy_vs_cost, read_cost_table
from engine.results.published import PUBLISHED, read_reference
from engine.results.records import json_lines
from engine.results.tables import Tables, pair_header

DEFAULT_PAIR = ("resnet32x4", "resnet8x4")  # the pair of the published accuracy-vs-cost picture


def parser() -> argparse.ArgumentParser:
    """The collector's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="*", default=["save/students/*", "save/teachers/*"],
                        help="run folders or globs (default: save/students/* save/teachers/*)")
    parser.add_argument("--csv", default=None, help="also write one row per cell to this CSV file")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="JSONL",
                        help="also write one JSON line per cell with everything needed to rerun it, to this file "
                             "(without a file: to stdout, and the markdown only to --output)")
    parser.add_argument("--output", "-o", default=None, help="write the markdown here instead of stdout")
    parser.add_argument("--compare", nargs="?", const="builtin", default=None, metavar="RESULTS_MD",
                        help="add a side-by-side table with the published numbers of this results.md "
                             "(without a file: the built-in copy of results.md §1-2, engine/results/published.py)")
    parser.add_argument("--compare-dataset", default=None, metavar="DATASET",
                        help="the dataset whose runs --compare sets beside the published numbers and --plot draws "
                             "(default cifar100; for --plot, the dataset of the pairs drawn)")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="count runs that did not reach their last epoch (their latest accuracy)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw top-1 against training cost for --plot-pair into this PNG (needs "
                             "matplotlib: pip install -e .[plot])")
    parser.add_argument("--plot-pair", default=None, metavar="TEACHER:STUDENT",
                        help=f"the pair of the picture (default {DEFAULT_PAIR[0]}:{DEFAULT_PAIR[1]} when it has runs, "
                             "else one picture per distilled pair, named <PNG stem>_<teacher>_<student>.png)")
    parser.add_argument("--plot-epoch", choices=["last", "best"], default="last",
                        help="which top-1 the picture shows (default last)")
    parser.add_argument("--cost-table", default=DEFAULT_COST_TABLE, metavar="CSV",
                        help="benchmarks/cost_table.py's cost_table.csv (default: benchmarks/results/cost_table.csv)")
    return parser


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _distilled_pairs(cells) -> List[Tuple[str, Tuple[str, str]]]:
    """(dataset, (teacher, student)) of every distilled cell, in order."""
    return sorted({(c.dataset, c.pair) for c in cells if c.teacher})


def _plot_targets(args, cells) -> List[Tuple[str, Tuple[str, str], str]]:
    """(dataset, pair, PNG path) of each picture: --plot-pair when given; else the default pair when it
    has runs; else every distilled pair present (one PNG each, or the given name when there is one)."""
    if args.plot_pair:
        teacher, _, student = args.plot_pair.partition(":")
        return [(args.compare_dataset or "cifar100", (teacher, student), args.plot)]
    present = [(d, p) for d, p in _distilled_pairs(cells) if args.compare_dataset in (None, d)]
    default = [(d, p) for d, p in present if p == DEFAULT_PAIR]
    targets = default[:1] or present
    if len(targets) == 1:
        return [(targets[0][0], targets[0][1], args.plot)]
    stem, ext = os.path.splitext(args.plot)
    return [(d, p, f"{stem}_{p[0]}_{p[1]}{ext or '.png'}") for d, p in targets]


def _pairs_hint(cells) -> str:
    present = ", ".join(f"--plot-pair {t}:{s} --compare-dataset {d}" for d, (t, s) in _distilled_pairs(cells))
    return f"; the runs hold: {present}" if present else "; no run here is a distilled pair"


def _plot(args, cells) -> int:
    """--plot: draw the picture(s), report what was drawn and left out; 1 if one could not be drawn."""
    targets = _plot_targets(args, cells)
    if not targets:
        print(f"collect_results: --plot: no distilled run on {args.compare_dataset}{_pairs_hint(cells)}",
              file=sys.stderr)
        return 1
    try:
        cost = read_cost_table(args.cost_table)
    except (OSError, ValueError, KeyError) as err:
        print(f"collect_results: --plot: {err}", file=sys.stderr)
        return 1
    for dataset, (teacher, student), path in targets:
        try:
            drawn = plot_accuracy_vs_cost(cells, cost, (teacher, student), path, args.plot_epoch, dataset)
        except ImportError:
            print("collect_results: --plot needs matplotlib: pip install -e .[plot]", file=sys.stderr)
            return 1
        except (OSError, ValueError, KeyError) as err:
            print(f"collect_results: --plot: {err}{_pairs_hint(cells)}", file=sys.stderr)
            return 1
        print(f"collect_results: drew {len(drawn['points'])} methods of {pair_header(teacher, student)} on "
              f"{dataset} into {path}", file=sys.stderr)
        for label, why in drawn["skipped"]:
            print(f"  left out {label}: {why}", file=sys.stderr)
    return 0


def _compare_note(tables: Tables, reference: Dict, reference_name: str, dataset: str) -> Optional[str]:
    """Why the side-by-side table would be empty, or None when some run has a published number."""
    on = [c for c in tables.students if c.dataset == dataset]
    if not on:
        elsewhere = ", ".join(tables.datasets()) or "none"
        return (f"--compare: no run on {dataset} (the runs are on {elsewhere}): nothing to set beside "
                f"{reference_name}; --compare-dataset names the dataset of the published numbers")
    pairs = sorted({c.pair for c in on})
    if not any(reference.get(label, {}).get(p) is not None for label, by_pair in tables.rows(dataset, pairs)
               for p in by_pair):
        return (f"--compare: no run on {dataset} matches a published cell of {reference_name} (same row "
                f"and pair): the side-by-side table shows only ours")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The collector; returns the exit code (1: no finished run, or the picture could not be drawn)."""
    args = parser().parse_args(argv)
    cells, skipped = collect(args.runs, args.include_unfinished)
    if not cells:
        print(f"collect_results: no finished run under {' '.join(args.runs)}", file=sys.stderr)
        for s in skipped:
            print(f"  skipped {s.folder}: {s.reason}", file=sys.stderr)
        return 1
    tables = Tables(cells)
    if args.compare == "builtin":
        reference = {label: {pair: value for pair, (value, _) in row.items()} for label, row in PUBLISHED.items()}
        reference_name = "results.md (built-in copy)"
    else:
        reference = read_reference(args.compare) if args.compare else None
        reference_name = os.path.basename(args.compare or "")
    compare_dataset = args.compare_dataset or "cifar100"
    note = _compare_note(tables, reference, reference_name, compare_dataset) if reference is not None else None
    if note:
        print(f"collect_results: {note}", file=sys.stderr)
    text = tables.markdown(reference, reference_name, compare_dataset)
    if skipped:
        text += "\nSkipped run folders:\n\n" + "".join(f"- `{s.folder}`: {s.reason}\n" for s in skipped)
    if args.output:
        _write(args.output, text)
    elif args.json != "-":
        sys.stdout.write(text)
    if args.json:
        lines = "".join(line + "\n" for line in json_lines(cells))
        if args.json == "-":
            sys.stdout.write(lines)
        else:
            _write(args.json, lines)
    if args.plot and _plot(args, cells):
        return 1
    if args.csv:
        rows = tables.csv_rows()
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0
