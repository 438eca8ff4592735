"""CIFAR-10 and CIFAR-100 from the official python-pickle layout.

torchvision's CIFAR classes md5-check every file, which rejects any locally made
copy (tests, re-packed mirrors). Reading the pickles takes a few lines, so they
are read here; torchvision supplies only the layout constants and the downloader.
Missing or malformed files end in one error that says what belongs where.

``pickle.load`` runs whatever code a crafted file names (a ``__reduce__`` payload), and
data roots are shared and downloaded: the files are read with :class:`CifarUnpickler`,
which builds only what the official files hold.
"""
from __future__ import annotations

import os
import pickle
import shutil
from typing import List, Optional, Sequence, Tuple, Type

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.datasets.utils import download_and_extract_archive

from data.registry import DataError, check_split, register_dataset
from data.transforms import cifar_transform

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of the official CIFAR python files.

    Dicts, lists, strings, bytes and ints need no global. The numpy array under 'data'
    needs its reconstruction (the Python 2 files name ``numpy.core``; numpy >= 2 and
    protocol 5 re-packs use ``numpy._core`` and ``_frombuffer``), and Python 3 protocol-2
    pickles spell bytes as ``_codecs.encode``. None of these runs code chosen by the file;
    any other global (``os.system``, ``builtins.eval``, ...) is refused before it loads.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR file")
        return super().find_class(module, name)


def _layout(tv_class) -> List[str]:
    """Every file of the official python layout, train batches first."""
    return [n for n, _ in tv_class.train_list + tv_class.test_list] + [tv_class.meta["filename"]]


class CifarPickles(Dataset):
    """One split of CIFAR-10/100 held in memory as uint8 HWC images."""

    def __init__(self, tv_class: Type[tvd.CIFAR10], label_key: str, num_classes: int,
                 root: str, split: str, augment: bool, mean: Sequence[float],
                 std: Sequence[float], download: bool = True):
        check_split(split)
        self.name = tv_class.__name__.replace("CIFAR", "CIFAR-")
        self.num_classes = num_classes
        folder = os.path.join(os.path.expanduser(root), tv_class.base_folder)
        batches = [n for n, _ in (tv_class.train_list if split == "train" else tv_class.test_list)]
        meta_file = tv_class.meta["filename"]
        self._ensure_files(tv_class, root, folder, batches + [meta_file], download)

        images, labels = [], []
        for name in batches:
            x, y = self._read_batch(os.path.join(folder, name), label_key)
            images.append(x)
            labels.extend(y)
        self.data = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets: List[int] = labels
        [self.classes] = self._read_pickle(os.path.join(folder, meta_file), tv_class.meta["key"])
        self.transform = cifar_transform(mean, std, augment)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Tuple:
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]

    def _ensure_files(self, tv_class, root: str, folder: str, names: List[str],
                      download: bool) -> None:
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if not missing:
            return
        reason = "download=False"
        if download:
            made = _outermost_missing(os.path.expanduser(root))
            try:
                download_and_extract_archive(tv_class.url, download_root=root,
                                             filename=tv_class.filename, md5=tv_class.tgz_md5)
                missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
                reason = "the downloaded archive did not contain them"
            except Exception as err:  # offline, proxy, checksum: all end the same way
                reason = f"the download failed ({type(err).__name__}: {err})"
                if made:  # the folder this attempt made, with any partial archive in it
                    shutil.rmtree(made, ignore_errors=True)
        if missing:
            raise FileNotFoundError(
                f"{self.name} not found under root '{root}': expected the files "
                f"{', '.join(_layout(tv_class))} in '{folder}' "
                f"(missing: {', '.join(missing)}; {reason}). "
                f"Get {tv_class.filename} (the python version, {tv_class.url}) and extract it "
                f"into '{root}', or set --data-root / DISTILLERS_DATA to a folder that holds "
                f"'{tv_class.base_folder}/'.")

    def _read_pickle(self, path: str, *keys: str) -> list:
        """The values of ``keys`` in the pickled dict at ``path``."""
        try:
            with open(path, "rb") as f:
                entry = CifarUnpickler(f, encoding="latin1").load()
            return [entry[k] for k in keys]
        except Exception as err:
            raise DataError(
                f"{self.name} file '{path}' is malformed: expected a python pickle of a dict "
                f"with keys {list(keys)} ({type(err).__name__}: {err}). Re-extract the "
                f"official archive.") from None

    def _read_batch(self, path: str, label_key: str):
        x, y = self._read_pickle(path, "data", label_key)
        x, y = np.asarray(x), [int(v) for v in y]
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x) \
                or not all(0 <= v < self.num_classes for v in y):
            raise DataError(
                f"{self.name} file '{path}' is malformed: expected 'data' uint8 [N, 3072] and "
                f"N '{label_key}' in [0, {self.num_classes}); got data {x.dtype} "
                f"{list(x.shape)} and {len(y)} labels.")
        return x, y


@register_dataset("cifar10", family="cifar", num_classes=10, input_size=32,
                  mean=CIFAR10_MEAN, std=CIFAR10_STD)
def cifar10(root: str, split: str, augment: bool, download: bool = True) -> CifarPickles:
    return CifarPickles(tvd.CIFAR10, "labels", 10, root, split, augment,
                        CIFAR10_MEAN, CIFAR10_STD, download)


@register_dataset("cifar100", family="cifar", num_classes=100, input_size=32,
                  mean=CIFAR100_MEAN, std=CIFAR100_STD)
def cifar100(root: str, split: str, augment: bool, download: bool = True) -> CifarPickles:
    return CifarPickles(tvd.CIFAR100, "fine_labels", 100, root, split, augment,
                        CIFAR100_MEAN, CIFAR100_STD, download)


def _outermost_missing(path: str) -> Optional[str]:
    """The outermost folder of ``path`` that does not exist yet (what a download would create), or None."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        path, missing = os.path.dirname(path), path
    return missing
