#!/usr/bin/env python
"""The offline quick start: teacher, vanilla student and KD student on ``synthetic``.

Runs the same three commands a user would type (see the README), in one process,
and prints the three test accuracies and the wall time. Needs no download and no GPU:

    python scripts/quickstart.py [--epochs N] [--save_root DIR]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import cli  # noqa: E402
from engine.checkpoint import load  # noqa: E402

TEACHER, STUDENT = "resnet20", "resnet8"


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of epochs")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=_positive, default=4, help="epochs of each of the three runs")
    parser.add_argument("--save_root", default="save/quickstart", help="where the three run folders go")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers")
    args = parser.parse_args()
    common = ["--dataset", "synthetic", "--epochs", str(args.epochs), "--lr_decay_epochs", str(max(1, args.epochs * 2 // 3)),
              "--num_workers", str(args.num_workers), "--save_root", args.save_root,
              "--overwrite"]  # a demo: running it again starts the three runs over
    teacher_dir = os.path.join(args.save_root, "teacher")
    runs = [
        ("teacher " + TEACHER, cli.teacher, ["--model", TEACHER, "--save_dir", teacher_dir]),
        ("vanilla " + STUDENT, cli.teacher, ["--model", STUDENT, "--save_dir", os.path.join(args.save_root, "vanilla")]),
        ("KD " + STUDENT, cli.student, ["--model_s", STUDENT, "--distill", "kd", "--path_t",
                                        os.path.join(teacher_dir, "latest.pth"),
                                        "--save_dir", os.path.join(args.save_root, "kd")]),
    ]
    started = time.perf_counter()
    results = []
    for number, (label, entry, flags) in enumerate(runs, start=1):
        print(f"\n=== {number}/3: {label}, {args.epochs} epochs on the synthetic set (10,000 train images; progress "
              "lines every 30 s when the output is not a terminal) ===", flush=True)
        if entry(common + flags) != 0:
            print(f"quickstart: the {label} run failed", file=sys.stderr)
            return 1
        folder = flags[flags.index("--save_dir") + 1]
        results.append((label, load(os.path.join(folder, "latest.pth"))["acc"]))
    minutes = (time.perf_counter() - started) / 60
    print("\nsynthetic test top-1 after", args.epochs, "epochs each:")
    for label, acc in results:
        print(f"  {label:<20} {acc:6.2f}%")
    print(f"wall time {minutes:.1f} min; run folders under {args.save_root}/ "
          f"(tables: distillers-collect '{args.save_root}/*')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
