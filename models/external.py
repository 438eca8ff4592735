"""torchvision and timm models with standard tap maps, unmodified.

``create_model("torchvision:resnet18")`` and ``create_model("timm:resnet18")`` return
the libraries' own modules with a ``tap_points`` dict attached, so they are tapped
exactly like the CIFAR zoo. timm maps are derived by :mod:`models.timm_taps` (ViT, DeiT,
Swin, ConvNeXt, MLP-Mixer and the CNNs alike). Keyword options (``img_size=32``,
``patch_size=4``, ``drop_path_rate=0.1``) go to the library's constructor and are kept in
``model.options`` (:func:`models.options.model_options_of`), so a checkpoint can rebuild the model.
"""
from __future__ import annotations

from typing import Dict

from torch import nn

from core.registry import UnknownNameError
from core.taps import TapPoint
from models.options import OFFLINE_HINT, build_with_options  # noqa: F401  (OFFLINE_HINT: models.imagenet's docs)
from models.timm_taps import derive_timm_taps


def _common(points: Dict[str, TapPoint], fc_path: str, pooled_from: str = "") -> Dict[str, TapPoint]:
    points.update({
        "pooled": TapPoint(pooled_from or fc_path, "input"),
        "logits": TapPoint("", "output"),
        "classifier": TapPoint(fc_path, "module"),
    })
    return points


def torchvision_tap_points(model: nn.Module) -> Dict[str, TapPoint]:
    """Tap maps for torchvision's ResNet family, MobileNetV2 and ShuffleNetV2."""
    from torchvision.models import MobileNetV2, ResNet, ShuffleNetV2

    if isinstance(model, ResNet):
        points = {"stem": TapPoint("maxpool"), "last_map": TapPoint("avgpool", "input")}
        for k in range(1, 5):
            layer = getattr(model, f"layer{k}")
            last = f"layer{k}.{len(layer) - 1}"
            points[f"stage{k}"] = TapPoint(f"layer{k}")
            # the block's shared ReLU runs last on the residual sum: its input is the preact
            points[f"stage{k}_preact"] = TapPoint(f"{last}.relu", "input")
            points[f"stage{k}_bn"] = TapPoint(f"{last}.bn3" if hasattr(layer[-1], "bn3") else f"{last}.bn2", "module")
        return _common(points, "fc")
    if isinstance(model, MobileNetV2):
        # SimKD's split of the feature blocks at indices [0, 1, 4, 7, 14, 18]
        points = {"stem": TapPoint("features.0"), "last_map": TapPoint("features")}
        for k, idx in enumerate((3, 6, 13, 17), start=1):
            points[f"stage{k}"] = TapPoint(f"features.{idx}")
        return _common(points, "classifier.1", pooled_from="classifier")
    if isinstance(model, ShuffleNetV2):
        points = {"stem": TapPoint("maxpool"), "last_map": TapPoint("conv5")}
        for k in range(1, 4):
            points[f"stage{k}"] = TapPoint(f"stage{k + 1}")
        return _common(points, "fc")
    raise UnknownNameError(
        f"no tap map for torchvision model {type(model).__name__}; supported: ResNet family, "
        "MobileNetV2, ShuffleNetV2 (tap other models by module path)")


def timm_tap_points(model: nn.Module) -> Dict[str, TapPoint]:
    """Tap map of any timm model (see :mod:`models.timm_taps`); its gaps go to ``model.unavailable_taps``."""
    derived = derive_timm_taps(model)
    model.unavailable_taps = derived.unavailable
    return derived.points


def create_external(name: str, num_classes: int = 1000, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``torchvision:<name>`` or ``timm:<name>`` and attach its tap map."""
    library, _, arch = name.partition(":")
    if library == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if arch not in known:
            from core.registry import Registry
            raise UnknownNameError(Registry("torchvision model").unknown_message(arch, known))
        if pretrained and num_classes != 1000:
            raise ValueError(f"pretrained torchvision weights have 1000 classes; got num_classes={num_classes}")
        model = build_with_options(name, lambda **kw: torchvision.models.get_model(arch, **kw), kwargs,
                                   weights="DEFAULT" if pretrained else None, num_classes=num_classes)
        model.tap_points = torchvision_tap_points(model)
    elif library == "timm":
        import timm

        if not timm.is_model(arch):
            from core.registry import Registry
            raise UnknownNameError(Registry("timm model").unknown_message(arch, timm.list_models()))
        model = build_with_options(name, lambda **kw: timm.create_model(arch, **kw), kwargs,
                                   pretrained=pretrained, num_classes=num_classes)
        model.arch = name
        model.tap_points = timm_tap_points(model)
    else:
        raise UnknownNameError(f"Unknown model library '{library}' in '{name}'; use 'torchvision:<name>' "
                               "or 'timm:<name>'")
    model.arch = name
    return model
