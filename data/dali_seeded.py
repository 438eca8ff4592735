"""``--dali`` train loader whose crops and flips are the seeded views of :mod:`data.seeded_views`.

Why: DALI's ``fn.random_resized_crop`` / ``fn.decoders.image_random_crop`` draw windows
from an operator seed and accept none from outside, so their views cannot be replayed per
(seed, epoch, index). Here the host computes each sample's window and flip with
:func:`data.seeded_views.rrc_params` (the image size comes from the file's header, read
by PIL without decoding) and feeds them beside the encoded files through
``fn.external_source``; ``fn.decoders.image_slice`` decodes just the window (positional
anchor and shape, absolute pixels, width first; EXIF orientation ignored, as PIL's
loader does), ``fn.resize`` scales it to the crop (linear with antialiasing, PIL's
bilinear filter), ``fn.crop_mirror_normalize`` flips it (per-sample ``mirror``) and
normalises. The windows and flips equal the torchvision path's (``WithSeededViews`` with
the same seed) whatever the thread count, order or resume point; the pixels differ a
little (DALI's decoder and resampler are not PIL's), so a teacher-output store should be
built and used on one path.

Everything else (order, sharding, labels, indices, contrast draws, evaluation) is
:mod:`data.dali`'s, reused by subclassing its pipeline builder and train loader.
"""
from __future__ import annotations

import io
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image

from data.dali import (DEVICE_PADDING, HOST_PADDING, DaliEvalLoader, DaliTrainLoader, _Feed, _Pipelines,
                       _Samples, dali_loaders)
from data.seeded_views import rrc_params, view_slot


def header_size(encoded: np.ndarray) -> Tuple[int, int]:
    """(height, width) of an encoded image, from its header only."""
    with Image.open(io.BytesIO(encoded.tobytes())) as image:
        width, height = image.size
    return height, width


class _ViewFeed:
    """Wraps :class:`data.dali._Feed`: adds each sample's window (anchor, shape as x, y) and flip."""

    def __init__(self, feed: _Feed, geometry, seed: int, epoch: int):
        self.feed, self.geometry, self.seed, self.epoch = feed, geometry, seed, epoch

    def __call__(self):
        files, index = self.feed()
        views = [rrc_params(self.seed, self.epoch, int(i), *header_size(f), self.geometry.rrc_scale,
                            self.geometry.rrc_ratio) for f, i in zip(files, index.ravel())]
        anchors: List[np.ndarray] = [np.array([left, top], np.int32) for top, left, _, _, _ in views]
        shapes = [np.array([w, h], np.int32) for _, _, h, w, _ in views]
        flips = [np.array(int(flip), np.int32) for *_, flip in views]
        return files, index, anchors, shapes, flips


class _SeededPipelines(_Pipelines):
    """Train passes decode the seeded windows of ``epoch``; evaluation passes as in data.dali."""

    def __init__(self, samples: _Samples, placement: str, shard, batch_size: int, threads: int, seed: int):
        super().__init__(samples, placement, shard, batch_size, threads)
        self.view_seed, self.epoch = int(seed), 1

    def _build(self, feed: _Feed, train: bool, seed: int):
        if not train:
            return super()._build(feed, train, seed)
        fn, types, g = self.fn, self.types, self.samples.geometry
        views = _ViewFeed(feed, g, self.view_seed, self.epoch)
        on_gpu = self.placement == "gpu"
        padding = dict(device_memory_padding=DEVICE_PADDING, host_memory_padding=HOST_PADDING) if on_gpu else {}
        pipe = self.dali.Pipeline(batch_size=self.batch_size, num_threads=self.threads,
                                  device_id=self.device_id, seed=seed)
        with pipe:
            files, index, anchor, shape, flip = fn.external_source(
                source=views, num_outputs=5, batch=True,
                dtype=[types.UINT8, types.INT64, types.INT32, types.INT32, types.INT32])
            images = fn.decoders.image_slice(files, anchor, shape, device="mixed" if on_gpu else "cpu",
                                             output_type=types.RGB, adjust_orientation=False, **padding)
            images = fn.resize(images, resize_x=g.crop, resize_y=g.crop, interp_type=types.INTERP_LINEAR,
                               antialias=True)
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mirror=flip,
                                              mean=[255 * m for m in g.mean], std=[255 * s for s in g.std])
            pipe.set_outputs(images, index)
        return pipe


class SeededDaliTrainLoader(DaliTrainLoader):
    """:class:`data.dali.DaliTrainLoader` rendering each epoch's seeded views; a sample's
    view id is the epoch slot, :func:`data.seeded_views.view_slot` (``epoch``), and each batch
    carries its store keys (sample index, slot) when the view scheme is set."""

    view_scheme = None

    def __iter__(self):
        self.pipelines.epoch = self.epoch
        slot = view_slot(self.epoch)
        for batch in super().__iter__():
            if self.view_scheme is not None and batch.index is not None:
                index = batch.index.cpu()
                batch.keys = (index, torch.full_like(index, slot))
            yield batch


def seeded_dali_loaders(placement: str, threads: int, seed: int, shard, batch_per_rank: int, train_set,
                        test_set, keep_last: bool = False) -> Tuple[SeededDaliTrainLoader, DaliEvalLoader]:
    """:func:`data.dali.dali_loaders` with seeded train views: ``seed`` seeds the order and the views,
    as ``WithSeededViews(train_set, seed)`` on the torchvision path."""
    _, test = dali_loaders(placement, threads, seed, shard, batch_per_rank, train_set, test_set)
    pipelines = _SeededPipelines(_Samples(train_set), placement, shard, batch_per_rank, max(1, threads), seed)
    return SeededDaliTrainLoader(pipelines, train_set, shard, batch_per_rank, seed, keep_last), test

