"""The data side of a run, chosen from the flags: which training loader, and the teacher store keyed
by its views.

``--loader auto`` picks the device loader for an in-memory set whose own augmentation is the
device loader's and whose data requests need no image of their own; image folders, DALI and
methods with a second view get the DataLoader. The teacher-output store serves a student's main
stage when the loader names its views (:attr:`data.loaders.TrainLoader.view_scheme`).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

from torch import nn

import data as datasets
from core.requests import DataRequest, Mixing
from data.loaders import ViewScheme, eval_loader
from data.mixing import with_mixing
from data.requests import unwrap
from distillers import ShapeSpec
from engine.errors import ConfigError
from engine.objective import Objective
from engine.store_topk import topk_codecs


def seeded_views_of(train_set):
    """The folder set with ``seeded_views`` under the training set's wrappers, or None."""
    while train_set is not None and not getattr(train_set, "seeded_views", False):
        train_set = getattr(train_set, "dataset", None)
    return train_set


def with_seeded_views(train_set, extra_views: Sequence[str], seed: int, dali: Optional[str]):
    """A set built with ``seeded_views`` renders each sample's view of an epoch from (seed, epoch,
    index) (:class:`~data.seeded_views.WithSeededViews`; DALI renders them in its pipeline)."""
    if not getattr(train_set, "seeded_views", False):
        return train_set
    if extra_views:
        raise ConfigError(f"--data_opt seeded_views=true renders one view per image; the method reads "
                          f"{1 + len(extra_views)}: drop seeded_views for this method")
    if dali:  # DALI renders the seeded views itself (data/dali_seeded.py)
        return train_set
    from data.seeded_views import WithSeededViews
    return WithSeededViews(train_set, seed)


def mixing_requests(args, task) -> List[DataRequest]:
    """``--mixup``/``--cutmix``: the :class:`~core.requests.Mixing` request every loader serves (data/mixing.py),
    for a task whose loss reads soft targets (classification's cross-entropy); none without the flags."""
    mixup, cutmix = getattr(args, "mixup", 0.0) or 0.0, getattr(args, "cutmix", 0.0) or 0.0
    if not (mixup > 0 or cutmix > 0) and not getattr(args, "label_smoothing", 0.0):
        return []
    if not getattr(task, "soft_targets", False):
        flag = "--mixup/--cutmix" if mixup > 0 or cutmix > 0 else "--label_smoothing"
        raise ConfigError(f"{flag}: the {args.dataset} task has no class targets for a cross-entropy to read "
                          "(mixing and label smoothing apply to classification)")
    return [Mixing(mixup, cutmix, args.mixup_switch_prob)] if mixup > 0 or cutmix > 0 else []


def loader_kind(args, served, requests: Sequence[DataRequest]) -> str:
    """``--loader``, with ``auto`` resolved: the device loader for an in-memory set whose requests come
    from the sample index alone (not with --dali), else the DataLoader."""
    if args.dali:
        if args.loader == "device":
            raise ConfigError("--loader device and --dali are two loaders: choose one")
        return "dali"
    if args.loader != "auto":
        return args.loader
    return "dataloader" if why_not_device(served) else "device"


def why_not_device(served) -> str:
    """Why the device loader cannot serve ``served`` ("" when it can): its items need the image (an
    extra view), or the set is not an in-memory CIFAR-style one."""
    from data.device_loader import DeviceTrainLoader
    _, servers = unwrap(served)
    needs_image = [type(s.request).__name__ for s in servers if not s.from_index]
    if needs_image:
        return f"the method's {', '.join(needs_image)} request needs each image on the DataLoader path"
    if not DeviceTrainLoader.serves(served):
        return "the set is not an in-memory CIFAR-style one"
    return ""


def seeded_scheme(args, train) -> Optional[ViewScheme]:
    """The view scheme of seeded ImageNet views (one per sample and epoch, keyed by the seed and the
    renderer: DALI's decoder and resampler differ from PIL's), or None for another set."""
    seeded = seeded_views_of(train)
    if seeded is None:
        return None
    geometry = seeded.geometry
    return ViewScheme(args.epochs, {"kind": "seeded_random_resized_crop",
                                    "renderer": f"dali-{args.dali}" if args.dali else "torchvision",
                                    "seed": args.seed, "size": geometry.crop, "scale": list(geometry.rrc_scale),
                                    "ratio": list(geometry.rrc_ratio)})


def check_keep_last(args, info, task, num_samples: int, batch_per_rank: int) -> bool:
    """``--keep_last_batch``, checked: one process (ranks would get unequal batches), a classification
    task (the metric samplers build their own batches), and, with mixing, an even last batch."""
    if not getattr(args, "keep_last_batch", False):
        return False
    if info.world_size != 1:
        raise ConfigError(f"--keep_last_batch trains on an epoch's last partial batch on one process; this run has "
                          f"{info.world_size} (drop the flag: ranks train on equal batches)")
    if not getattr(task, "keeps_last_batch", False):
        raise ConfigError(f"--keep_last_batch applies to classification; the {args.dataset} task's sampler builds "
                          f"its own batches")
    tail = num_samples % batch_per_rank
    if tail % 2 and (args.mixup or args.cutmix):
        raise ConfigError(f"--keep_last_batch with --mixup/--cutmix: the last batch holds {tail} samples "
                          f"({num_samples} % {batch_per_rank}), and mixing pairs each image with one half a batch "
                          f"away, so it needs an even batch")
    return True


def train_loader(args, info, task, kind: str, served, test_set, batch_per_rank: int):
    """(train loader, test loader): the device loader, DALI, or the task's DataLoader."""
    pin = info.device.type == "cuda"
    scheme = seeded_scheme(args, served)
    keep_last = check_keep_last(args, info, task, len(served), batch_per_rank)
    if kind == "device":  # batches augmented on the training device (data/device_loader.py)
        from data.device_loader import DeviceTrainLoader
        meta = datasets.dataset_info(args.dataset)
        train = DeviceTrainLoader.from_dataset(served, meta["mean"], meta["std"], info.rank, info.world_size,
                                               batch_per_rank, args.seed, info.device, keep_last=keep_last)
    elif kind == "dali":  # lazily: CIFAR runs never import DALI
        if scheme is not None:
            from data.dali_seeded import seeded_dali_loaders as dali_loaders
        else:
            from data.dali import dali_loaders
        train, test = dali_loaders(args.dali, args.num_workers, args.seed, info, batch_per_rank, served, test_set,
                                   keep_last)
        train.view_scheme = scheme
    else:
        train = task.train_loader(args, info, served, batch_per_rank, pin, scheme)
    if kind != "dali":
        test = eval_loader(test_set, info.rank, info.world_size, max(1, batch_per_rank // 2),
                           max(0, args.num_workers // 2), pin)
    if len(train) == 0:
        raise ConfigError(f"the training set ({len(served)} samples) is smaller than one batch "
                          f"({batch_per_rank} per process)")
    # --mixup/--cutmix: every loader's batches mixed on the device, once (data/mixing.py)
    return with_mixing(train, unwrap(served)[1], info.device, args.epochs, info.world_size), test


def open_teacher_store(args, teacher: nn.Module, spec: ShapeSpec, objective: Objective, train_loader, served,
                       num_samples: int, teacher_input: str = ""):
    """(the run's :class:`~engine.teacher_store.TeacherStore` or None, why it is off).

    The store serves a student's main stage when its loader names each batch's views
    (``view_scheme``): the device loader (a CIFAR view, one of 162, is a function of seed, epoch
    and sample) or ``--data_opt seeded_views=true`` on ImageNet-style folders (one seeded
    random-resized crop per sample and epoch: one slot per epoch, keyed by the seed). Every
    teacher tap the objective reads must be small per sample (logits, pooled); otherwise the
    teacher runs on every batch as without it, and the reason is returned for the log. A teacher fed
    its own normalisation or size (``teacher_input``) gives other outputs: that is part of the key.
    """
    from core.taps import tap_points_of
    from engine import teacher_store as ts

    taps = objective.teacher_taps
    if args.no_teacher_store or not taps:
        return None, "off (--no_teacher_store)" if taps else ""
    scheme = getattr(train_loader, "view_scheme", None)
    if scheme is None:
        blocked = why_not_device(served) if served is not None else ""
        remedy = (f"the device loader cannot serve this run ({blocked}): the teacher runs on every batch" if blocked
                  else "--loader device (in-memory CIFAR-style sets) or --data_opt seeded_views=true (image "
                       "folders) make views a function of (seed, epoch, sample) that the store can key")
        return None, ("off: this loader gives its views no id the store can key (the DataLoader's "
                      f"augmentations, DALI's random crops); {remedy}")
    modules = [name for name, point in tap_points_of(teacher).items() if point.io == "module"]
    ok, why = ts.storable_taps(spec.teacher, taps, modules=modules, reader=f"--distill {args.distill}")
    if not ok:
        return None, f"off: {why}"
    meta = datasets.dataset_info(args.dataset)
    views = {**scheme.description, **({"teacher_input": teacher_input} if teacher_input else {})}
    try:  # topk16: the logits as their top k in float16, the other taps in float16 (engine/store_topk.py)
        codecs = topk_codecs(args.teacher_store_dtype, getattr(args, "teacher_store_topk", 10), spec.teacher)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    dtype = "float16" if args.teacher_store_dtype == "topk16" else args.teacher_store_dtype
    key = ts.store_key(teacher, args.dataset, num_samples, meta["mean"], meta["std"], views, dtype=dtype,
                       data_options=args.data_opts, encoding={t: c.describe() for t, c in codecs.items()})
    # one rule, whatever the run folder: <--save_root>/teacher_store/<key> (the fill script's too)
    folder = args.teacher_store or ts.default_store_dir(args.save_root, key)
    try:
        store = ts.TeacherStore.open(folder, key, num_samples, scheme.num_views,
                                     {tap: codecs[tap].shape if tap in codecs else spec.teacher[tap] for tap in taps},
                                     ts.DTYPES[dtype])
    except ts.StoreSpaceError as err:
        if args.teacher_store is None:  # the default place is full: the run goes on as without a store
            return None, f"off: {err}"
        raise ConfigError(str(err)) from None
    except ts.StoreError as err:
        raise ConfigError(str(err)) from None
    store.codecs = codecs  # read by the StoredTeacher in front of it
    return store, ""
