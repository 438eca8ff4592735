"""``imagenet``: ImageNet-style class folders at 224 px (models-and-data.md §4.1).

Layout: ``<root>/train/<class>/...`` and ``<root>/val/<class>/...``; images may sit
directly in the class folder or one level below (Tiny-ImageNet's
``train/<wnid>/images/``). The test split is always ``val/``: ImageNet's and
Tiny-ImageNet's ``test/`` folders are unlabelled. A ``val/`` that is not sorted
into class folders fails with the command that sorts it (``scripts/sort_val.py``).

Train: RandomResizedCrop(crop, rrc_scale, rrc_ratio) -> horizontal flip ->
normalise; test: Resize(val_resize) -> CenterCrop(crop) -> normalise. The same
:class:`Geometry` drives the DALI pipelines (``--dali``, :mod:`data.dali`), so both
paths crop alike. Options (``--data_opt key=value``): ``crop`` (224; Tiny-ImageNet
runs at 64), ``val_resize`` (crop x 8/7, i.e. 256 for 224), ``rrc_scale`` /
``rrc_ratio`` (torchvision's 0.08-1 and 3/4-4/3), ``reference_rrc=true`` for the
SimKD/GD DALI values 0.1-1 and 0.8-1.25 (explicit ``rrc_*`` values still win), and
``skip_bad_images`` (unreadable files: :class:`data.folder.ImageFiles`; the torchvision
path only, DALI decodes the files itself). ``seeded_views=true`` swaps the train split's
crop and flip for :class:`data.seeded_views.SeededRandomResizedCrop`, whose views are a
function of (seed, epoch, index) and replay exactly (for a store of teacher outputs); such
a split must be wrapped in :class:`data.seeded_views.WithSeededViews`, which renders them.

The ViT recipes' augmentations (DeiT, and the mmcls configs of cls_KD/ViTKD) are timm's own,
on the torchvision path: ``rand_augment`` (a timm RandAugment string, DeiT's
``rand-m9-mstd0.5-inc1``), ``random_erasing`` (a probability, DeiT's 0.25; per-pixel normal
noise, one box), ``color_jitter`` (off; DeiT's 0.4 is not applied when RandAugment is on, as
in timm) and ``interpolation`` (``bilinear``, or ``bicubic`` as DeiT's crop and resize). With
any of them the train transform is ``timm.data.create_transform``'s. DALI and ``seeded_views``
refuse them (one line): neither renders these operations.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from data.folder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderSplit, _class_folders
from data.registry import DataError, register_dataset
from data.seeded_views import SeededRandomResizedCrop

TORCHVISION_RRC = ((0.08, 1.0), (3 / 4, 4 / 3))
REFERENCE_RRC = ((0.1, 1.0), (0.8, 1.25))
SORT_HINT = "python scripts/sort_val.py {root}"


@dataclass(frozen=True)
class TimmAugment:
    """The ViT recipes' extra augmentations (module docstring); all off by default."""

    rand_augment: Optional[str] = None
    random_erasing: float = 0.0
    color_jitter: Optional[float] = None
    interpolation: str = "bilinear"

    @property
    def active(self) -> bool:
        return self != TimmAugment()

    def describe(self) -> str:
        """The options set, as the user gives them (for one-line refusals)."""
        return ", ".join(f"{k}={v}" for k, v in vars(self).items() if v != getattr(TimmAugment(), k))

    def train_transform(self, g: "Geometry"):
        from timm.data import create_transform

        return create_transform(g.crop, is_training=True, scale=g.rrc_scale, ratio=g.rrc_ratio, hflip=0.5,
                                color_jitter=self.color_jitter, auto_augment=self.rand_augment,
                                interpolation=self.interpolation, mean=g.mean, std=g.std,
                                re_prob=self.random_erasing, re_mode="pixel", re_count=1)


def timm_augment(rand_augment: Optional[str] = None, random_erasing: float = 0.0,
                 color_jitter: Optional[float] = None, interpolation: str = "bilinear") -> TimmAugment:
    """The options checked, each bad value named with what is accepted."""
    if rand_augment is not None:
        from timm.data.auto_augment import rand_augment_transform

        if not str(rand_augment).startswith("rand"):
            raise DataError(f"imagenet: rand_augment must be a timm RandAugment string such as "
                             f"rand-m9-mstd0.5-inc1, got {rand_augment!r}")
        try:
            rand_augment_transform(str(rand_augment), {})
        except Exception as err:  # timm's parser raises AssertionError/ValueError/KeyError on a bad part
            raise DataError(f"imagenet: rand_augment {rand_augment!r} is not a timm RandAugment string "
                             f"({type(err).__name__}: {err}); e.g. rand-m9-mstd0.5-inc1") from None
    if not 0 <= float(random_erasing) <= 1:
        raise DataError(f"imagenet: random_erasing is a probability in [0, 1], got {random_erasing}")
    if color_jitter is not None and float(color_jitter) < 0:
        raise DataError(f"imagenet: color_jitter must be >= 0, got {color_jitter}")
    if interpolation not in ("bilinear", "bicubic"):
        raise DataError(f"imagenet: interpolation must be one of bilinear, bicubic; got {interpolation!r}")
    return TimmAugment(None if rand_augment is None else str(rand_augment), float(random_erasing),
                       None if color_jitter is None else float(color_jitter), interpolation)


@dataclass(frozen=True)
class Geometry:
    """Crop sizes, random-resized-crop ranges and normalisation, shared with DALI."""

    crop: int = 224
    val_resize: int = 256
    rrc_scale: Tuple[float, float] = TORCHVISION_RRC[0]
    rrc_ratio: Tuple[float, float] = TORCHVISION_RRC[1]
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    def transform(self, augment: bool, seeded_views: bool = False, extra: TimmAugment = TimmAugment()):
        """``seeded_views``: the train crop and flip as one :class:`SeededRandomResizedCrop`;
        ``extra``: the ViT recipes' augmentations, through timm (module docstring)."""
        if augment and extra.active:
            return extra.train_transform(self)
        if not augment and extra.interpolation == "bicubic":
            resize = T.Resize(self.val_resize, interpolation=InterpolationMode.BICUBIC)
            return T.Compose([resize, T.CenterCrop(self.crop), T.ToTensor(), T.Normalize(self.mean, self.std)])
        if augment and seeded_views:
            steps = [SeededRandomResizedCrop(self.crop, scale=self.rrc_scale, ratio=self.rrc_ratio)]
        elif augment:
            steps = [T.RandomResizedCrop(self.crop, scale=self.rrc_scale, ratio=self.rrc_ratio),
                     T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(self.val_resize), T.CenterCrop(self.crop)]
        return T.Compose(steps + [T.ToTensor(), T.Normalize(self.mean, self.std)])


def geometry(crop: int = 224, val_resize: Optional[int] = None, rrc_scale: Optional[Sequence[float]] = None,
             rrc_ratio: Optional[Sequence[float]] = None, reference_rrc: bool = False) -> Geometry:
    """The dataset options as a :class:`Geometry`, with the defaults described above."""
    scale, ratio = REFERENCE_RRC if reference_rrc else TORCHVISION_RRC
    pairs = {"rrc_scale": rrc_scale or scale, "rrc_ratio": rrc_ratio or ratio}
    for key, value in pairs.items():
        if len(value) != 2 or not 0 < value[0] <= value[1]:
            raise DataError(f"imagenet: {key} must be two increasing positive numbers, got {value}")
    if int(crop) < 1:
        raise DataError(f"imagenet: crop must be a positive size, got {crop}")
    resize = int(val_resize) if val_resize is not None else round(int(crop) * 8 / 7)
    if resize < int(crop):
        raise DataError(f"imagenet: val_resize {resize} is smaller than crop {crop}")
    return Geometry(int(crop), resize, *(tuple(float(v) for v in pairs[k]) for k in ("rrc_scale", "rrc_ratio")))


def _check_layout(root: str, split: str) -> None:
    """Clear errors for a missing split folder and for a ``val/`` not sorted by class."""
    for name in ("train",) if split == "train" else ("train", "val"):
        if not os.path.isdir(os.path.join(root, name)):
            raise FileNotFoundError(
                f"imagenet: no '{name}/' folder under '{root}'; expected <root>/train/<class>/... and "
                f"<root>/val/<class>/... (images directly in the class folder or one level below)")
    if split == "train":
        return
    val = os.path.join(root, "val")
    classes = _class_folders(os.path.join(root, "train"))
    if not any(os.path.isdir(os.path.join(val, c)) for c in classes):
        raise FileNotFoundError(
            f"imagenet: '{val}' is not sorted into class folders (a flat val/ as shipped with ImageNet "
            f"and Tiny-ImageNet carries its labels in an annotation file). Sort it once with: "
            f"{SORT_HINT.format(root=root)} (reads val/val_annotations.txt, LOC_val_solution.csv or "
            f"the devkit's ground truth; --help for options)")


class ImageNetFolder(ImageFolderSplit):
    """One split (``train`` or ``test`` = ``val/``) with the ImageNet transforms.

    ``geometry`` is kept for the DALI pipelines, ``samples`` lists (path, label);
    ``seeded_views`` (train only): module docstring.
    """

    test_dirs = ("val",)

    def __init__(self, root: str, split: str, augment: bool, geometry: Geometry = Geometry(),
                 skip_bad_images: bool = False, seeded_views: bool = False, extra: TimmAugment = TimmAugment()):
        root = os.path.expanduser(root)
        _check_layout(root, split)
        if seeded_views and extra.active:
            raise DataError(f"imagenet: seeded_views replays only the crop and flip; it cannot be combined with "
                             f"{extra.describe()} (drop seeded_views, or those options)")
        self.geometry, self.extra = geometry, extra
        self.seeded_views = bool(seeded_views and augment)
        super().__init__(root, split, augment, transform=geometry.transform(augment, self.seeded_views, extra),
                         skip_bad_images=skip_bad_images)


@register_dataset("imagenet", family="imagenet", num_classes=None, input_size=224,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, image_files=True)
def imagenet(root: str, split: str, augment: bool, skip_bad_images: bool = False, seeded_views: bool = False,
             crop: int = 224, val_resize: Optional[int] = None, rrc_scale: Optional[Sequence[float]] = None,
             rrc_ratio: Optional[Sequence[float]] = None, reference_rrc: bool = False,
             rand_augment: Optional[str] = None, random_erasing: float = 0.0, color_jitter: Optional[float] = None,
             interpolation: str = "bilinear") -> ImageNetFolder:
    """Options: ``crop``, ``val_resize``, ``rrc_scale``, ``rrc_ratio``, ``reference_rrc``,
    ``skip_bad_images``, ``seeded_views``, ``rand_augment``, ``random_erasing``, ``color_jitter``,
    ``interpolation`` (module docstring). ``num_classes`` is the number of class folders in ``train/``."""
    shape = geometry(crop, val_resize, rrc_scale, rrc_ratio, reference_rrc)
    extra = timm_augment(rand_augment, random_erasing, color_jitter, interpolation)
    return ImageNetFolder(root, split, augment, shape, skip_bad_images, seeded_views, extra)
