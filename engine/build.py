"""What a run is made of, built from the parsed flags: names checked, teacher, objective, data.

The :class:`~engine.trainer.Trainer` calls these once, in this order, before anything is
trained; each fails early with one line naming the bad value (an unknown method or model, a
teacher checkpoint that does not fit, an option of another method, a folder that holds a run).
Nothing here trains or writes a checkpoint.
"""
from __future__ import annotations

import os
import random
import warnings
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

import data as datasets
from core.taps import standard_taps
from distillers import Distiller, FeatureTaps, ShapeSpec, build_distiller
from distillers.base import ADDED_TERM, DISTILLERS, BatchNeeds
from engine import checkpoint as ckpt
from engine.config import ConfigError, method_options
from engine.loaders import eval_loader
from engine.objective import Objective
from engine.run_folder import RunFolder
from models import create_model
from models.registry import resolve_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shape_spec(model: nn.Module, example: torch.Tensor) -> Dict[str, Any]:
    """Per-sample shapes of every standard tap of ``model``, from one dry-run forward."""
    with FeatureTaps(model, standard_taps(model)) as taps:
        return taps.shapes(example)


def check_names(args, kind: str) -> None:
    """Fail on an unknown method, model or dataset before any data is read."""
    family = datasets.dataset_info(args.dataset)["family"]
    names = [args.model] if kind == "teacher" else [args.model_s] + ([args.model_t] if args.model_t else [])
    for name in names:
        if ":" not in name:
            resolve_model(name, family)
    if kind == "student":
        DISTILLERS.get(args.distill)


def check_run_folder(run_dir: str, args) -> None:
    """Refuse, before any data loader starts, a folder that cannot take this run."""
    RunFolder.check_writable(run_dir)
    holds_run = os.path.isfile(os.path.join(run_dir, "latest.pth"))
    if holds_run and not args.resume and not args.overwrite:
        raise ConfigError(f"run folder '{run_dir}' already holds a run (latest.pth): continue it with "
                          "--resume, start it over with --overwrite, or choose another --save_dir / --trial")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run, or start it over")


def run_name(args, kind: str, teacher_arch: str, weights: Dict[str, float]) -> str:
    """The default run folder's name: architecture(s), dataset, method, weights, trial (and seed)."""
    clean = lambda s: str(s).replace(":", "-").replace("/", "-")  # noqa: E731
    seed = "" if str(args.seed) == str(args.trial) else f"_seed_{args.seed}"  # two seeds, two folders
    if kind == "teacher":
        return clean(f"{args.model}_{args.dataset}_lr_{args.learning_rate}_decay_{args.weight_decay}"
                     f"_trial_{args.trial}{seed}")
    return clean(f"S_{args.model_s}_T_{teacher_arch or 'teacher'}_{args.dataset}_{args.distill}"
                 f"_r_{weights['gamma']}_a_{weights['alpha']}_b_{weights['beta']}_trial_{args.trial}{seed}")


def load_teacher(path: str, model_t: Optional[str], family: str, num_classes: int, **model_kwargs) -> nn.Module:
    """Teacher from our checkpoint or a RepDistiller one; architecture recorded, given or parsed."""
    state = ckpt.load(path)
    arch = model_t or state.get("arch") or ckpt.arch_from_path(path)
    try:
        model = create_model(arch, num_classes=num_classes,
                             family=None if ":" in str(arch) else family, **model_kwargs)
    except KeyError as err:
        raise ckpt.CheckpointError(
            f"cannot tell the teacher's architecture from '{path}' (got '{arch}'): pass --model_t. {err}"
        ) from None
    ckpt.load_weights(model, ckpt.model_state(state), f"teacher checkpoint '{path}'")
    return model


class Distillation(NamedTuple):
    """A student run's loss: the chosen method, the KD term ``-a`` adds (or None), the weights
    and the objective made of them."""

    method: Distiller
    added_term: Optional[Distiller]
    weights: Dict[str, float]
    objective: Objective


def build_method(name: str, spec: ShapeSpec, options: Dict[str, Any], device) -> Distiller:
    try:
        return build_distiller(name, spec, **options).to(device)
    except (ValueError, TypeError) as err:  # the method's own message says why
        raise ConfigError(f"--distill {name} with teacher {spec.extra['teacher_arch']} and "
                          f"student {spec.extra['student_arch']}: {err}") from None


def build_distillation(args, task, spec: ShapeSpec, device) -> Distillation:
    """The method with its options, the weights (command line, else the method's reference
    values), the KD term when ``alpha`` is not 0, and the task's own terms: one objective."""
    cls = DISTILLERS.get(args.distill)
    weights = dict(cls.default_weights)
    weights.update({k: getattr(args, k) for k in ("gamma", "alpha", "beta") if getattr(args, k) is not None})
    task.check_weights(weights)
    options = method_options(args)
    kd_names = set(DISTILLERS.get(ADDED_TERM).option_names())
    stray = sorted(set(options) - set(cls.option_names()) - kd_names)
    if stray:
        raise ConfigError(f"option(s) {', '.join('--' + s for s in stray)} do not apply to --distill "
                          f"{args.distill}; its options: {', '.join(cls.option_names()) or 'none'}")
    method = build_method(args.distill, spec, {k: v for k, v in options.items() if k in cls.option_names()}, device)
    added = None
    if weights["alpha"]:  # the KD term any method can add; --kd_T and --logit_std are its options too
        added = build_method(ADDED_TERM, spec, {k: v for k, v in options.items() if k in kd_names}, device)
    objective = Objective([(weights["beta"], method), (weights["alpha"], added)], task.own_terms(weights))
    if method.init_stage() is not None and not method.student_taps and weights["beta"]:
        warnings.warn(f"--distill {args.distill} has no main-stage loss: -b {weights['beta']} has no effect "
                      "(its loss acts in the initialisation stage)")
    return Distillation(method, added, weights, objective)


def wrap_train_set(train_set, needs: BatchNeeds, seed: int, dali: bool = False):
    """The training set serving what the objective's terms declared (:class:`BatchNeeds`).

    A set built with ``seeded_views`` (ImageNet-style folders) renders each sample's view of
    an epoch from (seed, epoch, index) (through :class:`~data.seeded_views.WithSeededViews`,
    or in DALI's pipeline with ``dali``) and always serves the index: with the epoch, it
    names the view for the teacher store."""
    seeded = getattr(train_set, "seeded_views", False)
    if seeded:
        from data.seeded_views import WithSeededViews
        if needs.views > 1:
            raise ConfigError(f"--data_opt seeded_views=true renders one view per image; --distill reads "
                              f"{needs.views}: drop seeded_views for this method")
        if not dali:  # DALI renders the seeded views itself (data/dali_seeded.py)
            train_set = WithSeededViews(train_set, seed)
    train = datasets.WithViews(train_set) if needs.views > 1 else train_set
    if needs.contrast_k:
        return datasets.WithContrast(train, k=needs.contrast_k, mode=needs.contrast_mode, seed=seed)
    if needs.index or seeded:
        return datasets.WithIndex(train)
    return train


def seeded_views_of(train_set):
    """The folder set with ``seeded_views`` under the training set's wrappers, or None."""
    while train_set is not None and not getattr(train_set, "seeded_views", False):
        train_set = getattr(train_set, "dataset", None)
    return train_set


def loader_kind(args, train, needs: BatchNeeds) -> str:
    """``--loader``, with ``auto`` resolved: the device loader for an in-memory set read with one
    view per image (not with --dali), else the DataLoader."""
    if args.loader != "auto":
        return args.loader
    from data.device_loader import DeviceTrainLoader
    if args.dali or needs.views > 1 or not DeviceTrainLoader.serves(train):
        return "dataloader"
    return "device"


def build_loaders(args, info, task, train, test_set, batch_per_rank: int, needs: BatchNeeds, device):
    """(train loader, test loader): the device loader, DALI, or the task's DataLoader."""
    pin = device.type == "cuda"
    kind = loader_kind(args, train, needs)
    if kind == "device" or args.dali:
        if needs.views > 1:
            raise ConfigError(f"--{'dali' if args.dali else 'loader device'} serves one augmented view per "
                              f"image; --distill {args.distill} reads {needs.views}: drop it for this method")
        if kind == "device" and args.dali:
            raise ConfigError("--loader device and --dali are two loaders: choose one")
    if kind == "device":  # batches augmented on the training device (data/device_loader.py)
        from data.device_loader import DeviceTrainLoader
        meta = datasets.dataset_info(args.dataset)
        train_loader = DeviceTrainLoader.from_dataset(train, meta["mean"], meta["std"], info.rank, info.world_size,
                                                      batch_per_rank, args.seed, device)
    elif args.dali:  # lazily: CIFAR runs never import DALI
        if seeded_views_of(train) is not None:
            from data.dali_seeded import seeded_dali_loaders as dali_loaders
        else:
            from data.dali import dali_loaders
        train_loader, test_loader = dali_loaders(args.dali, args.num_workers, args.seed, info, batch_per_rank,
                                                 train, test_set)
    else:
        train_loader = task.train_loader(args, info, train, batch_per_rank, pin)
    if not args.dali:
        test_loader = eval_loader(test_set, info, max(1, batch_per_rank // 2), max(0, args.num_workers // 2), pin)
    if len(train_loader) == 0:
        raise ConfigError(f"the training set ({len(train)} samples) is smaller than one batch "
                          f"({batch_per_rank} per process)")
    return train_loader, test_loader


def open_teacher_store(args, teacher: nn.Module, spec: ShapeSpec, objective: Objective, train_loader,
                       train_set):
    """(the run's :class:`~engine.teacher_store.TeacherStore` or None, why it is off).

    The store serves a student's main stage when its batches are views that can be named
    again: ``--loader device`` (a CIFAR view, one of 162, is a function of seed, epoch and
    sample) or ``--data_opt seeded_views=true`` on ImageNet-style folders (one seeded
    random-resized crop per sample and epoch: the store holds one slot per epoch, keyed by
    the seed). Every teacher tap the objective reads must be small per sample (logits,
    pooled); otherwise the teacher runs on every batch as without it, and the reason is
    returned for the log.
    """
    from core.taps import tap_points_of
    from engine import teacher_store as ts

    taps = objective.teacher_taps
    if args.no_teacher_store or not taps:
        return None, "off (--no_teacher_store)" if taps else ""
    seeded = seeded_views_of(train_set)
    if not hasattr(train_loader, "last_views") and seeded is None:
        return None, ("off: the DataLoader path draws each augmentation at random (as DALI's random "
                      "crop does), so a view cannot be named again; --loader device (in-memory CIFAR-style "
                      "sets) or --data_opt seeded_views=true (image folders) make views a function of "
                      "(seed, epoch, sample) that the store can key")
    modules = [name for name, point in tap_points_of(teacher).items() if point.io == "module"]
    ok, why = ts.storable_taps(spec.teacher, taps, modules=modules, reader=f"--distill {args.distill}")
    if not ok:
        return None, f"off: {why}"
    meta = datasets.dataset_info(args.dataset)
    if seeded is not None:  # one view per sample and epoch, drawn from the seed
        geometry = seeded.geometry  # DALI's decoder and resampler differ from PIL's: the renderer is keyed
        scheme = {"kind": "seeded_random_resized_crop", "renderer": f"dali-{args.dali}" if args.dali else "torchvision",
                  "seed": args.seed, "size": geometry.crop, "scale": list(geometry.rrc_scale),
                  "ratio": list(geometry.rrc_ratio)}
        key = ts.store_key(teacher, args.dataset, len(train_set), meta["mean"], meta["std"],
                           dtype=args.teacher_store_dtype, data_options=args.data_opts, scheme=scheme)
        views = args.epochs
    else:
        key = ts.store_key(teacher, args.dataset, len(train_set), meta["mean"], meta["std"],
                           padding=train_loader.padding, size=int(train_loader.images.shape[-1]),
                           flip=train_loader.flip, dtype=args.teacher_store_dtype, data_options=args.data_opts)
        views = ts.num_views(train_loader.padding)
    # the folder that holds run folders: --save_root, or the one holding an explicit --save_dir
    runs_root = os.path.dirname(os.path.abspath(args.save_dir)) if args.save_dir else args.save_root
    folder = args.teacher_store or ts.default_store_dir(runs_root, key)
    try:
        store = ts.TeacherStore.open(folder, key, len(train_set), views,
                                     {tap: spec.teacher[tap] for tap in taps}, ts.DTYPES[args.teacher_store_dtype])
    except ts.StoreError as err:
        raise ConfigError(str(err)) from None
    return store, ""
