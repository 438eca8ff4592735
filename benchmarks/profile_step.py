#!/usr/bin/env python
"""Where one method's training step spends its time: torch.profiler over the trainer's step.

    python benchmarks/profile_step.py reviewkd semckd [--steps 2] [--threads 1] [--rows 12]

Builds each method exactly as ``cost_table.py`` times it (resnet32x4 -> resnet8x4, batch 64,
random teacher, prepared batches), runs two warm-up steps, then profiles ``--steps`` steps and
prints the operators by self CPU time, with the number of convolutions per step: a method whose
convolution count is the two networks' plus its own modules' does no work twice, so what it costs
is what its reference requires.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from cost_table import DEFAULT_PAIR, build_variant, make_teacher  # noqa: E402  (this folder)


def convolutions(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.conv._ConvNd) for m in module.modules())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("methods", nargs="+", help="registered method names (or METHOD+OPTIMIZER, as kd+dot)")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after two warm-up steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rows", type=int, default=12, help="operators shown")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = make_teacher(DEFAULT_PAIR, os.path.join(tmp, "teacher.pth"))
        for method in args.methods:
            variant = build_variant(method, DEFAULT_PAIR, 64, teacher, os.path.join(tmp, method))
            run = variant.trainer.run
            own = {"student": convolutions(run.model), "teacher": convolutions(run.teacher),
                   "method": convolutions(run.method) if run.method is not None else 0}
            variant.run(2)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                variant.run(args.steps)
            events = prof.key_averages()
            calls = sum(e.count for e in events if e.key == "aten::convolution") / args.steps
            print(f"\n== {method} ({DEFAULT_PAIR.label}, batch 64, {args.threads} thread(s)): "
                  f"{calls:.0f} convolutions per step; modules: {own['student']} student + {own['teacher']} "
                  f"teacher + {own['method']} method = {sum(own.values())}")
            print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
