"""Chen et al., "Cross-Layer Distillation with Semantic Calibration" (SemCKD, AAAI 2021)."""
import torch
import torch.nn.functional as F
from torch import nn

from distillers.base import Distiller, Option, register_distiller
from distillers.methods._common import pool_to_smaller
from distillers.reference import GoldenEntry, register_golden

#: The query/key embedding width is batch // QK_FACTOR (the reference's SelfA factor).
QK_FACTOR = 4
MIN_BATCH = 8


class _Embed(nn.Module):
    """Batch-similarity row -> L2-normalised query/key: Linear B -> 2(B/4), ReLU, Linear -> B/4."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear2(F.relu(self.linear1(x))), dim=1)


class _Proj(nn.Module):
    """Student stage i -> teacher stage j channels: 1x1 conv to 2 C_t, BN, ReLU, 3x3, BN, ReLU, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = 2 * c_out
        self.regressor = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, c_out, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(x)


@register_distiller("semckd")
class SemCKD(Distiller):
    """Every student stage regresses every teacher stage, weighted by a learnt per-sample attention.

    Stage i's batch-similarity matrix X_i X_i^T (X flattened, B x B) goes through a query MLP
    (student) or key MLP (teacher); attention[b, i, j] = softmax_j(<q_ib, k_jb> / soft).
    For every (i, j), after pooling the larger map to the smaller size,
    e[b, i, j] = mean over (C, H, W) of (regressor_ij(F_s,i) - F_t,j)^2, and
    loss = sum attention * e / (B * number of student stages).

    The MLP input width is the batch size, so the method needs a constant batch
    (``spec.batch_size`` >= 8; at B/4 = 1 the normalised query is a sign with no gradient).
    A batch of any other size (the last, incomplete one) is skipped as in the reference:
    ``forward`` returns a zero ``semckd`` term with no gradient, so only the other terms train
    on it; use drop_last to avoid such batches.

    The reference's MLPEmbed also holds a ``regressor`` that its forward never calls; it is not
    built here (the golden table ignores those entries). Weights: -c 1 -d 1 -b 400 (CIFAR-100).
    """

    display_name = "SemCKD"  # its row in published tables
    student_taps = ("stages",)
    teacher_taps = ("stages",)
    default_weights = {"gamma": 1.0, "alpha": 1.0, "beta": 400.0}
    options = {"soft": Option(1.0, "temperature of the stage-pair attention", above=0, flags=("-s",))}

    def __init__(self, spec, **options):
        super().__init__(spec, **options)
        bsz = spec.batch_size
        if bsz is None or bsz < MIN_BATCH:
            raise ValueError(f"semckd sizes its query/key MLPs by the batch, so the batch must be constant "
                             f"and >= {MIN_BATCH}; got spec.batch_size={bsz}")
        s_shapes = [tuple(x) for x in spec.student["stages"]]
        t_shapes = [tuple(x) for x in spec.teacher["stages"]]
        for side, shapes in (("student", s_shapes), ("teacher", t_shapes)):
            if any(len(x) != 3 for x in shapes):
                raise ValueError(f"semckd needs spatial stage maps [C, H, W]; {side} stages are {shapes}")
        self.n_s, self.n_t = len(s_shapes), len(t_shapes)
        dim = bsz // QK_FACTOR
        for i in range(self.n_s):
            self.add_module(f"query_{i}", _Embed(bsz, dim))
        for j in range(self.n_t):
            self.add_module(f"key_{j}", _Embed(bsz, dim))
        for i, s_shape in enumerate(s_shapes):
            for j, t_shape in enumerate(t_shapes):
                self.add_module(self._regressor_name(i, j), _Proj(s_shape[0], t_shape[0]))

    def _regressor_name(self, i: int, j: int) -> str:
        """The reference's ``regressor{i}{j}``, with a separator once indices could collide."""
        return f"regressor{i}{j}" if max(self.n_s, self.n_t) <= 10 else f"regressor{i}_{j}"

    @staticmethod
    def _similarity(feat: torch.Tensor) -> torch.Tensor:
        flat = feat.flatten(1)
        return flat @ flat.t()

    def forward(self, s, t, batch=None):
        feats_s, feats_t = s["stages"], t["stages"]
        bsz = feats_s[0].shape[0]
        if bsz != self.spec.batch_size:
            return {"semckd": feats_s[0].new_zeros(())}
        query = torch.stack([getattr(self, f"query_{i}")(self._similarity(f))
                             for i, f in enumerate(feats_s)], 1)  # [B, n_s, D]
        key = torch.stack([getattr(self, f"key_{j}")(self._similarity(f))
                           for j, f in enumerate(feats_t)], 2)  # [B, D, n_t]
        attention = F.softmax(torch.bmm(query, key) / self.soft, dim=-1)  # [B, n_s, n_t]
        errors = []
        for i, stage_s in enumerate(feats_s):
            for j, stage_t in enumerate(feats_t):
                f_s, f_t = pool_to_smaller(stage_s, stage_t)
                diff = getattr(self, self._regressor_name(i, j))(f_s) - f_t
                errors.append(diff.pow(2).flatten(1).mean(1))
        errors = torch.stack(errors, 1).view(bsz, self.n_s, self.n_t)
        return {"semckd": (attention * errors).sum() / (bsz * self.n_s)}


# The reference numbers this method reproduces (python -m distillers.golden; shared/golden, tests/golden).
register_golden("semckd", GoldenEntry(
    "semckd", {"g_s": "s:stages", "g_t": "t:stages"}, hparam_options={"soft": "soft"},
    spec_from_hparams={"batch_size": "feat_dim_is_batch_size"},
    hparam_fixed={"query_key_factor": 4, "bn_mode": "train"}, hparam_info=("layers", "beta_cifar"),
    diagnostics=("attention",),
    ignore_params=("query_*.regressor.*", "key_*.regressor.*")))
