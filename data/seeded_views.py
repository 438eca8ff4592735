"""Seeded, replayable random-resized-crop views for ImageNet-style folders (issue 13 §1).

Why: a store of a frozen teacher's outputs (FKD, Shen & Xing, ECCV 2022) keyed by
(sample index, view id) lets later runs skip the teacher's forward pass. CIFAR's views
are discrete (:func:`data.device_loader.view_ids`); RandomResizedCrop + flip are
continuous, so instead each sample's crop window and flip bit are drawn, per epoch, from
a ``torch.Generator`` seeded by :func:`data.device_loader.view_key` (seed, epoch, index).
A later run with the same seed renders exactly the same views, whatever the worker,
process, batch order or resume point, and without touching the global RNG. The view id
of a sample is then just the epoch: the store holds one view per (sample, epoch), in slot
``epoch - 1`` (the trainer's epochs are 1-based; its initialisation stages run negative
epochs, whose slots are negative and belong to no store).

:func:`rrc_params` is torchvision's ``RandomResizedCrop.get_params`` (10 attempts, then
the centre crop) followed by ``RandomHorizontalFlip``'s draw, on that generator: with
the global generator seeded by the same key, torchvision's ``RandomResizedCrop`` then
``RandomHorizontalFlip`` give bit-identical images (tests/test_seeded_views.py).
torch's CPU generator seeds its Mersenne Twister from the key's low 32 bits, so over the
~1e8 (sample, epoch) pairs of an ImageNet run some pairs share their draws; a sample
meeting one of its own earlier views is ~epochs^2 / 2^33 unlikely per sample.

Use: build ``imagenet`` with ``seeded_views=True`` (its train transform then starts with
:class:`SeededRandomResizedCrop`), wrap the train set in :class:`WithSeededViews` and call
its ``set_epoch`` each epoch (every training loader does: :class:`data.loaders.EpochPlan`). Items are
``(image, label)``; a sample's view id in an epoch is :func:`view_slot` (epoch).

DALI (``--dali``): its ``fn.random_resized_crop`` and ``fn.decoders.image_random_crop``
draw windows from an operator-level ``seed`` only and take no per-sample window, so they
cannot replay these views. The same design still fits DALI through ops that take
per-sample argument inputs: the windows and flips, computed on the host by
:func:`rrc_params` from each file's header size, enter with the files through
``fn.external_source``; ``fn.decoders.image_slice`` decodes just that window (positional
anchor and shape), ``fn.resize`` scales it to the crop size and
``fn.crop_mirror_normalize`` flips it (per-sample ``mirror``). :mod:`data.dali_seeded`
does this. The windows and flips then equal the torchvision path's; the pixels differ
slightly (DALI's decoder and resampling filter are not PIL's).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence, Tuple

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from data.registry import DataError
from data.view_keys import view_key
from data.wrappers import Wrapper

#: (top, left, height, width, flip): a crop window in pixels of the source image and a flip bit
View = Tuple[int, int, int, int, bool]
TORCHVISION_SCALE, TORCHVISION_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def view_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator that draws sample ``index``'s view in ``epoch``."""
    return torch.Generator().manual_seed(int(view_key(seed, epoch, int(index)).item()))


def _centre_window(height: int, width: int, ratio: Sequence[float]) -> Tuple[int, int, int, int]:
    """The fallback after 10 rejected draws: the largest centred window whose aspect ratio
    is clamped to ``ratio``."""
    h, w = height, width
    if width / height < min(ratio):
        h = int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w = int(round(height * max(ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def _crop_window(generator: torch.Generator, height: int, width: int, scale: Sequence[float],
                 ratio: Sequence[float]) -> Tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params``' draws, in its order, from ``generator``: area
    uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``, then the offsets."""
    log_ratio = torch.log(torch.tensor(ratio)).tolist()
    for _ in range(10):
        area = height * width * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return _centre_window(height, width, ratio)


def rrc_params(seed: int, epoch: int, index: int, height: int, width: int,
               scale: Sequence[float] = TORCHVISION_SCALE, ratio: Sequence[float] = TORCHVISION_RATIO) -> View:
    """Sample ``index``'s view in ``epoch`` for a ``height`` x ``width`` source image:
    ``(top, left, h, w, flip)``. A pure function of its arguments."""
    generator = view_generator(seed, epoch, index)
    top, left, h, w = _crop_window(generator, int(height), int(width), scale, ratio)
    flip = bool(torch.rand(1, generator=generator) < 0.5)  # RandomHorizontalFlip(0.5)'s draw
    return top, left, h, w, flip


def view_slot(epoch: int) -> int:
    """The view id of every sample in ``epoch``: its 0-based slot, ``epoch - 1``."""
    return int(epoch) - 1


class SeededRandomResizedCrop(torch.nn.Module):
    """RandomResizedCrop + RandomHorizontalFlip at a given view (PIL image or tensor).

    A placeholder in a ``T.Compose`` that :class:`WithSeededViews` splits at, so it must
    be called with the view: ``crop(image, crop.params(seed, epoch, index, image))``.
    """

    def __init__(self, size, scale: Sequence[float] = TORCHVISION_SCALE,
                 ratio: Sequence[float] = TORCHVISION_RATIO,
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR, antialias: bool = True):
        super().__init__()
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.interpolation, self.antialias = interpolation, antialias

    def params(self, seed: int, epoch: int, index: int, image) -> View:
        _, height, width = TF.get_dimensions(image)
        return rrc_params(seed, epoch, index, height, width, self.scale, self.ratio)

    def forward(self, image, view: View = None):
        if view is None:
            raise DataError("SeededRandomResizedCrop renders the view of a (seed, epoch, index): wrap the "
                            "dataset in data.seeded_views.WithSeededViews, which passes it")
        top, left, h, w, flip = view
        image = TF.resized_crop(image, top, left, h, w, self.size, self.interpolation, antialias=self.antialias)
        return TF.hflip(image) if flip else image

    def extra_repr(self) -> str:
        return (f"size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation.value}")


def _split_at_crop(transform) -> Tuple[T.Compose, SeededRandomResizedCrop, T.Compose]:
    """``transform``'s steps before and after its one :class:`SeededRandomResizedCrop`."""
    steps = list(getattr(transform, "transforms", ()))
    at = [i for i, step in enumerate(steps) if isinstance(step, SeededRandomResizedCrop)]
    if not isinstance(transform, T.Compose) or len(at) != 1:
        raise DataError("WithSeededViews needs a dataset whose 'transform' is a torchvision Compose with one "
                        "SeededRandomResizedCrop (build imagenet with seeded_views=True)")
    return T.Compose(steps[:at[0]]), steps[at[0]], T.Compose(steps[at[0] + 1:])


class WithSeededViews(Wrapper):
    """Items ``(image, label)``: sample ``index`` rendered at its view of the current epoch,
    whose id is :func:`view_slot` (epoch) for every sample. Items are a plain dataset's, so
    :class:`data.requests.Served` composes around it as around any set; its ``set_epoch``
    reaches it.

    Images are read by a shallow copy of the dataset whose transform stops before the
    seeded crop; the crop and the steps after it (ToTensor, Normalize, ...) run here.
    Call :meth:`set_epoch` each epoch (1 until then). The epoch lives in shared memory,
    so DataLoader workers see it, persistent ones included.
    """

    def __init__(self, dataset: Dataset, seed: int):
        super().__init__(dataset)
        before, self.crop, self.after = _split_at_crop(getattr(dataset, "transform", None))
        self.source = copy.copy(dataset)
        self.source.transform = before
        self.seed = int(seed)
        self._epoch = torch.ones((), dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __getitem__(self, index: int) -> Tuple:
        epoch = self.epoch
        image, label = self.source[index]
        image = self.crop(image, self.crop.params(self.seed, epoch, index, image))
        return self.after(image), label
