"""Model zoo: the CIFAR models of the literature, plus torchvision and timm adapters.

Every model keeps its plain ``forward``; feature taps come from its ``tap_points``.
"""
from models.registry import MODELS, create_model, list_models, register_model, resolve_model
from models.options import ModelOptionError, model_options_of
from models.teacher_input import attach_teacher_input, timm_input_config
from models import cifar  # noqa: F401  (registers the CIFAR zoo)
from models import imagenet  # noqa: F401  (registers the ImageNet zoo)
from models import embedding_nets  # noqa: F401  (registers the metric-learning embedding nets)

__all__ = ["MODELS", "ModelOptionError", "attach_teacher_input", "create_model", "list_models", "model_options_of",
           "register_model", "resolve_model", "timm_input_config"]
