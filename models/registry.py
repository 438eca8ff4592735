"""The model registry and ``create_model``: CIFAR zoo names, ``torchvision:<name>``, ``timm:<name>``."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from distillers.registry import Registry

MODELS = Registry("model")


def register_model(name: str, *, family: str, **meta: Any):
    """Register a model factory ``f(num_classes=..., **kw) -> nn.Module`` under ``name``.

    ``family`` ('cifar', 'imagenet', 'metric') lets command lines resolve names
    within the dataset's family. The returned model must expose ``tap_points``.
    """
    return MODELS.register(name, family=family, **meta)


def list_models(family: Optional[str] = None):
    return MODELS.names(family=family) if family else MODELS.names()


def create_model(name: str, num_classes: int = 100, *, family: Optional[str] = None,
                 **kwargs: Any) -> nn.Module:
    """Build a model by name.

    ``torchvision:<name>`` and ``timm:<name>`` build those libraries' models with a
    tap map attached (see :mod:`models.external`). With ``family`` given, only that
    family's names are accepted and the error lists them.
    """
    if ":" in name:
        from models import external  # imported lazily: timm is optional for CIFAR runs
        return external.create_external(name, num_classes=num_classes, **kwargs)
    if family is not None and (name not in MODELS or MODELS.meta(name).get("family") != family):
        from distillers.registry import UnknownNameError
        raise UnknownNameError(MODELS.unknown_message(name, MODELS.names(family=family)))
    model = MODELS.build(name, num_classes=num_classes, **kwargs)
    model.arch = name
    return model
