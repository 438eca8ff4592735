"""distillers: knowledge-distillation methods behind one registry and one tap interface.

>>> from distillers import build_distiller, list_distillers
"""
from core.registry import Registry, UnknownNameError
from distillers.base import (DISTILLERS, PREDICTION, Distiller, NotApplicable, Option, ShapeSpec, build_distiller,
                             list_distillers, register_distiller)
from core.requests import ContrastSampling, DataRequest, ExtraView, SampleIndex
from core.taps import FeatureTaps, TapPoint
from distillers import methods  # noqa: F401  (registers the built-in methods)

__version__ = "0.1.0"

__all__ = ["DISTILLERS", "PREDICTION", "Distiller", "Option", "FeatureTaps", "Registry", "ShapeSpec",
           "TapPoint", "UnknownNameError", "build_distiller", "list_distillers",
           "register_distiller", "NotApplicable", "DataRequest", "SampleIndex", "ContrastSampling", "ExtraView"]
