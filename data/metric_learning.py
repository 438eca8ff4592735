"""Metric-learning datasets and the m-images-per-class batch loader (models-and-data.md §5).

Datasets (all registered with ``family="metric"`` and ``task="metric"``, so the trainer runs
them through :class:`engine.metric_learning_task.MetricTask`):

* ``cub200``: ``<root>/CUB_200_2011/images/<NNN.Name>/*.jpg``; classes sorted by folder name,
  the first 100 train (labels 0..99), the last 100 test (labels 100..199).
* ``cars196``: ``<root>/Cars196/car_ims/NNNNNN.jpg`` and ``<root>/Cars196/cars_annos.mat``
  (read with ``scipy.io.loadmat``: field 0 = relative path, field 5 = 1-based class); classes
  1..98 train (labels 0..97), 99..196 test (labels 98..195).
* ``stanford`` (Stanford Online Products): ``<root>/Stanford_Online_Products/Ebay_train.txt``,
  ``Ebay_test.txt`` (header line, then ``image_id class_id super_class_id path``); label =
  class_id - 1. Recall@K at 1, 10, 100, 1000.
* ``metric_folder``: any tree of class folders (images directly in a class folder or below
  it, e.g. Tiny-ImageNet's ``train/<wnid>/images/*.JPEG``), split **by class**: classes sorted
  by folder name, the first ``train_classes`` (default: half) train, the rest test.

Labels keep their global class ids (test labels do not start at 0), as in the references.
Splits are class-disjoint. Besides ``train`` and ``test`` each dataset has a ``val`` split: the
last ``val_classes`` of the training classes, held out of ``train`` for model selection
(CUB's reference val split: classes 80..99; default 20% of the training classes elsewhere).
``val_classes=0`` trains on every training class (the seeds' setting, which select on test).

Transforms (§5.2): train Resize((resize, resize)) -> RandomCrop(crop) -> flip; test
Resize((resize, resize)) -> CenterCrop(crop); ImageNet mean/std (ResNet backbones). Options
``resize`` (256) and ``crop`` (224). ``metric_folder`` uses the CIFAR-style pipeline at its
``image_size`` (64: Tiny-ImageNet's native size; random crop with 4-pixel padding and flip).
Every dataset takes ``skip_bad_images`` (unreadable files: :class:`data.folder.ImageFiles`).

The reference download URLs are dead: files are read from the data root, and a missing file
is an error that says which files are expected where and names the dataset's official page.

:class:`MetricTrainLoader` implements the trainer's loader protocol with the ``NPairs`` batch
rule (§5.4): per batch, visit the classes in a random order, take min(m, n_c) images of each
without replacement, stop at ``batch_size``. An epoch is ``iter_per_epoch`` batches. Batches
depend only on (seed, epoch, rank), so a resumed epoch replays exactly and every DDP rank draws
its own m-per-class batch of ``batch / world`` images.
"""
from __future__ import annotations

import os
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from data.folder import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, image_paths
from data.loaders import EpochPlan, collate, ignore_stop_signals
from data.registry import DATASETS
from data.transforms import cifar_transform

METRIC_SPLITS = ("train", "val", "test")
DEFAULT_KS = (1, 2, 4, 8)
SOP_KS = (1, 10, 100, 1000)

PAGES = {
    "cub200": "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
    "cars196": "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_ims.tgz and cars_annos.mat, "
               "the 'all images' release)",
    "stanford": "https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip)",
}


class MetricImages(ImageFiles, Dataset):
    """``(image, global label)`` pairs of one class-disjoint split; ``targets`` lists the labels."""

    def __init__(self, samples: List[Tuple[str, int]], transform: Callable, name: str, split: str,
                 classes: Optional[Dict[int, str]] = None, skip_bad_images: bool = False):
        if not samples:
            raise FileNotFoundError(f"{name}: the {split} split has no images")
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform
        self.name, self.split = name, split
        self.class_names = classes or {}
        self.num_classes = len(set(self.targets))
        self._init_image_files(skip_bad_images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, label = self.read(index)
        return self.transform(image), label

    def __repr__(self) -> str:
        return f"{self.name}[{self.split}]: {len(self)} images, {self.num_classes} classes"


# --------------------------------------------------------------------- splits and transforms
def _check_split(name: str, split: str) -> None:
    if split not in METRIC_SPLITS:
        raise ValueError(f"{name}: split must be one of {METRIC_SPLITS}, got {split!r}")


def class_split(train_ids: Sequence[int], test_ids: Sequence[int], split: str, val_classes: int,
                name: str) -> List[int]:
    """The class ids of ``split``: ``val`` = the last ``val_classes`` training classes."""
    train_ids, test_ids = sorted(train_ids), sorted(test_ids)
    if isinstance(val_classes, bool) or not isinstance(val_classes, int) or not 0 <= val_classes < len(train_ids):
        raise ValueError(f"{name}: val_classes must be an integer in [0, {len(train_ids) - 1}] "
                         f"(held-out training classes), got {val_classes!r}")
    if split == "test":
        return test_ids
    cut = len(train_ids) - val_classes
    if split == "val":
        if not val_classes:
            raise ValueError(f"{name}: no validation classes (val_classes=0): select on the test split "
                             "(--select test) or hold out training classes (--data_opt val_classes=N)")
        return train_ids[cut:]
    return train_ids[:cut]


def reference_transform(augment: bool, resize: int = 256, crop: int = 224,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """The references' square resize, then a random (train) or centre (test) crop."""
    resize, crop = int(resize), int(crop)
    if crop < 1 or resize < crop:
        raise ValueError(f"metric datasets: need 1 <= crop <= resize, got crop {crop}, resize {resize}")
    steps = [T.Resize((resize, resize))]
    steps += [T.RandomCrop(crop), T.RandomHorizontalFlip()] if augment else [T.CenterCrop(crop)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def _missing(name: str, what: str, root: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name}: {what} not found under the data root '{root}' (--data / --data-root). "
        f"The reference download URLs are dead; obtain the dataset from its official page, "
        f"{PAGES[name]}, and unpack it so that {LAYOUTS[name]}")


LAYOUTS = {
    "cub200": "<root>/CUB_200_2011/images/<NNN.Class_name>/*.jpg exists (200 class folders)",
    "cars196": "<root>/Cars196/cars_annos.mat and <root>/Cars196/car_ims/NNNNNN.jpg exist",
    "stanford": "<root>/Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt and the "
                "<super>_final/ image folders exist",
}


def _pick(samples: List[Tuple[str, int]], ids: Sequence[int]) -> List[Tuple[str, int]]:
    keep = set(ids)
    return [(p, label) for p, label in samples if label in keep]


# ------------------------------------------------------------------------------ datasets
def _register(name: str, num_classes: Optional[int], input_size: int, ks: Sequence[int] = DEFAULT_KS):
    # register_dataset() has no task argument; the registry takes any metadata.
    return DATASETS.register(name, family="metric", task="metric", num_classes=num_classes,
                             input_size=input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             recall_ks=tuple(ks), image_files=True)


@_register("cub200", num_classes=100, input_size=224)
def cub200(root: str, split: str, augment: bool, val_classes: int = 20, resize: int = 256,
           crop: int = 224, skip_bad_images: bool = False) -> MetricImages:
    """CUB-200-2011: first 100 classes train (val = classes 80..99 by default), last 100 test."""
    _check_split("cub200", split)
    root = os.path.expanduser(root)
    images = os.path.join(root, "CUB_200_2011", "images")
    if not os.path.isdir(images):
        raise _missing("cub200", f"'{os.path.join('CUB_200_2011', 'images')}'", root)
    folders = sorted(e.name for e in os.scandir(images) if e.is_dir())
    if len(folders) != 200:
        raise FileNotFoundError(f"cub200: expected 200 class folders in '{images}', found {len(folders)}; "
                                f"{LAYOUTS['cub200']} ({PAGES['cub200']})")
    ids = class_split(range(100), range(100, 200), split, val_classes, "cub200")
    samples = [(path, c) for c in ids for path in image_paths(os.path.join(images, folders[c]))]
    return MetricImages(samples, reference_transform(augment, resize, crop), "cub200", split,
                        {c: folders[c] for c in ids}, skip_bad_images)


def _scalar(value):
    import numpy as np
    return np.asarray(value).reshape(-1)[0]


@_register("cars196", num_classes=98, input_size=224)
def cars196(root: str, split: str, augment: bool, val_classes: int = 20, resize: int = 256,
            crop: int = 224, skip_bad_images: bool = False) -> MetricImages:
    """Cars196: classes 1..98 train (val = the last 20 of them by default), 99..196 test."""
    _check_split("cars196", split)
    root = os.path.expanduser(os.path.join(root, "Cars196"))
    annos = os.path.join(root, "cars_annos.mat")
    if not os.path.isfile(annos):
        raise _missing("cars196", "'Cars196/cars_annos.mat'", os.path.dirname(root))
    try:
        import scipy.io
    except ImportError:
        raise ImportError("cars196 reads cars_annos.mat with scipy: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(annos)
        records = mat["annotations"][0]
        names = [str(_scalar(n)) for n in mat["class_names"][0]] if "class_names" in mat else []
    except Exception as err:
        raise FileNotFoundError(f"cars196: cannot read '{annos}' ({err}); expected the 'annotations' "
                                f"struct array of {PAGES['cars196']}") from None
    samples = [(os.path.join(root, str(_scalar(r[0]))), int(_scalar(r[5])) - 1) for r in records]
    ids = class_split(range(98), range(98, 196), split, val_classes, "cars196")
    picked = _pick(samples, ids)
    missing = [p for p, _ in picked[:1] + picked[-1:] if not os.path.isfile(p)]
    if missing:
        raise _missing("cars196", f"image '{missing[0]}' (listed in cars_annos.mat)", os.path.dirname(root))
    return MetricImages(picked, reference_transform(augment, resize, crop), "cars196", split,
                        {c: names[c] for c in ids if c < len(names)}, skip_bad_images)


@_register("stanford", num_classes=11318, input_size=224, ks=SOP_KS)
def stanford(root: str, split: str, augment: bool, val_classes: int = 2264, resize: int = 256,
             crop: int = 224, skip_bad_images: bool = False) -> MetricImages:
    """Stanford Online Products: Ebay_train.txt (11,318 classes; val = the last 2,264 of them by
    default, 20%) and Ebay_test.txt (11,316 classes)."""
    _check_split("stanford", split)
    root = os.path.expanduser(root)
    base = os.path.join(root, "Stanford_Online_Products")
    lists = {}
    for part in ("train", "test"):
        path = os.path.join(base, f"Ebay_{part}.txt")
        if not os.path.isfile(path):
            raise _missing("stanford", f"'Stanford_Online_Products/Ebay_{part}.txt'", root)
        with open(path, encoding="utf-8") as fh:
            fh.readline()  # header: image_id class_id super_class_id path
            rows = [line.split() for line in fh if line.strip()]
        lists[part] = [(os.path.join(base, r[3]), int(r[1]) - 1) for r in rows]
    train_ids = sorted({label for _, label in lists["train"]})
    test_ids = sorted({label for _, label in lists["test"]})
    ids = class_split(train_ids, test_ids, split, val_classes, "stanford")
    picked = _pick(lists["test" if split == "test" else "train"], ids)
    if picked and not os.path.isfile(picked[0][0]):
        raise _missing("stanford", f"image '{picked[0][0]}' (listed in Ebay_{split}.txt)", root)
    return MetricImages(picked, reference_transform(augment, resize, crop), "stanford", split,
                        skip_bad_images=skip_bad_images)


@_register("metric_folder", num_classes=None, input_size=64)
def metric_folder(root: str, split: str, augment: bool, train_classes: Optional[int] = None,
                  val_classes: Optional[int] = None, image_size: int = 64,
                  skip_bad_images: bool = False) -> MetricImages:
    """Any class-folder tree split by class: sorted class folders, the first ``train_classes``
    (default half) train, the rest test; ``val_classes`` (default 20% of the training classes)
    held out of train. CIFAR-style transforms at ``image_size``."""
    _check_split("metric_folder", split)
    root = os.path.expanduser(root)
    layout = ("expected <root>/<class>/<image> (images may sit deeper, e.g. Tiny-ImageNet's "
              "train/<wnid>/images/*.JPEG: pass .../tiny-imagenet-200/train as the root)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"metric_folder: no folder '{root}'; {layout}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if len(classes) < 2:
        raise FileNotFoundError(f"metric_folder: '{root}' has {len(classes)} class folder(s), "
                                f"need at least 2 (one per split); {layout}")
    n_train = len(classes) // 2 if train_classes is None else int(train_classes)
    if not 1 <= n_train < len(classes):
        raise ValueError(f"metric_folder: train_classes must be in [1, {len(classes) - 1}], got {train_classes}")
    if val_classes is None:
        val_classes = n_train // 5
    ids = class_split(range(n_train), range(n_train, len(classes)), split, val_classes, "metric_folder")
    samples = []
    for c in ids:
        files = image_paths(os.path.join(root, classes[c]))
        if not files:
            raise FileNotFoundError(f"metric_folder: class folder '{os.path.join(root, classes[c])}' "
                                    f"has no images; {layout}")
        samples += [(p, c) for p in files]
    transform = cifar_transform(IMAGENET_MEAN, IMAGENET_STD, augment, size=int(image_size), resize=True)
    return MetricImages(samples, transform, "metric_folder", split, {c: classes[c] for c in ids},
                        skip_bad_images)


def build_split(name: str, root: str, split: str, **options) -> MetricImages:
    """Any of ``train``/``val``/``test`` (``data.build_dataset`` knows only train and test)."""
    return DATASETS.build(name, root, split, split == "train", **options)


# ------------------------------------------------------------------------- batch sampling
def class_index(labels: Sequence[int]) -> Dict[int, List[int]]:
    by_class: Dict[int, List[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    return by_class


def m_per_class_batch(by_class: Dict[int, List[int]], batch_size: int, m: int, rng: random.Random) -> List[int]:
    """One ``NPairs`` batch: shuffled classes, min(m, n_c) images each, truncated to the batch."""
    batch: List[int] = []
    for c in rng.sample(sorted(by_class), k=len(by_class)):
        members = by_class[c]
        batch += rng.sample(members, k=min(m, len(members)))
        if len(batch) >= batch_size:
            break
    return batch[:batch_size]


class MPerClassBatchSampler:
    """``iter_per_epoch`` batches of m images per class; a pure function of (seed, epoch, rank)."""

    def __init__(self, labels: Sequence[int], batch_size: int, m: int, iter_per_epoch: int,
                 seed: int = 0, rank: int = 0):
        for key, value in (("batch size", batch_size), ("num_image_per_class", m), ("iter_per_epoch", iter_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if m < 2:
            raise ValueError("num_image_per_class must be at least 2: metric losses need positive pairs")
        self.by_class = class_index(labels)
        if len(self.by_class) < 2:
            raise ValueError("m-per-class batches need at least 2 classes in the training split")
        self.batch_size, self.m, self.iter_per_epoch = batch_size, m, iter_per_epoch
        self.seed, self.rank = seed, rank
        self.epoch, self.start = 0, 0

    def rng(self, epoch: int) -> random.Random:
        return random.Random(f"npairs/{self.seed}/{epoch}/{self.rank}")

    def batches(self, epoch: int) -> List[List[int]]:
        rng = self.rng(epoch)
        return [m_per_class_batch(self.by_class, self.batch_size, self.m, rng) for _ in range(self.iter_per_epoch)]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches(self.epoch)[self.start:])

    def __len__(self) -> int:
        return self.iter_per_epoch - self.start


class MetricTrainLoader(EpochPlan):
    """The training-loader protocol (:mod:`data.loaders`) over m-per-class batches: the epoch's
    batches come from the sampler's (seed, epoch) draw, and a resumed epoch skips ``skip`` of them."""

    def __init__(self, dataset: Dataset, rank: int, batch_size: int, m: int, iter_per_epoch: int,
                 num_workers: int, seed: int, pin_memory: bool = False):
        sampler = MPerClassBatchSampler(dataset.targets, batch_size, m, iter_per_epoch, seed, rank)
        super().__init__(sampler, batch_size, [dataset])
        self.dataset, self.seed, self.rank = dataset, seed, rank
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, generator=self.generator, collate_fn=collate,
                                 worker_init_fn=ignore_stop_signals)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.sampler.epoch, self.sampler.start = epoch, skip  # a batch sampler: skip counts batches
        for thing in self.draws:
            if hasattr(thing, "set_epoch"):
                thing.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 100003 + epoch * 1009 + self.rank)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.loader)