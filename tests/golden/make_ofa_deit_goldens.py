"""Generate the golden files of OFA-KD and DeiT's distillation token from their official code.

Usage (from the repository root; each path is an unpacked tree of the commit in :data:`REFERENCES`,
the git blob id of every file imported is checked; OFA's heads need timm, run it with the timm the
reference pins, 0.6.5, first on the path)::

    PYTHONPATH=/tmp/timm065 python tests/golden/make_ofa_deit_goldens.py --ofa PATH --deit PATH [--out DIR]

Nothing is copied from the references: their own code is imported from those paths and run on CPU
in float64 with seed 0, batch 5 and 7 classes. OFA's ``OFA`` distiller is built and called as its
``train.py`` does, on stub networks that return the given tensors (``stage_info``, ``num_tokens`` and
``forward(image, requires_feat=True)`` for the student, ``stage_info`` and ``forward`` for the teacher);
the file's ``loss`` is ``loss_kd + loss_ofa`` (its ``loss_gt``, the CE, is the trainer's term here).
DeiT's ``DistillationLoss`` gets the teacher's logits as ``inputs`` and ``nn.Identity`` as the teacher,
with alpha 1 (the distillation term alone); ``extra.with_ce`` is alpha 0.5 with its CE on the labels.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import types
from argparse import Namespace

import torch
import torch.nn.functional as F
from torch import nn

#: name -> (GitHub repository, commit the files were generated from)
REFERENCES = {
    "ofa": ("Hao840/OFAKD", "f7bb896cac9879040800bde08a8cc2057a904c52"),
    "deit": ("facebookresearch/deit", "7e160fe43f0252d17191b71cbb5826254114ea5b"),
}
#: name -> {imported file: its git blob id at that commit}
FILES = {
    "ofa": {"distillers/ofa.py": "1b4069f0e3de611df8f7f50dde9a0ded3b9a47a6",
            "distillers/utils.py": "e629cb667a7009ecf1e3381a33554fce14901316",
            "distillers/_base.py": "ff677fa130f53aead1162225a9bcec5d6676cb47",
            "distillers/registry.py": "3d1e8dc3febbfa30c9b769b9354a4fbdfa0b19f3"},
    "deit": {"losses.py": "b3867692bfab77ba61a142d3228957c80cfa4d2f"},
}
SEED = 0
B, CLASSES = 5, 7
OFA_TOLERANCE = 1e-9
DEIT_TOLERANCE = 1e-10


# ---------------------------------------------------------------------------- importing
def _check_commit(name: str, path: str) -> str:
    """``owner/repo@commit``, after checking that every file imported from ``path`` is that commit's."""
    repo, commit = REFERENCES[name]
    for rel, blob in FILES[name].items():
        with open(os.path.join(path, rel), "rb") as f:
            data = f.read()
        if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() != blob:
            sys.exit(f"{os.path.join(path, rel)} is not the file of {repo}@{commit} (git blob {blob})")
    return f"{repo}@{commit}"


def _load(root: str, dotted: str):
    """Import ``dotted`` from ``root`` under empty parent packages (OFA's ``distillers/__init__.py``
    imports every distiller; this project has a package of the same name, dropped from ``sys.modules``
    while the reference is imported)."""
    top = dotted.split(".")[0]
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if k == top or k.startswith(top + ".")]}
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        shell = types.ModuleType(".".join(parts[:i]))
        shell.__path__ = [os.path.join(root, *parts[:i])]
        sys.modules[shell.__name__] = shell
    try:
        return importlib.import_module(dotted)
    finally:
        for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
            del sys.modules[key]
        sys.modules.update(saved)


# ---------------------------------------------------------------------------- helpers
def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _mixed_labels(generator):
    """Mixup-style soft targets: two smoothed one-hots mixed with weight 0.7 (argmax: the first)."""
    a = torch.randint(0, CLASSES, (B,), generator=generator)
    b = (a + torch.randint(1, CLASSES, (B,), generator=generator)) % CLASSES
    smooth = lambda y: F.one_hot(y, CLASSES).double() * 0.9 + 0.1 / CLASSES  # noqa: E731
    return 0.7 * smooth(a) + 0.3 * smooth(b)


def _record(method, reference, hparams, inputs, params, trainable, loss, grads, state_after, extra, notes, tol):
    return {"method": method, "reference": reference, "hparams": hparams, "inputs": inputs, "params": params,
            "trainable": trainable, "loss": loss.detach().clone(), "grads": grads, "state_after": state_after,
            "extra": extra, "tolerance": tol, "dtype": "float64", "split": "public", "seed": SEED,
            "torch_version": str(torch.__version__), "notes": notes}


# ---------------------------------------------------------------------------- OFA
class _StubStudent(nn.Module):
    """A student for the reference: ``stage_info(k)`` -> (index into the features, shape) and a forward
    that returns the given logits and stage features (``requires_feat=True``)."""

    def __init__(self, stage_shapes, first_stage, pooled, num_tokens):
        super().__init__()
        self.info = {first_stage + i: (i, shape) for i, shape in enumerate(stage_shapes)}
        self.info.setdefault(1, (None, stage_shapes[0]))  # is_cnn_model reads stage 1's shape
        self.info[-1] = (-1, pooled)
        if num_tokens:
            self.num_tokens = num_tokens
        self.outputs = None

    def stage_info(self, stage):
        return self.info[stage]

    def forward(self, image, requires_feat=False):
        logits, feats = self.outputs
        return (logits, list(feats)) if requires_feat else logits


class _StubTeacher(nn.Module):
    def __init__(self, pooled):
        super().__init__()
        self.pooled = pooled
        self.logits = None

    def stage_info(self, stage):
        assert stage == -1
        return -1, self.pooled

    def forward(self, image):
        return self.logits


def _ofa_case(ofa_mod, stage_shapes, first_stage, d_s, d_t, num_tokens, hparams, generator):
    """The reference OFA built on stubs (its heads initialised under seed 0, then float64) and the inputs."""
    stages = list(range(first_stage, first_stage + len(stage_shapes)))
    student = _StubStudent(stage_shapes, first_stage, d_s, num_tokens)
    teacher = _StubTeacher(d_t)
    args = Namespace(ofa_eps=[hparams["eps"]], ofa_stage=stages, ofa_loss_weight=hparams["loss_weight"],
                     ofa_temperature=hparams["temperature"], num_classes=CLASSES, gt_loss_weight=1.0,
                     kd_loss_weight=1.0)
    torch.manual_seed(SEED)
    ofa = ofa_mod.OFA(student, teacher, lambda logits, label: logits.sum() * 0, args).double().train()
    feats = [torch.randn(B, *shape, generator=generator, dtype=torch.float64) for shape in stage_shapes]
    if len(stage_shapes[0]) == 3:  # CNN stage outputs follow a ReLU: non-negative
        feats = [f.relu() for f in feats]
    logit_s = torch.randn(B, CLASSES, generator=generator, dtype=torch.float64) * 2
    logit_t = torch.randn(B, CLASSES, generator=generator, dtype=torch.float64) * 3
    pooled_s = torch.randn(B, d_s, generator=generator, dtype=torch.float64)  # read for its width only
    pooled_t = torch.randn(B, d_t, generator=generator, dtype=torch.float64)
    return ofa, student, teacher, feats, logit_s, logit_t, pooled_s, pooled_t


def _ofa_step(ofa, student, teacher, feats, logit_s, logit_t, labels, hparams=None):
    """One call of the reference's forward: (loss_kd + loss_ofa, leaves)."""
    if hparams is not None:
        ofa.args.ofa_eps = [hparams["eps"]] * (len(ofa.args.ofa_stage) + 1)
        ofa.args.ofa_loss_weight, ofa.args.ofa_temperature = hparams["loss_weight"], hparams["temperature"]
    ofa.zero_grad(set_to_none=True)
    leaves = [_leaf(f) for f in feats], _leaf(logit_s)
    student.outputs = (leaves[1], leaves[0])
    teacher.logits = logit_t
    _, losses = ofa(torch.zeros(B, 1), labels)
    loss = losses["loss_kd"] + losses["loss_ofa"]
    loss.backward()
    return loss, leaves


def make_ofa(args, method, stage_shapes, first_stage, d_s, d_t, num_tokens, soft_labels, note):
    ref = _check_commit("ofa", args.ofa)
    ofa_mod = _load(args.ofa, "distillers.ofa")
    import timm
    generator = torch.Generator().manual_seed(SEED)
    hparams = {"eps": 1.5, "temperature": 1.0, "loss_weight": 1.0}
    labels = _mixed_labels(generator) if soft_labels else torch.randint(0, CLASSES, (B,), generator=generator)
    ofa, student, teacher, feats, logit_s, logit_t, pooled_s, pooled_t = _ofa_case(
        ofa_mod, stage_shapes, first_stage, d_s, d_t, num_tokens, hparams, generator)
    params = {k: v.detach().clone() for k, v in ofa.state_dict().items()}
    trainable = [k for k, p in ofa.named_parameters() if p.requires_grad]

    # a second setting from the same parameters: eps 1, temperature 2, stage heads weighted 0.5
    variant_hp = {"eps": 1.0, "temperature": 2.0, "loss_weight": 0.5}
    copy = ofa_mod.OFA(_StubStudent(stage_shapes, first_stage, d_s, num_tokens), _StubTeacher(d_t),
                       lambda logits, label: logits.sum() * 0,
                       Namespace(**{**vars(ofa.args), "ofa_eps": [1.0]})).double().train()
    copy.load_state_dict(params)
    loss2, leaves2 = _ofa_step(copy, copy.student, copy.teacher, feats, logit_s, logit_t, labels, variant_hp)
    variant = {"loss": loss2.detach().clone(), "grad_feats_s": [f.grad.clone() for f in leaves2[0]],
               "grad_logit_s": leaves2[1].grad.clone(), "hparams": variant_hp}
    variant["grads"] = {f"params.{k}": p.grad.clone() for k, p in copy.named_parameters() if p.grad is not None}

    loss, leaves = _ofa_step(ofa, student, teacher, feats, logit_s, logit_t, labels)
    grads = {"feats_s": [f.grad.clone() for f in leaves[0]], "logit_s": leaves[1].grad.clone()}
    grads.update({f"params.{k}": p.grad.clone() for k, p in ofa.named_parameters() if p.grad is not None})
    state_after = {k: v.detach().clone() for k, v in ofa.named_buffers()}
    inputs = {"feats_s": feats, "pooled_s": pooled_s, "logit_s": logit_s, "logit_t": logit_t,
              "pooled_t": pooled_t, "labels": labels}
    hparams.update({"ofa_stage": list(ofa.args.ofa_stage), "num_classes": CLASSES, "feature_dim_s": d_s,
                    "feature_dim_t": d_t, "num_tokens": num_tokens})
    bn = " BatchNorm in training mode." if len(stage_shapes[0]) == 3 else ""
    notes = (f"{note} loss = loss_kd + loss_ofa of OFA.forward (kd_loss_weight 1; loss_gt, the CE, left out). "
             f"timm {timm.__version__} (the reference pins 0.6.5).{bn} extra.t2: eps 1, "
             "temperature 2, ofa_loss_weight 0.5 from the same parameters (loss and grads).")
    extra = {"t2": variant}
    return _record(method, f"{ref} distillers/ofa.py OFA (ofa_loss, SepConv/PatchMerging/TokenFnContext heads)",
                   hparams, inputs, params, trainable, loss, grads, state_after, extra, notes, OFA_TOLERANCE)


OFA_CASES = {
    # the CIFAR models' three stages, shown to the reference (which hard-codes four) as its stages 2..4
    "ofa": dict(stage_shapes=[(4, 8, 8), (8, 4, 4), (16, 2, 2)], first_stage=2, d_s=16, d_t=24, num_tokens=0,
                soft_labels=False, note="Three-stage CNN student as the reference's stages 2..4 "
                "(projector keys 2, 3, 4 = this project's stages 1, 2, 3); class-index labels."),
    "ofa_4stage": dict(stage_shapes=[(4, 16, 16), (8, 8, 8), (16, 4, 4), (32, 2, 2)], first_stage=1, d_s=32, d_t=20,
                       num_tokens=0, soft_labels=True, note="Four-stage CNN student (timm ResNet layout); mixed "
                       "soft labels (argmax taken by the reference)."),
    "ofa_token": dict(stage_shapes=[(197, 8)] * 4, first_stage=1, d_s=8, d_t=12, num_tokens=1, soft_labels=True,
                      note="ViT-like student: 1 class token + 14x14 patches, width 8 at every stage (one patch "
                      "merge to 7x7, class-token readout); mixed soft labels."),
    "ofa_token_gap": dict(stage_shapes=[(784, 4), (196, 8), (49, 16), (49, 16)], first_stage=1, d_s=16, d_t=24,
                          num_tokens=0, soft_labels=False, note="Swin-like student without prefix tokens: grids "
                          "28, 14, 7, 7 (two, one, no patch merges), mean-token readout; class-index labels."),
}


# ---------------------------------------------------------------------------- DeiT
def make_deit(args, distillation_type):
    ref = _check_commit("deit", args.deit)
    sys.path.insert(0, args.deit)
    try:
        losses = importlib.import_module("losses")
    finally:
        sys.path.remove(args.deit)
        sys.modules.pop("losses", None)
    generator = torch.Generator().manual_seed(SEED)
    logit_cls = torch.randn(B, CLASSES, generator=generator, dtype=torch.float64) * 2
    logit_dist = torch.randn(B, CLASSES, generator=generator, dtype=torch.float64) * 2
    logit_t = torch.randn(B, CLASSES, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, CLASSES, (B,), generator=generator)
    tau = 3.0

    def run(alpha):
        criterion = losses.DistillationLoss(nn.CrossEntropyLoss(), nn.Identity(), distillation_type, alpha, tau)
        cls, dist = _leaf(logit_cls), _leaf(logit_dist)
        loss = criterion(logit_t, (cls, dist), labels)
        loss.backward()
        return loss, cls.grad.clone(), dist.grad.clone()

    loss, _, grad_dist = run(1.0)
    half, half_cls, half_dist = run(0.5)
    hparams = {"distillation_type": distillation_type, "alpha": 1.0, "tau": tau}
    inputs = {"logit_cls": logit_cls, "logit_dist": logit_dist, "logit_t": logit_t}
    extra = {"logit_cls": logit_cls.clone(),
             "with_ce": {"alpha": 0.5, "labels": labels, "loss": half.detach().clone(), "grad_logit_cls": half_cls,
                         "grad_logit_dist": half_dist}}
    notes = ("DistillationLoss(CrossEntropyLoss(), Identity(), type, alpha, tau) called with the teacher's logits "
             "as inputs and (class-head, distillation-head) logits as outputs; alpha 1 gives the distillation "
             "term alone (the base CE times 0). extra.with_ce: alpha 0.5 (main.py's default) with the CE on "
             "extra.with_ce.labels. tau 3 (main.py's default is 1; the hard mode ignores it).")
    return _record(f"deit_{distillation_type}", f"{ref} losses.py DistillationLoss ({distillation_type})", hparams,
                   inputs, {}, [], loss, {"logit_dist": grad_dist}, {}, extra, notes, DEIT_TOLERANCE)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ofa", required=True, help="Hao840/OFAKD tree")
    parser.add_argument("--deit", required=True, help="facebookresearch/deit tree")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    records = [make_ofa(args, name, **case) for name, case in OFA_CASES.items()]
    records += [make_deit(args, kind) for kind in ("soft", "hard")]
    for record in records:
        path = os.path.join(args.out, f"{record['method']}.pt")
        torch.save(record, path)
        print(f"wrote {path}: loss {float(record['loss']):.10g}")


if __name__ == "__main__":
    main()
