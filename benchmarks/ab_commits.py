#!/usr/bin/env python
"""Step-cost ratios of two commits side by side (a benchmark, not a test).

    python benchmarks/ab_commits.py OLD NEW [--methods kd crd dkd kd+dot] [--rounds 5] [--threads 1]

Why: a refactor that must not cost speed (the contracts of issue 20) is judged by the
``× vanilla step`` ratios of ``benchmarks/cost_table.py`` before and after. Measured apart,
the machine's drift would swamp a 3% difference, so the two commits run in alternation:
each round runs each commit's own ``cost_table.py`` once (``--rounds 1``, its own warm-up
round first), in a fresh random order, from a git worktree of that commit. A commit's
harness that does not know ``METHOD+OPTIMIZER`` variants gets that two-line patch to its
benchmark file only (its engine is what is measured, untouched).

Prints per variant: each commit's median ``× vanilla`` over rounds, and the median (IQR) over
rounds of NEW / OLD taken inside each round.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: What a harness without METHOD+OPTIMIZER variants gets (the same lines as cost_table.py's own).
HARNESS_PATCH = [
    ('            argv += ["--model_s", STUDENT, "--path_t", teacher_path, "--distill", method]',
     '            method, _, optimizer = method.partition("+")\n'
     '            argv += ["--model_s", STUDENT, "--path_t", teacher_path, "--distill", method]\n'
     '            argv += ["--dot"] if optimizer == "dot" else []'),
    ("if DISTILLERS.get(m).init_stage is not Distiller.init_stage]",
     'if DISTILLERS.get(m.partition("+")[0]).init_stage is not Distiller.init_stage]'),
]


def worktree(commit: str, where: str) -> str:
    """A detached worktree of ``commit`` under ``where``, its cost_table.py able to run ``+dot`` variants."""
    path = os.path.join(where, commit)
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "--force", path, commit], check=True,
                   capture_output=True)
    script = os.path.join(path, "benchmarks", "cost_table.py")
    text = open(script, encoding="utf-8").read()
    if 'partition("+")' not in text:
        for old, new in HARNESS_PATCH:
            if old not in text:
                sys.exit(f"ab_commits: {commit}'s cost_table.py lacks the line the +optimizer patch replaces: {old!r}")
            text = text.replace(old, new)
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"{commit}: cost_table.py patched for METHOD+OPTIMIZER variants (benchmark file only)", flush=True)
    return path


def one_round(path: str, out: str, args) -> Dict[str, float]:
    """``× vanilla`` per variant from one ``cost_table.py --rounds 1`` run of the worktree at ``path``."""
    cmd = [sys.executable, os.path.join(path, "benchmarks", "cost_table.py"), "--rounds", "1", "--steps",
           str(args.steps), "--no-memory", "--out", out, "--methods", *args.methods]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, cwd=path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    if done.returncode != 0:
        sys.exit(f"ab_commits: cost_table.py failed in {path}:\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "cost_table.csv"), newline="", encoding="utf-8") as fh:
        return {row["variant"]: float(row["x_vanilla"]) for row in csv.DictReader(fh)}


def iqr(values: List[float]) -> str:
    values = sorted(values)
    if len(values) < 2:
        return f"{values[0]:.3f}"
    q = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q[1]:.3f} ({q[0]:.3f}–{q[2]:.3f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("old", help="the commit before the change")
    parser.add_argument("new", help="the commit after it")
    parser.add_argument("--methods", nargs="+", default=["kd", "crd", "dkd", "kd+dot"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round commit order")
    args = parser.parse_args(argv)
    order_rng = random.Random(args.seed)
    ratios: Dict[str, Dict[str, List[float]]] = {args.old: {}, args.new: {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {c: worktree(c, tmp) for c in (args.old, args.new)}
        try:
            for r in range(args.rounds):
                order = [args.old, args.new]
                order_rng.shuffle(order)
                for commit in order:
                    got = one_round(paths[commit], os.path.join(tmp, "out", commit, str(r)), args)
                    for variant, x in got.items():
                        ratios[commit].setdefault(variant, []).append(x)
                print(f"round {r + 1}/{args.rounds} done ({' then '.join(order)})", flush=True)
        finally:
            for path in paths.values():
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], capture_output=True)
    print(f"\n× vanilla step, {args.rounds} alternating rounds, {args.threads} torch thread(s)\n")
    print(f"| variant | {args.old} | {args.new} | {args.new} / {args.old}, per round: median (IQR) |")
    print("|---|---:|---:|---:|")
    for variant in ratios[args.new]:
        old, new = ratios[args.old].get(variant), ratios[args.new][variant]
        if not old:
            continue
        per_round = [b / a for a, b in zip(old, new)]
        print(f"| {variant} | {statistics.median(old):.3f} | {statistics.median(new):.3f} | {iqr(per_round)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
