"""``imagefolder``: any ``<root>/{train,test}/<class>/<image>`` tree, CIFAR-style at 32 px.

torchvision's ImageFolder does the work: its file walk recurses, so images one
level below the class folder (Tiny-ImageNet's ``train/<wnid>/images/*.JPEG``)
are found as they are, and its loader converts every file (grayscale JPEGs,
palette PNGs) to RGB. What is added here: the train split's class list defines
the label ids of both splits, ``val/`` stands in for a missing ``test/``, files
are resized to ``image_size``, and a wrong layout fails with a message that
shows the expected one.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torchvision import datasets as tvd

from data.registry import check_split, register_dataset
from data.transforms import cifar_transform

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = ("expected layout: <root>/train/<class>/<image> and <root>/test/<class>/<image> "
          "(val/ is used when test/ is absent); images may also sit one folder deeper, as in "
          "Tiny-ImageNet's train/<wnid>/images/*.JPEG")


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


class ImageFolderSplit(tvd.ImageFolder):
    """One split of an image-folder tree; label ids come from ``train/``'s classes.

    Subclasses may narrow ``test_dirs`` and pass their own ``transform``.
    """

    test_dirs: Tuple[str, ...] = ("test", "val")  # tried in order for the test split

    def __init__(self, root: str, split: str, augment: bool, image_size: int = 32,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 transform: Optional[Callable] = None):
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

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        return self._train_classes, {c: i for i, c in enumerate(self._train_classes)}


@register_dataset("imagefolder", family="cifar", num_classes=None, input_size=32,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD)
def imagefolder(root: str, split: str, augment: bool, **options) -> ImageFolderSplit:
    """Options: ``image_size`` (32), ``mean``/``std`` (ImageNet's). ``num_classes`` in
    the metadata is None: it is the number of class folders in ``train/``."""
    return ImageFolderSplit(root, split, augment, **options)
