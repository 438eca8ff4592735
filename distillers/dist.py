"""Rank-aware helpers for methods whose buffers must stay identical on every rank."""
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (identity on 1 rank).

    Memory banks and queues are updated with the gathered batch, so all ranks apply
    the same update and stay equal to a one-process run on the global batch.
    Every rank must call it with the same shape (constant per-rank batch).
    """
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
