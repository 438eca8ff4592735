"""Datasets, loaders and the data side of the data requests.

``build_dataset(name, root, split)`` returns a Dataset of ``(image, label)`` with
``targets`` and ``num_classes``; ``dataset_info(name)`` gives the registered
metadata without touching any file. Plugins: ``cifar10``, ``cifar100``,
``imagefolder``, ``imagenet`` (with optional DALI loaders, :mod:`data.dali`) and the
download-free ``synthetic``. Where a batch is made: :mod:`data.loaders` (the protocol, the
DataLoader path, the collate into a :class:`core.batch.Batch`), :mod:`data.device_loader`,
:mod:`data.dali`; what a method asks of the data is served by :mod:`data.requests`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from torch.utils.data import Dataset

from data.registry import (DATASETS, BadImageError, DataError, check_data_options, check_split, dataset_options,
                           register_dataset)
from data import cifar, folder, imagenet, metric_learning, synthetic  # noqa: F401  (register the plugins)
from data.requests import RequestServer, register_request_server
from data import mixing  # noqa: F401,E402  (registers the Mixing server)

__all__ = ["DATASETS", "register_dataset", "build_dataset", "dataset_info", "default_data_root", "dataset_options",
           "check_data_options",
           "RequestServer", "register_request_server", "BadImageError", "DataError"]


def default_data_root() -> str:
    """``$DISTILLERS_DATA`` or ``~/.cache/distillers/data``: data never lives in the code tree."""
    return os.environ.get("DISTILLERS_DATA") or os.path.join(
        os.path.expanduser("~"), ".cache", "distillers", "data")


def dataset_info(name: str) -> Dict[str, Any]:
    return dict(DATASETS.meta(name))


def build_dataset(name: str, root: str, split: str, augment: Optional[bool] = None,
                  **options: Any) -> Dataset:
    """Build ``split`` ('train'/'test') of dataset ``name``; augment defaults to train only.

    ``skip_bad_images`` (``--skip_bad_images``) reaches only datasets registered with
    ``image_files=True``; asking it of one that holds no image files (CIFAR's pickles,
    ``synthetic``) is an error rather than a silent no-op, so nobody believes a check ran.
    """
    check_split(split)
    if augment is None:
        augment = split == "train"
    if "skip_bad_images" in options and not DATASETS.meta(name).get("image_files"):
        if options.pop("skip_bad_images"):
            readers = ", ".join(DATASETS.names(image_files=True))
            raise DataError(f"--skip_bad_images applies to datasets read from image files ({readers}); "
                            f"'{name}' reads none, so there is nothing to skip: drop the flag")
    return DATASETS.build(name, root, split, augment, **options)
