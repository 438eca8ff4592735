#!/usr/bin/env python
"""Per-method training cost on resnet32x4 -> resnet8x4 (or ``--pair``), batch 64, CPU (a benchmark, not a test).

    python benchmarks/cost_table.py [--rounds 7] [--steps 2] [--readme benchmarks/README.md]
    python benchmarks/cost_table.py --pair resnet32x4 timm:vit_tiny_patch16_224 \
        --student_opt img_size=32 --student_opt patch_size=4      # another pair, e.g. a ViT student

For every classification method: the median milliseconds of one training step, its ratio
to a vanilla resnet8x4 step and to a KD step, the peak memory of a step, and the method's
extra trainable parameters. Also the overhead of the project itself: a KD (and a vanilla)
step through the trainer against a hand-written loop on the same architectures.

What is timed. One step is the body of the trainer's loop, run by ``Trainer.train_epoch``
over prepared batches: the taps, the teacher forward under no_grad, the distiller, the
loss, backward, the optimizer step and the loop's bookkeeping (finite-loss check, RNG
snapshot, running sums). Data loading and augmentation are not timed (the batches are
drawn from the trainer's own loader once, before timing). Methods with an initialisation
stage (AB, FT, FSP) are timed in their main stage, which is what most of a run costs;
their init-stage step is timed as a separate row ``<method> (init stage)``.

Drift. This machine's speed drifts (shared cores), so every variant is built once, then
all are run in rounds, each round visiting every variant in a fresh random order with
``--steps`` steps each (after one warm-up round). A ratio is computed inside each round
(both variants measured minutes apart at most) and the table gives its median over rounds
with the interquartile range.

Memory. CPU has no allocator peak counter, so each variant runs again in a child process
with glibc's mmap threshold fixed at 128 KiB (every large tensor is its own mapping,
returned to the OS when freed, so the resident set follows the live tensors): after two
warm-up steps the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and one step
runs. "step peak" = peak RSS during that step minus RSS before it: activations, gradients,
temporaries and gathered memory rows, i.e. what a step needs on top of the resident model,
optimizer state and buffers. The persistent extras (the method's parameters, their
momentum, and its buffers such as memory banks) are reported separately from their sizes.

Data: ``costrandom``, a CIFAR-100-shaped random dataset of 50,000 samples registered
here (memories sized as on CIFAR-100; images generated per index, nothing stored).
The teacher has random weights with BatchNorm statistics from one random batch.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from core.batch import Batch  # noqa: E402
from data.registry import DATASETS, DataError, register_dataset  # noqa: E402
from distillers import list_distillers  # noqa: E402
from distillers.base import DISTILLERS, Distiller, NotApplicable  # noqa: E402
from engine import config  # noqa: E402
from engine.checkpoint import save_atomic  # noqa: E402
from engine.distributed import DistInfo  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from engine.loop import Trainer  # noqa: E402
from engine.parsers import key_value  # noqa: E402
from models import create_model  # noqa: E402



@dataclass(frozen=True)
class Pair:
    """The teacher and student timed, with their network options (a ViT on 32x32 needs img_size/patch_size)."""
    teacher: str = "resnet32x4"
    student: str = "resnet8x4"
    teacher_opts: Tuple[Tuple[str, object], ...] = ()
    student_opts: Tuple[Tuple[str, object], ...] = ()

    @property
    def label(self) -> str:  # "resnet32x4 → timm:vit_tiny_patch16_224 (img_size=32, patch_size=4)"
        def name(arch, opts):
            return arch + (f" ({', '.join(f'{k}={v}' for k, v in opts)})" if opts else "")
        return f"{name(self.teacher, self.teacher_opts)} → {name(self.student, self.student_opts)}"

    def student_argv(self) -> List[str]:
        return [a for k, v in self.student_opts for a in ("--model_opt", f"{k}={v}")]

    @property
    def stem(self) -> str:
        """Output file stem: cost_table for the default pair, else cost_table_<teacher>_<student>."""
        if (self.teacher, self.student) == (DEFAULT_PAIR.teacher, DEFAULT_PAIR.student):
            return "cost_table"
        return "cost_table_" + "_".join(re.sub(r"[^A-Za-z0-9_.-]", "-", a) for a in (self.teacher, self.student))

    def argv(self) -> List[str]:
        """This pair as this script's flags (for the memory probes' child processes)."""
        return (["--pair", self.teacher, self.student]
                + [a for k, v in self.teacher_opts for a in ("--teacher_opt", f"{k}={v}")]
                + [a for k, v in self.student_opts for a in ("--student_opt", f"{k}={v}")])


DEFAULT_PAIR = Pair()
NUM_CLASSES, NUM_DATA = 100, 50_000
METRIC_LEARNING = {"aomd", "contrastive", "darkrank", "metric", "metric_at", "metric_fitnet", "metric_rkd",
                   "metric_sp", "triplet"}
HAND_VANILLA, HAND_KD, VANILLA = "hand-written vanilla", "hand-written KD", "vanilla"
INIT = " (init stage)"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


class RandomCifar(Dataset):
    """N random 32x32 RGB images with balanced labels, generated from the index as PIL images and
    read through a torchvision ``transform`` as CIFAR's are (so a method's extra augmented view,
    MLKD's and CRLD's, can be served)."""

    def __init__(self, size: int, num_classes: int, seed: int):
        import torchvision.transforms as T

        self.size, self.num_classes, self.seed = size, num_classes, seed
        self.targets = torch.arange(size) % num_classes
        self.transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        from PIL import Image

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g)
        return self.transform(Image.fromarray(pixels.numpy())), int(self.targets[i])


if "costrandom" not in DATASETS:
    @register_dataset("costrandom", family="cifar", num_classes=NUM_CLASSES, input_size=32,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    def costrandom(root, split, augment, *, train_size=NUM_DATA, test_size=64, seed=0):
        return RandomCifar(train_size if split == "train" else test_size, NUM_CLASSES, seed + (split == "test"))


def classification_methods() -> List[str]:
    return [n for n in list_distillers() if n not in METRIC_LEARNING
            and DISTILLERS.meta(n).get("task", "classification") == "classification"]


def make_teacher(pair: Pair, path: str) -> str:
    torch.manual_seed(1)
    model = create_model(pair.teacher, num_classes=NUM_CLASSES, **dict(pair.teacher_opts))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))
    save_atomic({"arch": pair.teacher, "model": model.state_dict(), "model_options": dict(pair.teacher_opts)},
                path)
    return path


class Batches:
    """The trainer's loader protocol over prepared batches (no loading inside the timing)."""

    def __init__(self, batches, steps: int):
        self.batches, self.steps = batches, steps

    def set_epoch(self, epoch, skip=0):
        pass

    def __len__(self):
        return self.steps

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


# ----------------------------------------------------------------------------- variants
class Variant:
    name = ""
    extra_params = 0
    persistent_bytes = 0
    note = ""

    def run(self, steps: int) -> float:
        """Mean seconds per step over ``steps`` steps."""
        raise NotImplementedError


def _argv(batch: int, save_dir: str) -> List[str]:
    return ["--dataset", "costrandom", "--batch_size", str(batch), "--num_workers", "0", "--no_tensorboard",
            "--epochs", "1", "--save_dir", save_dir]


class TrainerVariant(Variant):
    def __init__(self, name: str, method: Optional[str], pair: Pair, batch: int, teacher_path: str, save_dir: str,
                 init_stage: bool = False, extra: Sequence[str] = ()):
        self.name = name
        argv = _argv(batch, save_dir) + pair.student_argv() + list(extra)
        if method is None:
            trainer = Trainer(config.parse(config.teacher_parser(), argv + ["--model", pair.student]), DistInfo(),
                              "teacher")
        else:
            method, _, optimizer = method.partition("+")  # "kd+dot": KD stepped by the DOT optimiser
            argv += ["--model_s", pair.student, "--path_t", teacher_path, "--distill", method]
            argv += ["--optimizer", optimizer] if optimizer else []
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = Trainer(config.parse(config.student_parser(), argv), DistInfo(), "student")
        trainer.run.log = lambda *a, **k: None
        self.trainer, self.stage = trainer, None
        self.optimizer = trainer.run.optimizer
        method_module = trainer.run.method
        if method_module is not None and method_module.init_stage() is not None:
            stage = method_module.init_stage()
            if init_stage:  # the init stage's own SGD, as the trainer runs it
                self.stage = stage
                self.optimizer = trainer.enter_stage(stage)
                self.extra_params = sum(p.numel() for p in stage.parameters)
                self.note = ("trains the student backbone too; " if stage.trains_student else "") + \
                    f"{stage.epochs} epochs in the reference"
            else:  # main stage, as after the init stage
                self.optimizer = trainer.enter_stage(None)
                self.note = "main stage (init stage timed separately)"
        if method_module is not None and not init_stage:
            self.extra_params = sum(p.numel() for p in method_module.parameters() if p.requires_grad)
        if method_module is not None:
            self.persistent_bytes = (sum(p.numel() * p.element_size() * (2 if p.requires_grad else 1)
                                         for p in method_module.parameters())  # + momentum
                                     + sum(b.numel() * b.element_size() for b in method_module.buffers()))
        loader = trainer.run.train_loader
        loader.set_epoch(1)
        it = iter(loader)
        self.batches = [next(it) for _ in range(2)]

    def run(self, steps: int) -> float:
        trainer = self.trainer
        trainer.run.train_loader = Batches(self.batches, steps)
        trainer.state.step = 0
        started = time.perf_counter()
        trainer.train_epoch(self.optimizer, self.stage)
        return (time.perf_counter() - started) / steps


class HandVariant(Variant):
    """The same architectures in a plain PyTorch loop: no taps, no distiller, no bookkeeping."""

    def __init__(self, name: str, kd: bool, pair: Pair, batches, teacher_path: str):
        self.name = name
        self.student = create_model(pair.student, num_classes=NUM_CLASSES, **dict(pair.student_opts))
        self.teacher = None
        if kd:
            self.teacher = create_model(pair.teacher, num_classes=NUM_CLASSES, **dict(pair.teacher_opts))
            self.teacher.load_state_dict(torch.load(teacher_path, weights_only=True)["model"])
            self.teacher.eval().requires_grad_(False)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.batches = [(b.images, b.labels) for b in batches]
        self.note = "0.1·CE + 0.9·KD(T=4), plain loop" if kd else "CE, plain loop"

    def run(self, steps: int) -> float:
        self.student.train()
        started = time.perf_counter()
        for i in range(steps):
            x, y = self.batches[i % len(self.batches)]
            logits = self.student(x)
            if self.teacher is not None:
                with torch.no_grad():
                    t = self.teacher(x)
                kd = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
                loss = 0.1 * F.cross_entropy(logits, y) + 0.9 * kd
            else:
                loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return (time.perf_counter() - started) / steps


def build_variant(name: str, pair: Pair, batch: int, teacher_path: str, save_dir: str, kd_batches=None) -> Variant:
    if name == VANILLA:
        return TrainerVariant(name, None, pair, batch, teacher_path, save_dir)
    if name in (HAND_VANILLA, HAND_KD):
        return HandVariant(name, name == HAND_KD, pair, kd_batches, teacher_path)
    method, init_stage = (name[:-len(INIT)], True) if name.endswith(INIT) else (name, False)
    try:
        return TrainerVariant(name, method, pair, batch, teacher_path, save_dir, init_stage)
    except (ConfigError, NotApplicable):
        if "adapter" not in DISTILLERS.get(method.partition("+")[0]).option_names():
            raise
    # stages or shapes the reference cannot connect (a ViT pair): timed with the generic adapter, and said so
    variant = TrainerVariant(name, method, pair, batch, teacher_path, save_dir, init_stage, ("--adapter", "auto"))
    variant.note = "; ".join(filter(None, ["--adapter auto", variant.note]))
    return variant


def variant_names(methods: List[str]) -> List[str]:
    names = [HAND_VANILLA, VANILLA, HAND_KD] + list(methods)
    names += [m + INIT for m in methods
              if DISTILLERS.get(m.partition("+")[0]).init_stage is not Distiller.init_stage]
    return names


# ------------------------------------------------------------------------------ memory
def _status() -> Dict[str, int]:
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def memory_probe(name: str, pair: Pair, batch: int, teacher_path: str) -> Dict[str, float]:
    """In a child process with MALLOC_ENV: the peak RSS increase during one steady-state step."""
    with tempfile.TemporaryDirectory() as tmp:
        kd_batches = None
        if name in (HAND_VANILLA, HAND_KD):
            kd_batches = [Batch(torch.randn(batch, 3, 32, 32), torch.randint(0, NUM_CLASSES, (batch,)))
                          for _ in range(2)]
        variant = build_variant(name, pair, batch, teacher_path, tmp, kd_batches)
        variant.run(2)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS mark
        before = _status()["VmRSS"]
        variant.run(1)
        peak = _status()["VmHWM"]
    return {"step_peak_bytes": peak - before, "rss_before_bytes": before}


def measure_memory(names: List[str], pair: Pair, batch: int, teacher_path: str) -> Dict[str, Dict[str, float]]:
    out = {}
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", name, "--batch", str(batch),
               "--teacher", teacher_path] + pair.argv()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            print(f"memory probe {name} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  memory {name}: {out[name]['step_peak_bytes'] / 2**20:.0f} MiB", flush=True)
    return out


# ------------------------------------------------------------------------------- stats
def quantiles(values: List[float]):
    values = sorted(values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[1], q[0], q[2]


def fmt_ratio(values: List[float]) -> str:
    med, lo, hi = quantiles(values)
    return f"{med:.2f} ({lo:.2f}–{hi:.2f})"


def fmt_params(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--methods", nargs="*", default=None,
                        help="default: every classification method and kd+dot; METHOD+OPTIMIZER (kd+dot) steps "
                             "it with that --optimizer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="folder for cost_table.md and cost_table.csv")
    parser.add_argument("--readme", default=None,
                        help="also replace the table between the cost-table markers of this markdown file")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round visiting order")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--teacher", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pair", nargs=2, metavar=("TEACHER", "STUDENT"), default=None,
                        help=f"the architectures (default: {DEFAULT_PAIR.teacher} {DEFAULT_PAIR.student}); results go "
                             "to cost_table_<teacher>_<student>.{md,csv} unless it is the default pair")
    parser.add_argument("--teacher_opt", action="append", type=key_value("--teacher_opt"), default=[],
                        metavar="KEY=VALUE", help="teacher network option, repeatable")
    parser.add_argument("--student_opt", action="append", type=key_value("--student_opt"), default=[],
                        metavar="KEY=VALUE", help="student network option, repeatable (a ViT-Tiny on 32x32: "
                                                  "img_size=32 patch_size=4)")
    args = parser.parse_args(argv)
    teacher, student = args.pair or (DEFAULT_PAIR.teacher, DEFAULT_PAIR.student)
    pair = Pair(teacher, student, tuple(args.teacher_opt), tuple(args.student_opt))
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, pair, args.batch, args.teacher)))
        return 0

    methods = args.methods or classification_methods() + ["kd+dot"]  # DOT is an optimiser: timed on KD
    names = variant_names(methods)
    load_start = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = make_teacher(pair, os.path.join(tmp, "teacher.pth"))
        print(f"building {len(names)} variants ({pair.label}, batch {args.batch}, "
              f"{torch.get_num_threads()} threads)", flush=True)
        variants: Dict[str, Variant] = {}
        skipped: Dict[str, str] = {}
        for name in names:
            if name in (HAND_VANILLA, HAND_KD):
                continue
            try:
                variants[name] = build_variant(name, pair, args.batch, teacher_path,
                                               os.path.join(tmp, "runs", name))
                variants[name].run(1)  # some methods check the pair at their first step (FCFD's chained stages)
            except (ConfigError, DataError, NotApplicable) as err:  # e.g. DeiT and ViTKD need token students
                skipped[name] = str(err).splitlines()[0]
                print(f"  not timed: {name}: {skipped[name]}", flush=True)
        names = [n for n in names if n not in skipped]
        kd_batches = variants["kd"].batches if "kd" in variants else variants[VANILLA].batches
        for name in (HAND_VANILLA, HAND_KD):
            variants[name] = build_variant(name, pair, args.batch, teacher_path, tmp, kd_batches)
        variants = {n: variants[n] for n in names}

        order_rng = random.Random(args.seed)
        times: Dict[str, List[float]] = {n: [] for n in names}
        for r in range(args.rounds + 1):
            order = list(names)
            order_rng.shuffle(order)
            for name in order:
                seconds = variants[name].run(args.steps)
                if r:  # round 0 warms up (allocations, optimizer state, queues)
                    times[name].append(seconds)
            print(f"round {r}/{args.rounds}{' (warm-up)' if not r else ''} done, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
        memory = {} if args.no_memory else measure_memory(names, pair, args.batch, teacher_path)
    load_end = os.getloadavg()

    def ratios(name, base):
        return [a / b for a, b in zip(times[name], times[base])]

    rows = []
    vanilla_mem = memory.get(VANILLA, {}).get("step_peak_bytes")
    for name in names:
        v = variants[name]
        med, lo, hi = quantiles(times[name])
        mem = memory.get(name, {}).get("step_peak_bytes")
        rows.append({
            "variant": name,
            "ms_per_step": med * 1e3, "ms_q25": lo * 1e3, "ms_q75": hi * 1e3,
            **dict(zip(("x_vanilla", "x_vanilla_q25", "x_vanilla_q75"), quantiles(ratios(name, VANILLA)))),
            **dict(zip(("x_kd", "x_kd_q25", "x_kd_q75"),
                       quantiles(ratios(name, "kd")) if "kd" in times else (float("nan"),) * 3)),
            "step_peak_mib": mem / 2**20 if mem is not None else float("nan"),
            "x_vanilla_memory": mem / vanilla_mem if mem is not None and vanilla_mem else float("nan"),
            "extra_trainable_params": v.extra_params,
            "persistent_extra_mib": v.persistent_bytes / 2**20,
            "note": v.note,
            "ms_per_round": ";".join(f"{t * 1e3:.1f}" for t in times[name]),
        })

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    header = (f"{pair.label}, batch {args.batch}, CPU ({cpu}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}), {args.rounds} interleaved rounds × {args.steps} steps after one "
              f"warm-up round; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end; "
              f"{datetime.date.today().isoformat()}, {(time.time() - started) / 60:.0f} min.")
    md = markdown(rows, header, times, pair, skipped)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, pair.stem + ".md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(os.path.join(args.out, pair.stem + ".csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    if args.readme:
        update_readme(args.readme, md, pair.stem)
    print(md)
    return 0


def markdown(rows, header: str, times, pair: Pair, skipped: Optional[Dict[str, str]] = None) -> str:
    lines = [header, "",
             "| method | ms / step | × vanilla step | × KD step | step peak MiB | × vanilla memory | "
             "extra trainable params | persistent extra MiB | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        name = row["variant"]
        lines.append(
            f"| {name} | {row['ms_per_step']:.0f} ({row['ms_q25']:.0f}–{row['ms_q75']:.0f}) "
            f"| {row['x_vanilla']:.2f} ({row['x_vanilla_q25']:.2f}–{row['x_vanilla_q75']:.2f}) "
            f"| {row['x_kd']:.2f} ({row['x_kd_q25']:.2f}–{row['x_kd_q75']:.2f}) "
            f"| {_or_dash(row['step_peak_mib'], '.0f')} | {_or_dash(row['x_vanilla_memory'], '.2f')} "
            f"| {fmt_params(row['extra_trainable_params'])} | {row['persistent_extra_mib']:.1f} | {row['note']} |")
    overhead = []
    for project, hand in (("kd", HAND_KD), (VANILLA, HAND_VANILLA)):
        if project in times and hand in times:
            r = [a / b for a, b in zip(times[project], times[hand])]
            med, lo, hi = quantiles(r)
            overhead.append(f"- {project} step through the trainer / {hand} loop on the same architectures: "
                            f"median {med:.3f}, interquartile {lo:.3f}–{hi:.3f}, range {min(r):.3f}–{max(r):.3f} "
                            f"over {len(r)} rounds.")
    lines += ["", "Cells: median over rounds (interquartile range). Ratios are taken within each round, then "
              "the median over rounds. Step peak: peak RSS increase during one steady-state step "
              "(activations, gradients, temporaries); persistent extra: the method's parameters with their "
              "SGD momentum, plus its buffers (memory banks, queues).", "",
              "Overhead of the taps and the method bookkeeping:", ""] + overhead
    if skipped:
        lines += ["", f"Not timed on {pair.label} (the method does not apply to the pair):", ""]
        lines += [f"- {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"


def _or_dash(value: float, spec: str) -> str:
    """A cell's number, or a dash where it was not measured (the hand-written loops' memory)."""
    return "–" if math.isnan(value) else format(value, spec)


def update_readme(path: str, md: str, stem: str = "cost_table") -> None:
    """Replace the block between this pair's markers (``<!-- cost-table:start -->`` for the default pair,
    ``<!-- cost_table_<teacher>_<student>:start -->`` for another), or append it."""
    key = "cost-table" if stem == "cost_table" else stem
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    block = f"{start}\n{md}{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    sys.exit(main())
