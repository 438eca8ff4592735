"""The generic registry and the distiller registry built on it."""
import pytest
import torch

import distillers
from distillers import Distiller, ShapeSpec, UnknownNameError, build_distiller, register_distiller
from distillers.base import DISTILLERS
from core.registry import Registry


def test_register_build_and_list():
    reg = Registry("widget")

    @reg.register("blue", family="a")
    def blue(size=1):
        return ("blue", size)

    @reg.register("green", family="b")
    class Green:
        def __init__(self, size=2):
            self.size = size

    assert reg.build("blue", size=3) == ("blue", 3)
    assert reg.build("green").size == 2
    assert reg.names() == ["blue", "green"]
    assert reg.names(family="b") == ["green"]
    assert reg.meta("blue") == {"family": "a"}


def test_unknown_name_lists_known_and_closest():
    reg = Registry("widget")
    reg.register("resnet32x4")(object)
    reg.register("resnet8x4")(object)
    with pytest.raises(UnknownNameError) as err:
        reg.get("resnet32x5")
    msg = str(err.value)
    assert "Unknown widget 'resnet32x5'" in msg
    assert "Did you mean 'resnet32x4'" in msg
    assert "resnet8x4" in msg


def test_duplicate_registration_is_an_error():
    reg = Registry("widget")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(float)
    reg.register("a", override=True)(float)
    assert reg.get("a") is float


def test_unknown_distiller_and_option():
    with pytest.raises(UnknownNameError, match="Did you mean 'kd'"):
        build_distiller("kdd", ShapeSpec({}, {}))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['temperature'\].*kd_T"):
        build_distiller("kd", ShapeSpec({}, {}), temperature=3)


def test_outside_code_registers_a_distiller():
    """A user's own method: one decorated class, no edit to the project."""

    @register_distiller("test_l2_logits", override=True)
    class L2Logits(Distiller):
        options = {"scale": 1.0}

        def forward(self, s, t, batch=None):
            return {"l2": self.scale * (s["logits"] - t["logits"]).pow(2).mean()}

    try:
        assert "test_l2_logits" in distillers.list_distillers()
        assert L2Logits.registry_name == "test_l2_logits"
        d = build_distiller("test_l2_logits", ShapeSpec({}, {}), scale=2.0)
        s, t = torch.ones(2, 3), torch.zeros(2, 3)
        assert d.total(d({"logits": s}, {"logits": t}, {})).item() == pytest.approx(2.0)
    finally:
        DISTILLERS._entries.pop("test_l2_logits")
        DISTILLERS._meta.pop("test_l2_logits")


def test_register_distiller_rejects_non_distillers():
    with pytest.raises(TypeError, match="expects a Distiller subclass"):
        register_distiller("bad")(object)
