"""``--teacher_store_dtype topk16``: a many-class teacher's logits stored in ``2K + 1`` float16 numbers.

Why: ImageNet's 1000 logits take 4,000 bytes per (image, view) in float32 (2,000 in float16); over the
one-slot-per-epoch views of a mixed or seeded run that is terabytes. FKD (Shen and Xing, 2022) keeps a
teacher's top-k and spreads the rest of the probability evenly ("marginal smoothing"); here, in logit space,
an entry holds the K largest logits and their class indices (exact as float16 integers up to 2048 classes)
and one logit ``r`` for each of the other ``C - K`` classes, chosen so that they keep their exact softmax mass
at temperature 1: ``(C - K) e^r = sum of e^z over the rest``. Decoding gives a [C] logit vector.

Error bound, per entry, for the teacher's distribution at temperature 1: with ``m`` the mass outside the top
K and ``eps`` the float16 rounding of the stored numbers (at most ``2^-11`` x the largest stored magnitude,
plus ``2^-25``), ``KL(teacher || decoded) <= m ln(C - K) + 2 eps``: the rest's mass is spread evenly
(``m (ln(C - K) - H)``, H the entropy of the rest's shape) and a rounding of every logit by at most eps moves
every log-probability by at most 2 eps. ``m`` is at most ``(C - K) / C``, so a teacher must be confident for
the bound to be small; the run prints it at start. The exact float32/float16 modes stay the default.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch

#: Float16 rounding: relative half-ulp of normal numbers, absolute for subnormals.
_REL, _ABS = 2.0 ** -11, 2.0 ** -25
#: Largest class count whose indices float16 holds exactly (every integer up to 2^11).
MAX_CLASSES = 2048


class TopKLogits:
    """Encodes [B, C] logits as [B, 2K + 1] (top-K values, their indices, the rest's logit) and back."""

    def __init__(self, classes: int, k: int):
        if not 1 <= k < classes:
            raise ValueError(f"--teacher_store_topk {k}: must be in 1..{classes - 1} for a {classes}-class teacher "
                             "(with fewer classes keep --teacher_store_dtype float16 or float32, exact)")
        if classes > MAX_CLASSES:
            raise ValueError(f"--teacher_store_dtype topk16: class indices are stored as float16, exact up to "
                             f"{MAX_CLASSES} classes; the teacher has {classes}: use float16 or float32")
        self.classes, self.k = int(classes), int(k)

    @property
    def shape(self):
        return (2 * self.k + 1,)

    def describe(self) -> Dict[str, Any]:
        """What a stored row means: part of the store's key."""
        return {"topk": self.k, "classes": self.classes, "rest": "one logit keeping the rest's softmax mass at T=1",
                "stored": "float16 [values K, indices K, rest 1]"}

    def encode(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 [B, 2K + 1] of float32 logits [B, C] (rounded to float16 when stored)."""
        z = logits.float()
        values, index = z.topk(self.k, dim=1)
        rest = z.scatter(1, index, float("-inf")).logsumexp(dim=1) - math.log(self.classes - self.k)
        return torch.cat([values, index.float(), rest[:, None]], dim=1)

    def decode(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [B, C] logits of stored rows [B, 2K + 1]."""
        rows = rows.float()
        k = self.k
        out = rows[:, 2 * k:].expand(rows.shape[0], self.classes).clone()
        return out.scatter_(1, rows[:, k:2 * k].long(), rows[:, :k])

    def kl_bound(self, logits: torch.Tensor) -> torch.Tensor:
        """[B]: the bound ``m ln(C - K) + 2 eps`` on KL(softmax(logits) || softmax(decoded stored row))."""
        z = logits.float()
        values, index = z.topk(self.k, dim=1)
        outside = 1.0 - z.softmax(dim=1).gather(1, index).sum(dim=1)
        rows = self.encode(z)
        eps = _REL * torch.cat([values, rows[:, -1:]], dim=1).abs().amax(dim=1) + _ABS
        return outside.clamp_min(0) * math.log(self.classes - self.k) + 2 * eps

    def bytes_per_entry(self) -> int:
        """Bytes per (image, view) of this tap on disk: the row, its CRC32 and its filled flag."""
        return 2 * (2 * self.k + 1) + 4 + 1

    def summary(self) -> str:
        """The line the run prints at start: the encoding, its size and its error bound."""
        c, k = self.classes, self.k
        worst = (c - k) / c * math.log(c - k)
        return (f"teacher store topk16: logits as their top {k} of {c} in float16 plus one logit for the other "
                f"{c - k} ({self.bytes_per_entry()} bytes per image and view against {4 * c + 5} in float32); "
                f"KL(teacher || stored) at T=1 <= m ln({c - k}) + 2 eps per entry, m the teacher's probability "
                f"outside its top {k} (at most {worst:.3g} nats when m = {(c - k) / c:.3g}; "
                f"{0.05 * math.log(c - k):.3g} when m = 0.05), eps = 2^-11 x its largest |logit|")


def topk_codecs(dtype: str, k: int, shapes: Dict[str, Any]) -> Dict[str, TopKLogits]:
    """{'logits': codec} for ``--teacher_store_dtype topk16`` when the store holds the logits, else {}."""
    if dtype != "topk16" or "logits" not in shapes:
        return {}
    return {"logits": TopKLogits(int(shapes["logits"][0]), int(k))}
