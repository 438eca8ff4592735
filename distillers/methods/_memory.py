"""Memories of the contrastive family: CRD's momentum banks and a FIFO teacher queue.

Both live in registered buffers, so checkpoints carry them, and both are written with
embeddings and indices gathered over ranks (:func:`distillers.dist.gather`): every rank
applies the same update and holds the buffers of a one-process run on the global batch.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from distillers import dist
from distillers.methods._common import flat_dim

CRD_EPS = 1e-7


def pooled_dim(shapes, side: str, method: str) -> int:
    """Width of the pooled (penultimate) vector that the contrastive heads embed."""
    if "pooled" not in shapes:
        raise ValueError(f"{method} embeds the {side}'s 'pooled' feature, which its ShapeSpec lacks "
                         f"(has: {sorted(shapes)})")
    return flat_dim(shapes["pooled"])


def require_num_data(spec, method: str) -> int:
    if spec.num_data is None:
        raise ValueError(f"{method} keeps one memory row per training sample: ShapeSpec.num_data "
                         "(the training-set size) must be set")
    return int(spec.num_data)


class ContrastMemory(nn.Module):
    """CRD's two memory banks over the training set (RepDistiller ``crd/memory.py``).

    ``memory_v1`` holds student embeddings, ``memory_v2`` teacher embeddings (n_data x
    feat_dim, initialised uniform in +-1/sqrt(feat_dim/3) as the reference). ``params`` keeps
    the reference layout [K, T, Z_v1, Z_v2, momentum] so reference checkpoints load; only the
    Z slots are state (-1 = unset). Each Z is fixed on the first call to mean(scores) * n_data,
    the mean taken over the global batch so that all ranks agree.
    """

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float, nce_m: float):
        super().__init__()
        self.n_data, self.nce_k, self.nce_t, self.nce_m = n_data, nce_k, nce_t, nce_m
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("params", torch.tensor([float(nce_k), nce_t, -1.0, -1.0, nce_m]))
        self.register_buffer("memory_v1", torch.rand(n_data, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("memory_v2", torch.rand(n_data, feat_dim).mul_(2 * stdv).sub_(stdv))

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor,
                contrast_idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scores o_s, o_t [B, K+1], then the momentum update of rows ``index``.

        o_s[i, k] = exp(<memory_v2[contrast_idx[i, k]], v_s,i> / T) / Z_v1 (student anchors
        against the teacher bank); o_t likewise with memory_v1 and v_t. Column 0 is the positive.
        """
        if contrast_idx.dim() != 2 or contrast_idx.shape != (v_s.shape[0], self.nce_k + 1):
            raise ValueError(f"contrast_idx must have shape [batch, nce_k + 1] = "
                             f"[{v_s.shape[0]}, {self.nce_k + 1}], got {list(contrast_idx.shape)}")
        o_s = self._score(self.memory_v2, v_s, contrast_idx, slot=2)
        o_t = self._score(self.memory_v1, v_t, contrast_idx, slot=3)
        self._update(v_s, v_t, index)
        return o_s, o_t

    def _score(self, bank, anchors, contrast_idx, slot: int) -> torch.Tensor:
        scores = torch.exp(contrast_dots(bank, anchors, contrast_idx) / self.nce_t)
        if self.params[slot] < 0:
            self.params[slot] = dist.gather(scores.detach()).mean() * self.n_data
        return scores / self.params[slot].clone()  # a copy: params changes in place later

    @torch.no_grad()
    def _update(self, v_s, v_t, index) -> None:
        index = dist.gather(index)
        for bank, v in ((self.memory_v1, v_s), (self.memory_v2, v_t)):
            rows = bank[index] * self.nce_m + dist.gather(v.detach()).to(bank.dtype) * (1 - self.nce_m)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))


def contrast_dots(bank: torch.Tensor, anchors: torch.Tensor, contrast_idx: torch.Tensor) -> torch.Tensor:
    """[B, K+1] dot products <bank[contrast_idx[i, k]], anchors[i]>, computed the cheaper way.

    Gathering the contrast rows copies B x (K+1) x D values (CRD on CIFAR-100: 64 x 16,385 x 128
    floats, 537 MB per bank and step) for B x (K+1) x D multiply-adds. When the bank has at most
    4 (K+1) rows it is cheaper to multiply every row with every anchor (one GEMM over the
    25 MB bank) and pick the contrast columns; with ImageNet's 1.28M rows the gather stays.
    Both take copies of what the later in-place bank update overwrites, so autograd holds.
    """
    if bank.shape[0] <= 4 * contrast_idx.shape[1]:
        return (anchors @ bank.t().clone()).gather(1, contrast_idx)
    rows = bank[contrast_idx]
    return torch.bmm(rows, anchors.unsqueeze(2)).squeeze(2)


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE objective (its Eq. 18) on scores [B, K+1] with the positive in column 0.

    -(sum_i log(o_i0 / (o_i0 + K/N + eps)) + sum_{i,k>=1} log((K/N) / (o_ik + K/N + eps))) / B.
    """
    noise = (scores.shape[1] - 1) / n_data
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + CRD_EPS))
    log_d0 = torch.log(noise / (neg + noise + CRD_EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class TeacherQueue(nn.Module):
    """FIFO queue of K teacher embeddings (MoCo-style, no momentum encoder).

    Initialised like the reference, ``normalize(randn(K, D), dim=0)`` (unit columns, so the
    first rows are not unit vectors) unless ``row_norm`` asks for unit rows. A push writes the
    gathered batch at ``queue_ptr`` and advances it by the global batch size modulo K.
    """

    def __init__(self, nce_k: int, feat_dim: int, row_norm: bool = False):
        super().__init__()
        self.register_buffer("queue", F.normalize(torch.randn(nce_k, feat_dim), dim=1 if row_norm else 0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def snapshot(self) -> torch.Tensor:
        """The queue as scoring sees it: a copy, so a later push cannot disturb backward."""
        return self.queue.clone()

    @torch.no_grad()
    def push(self, keys: torch.Tensor, method: str = "queue") -> None:
        keys = dist.gather(keys.detach())
        size, n = self.queue.shape[0], keys.shape[0]
        if size % n:
            raise ValueError(
                f"{method}: the queue size nce_k={size} must be a multiple of the global batch size "
                f"B={n} (per-rank batch x world size {dist.world_size()}); choose nce_k or the batch "
                "size accordingly and drop incomplete batches (drop_last=True)")
        ptr = int(self.queue_ptr)
        self.queue[ptr:ptr + n] = keys
        self.queue_ptr[0] = (ptr + n) % size
