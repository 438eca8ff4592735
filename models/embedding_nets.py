"""Embedding networks for metric learning (models-and-data.md §5.3), family ``metric``.

``resnet18`` / ``resnet50``: torchvision's ResNet backbone (conv1 .. layer4, average pool, no fc)
followed by the reference's ``LinearEmbedding`` head, Linear(pool_dim, embedding_size), and an
optional L2 normalisation. Module names follow lenscloth/RKD (``base.<conv1..avgpool>``,
``linear``), so the references' ``best.pth`` state_dicts load as they are.

Taps: ``stem`` (after the max-pool), ``stage1..4`` (layer1..4, the references' b1..b4),
``last_map`` (the map that is pooled), ``pooled`` (the pooled vector), and ``embedding`` =
``logits`` = the network's output (the embedding, L2-normalised when ``l2normalize``): the
trainer's prediction tap is the embedding.

Keyword arguments: ``embedding_size`` (128), ``l2normalize`` (True), ``pretrained`` (True, as
the seeds: torchvision's ImageNet weights; offline without cached weights this is an error that
names ``--no-pretrained``) and ``init_weights`` (a checkpoint to start from, the seeds'
``--load``). ``num_classes`` is accepted and ignored (embeddings have no classes).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from core.taps import TapPoint
from models.registry import register_model

BACKBONES = {"resnet18": ("resnet18", 512), "resnet50": ("resnet50", 2048)}


class PretrainedWeightsUnavailable(FileNotFoundError):
    """ImageNet weights were asked for but cannot be downloaded or found in the cache."""


class EmbeddingNet(nn.Module):
    """ResNet backbone + linear embedding head (+ L2 normalisation)."""

    def __init__(self, base: nn.Sequential, output_size: int, embedding_size: int = 128,
                 l2normalize: bool = True):
        super().__init__()
        if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or embedding_size < 1:
            raise ValueError(f"embedding_size must be a positive integer, got {embedding_size!r}")
        self.base = base
        self.output_size = output_size
        self.linear = nn.Linear(output_size, embedding_size)
        self.embedding_size = embedding_size
        self.l2normalize = bool(l2normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.linear(self.base(x).flatten(1))
        return F.normalize(embedding, p=2, dim=1) if self.l2normalize else embedding

    def tap_points(self) -> Dict[str, TapPoint]:
        points = {"stem": TapPoint("base.maxpool"), "last_map": TapPoint("base.avgpool", "input"),
                  "pooled": TapPoint("linear", "input"), "embedding": TapPoint("", "output"),
                  "logits": TapPoint("", "output")}
        for k in range(1, 5):
            points[f"stage{k}"] = TapPoint(f"base.layer{k}")
        return points

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, l2normalize={self.l2normalize}"


def _backbone(arch: str, pretrained: bool) -> nn.Sequential:
    import torchvision

    builder = getattr(torchvision.models, arch)
    if pretrained:
        try:
            net = builder(weights="DEFAULT")
        except (OSError, RuntimeError, ValueError) as err:  # urllib errors are OSErrors
            raise PretrainedWeightsUnavailable(
                f"ImageNet-pretrained {arch} weights (the seeds' default) could not be loaded ({err}). "
                "This machine may be offline: put torchvision's weight file in the torch hub cache "
                "(~/.cache/torch/hub/checkpoints), or train from scratch with --no-pretrained") from None
    else:
        net = builder(weights=None)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))


def _load_init(model: nn.Module, path: str) -> None:
    """Start from ``path``: this project's checkpoint (its ``model``) or a bare state_dict (references)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"--load {path}: no such checkpoint") from None
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise FileNotFoundError(f"--load {path}: no model weights in this file")
    weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}
    own = model.state_dict()
    bad = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if bad or missing or unexpected:
        detail = (f"shape of {bad[0]}: checkpoint {tuple(weights[bad[0]].shape)} vs model "
                  f"{tuple(own[bad[0]].shape)} (check --embedding_size / --base)") if bad else \
                 f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise ValueError(f"--load {path} does not fit this network: {detail}")
    model.load_state_dict(weights)


def _factory(name: str):
    arch, output_size = BACKBONES[name]

    def factory(num_classes: Optional[int] = None, embedding_size: int = 128, l2normalize: bool = True,
                pretrained: bool = True, init_weights: Optional[str] = None) -> EmbeddingNet:
        model = EmbeddingNet(_backbone(arch, pretrained and not init_weights), output_size,
                             embedding_size, l2normalize)
        if init_weights:
            _load_init(model, init_weights)
        return model

    factory.__doc__ = f"torchvision {arch} backbone ({output_size}-d pool) + linear embedding head."
    return factory


for _name in BACKBONES:
    register_model(_name, family="metric")(_factory(_name))
