#!/usr/bin/env python
"""Fill a teacher store with the teacher's outputs for every (sample, view) of a CIFAR-style set.

A frozen teacher's output for a training view (sample index, crop offsets, flip) never
changes, so it can be computed once and read back by every later distillation run
(engine/teacher_store.py). This renders each of the 162 views of every training image
exactly as the device loader does (data/device_loader.py ``crop_flip_normalize``), runs
the teacher on them in batches and stores the requested taps:

    python scripts/fill_teacher_store.py --path_t save/models/resnet32x4_vanilla/ckpt_epoch_240.pth \\
        --dataset cifar100 --taps logits pooled --teacher_store_dtype float16

Entries already filled are skipped, so an interrupted fill (Ctrl-C) resumes where it
stopped; a second run over a full store is a no-op. Every entry is verified against its
checksum first: a corrupt one is recomputed, rewritten and counted. A full disk or a
file-size limit stops the fill with one line (exit 2); what was written stays valid. The store folder defaults to
``<save_root>/teacher_store/<hash of the key>``, the folder a training run with the same
teacher, dataset and dtype looks in. The teacher runs in float32 (no AMP): the store is
meant to be exact.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data as datasets  # noqa: E402
from core.taps import FeatureTaps  # noqa: E402
from data.device_loader import DeviceTrainLoader, crop_flip_normalize, decode_views  # noqa: E402
from engine import checkpoint as ckpt  # noqa: E402
from engine.teachers.loading import load_teacher  # noqa: E402
from engine.teacher_store import (DTYPES, StoreError, TeacherStore, default_store_dir,  # noqa: E402
                                  storable_taps, store_key)

#: Samples whose pending views are gathered at a time: bounds the host memory of the plan.
SAMPLES_PER_CHUNK = 1024


def pending_batches(store: TeacherStore, taps: Sequence[str], samples: int, views: np.ndarray,
                    batch_size: int, progress: tqdm) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(index, view) batches of the entries not yet filled, sample-major; filled ones only
    advance the progress bar."""
    for start in range(0, samples, SAMPLES_PER_CHUNK):
        index = torch.arange(start, min(start + SAMPLES_PER_CHUNK, samples)).repeat_interleave(len(views))
        view = torch.from_numpy(views).repeat(len(index) // len(views))
        todo = ~store.filled(taps, index, view)
        progress.update(int(len(index) - todo.sum()))
        index, view = index[todo], view[todo]
        for first in range(0, len(index), batch_size):
            yield index[first:first + batch_size], view[first:first + batch_size]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path_t", required=True, help="teacher checkpoint")
    parser.add_argument("--model_t", default=None, help="teacher architecture (default: recorded in the checkpoint "
                                                        "or parsed from its folder name)")
    parser.add_argument("--dataset", default="cifar100", help="an in-memory CIFAR-style set: cifar100, cifar10, "
                                                              "synthetic")
    parser.add_argument("--data_root", "--data-root", default=None,
                        help="dataset folder (default: $DISTILLERS_DATA or ~/.cache/distillers/data)")
    parser.add_argument("--data_opt", dest="data_opts", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option, repeatable, as for training (e.g. train_size=2000 for synthetic)")
    parser.add_argument("--teacher_store", default=None, help="store folder (default: "
                        "<save_root>/teacher_store/<hash of teacher, dataset and dtype>)")
    parser.add_argument("--save_root", default=os.environ.get("DISTILLERS_SAVE_ROOT", "save"),
                        help="root of the default store folder, as for training ($DISTILLERS_SAVE_ROOT)")
    parser.add_argument("--taps", nargs="+", default=["logits", "pooled"], help="teacher taps to store")
    parser.add_argument("--teacher_store_dtype", choices=sorted(DTYPES), default="float32",
                        help="storage dtype: float16 halves the disk and rounds to ~3 significant digits")
    parser.add_argument("--batch_size", type=int, default=256, help="views per teacher forward")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=None, help="fill only the first N samples (tests, trials)")
    parser.add_argument("--views", type=int, nargs="+", default=None, help="fill only these view ids "
                        "(default: all (2p+1)^2 * 2)")
    args = parser.parse_args(argv)
    try:
        args.data_opts = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.data_opts)}
    except yaml.YAMLError as err:
        parser.error(f"--data_opt: {err}")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status: 0 done, 130 interrupted (rerun to resume), 2 for a wrong command line,
    checkpoint, dataset, a store that belongs to another setting, or a disk that is full."""
    args = parse_args(argv)
    try:
        return fill(args)
    except (ckpt.CheckpointError, StoreError, datasets.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def fill(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    info = datasets.dataset_info(args.dataset)
    train = datasets.build_dataset(args.dataset, args.data_root or datasets.default_data_root(), "train",
                                   **args.data_opts)
    device = torch.device(args.device)
    teacher = load_teacher(args.path_t, args.model_t, info["family"], train.num_classes).to(device)
    teacher.eval().requires_grad_(False)
    # the device loader's own checks and layout: uint8 NCHW images, [C, 1, 1] mean and std
    loader = DeviceTrainLoader.from_dataset(train, info["mean"], info["std"], 0, 1, args.batch_size, 0, device)
    images, padding = loader.images, loader.padding
    total_views = loader.view_scheme.num_views  # the loader names its views; the store keys them
    views = np.arange(total_views) if args.views is None else np.unique(args.views)
    if views.min() < 0 or views.max() >= total_views:
        print(f"--views: view ids are 0..{total_views - 1}", file=sys.stderr)
        return 2
    samples = len(images) if args.limit is None else min(args.limit, len(images))

    def render(index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        index, view = index.to(device), view.to(device)
        return crop_flip_normalize(images, index, decode_views(view, padding), loader.mean, loader.std, padding)

    taps = FeatureTaps(teacher, args.taps, stop_early=True)
    shapes = taps.shapes(render(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)))
    modules = {name for name, point in taps.points.items() if point.io == "module"}
    ok, reason = storable_taps(shapes, args.taps, modules=modules, reader="--taps")
    if not ok:
        print(reason, file=sys.stderr)
        return 2

    key = store_key(teacher, args.dataset, len(images), info["mean"], info["std"], loader.view_scheme.description,
                    dtype=args.teacher_store_dtype, data_options=args.data_opts)
    folder = args.teacher_store or default_store_dir(args.save_root, key)
    store = TeacherStore.open(folder, key, len(images), total_views, {t: shapes[t] for t in args.taps},
                              DTYPES[args.teacher_store_dtype])
    interrupted = False
    progress = tqdm(total=samples * len(views), unit="view", desc="teacher store", dynamic_ncols=True)
    filled = 0
    try:
        with torch.no_grad():
            for index, view in pending_batches(store, args.taps, samples, views, args.batch_size, progress):
                outputs = taps(render(index, view))
                store.write(index, view, {t: outputs[t] for t in args.taps})
                filled += len(index)
                progress.update(len(index))
    except KeyboardInterrupt:  # between two writes: every filled bit already sits over its values
        interrupted = True
    finally:
        progress.close()
        taps.close()
        store.close()
    corrupt = f", {store.corrupt_recomputed} corrupt entries recomputed" if store.corrupt_recomputed else ""
    print(f"{'interrupted (run again to resume): ' if interrupted else ''}filled {filled} entries "
          f"({progress.n}/{progress.total} requested entries present{corrupt}) in {folder}: "
          f"{store.size_on_disk() / 2**20:.1f} MiB on disk, {time.perf_counter() - started:.1f} s")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
