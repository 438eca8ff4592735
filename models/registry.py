"""The model registry and ``create_model``: family-scoped names, ``torchvision:<name>``, ``timm:<name>``.

Names are scoped by family ('cifar', 'imagenet', 'metric'), as in the reference
repositories: ``ResNet50`` is the CIFAR variant under ``--dataset cifar100`` and
torchvision's ResNet-50 under ``--dataset imagenet``. Without a family (the Python API),
a name found in several families means the CIFAR zoo's.
"""
from __future__ import annotations

from typing import Any, List, Optional

from torch import nn

from core.registry import Registry, UnknownNameError

MODELS = Registry("model")
DEFAULT_FAMILY = "cifar"


def _key(family: str, name: str) -> str:
    return f"{family}/{name}"


def register_model(name: str, *, family: str, **meta: Any):
    """Register a model factory ``f(num_classes=..., **kw) -> nn.Module`` as ``name`` in ``family``.

    The returned model must expose ``tap_points``.
    """
    return MODELS.register(_key(family, name), family=family, model_name=name, **meta)


def list_models(family: Optional[str] = None) -> List[str]:
    keys = MODELS.names(family=family) if family else MODELS.names()
    return sorted({MODELS.meta(k)["model_name"] for k in keys})


def resolve_model(name: str, family: Optional[str] = None) -> str:
    """The registry key of ``name`` (in ``family``); a clear error names the accepted ones."""
    if family is not None:
        if _key(family, name) in MODELS:
            return _key(family, name)
        raise UnknownNameError(Registry(f"{family} model").unknown_message(name, list_models(family)))
    matches = [k for k in MODELS.names() if MODELS.meta(k)["model_name"] == name]
    if len(matches) == 1:
        return matches[0]
    if _key(DEFAULT_FAMILY, name) in matches:
        return _key(DEFAULT_FAMILY, name)
    if matches:
        families = ", ".join(MODELS.meta(k)["family"] for k in matches)
        raise UnknownNameError(f"model '{name}' exists in several families ({families}); pass family=")
    raise UnknownNameError(MODELS.unknown_message(name, list_models()))


def create_model(name: str, num_classes: int = 100, *, family: Optional[str] = None,
                 **kwargs: Any) -> nn.Module:
    """Build a model by name.

    ``torchvision:<name>`` and ``timm:<name>`` build those libraries' models with a
    tap map attached (see :mod:`models.external`); keyword options go to their constructors
    (``img_size=32, patch_size=4``) and are kept for checkpoints (:func:`models.model_options_of`).
    A keyword a model does not take is a :class:`models.options.ModelOptionError` naming those it takes.
    """
    if ":" in name:
        from models import external  # imported lazily: timm is optional for CIFAR runs
        return external.create_external(name, num_classes=num_classes, **kwargs)
    key = resolve_model(name, family)
    try:
        model = MODELS.build(key, num_classes=num_classes, **kwargs)
    except TypeError as err:
        from models.options import option_error
        error = option_error(name, err, MODELS.get(key), {"num_classes": num_classes})
        if error is None:
            raise
        raise error from None
    model.arch = name
    model.options = {}  # a registered name fixes its architecture; its keyword arguments are the task's
    return model
