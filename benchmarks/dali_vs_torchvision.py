#!/usr/bin/env python
"""Training-loader throughput: DALI CPU pipeline against the torchvision DataLoader.

Both loaders read the same ``imagenet`` tree with the same train augmentation
(random-resized crop, flip, normalisation), crop and batch, through the trainer's
own loader classes; no model runs. Repeats alternate between the two loaders so
that load from other processes hits both alike. A repeat times ``--batches``
batches after the first one (which absorbs worker start-up and pipeline build),
so the numbers are steady-state images per second; the table gives the median and
the min-max spread over repeats.

    python benchmarks/dali_vs_torchvision.py --data-root /tmp/tiny/tiny-imagenet-200 --crop 64
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import data  # noqa: E402
from data.dali import dali_loaders  # noqa: E402
from engine.distributed import DistInfo  # noqa: E402
from data.loaders import DataLoaderTrainLoader  # noqa: E402
from data.requests import Served  # noqa: E402


def images_per_second(loader, epoch: int, batches: int, batch_size: int) -> float:
    loader.set_epoch(epoch)
    iterator = iter(loader)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        images = next(iterator)[0]
    assert images.shape[0] == batch_size
    return batches * batch_size / (time.perf_counter() - started)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="imagenet-style tree (train/<class>/...)")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per loader, interleaved")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = DALI threads")
    args = parser.parse_args(argv)

    train = data.build_dataset("imagenet", args.data_root, "train", crop=args.crop)
    info = DistInfo()
    loaders = {
        f"torchvision DataLoader ({args.workers} workers)": DataLoaderTrainLoader(
            Served(train), info.rank, info.world_size, args.batch_size, args.workers, seed=0),
        f"DALI CPU ({args.workers} threads)": dali_loaders(
            "cpu", args.workers, 0, info, args.batch_size, train, train)[0],  # the train loader only
    }
    rates = {name: [] for name in loaders}
    for repeat in range(args.repeats):
        for name, loader in loaders.items():
            rates[name].append(images_per_second(loader, repeat + 1, args.batches, args.batch_size))
            print(f"repeat {repeat + 1} {name}: {rates[name][-1]:.0f} img/s", file=sys.stderr, flush=True)

    import nvidia.dali

    print(f"\n{len(train)} train images, crop {args.crop}, batch {args.batch_size}, {args.batches} timed "
          f"batches x {args.repeats} interleaved repeats; {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"DALI {nvidia.dali.__version__}\n")
    print("| loader | median img/s | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")
    base, dali = (statistics.median(v) for v in rates.values())
    print(f"\nDALI CPU / torchvision: x{dali / base:.2f} (medians)")


if __name__ == "__main__":
    main()
