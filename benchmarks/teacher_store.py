#!/usr/bin/env python
"""Distillation at the cost of plain training: the teacher-output store (a benchmark, not a test).

    python benchmarks/teacher_store.py [--rounds 7] [--steps 2] [--threads 1] [--out benchmarks/results]

Four tables, CPU, batch 64, CIFAR-100-shaped in-memory data (``storerandom``: 50,000 random
uint8 images, 100 classes, registered here), served by ``--loader device``, random teachers:

1. **Step cost**, resnet32x4 -> resnet8x4, resnet56 -> resnet20 and resnet32x4 -> a timm ViT-Tiny
   (``img_size=32, patch_size=4``): a vanilla student step, a
   KD and a CRD step with the teacher run on every batch (``--no_teacher_store``), and with a
   filled store (every view of the timed batches stored before timing). Each step is the
   trainer's own loop body (``Trainer.train_epoch`` over replayed batches: taps, teacher or
   store, the objective, backward, SGD, bookkeeping); data loading is not timed. All variants
   of a pair run in rounds, each round in a fresh random order; a ratio is taken inside a
   round and the table gives its median over rounds with the interquartile range.
2. **Epoch time** of a KD run (resnet32x4 -> resnet8x4) on the first ``--epoch_samples``
   samples, through ``Trainer.train_epoch`` with the device loader: store off, cold (an
   empty store: the teacher runs on every view and fills it), warm (a second run with the
   same seed: every view is read back).
3. **Filling the whole store** with ``scripts/fill_teacher_store.py``'s loop (all 162 views
   of every image): its cost in teacher-forward epochs and in KD-step epochs, against what a
   launcher sweep of N runs of E epochs on that teacher spends on teacher forwards.
4. **Cost of verifying each entry** (its CRC32 and finiteness, checked on every read): a
   store-fed KD step with the check against the same step over format-1 reads (a filled bit is a
   hit; ``UncheckedStore``, defined here only), in rounds as in table 1, and one lookup of a
   batch of 64 alone.

``--tables`` picks tables (default: all); the others' sections of teacher_store.md are kept.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.device_loader import crop_flip_normalize, decode_views  # noqa: E402
from data.registry import DATASETS, register_dataset  # noqa: E402
from engine import config  # noqa: E402
from engine.checkpoint import save_atomic  # noqa: E402
from engine.distributed import DistInfo  # noqa: E402
from engine.loop import Trainer  # noqa: E402
from engine.teacher_store import TeacherStore  # noqa: E402
from models import create_model  # noqa: E402
from cost_table import fmt_ratio  # noqa: E402  (benchmarks/, this script's folder)

NUM_CLASSES, NUM_DATA = 100, 50_000
PAIRS = [("resnet32x4", "resnet8x4"), ("resnet56", "resnet20")]
#: the step table's pairs: these, and a timm ViT-Tiny student on 32x32 images (4x4 patches, an 8x8 grid)
VIT_TINY = ("timm:vit_tiny_patch16_224", "--model_opt", "img_size=32", "--model_opt", "patch_size=4")
STEP_PAIRS = PAIRS + [("resnet32x4", *VIT_TINY)]


class RandomUint8:
    """N random uint8 32x32 RGB images with balanced labels, held in memory as CIFAR is."""

    def __init__(self, size: int, seed: int):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        self.targets = list(np.arange(size) % NUM_CLASSES)
        self.num_classes = NUM_CLASSES

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.from_numpy(self.data[i]).permute(2, 0, 1).float() / 255, int(self.targets[i])


if "storerandom" not in DATASETS:
    @register_dataset("storerandom", family="cifar", num_classes=NUM_CLASSES, input_size=32,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    def storerandom(root, split, augment, *, train_size=NUM_DATA, test_size=64, seed=0):
        return RandomUint8(train_size if split == "train" else test_size, seed + (split == "test"))


def make_teacher(arch: str, path: str) -> str:
    torch.manual_seed(1)
    model = create_model(arch, num_classes=NUM_CLASSES)
    model.train()
    with torch.no_grad():  # BatchNorm statistics of one random batch
        model(torch.randn(64, 3, 32, 32))
    save_atomic({"arch": arch, "model": model.state_dict()}, path)
    return path


class Replay:
    """The training-loader protocol over prepared batches (each carries its views: the store's keys)."""

    view_scheme = None

    def __init__(self, batches, steps: int):
        self.batches, self.steps, self.batch_size = batches, steps, len(batches[0])

    def set_epoch(self, epoch, skip=0):
        pass

    def __len__(self):
        return self.steps

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


def trainer_for(teacher: str, student: str, teacher_path: str, method, save: str, *extra) -> Trainer:
    argv = ["--dataset", "storerandom", "--batch_size", "64", "--num_workers", "0", "--no_tensorboard",
            "--epochs", "1", "--loader", "device", "--save_dir", save, "--save_root", save] + list(extra)
    if method is None:
        trainer = Trainer(config.parse(config.teacher_parser(), argv + ["--model", student]), DistInfo(), "teacher")
    else:
        argv += ["--model_s", student, "--path_t", teacher_path, "--distill", method]
        trainer = Trainer(config.parse(config.student_parser(), argv), DistInfo(), "student")
    trainer.run.log = lambda *a, **k: None
    return trainer


class StepVariant:
    def __init__(self, name: str, trainer: Trainer, batches: int = 2):
        self.name, self.trainer = name, trainer
        loader = trainer.run.train_loader
        loader.set_epoch(1)
        it = iter(loader)
        self.batches = [next(it) for _ in range(batches)]
        if trainer.stepper.stored_teacher is not None:  # fill the store for the timed views
            for batch in self.batches:
                trainer.stepper.stored_teacher(batch.images, *batch.keys)

    def run(self, steps: int, clock=time.perf_counter) -> float:
        trainer = self.trainer
        trainer.run.train_loader = Replay(self.batches, steps)
        trainer.state.step = 0
        started = clock()
        trainer.train_epoch(trainer.run.optimizer)
        return (clock() - started) / steps


def step_table(args, tmp: str) -> List[str]:
    lines = ["| teacher → student | step | ms / step | × vanilla step |", "|---|---|---:|---:|"]
    for teacher, student, *model_opts in STEP_PAIRS:
        path = make_teacher(teacher, os.path.join(tmp, f"{teacher}.pth"))
        store = os.path.join(tmp, f"store_{teacher}_{len(model_opts)}")
        variants = [StepVariant("vanilla", trainer_for(teacher, student, path, None, os.path.join(tmp, "v"),
                                                       *model_opts))]
        for method in ("kd", "crd"):
            variants.append(StepVariant(f"{method}, teacher on every batch", trainer_for(
                teacher, student, path, method, os.path.join(tmp, f"{method}_off"), "--no_teacher_store",
                *model_opts)))
            variants.append(StepVariant(f"{method}, filled store", trainer_for(
                teacher, student, path, method, os.path.join(tmp, f"{method}_on"), "--teacher_store", store,
                *model_opts)))
        if model_opts:  # "timm:vit_tiny_patch16_224 (img_size=32, patch_size=4)"
            student = f"{student} ({', '.join(model_opts[1::2])})"
        times: Dict[str, List[float]] = {v.name: [] for v in variants}
        ratios: Dict[str, List[float]] = {v.name: [] for v in variants}
        order = random.Random(args.seed)
        for round_ in range(args.rounds + 1):
            got = {}
            for variant in order.sample(variants, len(variants)):
                got[variant.name] = variant.run(args.steps)
            if round_ == 0:
                continue  # warm-up
            for name, seconds in got.items():
                times[name].append(seconds * 1000)
                ratios[name].append(seconds / got["vanilla"])
        for variant in variants:
            lines.append(f"| {teacher} → {student} | {variant.name} | {statistics.median(times[variant.name]):.0f} | "
                         f"{fmt_ratio(ratios[variant.name])} |")
        print("\n".join(lines[-len(variants):]), flush=True)
    return lines


def epoch_table(args, tmp: str) -> List[str]:
    teacher, student = PAIRS[0]
    path = make_teacher(teacher, os.path.join(tmp, "epoch_teacher.pth"))
    store = os.path.join(tmp, "epoch_store")
    rows = [("off", "--no_teacher_store"), ("cold (first run, empty store)", "--teacher_store", store),
            ("warm (second run, same seed)", "--teacher_store", store)]
    lines = [f"| KD epoch, {teacher} → {student}, {args.epoch_samples} samples | seconds | images / s | "
             "store hits |", "|---|---:|---:|---:|"]
    for i, (name, *flags) in enumerate(rows):
        trainer = trainer_for(teacher, student, path, "kd", os.path.join(tmp, f"epoch{i}"), "--data_opt",
                              f"train_size={args.epoch_samples}", *flags)
        started = time.perf_counter()
        trainer.train_epoch(trainer.run.optimizer)
        seconds = time.perf_counter() - started
        hits = f"{trainer.run.store.hit_rate:.0%}" if trainer.run.store is not None else "–"
        images = len(trainer.run.train_loader) * 64
        lines.append(f"| {name} | {seconds:.1f} | {images / seconds:.0f} | {hits} |")
        print(lines[-1], flush=True)
    return lines


class UncheckedStore(TeacherStore):
    """Reads as format 1 did, for this benchmark only: a filled bit is a hit (no checksum, no finiteness)."""

    def _intact(self, tap, filled, rows, idx, vw, flat):
        return filled


def check_table(args, tmp: str) -> List[str]:
    """A filled-store KD step with and without the per-entry check, in the process's CPU time (on
    a shared machine wall time varies by ±20% with the others' load). Each round runs them in the
    order A B B A (the second of two runs is often faster: ABBA cancels that and linear drift);
    the ratio is taken inside a round. The store's part of a step is also timed alone: one
    ``StoredTeacher`` call on a timed batch (all hits), median of 200; the last column is the
    check's cost (checked minus unchecked call) as a share of the checked step."""
    lines = ["| teacher → student | KD step, filled store | CPU ms / step | × unchecked step | store call, µs | "
             "check / step |", "|---|---|---:|---:|---:|---:|"]
    for teacher, student in PAIRS:
        path = make_teacher(teacher, os.path.join(tmp, f"check_{teacher}.pth"))
        store = os.path.join(tmp, f"check_store_{teacher}")
        variants = []
        for name in ("checked (format 2)", "unchecked (format 1 reads)"):
            trainer = trainer_for(teacher, student, path, "kd", os.path.join(tmp, f"check_{teacher}_{len(variants)}"),
                                  "--teacher_store", store)
            if name.startswith("unchecked"):
                plain = UncheckedStore(trainer.run.store.directory, trainer.run.store.meta)
                trainer.run.store = trainer.stepper.stored_teacher.store = plain
            variants.append(StepVariant(name, trainer))
        checked, unchecked = variants
        times: Dict[str, List[float]] = {v.name: [] for v in variants}
        ratios: List[float] = []
        for round_ in range(args.rounds + 1):
            got = {v.name: 0.0 for v in variants}
            for variant in (checked, unchecked, unchecked, checked):
                got[variant.name] += variant.run(args.steps, time.process_time) / 2
            if round_ == 0:
                continue  # warm-up
            for name, seconds in got.items():
                times[name].append(seconds * 1000)
            ratios.append(got[checked.name] / got[unchecked.name])
        calls = {v.name: store_call_us(v) for v in variants}
        share = (calls[checked.name] - calls[unchecked.name]) / (statistics.median(times[checked.name]) * 1000)
        for variant, ratio in ((checked, fmt_ratio(ratios)), (unchecked, "1.00")):
            lines.append(f"| {teacher} → {student} | {variant.name} | {statistics.median(times[variant.name]):.0f} | "
                         f"{ratio} | {calls[variant.name]:.0f} | {share if variant is checked else 0:.3%} |")
        print("\n".join(lines[-2:]), flush=True)
    return lines


def store_call_us(variant: StepVariant, repeats: int = 200) -> float:
    """Median µs of the trainer's StoredTeacher on the variant's first batch (every entry a hit)."""
    batch = variant.batches[0]
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        variant.trainer.stepper.stored_teacher(batch.images, *batch.keys)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def write_sections(path: str, header: str, sections: Dict[str, List[str]]) -> None:
    """Replace the named ``### `` sections of ``path`` (each with its own run header), keep the others."""
    kept: Dict[str, List[str]] = {}
    if os.path.exists(path):
        name = None
        for line in open(path).read().splitlines():
            if line.startswith("### "):
                name = line[4:]
                kept[name] = []
            elif name is not None:
                kept[name].append(line)
    for name, lines in sections.items():
        kept[name] = [header, "", *lines, ""]
    order = [title for title in TABLES.values() if title in kept] + [t for t in kept if t not in TABLES.values()]
    with open(path, "w") as fh:
        fh.write("\n".join(f"### {title}\n{chr(10).join(kept[title]).rstrip()}\n" for title in order))


def fill_table(args, tmp: str) -> List[str]:
    """Teacher forwards per second when filling (batches of views) vs a KD step's images per second."""
    teacher, student = PAIRS[0]
    path = make_teacher(teacher, os.path.join(tmp, "fill_teacher.pth"))
    trainer = trainer_for(teacher, student, path, "kd", os.path.join(tmp, "fill"), "--no_teacher_store")
    model, loader = trainer.run.teacher, trainer.run.train_loader
    index = torch.arange(args.fill_samples).repeat_interleave(162)
    view = torch.arange(162).repeat(args.fill_samples)
    started = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(index), 256):
            x = crop_flip_normalize(loader.images, index[lo:lo + 256], decode_views(view[lo:lo + 256]),
                                    loader.mean, loader.std, loader.padding)
            model(x)
    fill_rate = len(index) / (time.perf_counter() - started)
    kd = StepVariant("kd", trainer)
    kd.run(1)
    kd_rate = 64 / kd.run(args.steps * 2)
    fill_epochs_of_kd = 162 * kd_rate / fill_rate  # filling the store, in KD-training epochs of time
    lines = ["| | value |", "|---|---:|",
             f"| teacher forward while filling ({teacher}, batch 256) | {fill_rate:.0f} views / s |",
             f"| KD training step ({teacher} → {student}, batch 64) | {kd_rate:.0f} images / s |",
             f"| filling all 162 views of every image | 162 teacher-forward epochs = {fill_epochs_of_kd:.0f} "
             "KD epochs of time |"]
    for runs, epochs in ((22 * 3, 240), (10, 240)):
        lines.append(f"| a sweep of {runs} runs × {epochs} epochs computes | {runs * epochs} teacher-forward "
                     f"epochs; the filled store replaces them with 162 |")
    print("\n".join(lines), flush=True)
    return lines


TABLES = {"steps": "Step cost", "epoch": "Epoch time", "fill": "Filling the whole store",
          "check": "Cost of verifying each entry"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--epoch_samples", type=int, default=2048, help="training samples of the epoch table")
    parser.add_argument("--fill_samples", type=int, default=64, help="images whose 162 views the fill table renders")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round visiting order")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="folder for teacher_store.md")
    parser.add_argument("--tables", nargs="+", choices=sorted(TABLES), default=list(TABLES),
                        help="tables to run (default: all); the others' sections of teacher_store.md are kept")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    builders = {"steps": step_table, "epoch": epoch_table, "fill": fill_table, "check": check_table}
    sections = {}
    with tempfile.TemporaryDirectory() as tmp:
        for table in args.tables:
            print(TABLES[table].lower(), flush=True)
            sections[TABLES[table]] = builders[table](args, tmp)
    os.makedirs(args.out, exist_ok=True)
    header = (f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, {args.rounds} rounds of "
              f"{args.steps} steps, {time.strftime('%Y-%m-%d')}")
    write_sections(os.path.join(args.out, "teacher_store.md"), header, sections)
    print(f"\nwritten {os.path.join(args.out, 'teacher_store.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
