"""The one tensor gather over ranks: memory banks and queues that must stay identical on every
rank, and evaluation embeddings (metric learning) whose shards differ in size."""
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (identity on 1 rank).

    Memory banks and queues are updated with the gathered batch, so all ranks apply the same
    update and stay equal to a one-process run on the global batch. Ranks may hold different
    numbers of rows (an evaluation shard): rows are padded for the collective and cut again.
    """
    if world_size() == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    padded = tensor.new_zeros((most,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)], dim=0)
