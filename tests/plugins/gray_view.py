"""A plugin that brings its own data request, served by its own server, and a method that reads it:
nothing in data/ or engine/ knows about it (tests/test_plugins.py trains with it)."""
from dataclasses import dataclass

import torch.nn.functional as F

from data import RequestServer, register_request_server
from distillers import DataRequest, Distiller, Option, register_distiller


@dataclass(frozen=True)
class GrayView(DataRequest):
    """A second view of each image: its first view in grey (the channels' mean, repeated)."""

    name: str = "gray"

    @property
    def slot(self):
        return (type(self).__name__, self.name)


@register_request_server(GrayView)
class GrayViewServer(RequestServer):
    from_index = False  # it needs the image: only the DataLoader path serves it

    def fields(self, index, image=None):
        return {"views": {self.request.name: image.mean(0, keepdim=True).expand_as(image).clone()}}


@register_distiller("gray_consistency")
class GrayConsistency(Distiller):
    """MSE between the student's logits on an image and on its grey copy, plus KD on the colour view."""

    student_taps = ("logits",)
    teacher_taps = ("logits",)
    default_weights = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
    options = {"gray_T": Option(4.0, "temperature of the KD part", above=0)}
    seen = []  # what forward received, for the test

    def data_requests(self):
        return (GrayView("gray"),)

    def forward(self, s, t, batch=None):
        gray = batch["gray"]
        type(self).seen.append((s["logits"].shape, gray["s"]["logits"].shape, gray["t"]["logits"].shape))
        kd = F.kl_div(F.log_softmax(s["logits"] / self.gray_T, 1), F.softmax(t["logits"] / self.gray_T, 1),
                      reduction="batchmean")
        return {"gray_mse": F.mse_loss(gray["s"]["logits"], s["logits"]), "gray_kd": kd}
