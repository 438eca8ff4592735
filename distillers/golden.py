"""Check the project's distillers against reference numbers (``shared/golden/*.pt``).

Usage::

    python -m distillers.golden ../shared/golden/kd.pt [more files ...]

Each file names its ``method``; :data:`TABLE` (the one mapping table) says which
registered distiller and options reproduce it, which tap each input stands for, and
how the reference's parameter names map onto ours. The distiller is built from the
input *shapes* through the registry, exactly as training builds it from a dry run,
its parameters are loaded, one step is run in float64 and ``loss``, ``grads``,
``state_after`` and ``extra.step2`` are compared at the file's tolerance. One
``PASS``/``FAIL`` line per file; the exit status is non-zero if any file fails.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from fnmatch import fnmatchcase
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from distillers.base import ShapeSpec, build_distiller
from core.taps import GROUPS


@dataclass(frozen=True)
class GoldenEntry:
    """How one reference method maps onto a registered distiller.

    inputs: golden input name -> ``"s:<tap>"`` / ``"t:<tap>"`` (student/teacher
        feature; student ones get gradients) or ``"batch:<key>"``; ``"strong_s:<tap>"`` and
        ``"strong_t:<tap>"`` are a second augmented view's taps (``batch["strong"]``), optional in
        a file. A module tap is given by
        its tensors, ``"<side>:<tap>.weight"`` / ``.bias`` (the teacher's classifier as
        ``t:classifier.weight``, OFD's BatchNorms as the list ``t:stages_bn.weight``): a 2-D
        weight becomes an ``nn.Linear`` (it may be called), any other a module that carries the
        tensors; a student module's tensors get gradients (CAT-KD's classifier).
        A list input that spans several taps joins them with ``+`` in order, a group
        taking the elements the single taps leave (``"s:stem+stages"``); ``_`` marks an
        element the method does not read (its reference gradient is zero).
    options: fixed distiller options; ``hparam_options`` maps an option name to the
        file's ``hparams`` key that sets it (sizes of the small memories).
    spec_from_hparams: ShapeSpec field -> ``hparams`` key (e.g. ``num_data``).
    renames: (reference prefix, our prefix) pairs applied to parameter names.
    outputs: distiller output key -> ``extra`` key compared as well (e.g. SimKD's prediction).
    call: the distiller method that gives ``loss`` (``"init_forward"`` when the reference
        number is an initialisation-stage loss, as for AB and FSP).
    state_from_inputs: our state_dict key -> golden input name, for state the reference keeps
        outside its module (SimKD's frozen copy of the teacher classifier).
    ignore_params: ``fnmatch`` patterns of reference ``params`` the project does not build
        (SemCKD's query/key ``regressor`` that the reference's forward never calls, ICKD's unused
        ``embed_t``); their ``state_after`` entries are skipped too.
    function: ``"module:name"`` of a plain function checked instead of a distiller, for reference
        numbers that are not a loss (Recall@K, a sampler's probabilities). ``inputs`` map golden
        input names to ``"arg:<keyword>"``; ``options`` are extra keywords. The function returns
        the tensor compared with ``loss``, or a tuple whose first element is; ``outputs`` then
        maps a tuple position (``"1"``) to the ``extra`` key it must equal.
    variants: ``extra`` key -> a second step whose reference numbers are that ``extra`` entry
        (its ``loss`` and ``grads``, or ``grad_<input>`` keys): ``options`` override the entry's
        options (AOMD's ``mode1``); ``inputs_from`` = ``("module:name", keywords)`` names a
        function called with the golden inputs its signature asks for, whose returned dict
        replaces those inputs and is itself compared with the ``extra`` entry (the triplet
        samplers' index vectors, then the loss on them).
    task: the trainer task whose training step exercises the entry (``tests/test_methods_training.py``
        covers ``classification``; the metric-learning entries run in ``tests/test_metric_learning.py``).
    """

    distiller: str
    inputs: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    hparam_options: Mapping[str, str] = field(default_factory=dict)
    spec_from_hparams: Mapping[str, str] = field(default_factory=dict)
    renames: Sequence[Tuple[str, str]] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)
    call: str = "forward"
    state_from_inputs: Mapping[str, str] = field(default_factory=dict)
    ignore_params: Sequence[str] = ()
    function: str = ""
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    task: str = "classification"


LOGITS = {"logit_s": "s:logits", "logit_t": "t:logits"}
EMBEDS = {"embed_s": "s:logits", "embed_t": "t:logits"}  # the embedding net's output is its logits tap
LABELLED = {"embeddings": "s:logits", "labels": "batch:labels"}
TRIPLETS = {"anchor_idx": "batch:anchor_idx", "pos_idx": "batch:pos_idx", "neg_idx": "batch:neg_idx"}


def _mined(sampler: str) -> Dict[str, Any]:
    """A triplet ``extra`` variant: the sampler's indices (squared-distance mining, as L2Triplet)."""
    return {"inputs_from": ("distillers.methods._pairs:mined_triplets", {"sampler": sampler, "squared": True})}


#: method field of a golden file -> how to reproduce it. One entry per method.
TABLE: Dict[str, GoldenEntry] = {
    "kd": GoldenEntry("kd", LOGITS, options={"kd_T": 4.0}),
    "fitnet": GoldenEntry("fitnet", {"feat_s": "s:stage2", "feat_t": "t:stage2"},
                          options={"hint_layer": 2}, renames=(("", "regressor."),)),
    "at": GoldenEntry("at", {"g_s": "s:stages", "g_t": "t:stages"}, options={"p": 2}),
    "sp": GoldenEntry("sp", {"feat_s": "s:last_map", "feat_t": "t:last_map"}),
    "cc": GoldenEntry("cc", {"feat_s": "s:pooled", "feat_t": "t:pooled"}, options={"feat_dim": 128}),
    "vid": GoldenEntry("vid", {"g_s": "s:stages", "g_t": "t:stages"}, renames=(("", "estimators."),)),
    "rkd": GoldenEntry("rkd", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
                       options={"distance_weight": 25.0, "angle_weight": 50.0}),
    "pkt": GoldenEntry("pkt", {"feat_s": "s:pooled", "feat_t": "t:pooled"}),
    "nst": GoldenEntry("nst", {"g_s": "s:stages", "g_t": "t:stages"}),
    "dkd": GoldenEntry("dkd", {**LOGITS, "target": "batch:labels"},
                       options={"dkd_alpha": 1.0, "dkd_beta": 8.0, "kd_T": 4.0}),
    "crd": GoldenEntry(
        "crd", {"feat_s": "s:pooled", "feat_t": "t:pooled", "idx": "batch:index",
                "contrast_idx": "batch:contrast_idx"},
        options={"nce_t": 0.07, "nce_m": 0.5}, hparam_options={"nce_k": "nce_k"},
        spec_from_hparams={"num_data": "n_data"}),
    "crd_fifo": GoldenEntry(
        "crd_queue", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
        options={"nce_t": 0.07, "enqueue_first": True}, hparam_options={"nce_k": "nce_k"},
        renames=(("memory.embed_s.", "embed_s.linear."), ("memory.embed_t.", "embed_t.linear."))),
    "rrd": GoldenEntry(
        "rrd", {"feat_s": "s:pooled", "feat_t": "t:pooled"},
        options={"nce_t_s": 0.1, "nce_t_t": 0.02, "enqueue_first": True, "queue_row_norm": False},
        hparam_options={"nce_k": "nce_k"},
        renames=(("memory.embed_s.", "embed_s.linear."), ("memory.embed_t.", "embed_t.linear."))),
    "rrd_momentum": GoldenEntry(
        "rrd", {"feat_s": "s:pooled", "feat_t": "t:pooled", "idx": "batch:index",
                "contrast_idx": "batch:contrast_idx"},
        options={"memory_type": "momentum", "nce_t_s": 0.1, "nce_t_t": 0.02, "nce_t": 0.07, "nce_m": 0.5},
        hparam_options={"nce_k": "nce_k"}, spec_from_hparams={"num_data": "n_data"},
        renames=(("memory.embed_s.", "embed_s.linear."), ("memory.embed_t.", "embed_t.linear."),
                 ("memory.contrast.", "contrast."))),
    "dcd": GoldenEntry(
        "dcd", {"feat_s": "s:pooled", "feat_t": "t:pooled"}, options={"dcd_alpha": 0.5},
        renames=(("params.", ""), ("embed_s.", "embed_s.linear."), ("embed_t.", "embed_t.linear."))),
    "srrl": GoldenEntry(
        "srrl", {"feat_s": "s:pooled", "feat_t": "t:pooled", "logit_t": "t:logits",
                 "teacher_fc_weight": "t:classifier.weight", "teacher_fc_bias": "t:classifier.bias"}),
    "semckd": GoldenEntry(
        "semckd", {"g_s": "s:stages", "g_t": "t:stages"}, options={"soft": 1.0},
        spec_from_hparams={"batch_size": "feat_dim_is_batch_size"},
        ignore_params=("query_*.regressor.*", "key_*.regressor.*")),
    "simkd": GoldenEntry(
        "simkd", {"feat_s": "s:last_map", "feat_t": "t:last_map",
                  "teacher_fc_weight": "t:classifier.weight", "teacher_fc_bias": "t:classifier.bias"},
        options={"factor": 2}, renames=(("transfer.", "head.transfer."),),
        state_from_inputs={"head.fc.weight": "teacher_fc_weight", "head.fc.bias": "teacher_fc_bias"},
        outputs={"logits": "logits"}),
    "ab": GoldenEntry("ab", {"g_s": "s:stages_preact", "g_t": "t:stages_preact"},
                      options={"margin": 1.0}, call="init_forward"),
    "fsp": GoldenEntry("fsp", {"g_s": "s:stem+stages", "g_t": "t:stem+stages"}, call="init_forward"),
    "ft": GoldenEntry("ft", {"feat_s": "s:last_map", "factor_t": "t:factor"},
                      renames=(("encoder.", "translator."),)),
    "kdsvd": GoldenEntry("kdsvd", {"g_s": "s:stages", "g_t": "t:stages"}, options={"k": 1}),
    "reviewkd": GoldenEntry(
        "reviewkd", {"feats_s": "s:_+stages", "pooled_s": "s:pooled",
                     "preact_feats_t": "t:_+stages_preact", "pooled_t": "t:pooled"},
        options={"reviewkd_weight": 1.0}, renames=(("", "abfs."),)),
    # metric learning (lenscloth/RKD metric/, ahu-hpt/AOMD metric/); embeddings = the embedding net's output
    "rkd_metric": GoldenEntry("metric_rkd", EMBEDS, options={"distance_weight": 1.0, "angle_weight": 2.0},
                              hparam_options={"distance_weight": "dist_ratio", "angle_weight": "angle_ratio"},
                              task="metric"),
    "triplet": GoldenEntry(
        "triplet", {**LABELLED, **TRIPLETS}, options={"margin": 0.2, "p": 2},
        hparam_options={"margin": "margin", "p": "p"},
        variants={"all_pairs": _mined("all"), "hard_negative": _mined("hard"),
                  "semihard_negative": _mined("semihard")}, task="metric"),
    "distance_weighted_logweights": GoldenEntry(
        "", {"embeddings": "arg:embeddings", "labels": "arg:labels"},
        function="distillers.methods._pairs:distance_weighted_probabilities",
        options={"cut_off": 0.5, "nonzero_loss_cutoff": 1.4}, outputs={"1": "anchor_idx", "2": "pos_idx"},
        hparam_options={"cut_off": "cut_off", "nonzero_loss_cutoff": "nonzero_loss_cutoff"},
        task="metric"),
    "recall_at_k": GoldenEntry("", {"embeddings": "arg:embeddings", "labels": "arg:labels"},
                               function="distillers.retrieval:recall_at_k", options={"ks": (1, 2, 4, 8)},
                               hparam_options={"ks": "K"}, task="metric"),
    "darkrank": GoldenEntry("darkrank", EMBEDS, options={"dark_alpha": 2.0, "dark_beta": 3.0, "permute_len": 4},
                            hparam_options={"dark_alpha": "alpha", "dark_beta": "beta", "permute_len": "permute_len"},
                            task="metric"),
    "metric_contrastive": GoldenEntry("contrastive", {**LABELLED, **TRIPLETS}, options={"margin": 0.2},
                                      hparam_options={"margin": "margin"}, task="metric"),
    "metric_at": GoldenEntry("metric_at", {"g_s": "s:stage2+stage3+stage4", "g_t": "t:stage2+stage3+stage4"},
                             options={"p": 2}, hparam_options={"p": "p"}, task="metric"),
    "metric_fitnet": GoldenEntry("metric_fitnet", {"feat_s": "s:stage2", "feat_t": "t:stage2"},
                                 options={"fitnet_layers": "stage2"}, renames=(("transform.", "regressors.stage2."),),
                                 task="metric"),
    "metric_sp": GoldenEntry("metric_sp", EMBEDS, options={"sp_mode": "per_sample"}, task="metric"),
    # feats_s are the student stages after AOMD's adapters (equal channels: the adapters are identities)
    "aomd": GoldenEntry("aomd", {"feats_s": "s:stages", "feats_t": "t:stages"},
                        options={"aomd_mode": 2, "aomd_global": 1.0, "aomd_local": 1.0},
                        hparam_options={"aomd_mode": "mode"},
                        variants={"mode1": {"options": {"aomd_mode": 1}}}, task="metric"),
    # logit methods and logit standardisation (tests/golden/, made by tests/golden/make_logit_goldens.py)
    "kd_ls": GoldenEntry("kd", LOGITS, options={"kd_T": 2.0, "logit_std": True}),
    "dkd_ls": GoldenEntry("dkd", {**LOGITS, "target": "batch:labels"},
                          options={"dkd_alpha": 9.0, "dkd_beta": 72.0, "kd_T": 2.0, "logit_std": True},
                          outputs={"tckd": "alpha_tckd", "nckd": "beta_nckd"}),
    "dist": GoldenEntry("dist", LOGITS, options={"dist_beta": 1.0, "dist_gamma": 1.0, "dist_tau": 4.0},
                        outputs={"dist_inter": "inter", "dist_intra": "intra"}),
    "dist_ls": GoldenEntry("dist", LOGITS, options={"dist_beta": 1.0, "dist_gamma": 1.0, "dist_tau": 4.0,
                                                    "logit_std": True},
                           outputs={"dist_inter": "inter", "dist_intra": "intra"}),
    "wsld": GoldenEntry("wsld", {**LOGITS, "target": "batch:labels"}, options={"wsld_T": 2.0}),
    "wsld_ls": GoldenEntry("wsld", {**LOGITS, "target": "batch:labels"}, options={"wsld_T": 2.0, "logit_std": True}),
    "nkd": GoldenEntry("nkd", {**LOGITS, "target": "batch:labels"}, options={"nkd_T": 3.0, "nkd_gamma": 3.5},
                       outputs={"nkd_target": "target", "nkd_non_target": "non_target"}),
    "nkd_ls": GoldenEntry("nkd", {**LOGITS, "target": "batch:labels"},
                          options={"nkd_T": 3.0, "nkd_gamma": 3.5, "logit_std": True},
                          outputs={"nkd_target": "target", "nkd_non_target": "non_target"}),
    # feature methods (tests/golden/, made by tests/golden/make_feature_goldens.py)
    "ofd": GoldenEntry("ofd", {"feats_s": "s:stages_preact", "preact_feats_t": "t:stages_preact",
                               "bn_weight_t": "t:stages_bn.weight", "bn_bias_t": "t:stages_bn.bias"},
                       renames=(("connectors.connectors.", "connectors."),)),
    "ickd": GoldenEntry("ickd", {"feat_s": "s:last_map", "feat_t": "t:last_map"},
                        renames=(("embed_s.conv2d.", "embed.0."), ("embed_s.l2norm.", "embed.1.")),
                        ignore_params=("embed_t.*",)),
    "catkd": GoldenEntry("catkd", {"feat_s": "s:last_map", "fc_s_weight": "s:classifier.weight",
                                   "feat_t": "t:last_map", "fc_t_weight": "t:classifier.weight"},
                         options={"cat_weight": 1.0, "cam_resolution": 2, "cam_normalize": False},
                         variants={"normalized_res4": {"options": {"cam_resolution": 4, "cam_normalize": True}}}),
    # CTKD, MLKD, DOT (tests/golden/, made by tests/golden/make_ctkd_mlkd_dot_goldens.py)
    "ctkd": GoldenEntry("ctkd", {**LOGITS, "target": "batch:labels", "epoch": "batch:epoch"},
                        variants={"dkd_base": {"options": {"ctkd_base": "dkd", "dkd_beta": 2.0}}}),
    "mlkd": GoldenEntry("mlkd", {**LOGITS, "logit_s_strong": "strong_s:logits", "logit_t_strong": "strong_t:logits"},
                        options={"kd_T": 4.0},
                        outputs={"mlkd_instance": "loss_kd", "mlkd_batch": "loss_bc", "mlkd_class": "loss_cc"}),
    "dot": GoldenEntry("", {k: f"arg:{k}" for k in ("x", "y", "feat_t", "w_shared", "b_shared", "w_task", "w_kd")},
                       function="distillers.optim:dot_trajectory",
                       hparam_options={k: k for k in ("lr", "momentum", "delta", "weight_decay", "steps")},
                       outputs={"1": "params", "2": "momentum_buffer", "3": "momentum_kd_buffer"},
                       task="optimizer"),  # an optimiser (--dot): the trainer test is tests/test_trainer.py
    # CTKD and MLKD with logit standardisation (tests/golden/, make_ctkd_mlkd_dot_goldens.py --ls)
    "ctkd_ls": GoldenEntry("ctkd", {**LOGITS, "target": "batch:labels", "epoch": "batch:epoch"},
                           options={"logit_std": True},
                           variants={"dkd_base": {"options": {"ctkd_base": "dkd", "dkd_beta": 2.0}}}),
    "mlkd_ls": GoldenEntry("mlkd", {**LOGITS, "logit_s_strong": "strong_s:logits", "logit_t_strong": "strong_t:logits"},
                           options={"kd_T": 2.0, "logit_std": True},
                           outputs={"mlkd_instance": "loss_kd", "mlkd_batch": "loss_bc", "mlkd_class": "loss_cc"}),
    # ---- end of table ----
}


# ---------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: bool
    max_err: float
    problems: List[str]


class _Comparer:
    def __init__(self, tol: float):
        self.tol = tol
        self.max_err = 0.0
        self.problems: List[str] = []

    def check(self, what: str, mine: Any, ref: Any) -> None:
        if isinstance(ref, (list, tuple)):
            if not isinstance(mine, (list, tuple)) or len(mine) != len(ref):
                self.problems.append(f"{what}: expected a list of {len(ref)}")
                return
            for i, (m, r) in enumerate(zip(mine, ref)):
                self.check(f"{what}[{i}]", m, r)
            return
        if mine is None:
            self.problems.append(f"{what}: missing (no value / no gradient)")
            return
        mine = mine.detach()
        if mine.numel() != ref.numel():
            self.problems.append(f"{what}: shape {tuple(mine.shape)} vs reference {tuple(ref.shape)}")
            return
        mine = mine.reshape(ref.shape)
        if not ref.is_floating_point():
            if not torch.equal(mine.to(ref.dtype), ref):
                self.problems.append(f"{what}: integer values differ")
            return
        err = (mine.to(ref.dtype) - ref).abs().max().item() if ref.numel() else 0.0
        self.max_err = max(self.max_err, err)
        if not torch.allclose(mine.to(ref.dtype), ref, rtol=self.tol, atol=self.tol):
            self.problems.append(f"{what}: max abs error {err:.3e} > tolerance {self.tol:g}")


def _rename(name: str, renames: Sequence[Tuple[str, str]]) -> str:
    for ref_prefix, ours in renames:
        if name.startswith(ref_prefix):
            return ours + name[len(ref_prefix):]
    return name


def _spread(taps: str, value) -> List[Tuple[str, Any]]:
    """``"stem+stages"`` and a list input -> [(tap, element or sub-list)], in order."""
    names = taps.split("+")
    if len(names) == 1:
        return [(taps, value)]
    rest = len(value) - (len(names) - 1)  # elements left to the group
    pairs, i = [], 0
    for name in names:
        if name in GROUPS:
            pairs.append((name, list(value[i:i + rest])))
            i += rest
        else:
            pairs.append((name, value[i]))
            i += 1
    return pairs


def _shape_of(value):
    if isinstance(value, (list, tuple)):
        return [_shape_of(v) for v in value]
    if isinstance(value, nn.Module):  # a module tap: its weight's shape, as FeatureTaps.shapes gives
        return tuple(value.weight.shape)
    return tuple(value.shape[1:])


def _module_attr(tap: str) -> Tuple[str, str]:
    """``"classifier.weight"`` -> ("classifier", "weight"); ("", "") for a feature tap."""
    owner, _, attr = tap.rpartition(".")
    return (owner, attr) if owner and attr in ("weight", "bias") else ("", "")


def _module_of(tensors: Mapping[str, torch.Tensor], trainable: bool) -> nn.Module:
    """A tapped module rebuilt from its weight (and bias): an ``nn.Linear`` for a 2-D weight
    (classifiers are called), otherwise a module that only carries the tensors (read, not called)."""
    weight = tensors["weight"]
    if weight.dim() == 2:
        module = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors).to(weight.dtype)
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(module, name).copy_(value)
    else:
        module = nn.Module()
        for name, value in tensors.items():
            setattr(module, name, nn.Parameter(value.clone()))
    return module.requires_grad_(trainable)


def record_inputs(entry: "GoldenEntry", s: Mapping[str, Any], t: Mapping[str, Any],
                  batch: Mapping[str, Any]) -> Dict[str, Any]:
    """The golden-format ``inputs`` of a step's tapped features (float64, detached): the inverse
    of :meth:`GoldenCase.features`, for tests that check a training step against this adapter.

    A role ``side:tap`` reads ``batch``, the student's or teacher's taps, a module tap's tensor
    (``classifier.weight``), a second view's taps (``strong_s``/``strong_t``) or several taps
    joined by ``+`` (``_`` is an empty placeholder)."""
    def double(value):
        return [v.detach().double() for v in value] if isinstance(value, list) else value.detach().double()

    inputs: Dict[str, Any] = {}
    for name, role in entry.inputs.items():
        side, _, taps = role.partition(":")
        if side == "batch":
            inputs[name] = batch[taps]
        elif side.startswith("strong_"):  # the second view's taps, as the trainer passes them
            inputs[name] = double(batch["strong"][side[len("strong_"):]][taps])
        elif _module_attr(taps)[0]:  # a module tap's tensor (a classifier's weight, OFD's BatchNorm biases)
            owner, attr = _module_attr(taps)
            module = (s if side == "s" else t)[owner]
            values = [getattr(m, attr) for m in (module if isinstance(module, list) else [module])]
            inputs[name] = double(values if isinstance(module, list) else values[0])
        else:
            feats = s if side == "s" else t
            parts: List[Any] = []
            for tap in taps.split("+"):
                value = torch.zeros(1) if tap == "_" else feats[tap]
                parts += value if isinstance(value, list) else [value]
            inputs[name] = double(parts if ("+" in taps or isinstance(feats.get(taps), list)) else parts[0])
    return inputs


class GoldenCase:
    """One golden file reproduced through the registry."""

    def __init__(self, record: Mapping[str, Any]):
        self.record = record
        method = record.get("method")
        if method not in TABLE:
            raise KeyError(f"no mapping for method '{method}' (mapped: {', '.join(sorted(TABLE))})")
        self.entry = TABLE[method]
        self.tol = float(record["tolerance"])

    # construction --------------------------------------------------------
    def build(self, overrides: Optional[Mapping[str, Any]] = None):
        entry, hp = self.entry, self.record.get("hparams", {})
        s, t, _ = self.features(self.record["inputs"])
        spec = ShapeSpec(
            student={k: _shape_of(v) for k, v in s.items()},
            teacher={k: (tuple(v.weight.shape) if isinstance(v, nn.Module) else _shape_of(v))
                     for k, v in t.items()},
            **{f: int(hp[k]) for f, k in entry.spec_from_hparams.items()},
        )
        options = dict(entry.options)
        options.update({opt: hp[key] for opt, key in entry.hparam_options.items()})
        options.update(overrides or {})
        distiller = build_distiller(entry.distiller, spec, **options).double()
        params = {_rename(k, entry.renames): v for k, v in self.record["params"].items()
                  if not any(fnmatchcase(k, p) for p in entry.ignore_params)}
        params.update({k: self.record["inputs"][name] for k, name in entry.state_from_inputs.items()})
        distiller.load_state_dict(params, strict=True)
        return distiller.train()

    def features(self, inputs: Mapping[str, Any]):
        """Split golden inputs into student features (leaves with grad), teacher features, batch."""
        s: Dict[str, Any] = {}
        t: Dict[str, Any] = {}
        batch: Dict[str, Any] = {}
        modules: Dict[Tuple[str, str], Dict[str, Any]] = {}  # (side, tap) -> {attribute: tensor(s)}
        for name, role in self.entry.inputs.items():
            side, _, taps = role.partition(":")
            if side.startswith("strong_") and name not in inputs:
                continue  # a file of the one-view reference setting: the method uses the first view twice
            for tap, value in _spread(taps, inputs[name]):
                if tap == "_":
                    continue
                if side.startswith("strong_"):  # a second view's taps (BatchNeeds.views), as the trainer gives them
                    view = batch.setdefault("strong", {"s": {}, "t": {}})[side[len("strong_"):]]
                    view[tap] = value.clone().requires_grad_(side == "strong_s")
                elif side == "batch":
                    batch[tap] = value
                elif _module_attr(tap)[0]:
                    owner, attr = _module_attr(tap)
                    modules.setdefault((side, owner), {})[attr] = value
                elif side == "s":
                    s[tap] = ([v.clone().requires_grad_(True) for v in value]
                              if isinstance(value, (list, tuple)) else value.clone().requires_grad_(True))
                else:
                    t[tap] = list(value) if isinstance(value, (list, tuple)) else value
        for (side, owner), tensors in modules.items():
            trainable = side == "s"
            if isinstance(tensors["weight"], (list, tuple)):  # a group: one module per element
                built: Any = [_module_of({k: v[i] for k, v in tensors.items()}, trainable)
                              for i in range(len(tensors["weight"]))]
            else:
                built = _module_of(tensors, trainable)
            (s if trainable else t)[owner] = built
        return s, t, batch

    # one step --------------------------------------------------------------
    def step(self, distiller, inputs, ref: Mapping[str, Any], cmp: _Comparer, label: str) -> None:
        s, t, batch = self.features(inputs)
        distiller.zero_grad(set_to_none=True)
        out = getattr(distiller, self.entry.call)(s, t, batch)
        loss = distiller.total(out)
        cmp.check(f"{label}loss", loss, ref["loss"])
        loss.backward()
        ours = dict(distiller.named_parameters())
        for key, ref_grad in ref.get("grads", {}).items():
            if key.startswith("params."):
                name = _rename(key[len("params."):], self.entry.renames)
                param = ours.get(name)
                cmp.check(f"{label}grad {key}", None if param is None else param.grad, ref_grad)
            else:
                cmp.check(f"{label}grad {key}", self._input_grad(key, inputs, s), ref_grad)
        state = distiller.state_dict()
        for key, ref_value in ref.get("state_after", {}).items():
            if any(fnmatchcase(key, p) for p in self.entry.ignore_params):
                continue
            cmp.check(f"{label}state_after {key}", state.get(_rename(key, self.entry.renames)), ref_value)
        for out_key, extra_key in self.entry.outputs.items():
            if extra_key in ref.get("extra", {}):
                cmp.check(f"{label}output {out_key}", out.get(out_key), ref["extra"][extra_key])

    def _input_grad(self, key: str, inputs: Mapping[str, Any], s: Dict[str, Any]):
        taps = self.entry.inputs[key].split(":", 1)[1]
        owner, attr = _module_attr(taps)
        if owner:
            value = s[owner]
            return [getattr(m, attr).grad for m in value] if isinstance(value, list) else getattr(value, attr).grad
        if "+" not in taps:
            value = s[taps]
            return [v.grad for v in value] if isinstance(value, list) else value.grad
        grads: List[Any] = []
        for tap, value in _spread(taps, inputs[key]):
            if tap == "_":
                grads.append(torch.zeros_like(value))
            elif isinstance(s[tap], list):
                grads.extend(v.grad for v in s[tap])
            else:
                grads.append(s[tap].grad)
        return grads

    def function_step(self, cmp: _Comparer) -> None:
        """A ``function`` entry: call it on the inputs and compare its result (and gradients)."""
        fn, ref = _resolve(self.entry.function), self.record
        kwargs, leaves = {}, {}
        for name, role in self.entry.inputs.items():
            value = ref["inputs"][name].clone()
            if name in ref.get("grads", {}):
                value.requires_grad_(True)
                leaves[name] = value
            kwargs[role.split(":", 1)[1]] = value
        hp = ref.get("hparams", {})
        options = {**self.entry.options, **{opt: hp[key] for opt, key in self.entry.hparam_options.items()}}
        result = fn(**kwargs, **options)
        parts = list(result) if isinstance(result, (tuple, list)) else [result]
        cmp.check("loss", parts[0], ref["loss"])
        for position, extra_key in self.entry.outputs.items():
            cmp.check(f"output {position}", parts[int(position)], ref.get("extra", {}).get(extra_key))
        if leaves:
            parts[0].sum().backward()
            for name, value in leaves.items():
                cmp.check(f"grad {name}", value.grad, ref["grads"][name])

    def variant_step(self, key: str, variant: Mapping[str, Any], cmp: _Comparer) -> None:
        ref = self.record.get("extra", {}).get(key)
        if not isinstance(ref, Mapping):  # like step2: checked where the file has it
            return
        inputs = dict(self.record["inputs"])
        label = f"extra.{key} "
        if "inputs_from" in variant:
            path, keywords = variant["inputs_from"]
            fn = _resolve(path)
            wanted = inspect.signature(fn).parameters
            produced = fn(**{k: v for k, v in inputs.items() if k in wanted}, **keywords)
            for name, value in produced.items():
                cmp.check(f"{label}{name}", value, ref[name])
                inputs[name] = value
        grads = dict(ref.get("grads", {}))
        grads.update({k[len("grad_"):]: v for k, v in ref.items() if k.startswith("grad_")})
        distiller = self.build(variant.get("options"))
        self.step(distiller, inputs, {"loss": ref["loss"], "grads": grads}, cmp, label)

    def run(self) -> Outcome:
        cmp = _Comparer(self.tol)
        with torch.autograd.set_grad_enabled(True):
            if self.entry.function:
                self.function_step(cmp)
            else:
                distiller = self.build()
                self.step(distiller, self.record["inputs"], self.record, cmp, "")
                step2 = self.record.get("extra", {}).get("step2")
                if step2:
                    if "sgd" in step2:  # the reference's optimiser stepped the method's parameters in between
                        torch.optim.SGD(distiller.parameters(), **step2["sgd"]).step()
                    self.step(distiller, step2["inputs"], {**step2, "extra": {}}, cmp, "step2 ")
            for key, variant in self.entry.variants.items():
                self.variant_step(key, variant, cmp)
        return Outcome(not cmp.problems, cmp.max_err, cmp.problems)


def _resolve(path: str):
    """``"package.module:attribute"`` -> the attribute."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_file(path: str) -> Outcome:
    try:
        record = torch.load(path, weights_only=True)
    except Exception as exc:  # unreadable file: report, don't crash the batch
        return Outcome(False, float("nan"), [f"cannot load: {exc}"])
    try:
        return GoldenCase(record).run()
    except Exception as exc:
        return Outcome(False, float("nan"), [f"{type(exc).__name__}: {exc}"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distillers.golden",
        description="Reproduce golden reference losses, gradients and buffers through the registry.")
    parser.add_argument("files", nargs="+", help="golden .pt files (see shared/golden/README.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every mismatch")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        outcome = check_file(path)
        status = "PASS" if outcome.ok else "FAIL"
        line = f"{status} {path} max_err={outcome.max_err:.3e}"
        if not outcome.ok:
            failed += 1
            shown = outcome.problems if args.verbose else outcome.problems[:3]
            line += " | " + "; ".join(shown)
            if len(outcome.problems) > len(shown):
                line += f" (+{len(outcome.problems) - len(shown)} more, -v lists them)"
        print(line, flush=True)
    print(f"{len(args.files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
