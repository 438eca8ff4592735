"""distillers: knowledge-distillation methods behind one registry and one tap interface.

>>> from distillers import build_distiller, list_distillers
"""
from distillers.registry import Registry, UnknownNameError
from distillers.base import (DISTILLERS, PREDICTION, Distiller, ShapeSpec, build_distiller,
                             list_distillers, register_distiller)
from distillers.taps import FeatureTaps, TapPoint
from distillers import methods  # noqa: F401  (registers the built-in methods)

__version__ = "0.1.0"

__all__ = ["DISTILLERS", "PREDICTION", "Distiller", "FeatureTaps", "Registry", "ShapeSpec",
           "TapPoint", "UnknownNameError", "build_distiller", "list_distillers",
           "register_distiller"]
