"""Process launch and rank bookkeeping on PyTorch's own distributed engine.

One code path from one process to many nodes:

* plain ``python train_*.py``: one process, no process group;
* ``--multiprocessing-distributed``: ``torch.multiprocessing.spawn`` starts one
  process per GPU (NCCL) or ``--nprocs`` CPU processes (gloo) on this node;
  global rank = ``--rank`` x processes per node + local rank, world size =
  ``--world-size`` (nodes) x processes per node, rendezvous at ``--dist-url``;
* ``torchrun``: the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) rules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(args, local_rank: int) -> torch.device:
    if args.device == "cuda" or (args.device is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _init_group(args, rank: int, world_size: int, local_rank: int, init_method: str) -> DistInfo:
    device = _device(args, local_rank)
    backend = args.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank)
    return DistInfo(rank, world_size, local_rank, device)


def _spawned(local_rank: int, per_node: int, args, main: Callable[[DistInfo, object], None]) -> None:
    rank = args.rank * per_node + local_rank
    info = _init_group(args, rank, args.world_size * per_node, local_rank, args.dist_url)
    try:
        main(info, args)
    finally:
        dist.destroy_process_group()


def launch(main: Callable[[DistInfo, object], None], args) -> None:
    """Run ``main(DistInfo, args)`` in as many processes as the flags ask for."""
    if args.gpu_id is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu_id)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        info = _init_group(args, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, "env://")
        try:
            main(info, args)
        finally:
            dist.destroy_process_group()
        return
    if args.multiprocessing_distributed or args.nprocs:
        use_cuda = args.device != "cpu" and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if use_cuda else (args.nprocs or 1)
        if use_cuda and args.nprocs:
            per_node = min(per_node, args.nprocs)
        torch.multiprocessing.spawn(_spawned, nprocs=per_node, args=(per_node, args, main))
        return
    main(DistInfo(device=_device(args, 0)), args)


class EpochSampler(DistributedSampler):
    """DistributedSampler (also on one process) that can resume in the middle of an epoch.

    The order of an epoch depends only on (seed, epoch), so skipping the first
    ``start`` indices after a resume replays exactly the rest of the epoch.
    """

    def __init__(self, dataset, info: DistInfo, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler):
    """Evaluation shard ``rank::world``: every sample seen exactly once over all ranks, no padding."""

    def __init__(self, dataset, info: DistInfo):
        self.indices = range(info.rank, len(dataset), info.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a metric tensor over ranks (identity on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params) -> None:
    """Average the gradients of parameters that DDP does not wrap (a distiller's own parts)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
