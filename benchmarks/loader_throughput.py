#!/usr/bin/env python
"""Training-loader throughput on CIFAR-sized data: the device pipeline against the DataLoader paths.

Loaders, all with the CIFAR train augmentation (RandomCrop(32, padding=4), flip,
normalisation), batch ``--batch``, the trainer's sample order, no model:

* ``device``: data/device_loader.py's DeviceTrainLoader on the CPU, in this process,
  with ``--threads`` torch threads (each thread count its own row);
* ``PIL DataLoader``: data.loaders.DataLoaderTrainLoader (torch DataLoader, ``--workers``
  worker processes) over a real CifarPickles set, i.e. ``Image.fromarray`` and the
  torchvision transform per sample. Its files are the ``synthetic`` images written in
  the CIFAR-10 pickle layout to a temporary folder (outside the repository);
* ``tensor DataLoader``: the same over the ``synthetic`` set itself, whose transform
  runs on uint8 tensors (what ``--dataset synthetic`` trains with today).

A round times every loader once, in a new random order each round (the machine may be
shared: drift and other processes' load then hit every loader alike). A loader's time
covers ``--batches`` batches after its first one, which absorbs worker start-up, so the
rates are steady-state images per second. Images per CPU-second (this process and the
workers, over the whole pass) is the cost in core time, which the load of other processes
changes less. The table gives each loader's median and interquartile range over rounds,
and its ratio to the PIL DataLoader taken within each round.

    python benchmarks/loader_throughput.py --rounds 15
"""
from __future__ import annotations

import argparse
import os
import pickle
import platform
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
from data.device_loader import DeviceTrainLoader  # noqa: E402
from engine.distributed import DistInfo  # noqa: E402
from data.loaders import DataLoaderTrainLoader  # noqa: E402
from data.requests import Served  # noqa: E402


def write_cifar10(root: str, images: np.ndarray, labels) -> None:
    """``images`` uint8 [N, 32, 32, 3] as the official CIFAR-10 python files (5 train batches)."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    labels = [int(v) for v in labels]
    for k, part in enumerate(np.array_split(np.arange(len(images)), 5)):
        with open(os.path.join(folder, f"data_batch_{k + 1}"), "wb") as f:
            pickle.dump({"data": rows[part], "labels": [labels[i] for i in part]}, f)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": rows[:10], "labels": labels[:10]}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers, once joined)."""
    children = os.times()  # in clock ticks (10 ms): fine for workers that run for seconds
    return time.process_time() + children.children_user + children.children_system


def measure(loader, epoch: int, batches: int, threads: int):
    """(images per second, images per CPU-second) of one pass of ``batches`` + 1 batches.

    The rate is steady state (the first batch is not timed); the CPU cost covers the whole
    pass, a DataLoader's worker start-up and its prefetched batches included."""
    torch.set_num_threads(threads)
    cpu = cpu_seconds()
    loader.set_epoch(epoch)
    iterator = iter(loader)
    images = next(iterator)[0]
    size = images.shape[0]
    started = time.perf_counter()
    for _ in range(batches):
        images = next(iterator)[0]
    elapsed = time.perf_counter() - started
    assert images.shape[0] == size
    del iterator  # stops and joins a DataLoader's workers before the next loader runs
    return batches * size / elapsed, (batches + 1) * size / (cpu_seconds() - cpu)


def quartiles(values):
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=10000, help="synthetic train images")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per loader per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads of the device pipeline (one row each)")
    args = parser.parse_args(argv)
    if args.batches + 1 > args.train_size // args.batch:
        parser.error(f"--batches {args.batches} needs more than {args.train_size} images at batch {args.batch}")

    synthetic = data.build_dataset("synthetic", "", "train", train_size=args.train_size)
    meta = data.dataset_info("synthetic")
    tmp = tempfile.TemporaryDirectory(prefix="loader_throughput_")
    write_cifar10(tmp.name, synthetic.data.numpy(), synthetic.targets)
    pil = data.build_dataset("cifar10", tmp.name, "train", download=False)
    info, seed = DistInfo(), 0
    device = DeviceTrainLoader.from_dataset(synthetic, meta["mean"], meta["std"], 0, 1, args.batch, seed, "cpu")
    variants = {f"device, CPU, {t} torch thread{'s' * (t > 1)}": (device, t) for t in args.threads}
    variants[f"PIL DataLoader ({args.workers} workers)"] = (
        DataLoaderTrainLoader(Served(pil, seed=seed), info.rank, 1, args.batch, args.workers, seed), 1)
    variants[f"tensor DataLoader ({args.workers} workers)"] = (
        DataLoaderTrainLoader(Served(synthetic, seed=seed), info.rank, 1, args.batch, args.workers, seed), 1)
    pil_name = f"PIL DataLoader ({args.workers} workers)"

    load_start, started = os.getloadavg(), time.time()
    rates, per_cpu = {name: [] for name in variants}, {name: [] for name in variants}
    order = random.Random(0)
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        names = list(variants)
        order.shuffle(names)
        for name in names:
            loader, threads = variants[name]
            rate, efficiency = measure(loader, r, args.batches, threads)
            if r:
                rates[name].append(rate)
                per_cpu[name].append(efficiency)
        print(f"round {r}{' (warm-up)' if not r else ''}: load average {os.getloadavg()[0]:.1f}", file=sys.stderr,
              flush=True)
    load_end = os.getloadavg()
    tmp.cleanup()

    print(f"\n{args.train_size} synthetic 32x32 images, batch {args.batch}, {args.batches} timed batches per loader "
          f"x {args.rounds} interleaved rounds (after a warm-up round), no model; {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}; load average "
          f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end; {time.time() - started:.0f} s\n")
    print(f"| loader | img/s | x {pil_name} | img per CPU-second | x {pil_name} |")
    print("|---|---:|---:|---:|---:|")
    for name in variants:
        cells = []
        for values in (rates, per_cpu):
            m, q1, q3 = quartiles(values[name])
            x, x1, x3 = quartiles([a / b for a, b in zip(values[name], values[pil_name])])
            cells += [f"{m:,.0f} ({q1:,.0f}-{q3:,.0f})", f"{x:.1f} ({x1:.1f}-{x3:.1f})"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nmedian (interquartile range) over rounds; each ratio is taken within a round")


if __name__ == "__main__":
    main()
