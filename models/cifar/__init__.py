"""The CIFAR-100 model zoo of the distillation literature (RepDistiller definitions).

Importing this package registers every model. Each keeps RepDistiller's state_dict keys
(so its checkpoints load with ``strict=True``), has a plain ``forward(x) -> logits`` and a
``tap_points()`` map. Convention in every file: a block's final activation is a module
named ``relu``, so ``<block>.relu:input`` is that block's pre-activation.
"""
from models.cifar import (  # noqa: F401  (imported to register the models)
    mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn)
