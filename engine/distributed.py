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

import hashlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist


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


def _spawned(local_rank: int, per_node: int, args, main: Callable[[DistInfo, object], int]) -> None:
    """A spawned rank: its exit code is what ``main`` returns (errors are reported by ``main``)."""
    rank = args.rank * per_node + local_rank
    info = _init_group(args, rank, args.world_size * per_node, local_rank, args.dist_url)
    try:
        code = main(info, args)
        if not code:  # no rank tears its connections down while another still writes or reduces
            dist.barrier()
    finally:
        dist.destroy_process_group()
    if code:
        sys.exit(code)


def _spawn(per_node: int, args, main: Callable[[DistInfo, object], int]) -> int:
    """Start the ranks and wait; SIGTERM to this parent is passed on to every rank (a scheduler
    may signal only the parent), SIGINT is not (a terminal's Ctrl-C already reached them all).

    A rank killed by a signal (SIGKILL, the OOM killer) ends the others (torch's join terminates them)
    and the run with one line naming the rank; the last checkpoint on disk stays the valid one."""
    # a killed rank leaves its semaphores to the resource tracker, whose shutdown warning would be the
    # only trace of the death: the line below says what happened instead
    os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
    context = torch.multiprocessing.start_processes(_spawned, nprocs=per_node, args=(per_node, args, main),
                                                    join=False, start_method="spawn")

    def forward(signum, frame):
        if signum == signal.SIGTERM:
            for process in context.processes:
                if process.is_alive():
                    os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not context.join(grace_period=10):  # a failed rank's peers get 10 s to end cleanly
            pass
    except torch.multiprocessing.ProcessExitedException as err:
        code = err.exit_code if err.exit_code and err.exit_code > 0 else 128 + abs(err.exit_code or 1)
        if err.exit_code is not None and err.exit_code < 0:  # killed by a signal: it could not say so itself
            rank = args.rank * per_node + err.error_index
            name = signal.Signals(-err.exit_code).name if -err.exit_code in signal.Signals._value2member_map_ \
                else f"signal {-err.exit_code}"
            print(f"error: rank {rank} (pid {err.error_pid}) was killed by {name}; the other ranks were stopped. "
                  "Continue from the last checkpoint with --resume", file=sys.stderr, flush=True)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def processes_per_node(args) -> Optional[int]:
    """How many processes this launcher spawns on this node, or None when it spawns none (one process,
    or ranks started by torchrun)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return None
    if not (args.multiprocessing_distributed or args.nprocs):
        return None
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    per_node = torch.cuda.device_count() if use_cuda else (args.nprocs or 1)
    return min(per_node, args.nprocs) if use_cuda and args.nprocs else per_node


def launch(main: Callable[[DistInfo, object], int], args) -> int:
    """Run ``main(DistInfo, args)`` in as many processes as the flags ask for; the exit code."""
    if args.gpu_id is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu_id)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        info = _init_group(args, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, "env://")
        try:
            code = main(info, args)
            if not code:
                dist.barrier()
            return code
        finally:
            dist.destroy_process_group()
    per_node = processes_per_node(args)
    if per_node is not None:
        return _spawn(per_node, args, main)
    return main(DistInfo(device=_device(args, 0)), args)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a metric tensor over ranks (identity on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (itself on one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
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


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere); ``[obj]`` on one process."""
    if not _group_ready():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_result(fn: Optional[Callable[[], Any]]) -> Any:
    """Run ``fn`` on rank 0 and give every rank its result, or its user error raised on every
    rank (so that no rank waits forever for one that failed)."""
    from engine.errors import ConfigError

    if not _group_ready():
        return fn() if fn is not None else None
    box: List[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn() if fn is not None else None)
        except ConfigError as err:
            box[0] = ("error", str(err))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise ConfigError(value)
    return value


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if _group_ready():
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift per rank between DDP forwards)."""
    if _group_ready():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha1(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def rank_differences(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The entries of ``state`` that differ from rank 0's (always empty on rank 0): what a
    checkpoint must keep per rank, e.g. BatchNorm statistics of a distiller's connectors.
    Shared memories (CRD's banks, queues) are identical on every rank and are not repeated."""
    if not _group_ready():
        return {}
    digests = [{k: _digest(v) for k, v in state.items()} if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(digests, src=0)
    if dist.get_rank() == 0:
        return {}
    return {k: v.detach().cpu().clone() for k, v in state.items() if _digest(v) != digests[0].get(k)}
