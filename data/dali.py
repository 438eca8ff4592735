"""NVIDIA DALI loaders for the ``imagenet`` plugin: ``--dali cpu|gpu`` (models-and-data.md §4.2).

DALI is an optional extra, imported only here and only when ``--dali`` is given.
``cpu`` runs every operator on the CPU (``device_id=None``: no GPU needed); ``gpu``
decodes with nvJPEG (``mixed``) and resizes, crops and normalises on the GPU. Crop
sizes and ranges come from the dataset's :class:`~data.imagenet.Geometry`, so both
paths crop alike.

The encoded files enter the pipeline through an external source fed from our own
samplers, not through the references' ``fn.readers.file``, because:

* training follows the torchvision path's order (:class:`EpochSampler`: seed,
  epoch, rank), sharded by rank, the last partial batch dropped;
* evaluation takes the unpadded shard ``rank::world`` with a short last batch, so
  every test sample counts exactly once over all ranks;
* the fields of the data requests that come from the sample index (sample indices,
  contrast indices, ...) are drawn in Python by their servers (:mod:`data.requests`);
* a single process needs no process group.

Each pass (an epoch or an evaluation) builds a fresh pipeline, seeded by (seed,
epoch, rank); building takes milliseconds. On resume, ``set_epoch(epoch, skip)``
replays exactly the order, labels, indices and contrast draws of the remaining
batches. Crop and flip draws are exact too (with any thread count) when an epoch
restarts from its first batch; after a mid-epoch ``skip`` DALI's generators start
afresh, so the remaining batches get different crops (DALI cannot fast-forward its
random state without decoding the skipped batches).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Dict, Iterator, Sequence, Tuple

import numpy as np
import torch

from core.batch import Batch
from data.loaders import EpochPlan
from data.registry import DataError
from data.requests import host_fields, index_servers, unwrap
from data.samplers import EpochSampler, ShardSampler

INSTALL_HINT = ("--dali needs NVIDIA DALI, an optional extra: pip install -e .[dali] "
                "(or pip install nvidia-dali-cuda120); without --dali the torchvision loaders are used")
# nvJPEG buffer padding of the reference pipeline (NVIDIA's ResNet-50 example), in bytes
DEVICE_PADDING, HOST_PADDING = 211_025_920, 140_544_512


def _dali():
    """The DALI modules, or a one-line error with the install command."""
    try:
        from nvidia import dali
        from nvidia.dali import fn, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as err:
        raise DataError(f"{INSTALL_HINT} ({err})") from None
    return dali, fn, types, feed_ndarray


def _pass_seed(*keys: int) -> int:
    """A 31-bit pipeline seed from (seed, epoch, rank); init-stage epochs are negative."""
    return int(np.random.SeedSequence([k % 2**32 for k in keys]).generate_state(1)[0] % 2**31)


class _Samples:
    """Files and labels of the folder dataset under the trainer's :class:`~data.requests.Served`
    wrapper, and the fields its request servers add to a batch."""

    def __init__(self, dataset):
        folder, servers = unwrap(dataset)
        self.servers = index_servers(servers, "--dali")
        if not hasattr(folder, "geometry") or not hasattr(folder, "samples"):
            raise DataError("--dali reads ImageNet-style folders: use it with --dataset imagenet")
        extra = getattr(folder, "extra", None)
        if extra is not None and extra.active:
            raise DataError(f"--dali renders the crop and flip only, not {extra.describe()}: drop --dali to train "
                            f"with them on the torchvision path")
        self.paths = [path for path, _ in folder.samples]
        self.labels = torch.as_tensor(folder.targets, dtype=torch.long)
        self.geometry = folder.geometry

    def extras(self, idx: np.ndarray) -> Dict[str, Any]:
        return host_fields(self.servers, idx) if self.servers else {}


class _Feed:
    """External-source callback: the next batch's encoded files and indices.

    DALI returns batches in feeding order; ``pending`` keeps each batch's extras
    until the consumer takes its images.
    """

    def __init__(self, samples: _Samples, batches: Sequence[np.ndarray]):
        self.samples, self.batches, self.pending = samples, iter(batches), deque()

    def __call__(self):
        idx = next(self.batches)  # StopIteration ends the pass
        self.pending.append((idx, self.samples.extras(idx)))
        return [np.fromfile(self.samples.paths[i], dtype=np.uint8) for i in idx], idx.reshape(-1, 1)


class _Pipelines:
    """Builds one DALI pipeline per pass and turns its outputs into the trainer's tuples."""

    def __init__(self, samples: _Samples, placement: str, shard, batch_size: int, threads: int):
        self.samples, self.placement, self.batch_size, self.threads = samples, placement, batch_size, threads
        self.dali, self.fn, self.types, self.feed_ndarray = _dali()
        self.device = shard.device
        self.device_id = None
        if placement == "gpu":
            self.device_id = shard.device.index if shard.device.index is not None else torch.cuda.current_device()

    def _build(self, feed: _Feed, train: bool, seed: int):
        fn, types = self.fn, self.types
        g = self.samples.geometry
        decoder = "mixed" if self.placement == "gpu" else "cpu"
        padding = dict(device_memory_padding=DEVICE_PADDING, host_memory_padding=HOST_PADDING) \
            if self.placement == "gpu" else {}
        pipe = self.dali.Pipeline(batch_size=self.batch_size, num_threads=self.threads,
                                  device_id=self.device_id, seed=seed)
        with pipe:
            files, index = fn.external_source(source=feed, num_outputs=2, batch=True,
                                              dtype=[types.UINT8, types.INT64])
            if train:
                images = fn.decoders.image_random_crop(
                    files, device=decoder, output_type=types.RGB, random_area=list(g.rrc_scale),
                    random_aspect_ratio=list(g.rrc_ratio), num_attempts=100, **padding)
                images = fn.resize(images, resize_x=g.crop, resize_y=g.crop, interp_type=types.INTERP_TRIANGULAR)
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                images = fn.decoders.image(files, device=decoder, output_type=types.RGB, **padding)
                images = fn.resize(images, resize_shorter=g.val_resize, interp_type=types.INTERP_TRIANGULAR)
                mirror = 0
            images = fn.crop_mirror_normalize(
                images, dtype=types.FLOAT, output_layout="CHW", crop=(g.crop, g.crop),
                mean=[255 * m for m in g.mean], std=[255 * s for s in g.std], mirror=mirror)
            pipe.set_outputs(images, index)
        return pipe

    def _images(self, batch) -> torch.Tensor:
        """A DALI batch as a torch tensor where DALI left it (GPU for ``gpu``, else CPU)."""
        tensor = batch.as_tensor()
        on_gpu = self.placement == "gpu"
        out = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device if on_gpu else "cpu")
        self.feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device) if on_gpu else None)
        return out

    def run(self, batches: Sequence[np.ndarray], train: bool, seed: int) -> Iterator[Batch]:
        feed = _Feed(self.samples, batches)
        pipe = self._build(feed, train, seed)
        while True:
            try:
                images, index = pipe.run()
            except StopIteration:
                return
            idx, fields = feed.pending.popleft()
            if not np.array_equal(np.asarray(index.as_tensor()).reshape(-1), idx):
                raise RuntimeError("DALI returned a batch out of feeding order")
            labels = self.samples.labels[torch.from_numpy(idx)]
            batch = Batch(images=self._images(images), labels=labels, index=fields.get("index"),
                          contrast_idx=fields.get("contrast_idx"), extras=fields.get("extras", {}))
            yield batch.to(self.device)


class DaliTrainLoader(EpochPlan):
    """The training-loader protocol (:mod:`data.loaders`) over DALI pipelines."""

    def __init__(self, pipelines: _Pipelines, dataset, shard, batch_size: int, seed: int, keep_last: bool = False):
        super().__init__(EpochSampler(dataset, shard.rank, shard.world_size, seed=seed, keep_last=keep_last),
                         batch_size, [dataset] + list(pipelines.samples.servers))
        self.pipelines, self.dataset, self.seed, self.rank = pipelines, dataset, seed, shard.rank

    def __iter__(self):
        batches = self.batches_of(np.fromiter(self.sampler, dtype=np.int64))
        return self.pipelines.run(batches, train=True, seed=_pass_seed(self.seed, self.epoch, self.rank))


class DaliEvalLoader:
    """Batches of images and labels over the unpadded shard ``rank::world``: each sample once over all
    ranks."""

    def __init__(self, pipelines: _Pipelines, dataset, shard, batch_size: int):
        indices = np.fromiter(ShardSampler(dataset, shard.rank, shard.world_size), dtype=np.int64)
        self.pipelines = pipelines
        self.batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return self.pipelines.run(self.batches, train=False, seed=0)


def dali_loaders(placement: str, threads: int, seed: int, shard, batch_per_rank: int, train_set,
                 test_set, keep_last: bool = False) -> Tuple[DaliTrainLoader, DaliEvalLoader]:
    """The ``--dali cpu|gpu`` train and test loaders with ``threads`` DALI threads per process.

    ``shard`` is where this process sits: ``.rank``, ``.world_size`` and its ``.device``;
    ``keep_last``: train on each epoch's last partial batch (one process).
    """
    _dali()
    if placement == "gpu" and shard.device.type != "cuda":
        raise DataError("--dali gpu decodes on the GPU, but this process runs on the CPU: use --dali cpu")

    def pipelines(dataset, batch_size):
        return _Pipelines(_Samples(dataset), placement, shard, batch_size, max(1, threads))

    train = DaliTrainLoader(pipelines(train_set, batch_per_rank), train_set, shard, batch_per_rank, seed, keep_last)
    test = DaliEvalLoader(pipelines(test_set, batch_per_rank), test_set, shard, batch_per_rank)
    return train, test
