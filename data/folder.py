"""``imagefolder``: any ``<root>/{train,test}/<class>/<image>`` tree, CIFAR-style at 32 px.

torchvision's ImageFolder does the work: its file walk recurses, so images one
level below the class folder (Tiny-ImageNet's ``train/<wnid>/images/*.JPEG``)
are found as they are, and its loader converts every file (grayscale JPEGs,
palette PNGs) to RGB. What is added here: the train split's class list defines
the label ids of both splits, ``val/`` stands in for a missing ``test/``, files
are resized to ``image_size``, and a wrong layout fails with a message that
shows the expected one.

Files are decoded only when a batch needs them, so one corrupt or truncated file
would stop a run hours in with PIL's traceback. :class:`ImageFiles` (shared with
``imagenet`` and the metric-learning folders) turns that into a :class:`BadImageError`
naming the file, or, with ``skip_bad_images``, skips it; ``scripts/verify_images.py``
checks a whole tree up front with the same decoder.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision import datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from data.registry import BadImageError, check_split, register_dataset
from data.transforms import cifar_transform

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = ("expected layout: <root>/train/<class>/<image> and <root>/test/<class>/<image> "
          "(val/ is used when test/ is absent); images may also sit one folder deeper, as in "
          "Tiny-ImageNet's train/<wnid>/images/*.JPEG")


def image_paths(directory: str) -> List[str]:
    """Every file under ``directory`` with an image extension, in sorted walk order."""
    found = []
    for folder, dirs, files in os.walk(directory, followlinks=True):
        dirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    return found


def read_image(path: str) -> Image.Image:
    """Open and fully decode ``path`` as RGB: torchvision's loader, whose ``convert("RGB")``
    forces the decode, so a truncated file fails here rather than inside a transform."""
    return default_loader(path)


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


class ImageFiles:
    """Mixin for datasets whose ``samples`` are ``(path, label)`` pairs of image files.

    :meth:`read` decodes sample ``index``. A file that cannot be decoded raises
    :class:`BadImageError` naming it; with ``skip_bad_images`` it is instead warned about
    once, listed in ``bad_images`` and replaced by the next readable sample (wrapping
    around). Replacing rather than dropping keeps the length, the batch shapes and the
    sampler's order, so a resumed run reads exactly the same samples; the replacement
    depends only on which files are bad, never on the order they were met in.

    The bad-file mask is a shared-memory tensor, so files found bad in DataLoader
    workers show in the main process's ``bad_images`` (and are never decoded again).
    Each process (DDP rank) counts the files that it met.
    """

    samples: List[Tuple[str, int]]

    def _init_image_files(self, skip_bad_images: bool) -> None:
        self.skip_bad_images = bool(skip_bad_images)
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def bad_images(self) -> List[str]:
        """Paths of the files skipped so far, in sample order."""
        return [self.samples[i][0] for i in self._bad.nonzero().flatten().tolist()]

    def read(self, index: int) -> Tuple[Image.Image, int]:
        """The decoded RGB image and label of sample ``index`` (or of its replacement)."""
        n = len(self.samples)
        if not -n <= index < n:  # plain ``for x in dataset`` stops on IndexError
            raise IndexError(f"sample {index} of {n}")
        for k in range(n):
            i = (index + k) % n
            if self._bad[i]:
                continue
            path, label = self.samples[i]
            try:
                return read_image(path), label
            except Exception as err:  # by format PIL raises OSError, SyntaxError, ValueError, ...
                if not self.skip_bad_images:
                    raise BadImageError(
                        f"cannot read image '{path}' ({_reason(err)}). Replace or delete the file, or "
                        f"pass --skip_bad_images to skip unreadable files; python scripts/verify_images.py "
                        f"<data root> lists them all") from None
                self._bad[i] = True
                warnings.warn(f"skipping unreadable image '{path}' ({_reason(err)}); the next readable "
                              f"sample stands in for it")
        raise BadImageError(f"none of the {n} image files could be read, e.g. '{self.samples[index][0]}'; "
                            f"check the data root with python scripts/verify_images.py")


def _split_dir(root: str, split: str, test_dirs: Sequence[str] = ("test", "val")) -> str:
    names = ("train",) if split == "train" else tuple(test_dirs)
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        f"imagefolder: no {' or '.join(repr(n + '/') for n in names)} folder under "
        f"'{root}'; {LAYOUT}")


def _class_folders(directory: str) -> List[str]:
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"imagefolder: '{directory}' has no class sub-folders (a flat folder of images "
            f"carries no labels); {LAYOUT}")
    return classes


class ImageFolderSplit(ImageFiles, tvd.ImageFolder):
    """One split of an image-folder tree; label ids come from ``train/``'s classes.

    Subclasses may narrow ``test_dirs`` and pass their own ``transform``. Unreadable
    files: :class:`ImageFiles`.
    """

    test_dirs: Tuple[str, ...] = ("test", "val")  # tried in order for the test split

    def __init__(self, root: str, split: str, augment: bool, image_size: int = 32,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 transform: Optional[Callable] = None, skip_bad_images: bool = False):
        check_split(split)
        root = os.path.expanduser(root)
        self._train_classes = _class_folders(_split_dir(root, "train"))
        directory = _split_dir(root, split, self.test_dirs)
        unknown = sorted(set(_class_folders(directory)) - set(self._train_classes))
        if unknown:
            raise ValueError(
                f"imagefolder: '{directory}' has folders that are not classes of train/: "
                f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}. "
                f"(Tiny-ImageNet's val/images must first be sorted into class folders using "
                f"val/val_annotations.txt.) {LAYOUT}")
        if transform is None:
            transform = cifar_transform(mean, std, augment, size=image_size, resize=True)
        super().__init__(directory, transform=transform, allow_empty=True)
        if not self.samples:
            raise FileNotFoundError(f"imagefolder: no image files in the class folders of "
                                    f"'{directory}'; {LAYOUT}")
        self.num_classes = len(self.classes)
        self._init_image_files(skip_bad_images)

    def __getitem__(self, index: int) -> Tuple:
        image, label = self.read(index)
        return self.transform(image), label

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        return self._train_classes, {c: i for i, c in enumerate(self._train_classes)}


@register_dataset("imagefolder", family="cifar", num_classes=None, input_size=32,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, image_files=True)
def imagefolder(root: str, split: str, augment: bool, image_size: int = 32,
                mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                skip_bad_images: bool = False) -> ImageFolderSplit:
    """Options: ``image_size`` (32), ``mean``/``std`` (ImageNet's), ``skip_bad_images``.
    ``num_classes`` in the metadata is None: it is the number of class folders in ``train/``."""
    return ImageFolderSplit(root, split, augment, image_size, mean, std, skip_bad_images=skip_bad_images)
