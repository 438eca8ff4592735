"""Model options (``img_size=32``, ``patch_size=4``, ``drop_path_rate=0.1``): passed to a library's
constructor, refused in one line when the model does not take them, and recorded on the model.

``model_options_of(model)`` is what a checkpoint stores so that
``create_model(arch, num_classes=n, **options)`` rebuilds the same network (a teacher from its
checkpoint alone).
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Dict, List, Optional

from torch import nn

OFFLINE_HINT = ("pretrained weights could not be downloaded ({err}). This machine may be offline: "
                "pass a local checkpoint instead (e.g. --path_t) or build without pretrained weights.")

#: Constructor parameters that are not architecture options (set by create_model or meaningless here).
_NOT_OPTIONS = {"self", "num_classes", "pretrained", "weights", "device", "dtype", "args", "kwargs"}


class ModelOptionError(ValueError):
    """A model option the model does not take, or a value it cannot be built with."""


def model_options_of(model: nn.Module) -> Dict[str, Any]:
    """The options ``model`` was built with (empty for the CIFAR zoo): record them in a checkpoint."""
    return dict(getattr(model, "options", None) or {})


def accepted_options(cls: type) -> List[str]:
    """Keyword parameters of a model class's constructor, the options it can take."""
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return []
    return sorted(p.name for p in params if p.name not in _NOT_OPTIONS
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _model_class(build: Callable[..., nn.Module], fixed: Dict[str, Any]):
    """The class ``build`` makes, from a build without options on the meta device (no memory)."""
    import torch

    base = dict(fixed)
    if base.get("pretrained"):
        base["pretrained"] = False
    if base.get("weights") is not None:
        base["weights"] = None
    try:
        with torch.device("meta"):
            return type(build(**base))
    except Exception:  # noqa: BLE001  (only to list accepted options; the original error is reported)
        return None


def option_error(name: str, err: TypeError, build: Callable[..., nn.Module],
                 fixed: Dict[str, Any]) -> Optional[ModelOptionError]:
    """A keyword the model does not take (or that its variant fixes), said in one line with the
    options its class takes; None for any other TypeError."""
    message = str(err)
    unknown = re.search(r"unexpected keyword argument '(\w+)'", message)
    fixed_by_variant = re.search(r"multiple values for keyword argument '(\w+)'", message)
    if not (unknown or fixed_by_variant):
        return None
    cls = _model_class(build, fixed)
    takes = ", ".join(accepted_options(cls)) if cls is not None else "(could not be listed)"
    if unknown:
        what = f"{name} takes no model option '{unknown.group(1)}'"
    else:
        what = f"{name} fixes '{fixed_by_variant.group(1)}' itself (choose another variant of it)"
    return ModelOptionError(f"{what}; {getattr(cls, '__name__', 'it')} takes: {takes}")


def build_with_options(name: str, build: Callable[..., nn.Module], options: Dict[str, Any],
                       **fixed: Any) -> nn.Module:
    """``build(**fixed, **options)`` of a library model, its errors said in one line; sets ``model.options``."""
    try:
        model = build(**fixed, **options)
    except TypeError as err:
        raise (option_error(name, err, build, fixed)
               or ModelOptionError(f"{name} cannot be built with options {options}: {err}")) from None
    except (AssertionError, ValueError) as err:
        raise ModelOptionError(f"{name} cannot be built with options {options}: {err}") from None
    except (OSError, RuntimeError) as err:  # urllib errors are OSErrors
        if fixed.get("pretrained") or fixed.get("weights") is not None:
            raise RuntimeError(OFFLINE_HINT.format(err=err)) from None
        raise ModelOptionError(f"{name} cannot be built with options {options}: {err}") from None
    model.options = dict(options)
    return model
