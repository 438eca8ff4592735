"""The dataset registry: name -> factory ``f(root, split, augment, **options) -> Dataset``.

Each entry carries the metadata a trainer needs before it opens any file:
``family`` (which model zoo fits), ``num_classes``, ``input_size``, the
normalisation ``mean``/``std``, and ``image_files``: whether the dataset decodes image
files as it reads (and so accepts ``skip_bad_images``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from core.options import Option, check_options, options_from_signature
from core.registry import Registry

DATASETS = Registry("dataset")
SPLITS = ("train", "test")


class DataError(ValueError):
    """A data file or dataset option the user must fix; the CLI prints it as one ``error:`` line."""

    def __str__(self) -> str:
        # A DataLoader worker's exception is re-raised in the main process as the same type,
        # with the worker's whole traceback as its message: keep only the original message,
        # the traceback's last line ("data.registry.BadImageError: <message>").
        text = super().__str__()
        if "Original Traceback" in text:
            return text.rstrip().splitlines()[-1].split(": ", 1)[-1]
        return text


class BadImageError(DataError):
    """An image file that cannot be opened or decoded; the message names the file."""


def register_dataset(name: str, *, family: str, num_classes: Optional[int], input_size: int,
                     mean: Sequence[float], std: Sequence[float], image_files: bool = False):
    """Register a dataset factory with the metadata listed in the module docstring.

    ``num_classes`` is None when only the data on disk can tell (``imagefolder``).
    ``image_files=True`` declares that the factory takes ``skip_bad_images``.
    """
    return DATASETS.register(name, family=family, num_classes=num_classes, input_size=input_size,
                             mean=tuple(mean), std=tuple(std), image_files=image_files)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def dataset_options(name: str) -> Optional[Dict[str, Option]]:
    """The options dataset ``name`` takes (``--data_opt KEY=VALUE``), typed by their defaults."""
    options = options_from_signature(DATASETS.get(name), skip=("root", "split", "augment"))
    if options is not None:  # every dataset takes augment: false leaves the training split unaugmented
        options["augment"] = Option(None, "augment the split (default: the training split only)", type=bool)
    return options


def check_data_options(name: str, values: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` checked against :func:`dataset_options`: an unknown key or a bad value is one
    :class:`DataError` listing the options the dataset takes, with their types and defaults
    (``skip_bad_images`` is left to :func:`data.build_dataset`, which says which datasets take it)."""
    own = {k: v for k, v in values.items() if k != "skip_bad_images"}
    try:
        checked = check_options(f"dataset '{name}'", dataset_options(name), own, "--data_opt")
    except ValueError as err:
        raise DataError(str(err)) from None
    return {**checked, **({"skip_bad_images": values["skip_bad_images"]} if "skip_bad_images" in values else {})}
