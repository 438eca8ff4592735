"""Generate the golden files of OFD, ICKD and CAT-KD from their public reference code.

Usage (from the repository root; each path is an unpacked tree of the reference at the commit
named in :data:`REFERENCES`; the git blob id of every file imported is checked)::

    python tests/golden/make_feature_goldens.py --mdistiller PATH --ickd PATH --catkd PATH \
        [--overhaul PATH] [--out tests/golden]

Nothing is copied from the references: their own loss code is imported from those paths and
run on CPU in float64 with a fixed seed, on odd batch, class counts and spatial sizes whose pooling
is not by whole factors (so averaging windows overlap and nothing splits in halves). Where
a reference needs a whole network, the network is replaced by a stub that returns the given
tensors (OFD's ``get_stage_channels``/``get_bn_before_relu``, CAT-KD's ``(logits, feats)``);
the loss code itself runs unchanged. The records follow the shared golden file format; each
records its settings in ``hparams`` under the reference's names, and a second setting as an
``extra`` variant with its own ``hparams`` (OFD's 3x3 connector with its own ``params``, CAT-KD's
other CAM resolutions).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import math
import os
import sys
import types
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

#: name -> (GitHub repository, commit the files were generated from)
REFERENCES = {
    "mdistiller": ("megvii-research/mdistiller", "a08d46f10d6102bd6e3f258ca5ac880b020ea259"),
    "overhaul": ("clovaai/overhaul-distillation", "76344a84a7ce23c894f41a2e05b866c9b73fd85a"),
    "ickd": ("ADLab-AutoDrive/ICKD", "403b8d3d7c3aaa429e4708870d2be1d4daf92f07"),
    "catkd": ("GzyAftermath/CAT-KD", "4467073ca31b9929e7c45f5a6761e5e1b7c9442f"),
}
#: name -> {imported file: its git blob id at that commit}
FILES = {
    "mdistiller": {"mdistiller/distillers/OFD.py": "3ab13ed28d3c24a64564a09c433be3c88e520846",
                   "mdistiller/distillers/_base.py": "901ddcf9002c725f946a8459dbecc9fe038efe2c"},
    "overhaul": {"CIFAR-100/distiller.py": "a8bb93097d635f6c87e26639fdc032b67d8c5aa4"},
    "ickd": {"Cifar100/distiller_zoo/ICKD.py": "5354b3387af16b20b0b3ff7bf9af79880eab19b1"},
    "catkd": {"mdistiller/distillers/CAT_KD.py": "c97750dcd0cdad4b11cbca3571e70f96b7c5f3c0",
              "mdistiller/distillers/_base.py": "901ddcf9002c725f946a8459dbecc9fe038efe2c"},
}
SEED = 0
TOLERANCE = 1e-10
B, CLASSES = 5, 11
#: stage1..3 (C, H, W): a "wide" pair whose teacher maps pool to the student's sizes by non-integer
#: factors at stages 2 and 3 (7 -> 4, 3 -> 2) and not at stage 1 (equal sizes)
WIDE_S = [(8, 7, 7), (16, 4, 4), (32, 2, 2)]
WIDE_T = [(16, 7, 7), (32, 7, 7), (64, 3, 3)]


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
    """Import ``dotted`` from ``root`` with its parent packages as empty shells.

    The references' package ``__init__`` files import every distiller (and CUDA/DALI helpers);
    the shells let ``from ._base import Distiller`` resolve without running them. Both mdistiller
    and CAT-KD are called ``mdistiller``, so shells of a previous root are dropped first.
    """
    top = dotted.split(".")[0]
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        del sys.modules[key]
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        shell = types.ModuleType(".".join(parts[:i]))
        shell.__path__ = [os.path.join(root, *parts[:i])]
        sys.modules[shell.__name__] = shell
    return importlib.import_module(dotted)


def _load_file(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- helpers
def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _grad(x):
    return [_grad(v) for v in x] if isinstance(x, list) else x.grad.detach().clone()


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _buffers(module):
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def _record(method, reference, hparams, inputs, module, loss, grads, extra, notes):
    params = _state(module) if module is not None else {}
    trainable = [k for k, p in module.named_parameters() if p.requires_grad] if module is not None else []
    for k, p in (module.named_parameters() if module is not None else []):
        if p.grad is not None:
            grads[f"params.{k}"] = p.grad.detach().clone()
    return {"method": method, "reference": reference, "hparams": hparams, "inputs": inputs,
            "params": params, "trainable": trainable, "loss": loss.detach().clone(), "grads": grads,
            "state_after": _buffers(module) if module is not None else {}, "extra": extra,
            "tolerance": TOLERANCE, "dtype": "float64", "split": "public", "seed": SEED,
            "torch_version": str(torch.__version__), "notes": notes}


# ---------------------------------------------------------------------------- OFD
class _StubNet(nn.Module):
    """Stands in for a CIFAR model: only the two methods OFD's constructor calls."""

    def __init__(self, channels, bns=()):
        super().__init__()
        self.channels = list(channels)
        self.bns = nn.ModuleList(bns)

    def get_stage_channels(self):
        return self.channels

    def get_bn_before_relu(self):
        return list(self.bns)


def make_ofd(args):
    ref = _check_commit("mdistiller", args.mdistiller)
    ofd_mod = _load(args.mdistiller, "mdistiller.distillers.OFD")
    torch.manual_seed(SEED)
    # teacher BN before each stage's ReLU: |weight| in [0.3, 1.5] with some negative signs (the
    # reference takes abs), bias N(0, 1), and a few channels with bias/|weight| > 3.1 so that the
    # "P(x < 0) <= 0.001 -> -3 std" branch runs too
    bns, bn_w, bn_b = [], [], []
    for c, _, _ in WIDE_T:
        bn = nn.BatchNorm2d(c)
        w = torch.empty(c).uniform_(0.3, 1.5) * torch.where(torch.rand(c) < 0.2, -1.0, 1.0)
        b = torch.randn(c)
        b[:2] = w[:2].abs() * torch.tensor([3.5, 5.0])
        with torch.no_grad():
            bn.weight.copy_(w)
            bn.bias.copy_(b)
        bns.append(bn)
        bn_w.append(bn.weight.detach().clone().double())
        bn_b.append(bn.bias.detach().clone().double())
    # stem channel first: the reference drops element 0 of get_stage_channels()
    student = _StubNet([WIDE_S[0][0]] + [c for c, _, _ in WIDE_S])
    teacher = _StubNet([WIDE_T[0][0]] + [c for c, _, _ in WIDE_T], bns)
    def build(kernel_size):
        cfg = SimpleNamespace(OFD=SimpleNamespace(LOSS=SimpleNamespace(CE_WEIGHT=1.0, FEAT_WEIGHT=1e-3),
                                                  CONNECTOR=SimpleNamespace(KERNEL_SIZE=kernel_size)))
        torch.set_default_dtype(torch.float64)
        try:
            return ofd_mod.OFD(student, teacher, cfg).double().train()  # margins computed here, in float32
        finally:
            torch.set_default_dtype(torch.float32)

    distiller = build(1)
    margins = [m.reshape(-1).clone() for m in distiller.margins]
    # pre-activation maps: student signed N(0, 1); teacher per channel N(bias, |weight|), the
    # distribution the margin assumes, so every branch of the partial L2 is exercised
    feats_s = [torch.randn(B, *shape, dtype=torch.float64) for shape in WIDE_S]
    feats_t = [torch.randn(B, *shape, dtype=torch.float64) * w.abs().view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
               for shape, w, b in zip(WIDE_T, bn_w, bn_b)]

    def step(distiller):
        """ofd_loss on leaves: (the distiller's own part, params before, loss, grads, buffers after)."""
        owner = nn.Module()  # the distiller's own part, under its name in the reference's state_dict
        owner.connectors = distiller.connectors
        params_before = _state(owner)
        leaves = [_leaf(f) for f in feats_s]
        loss = distiller.ofd_loss(leaves, [f.clone() for f in feats_t])
        loss.backward()
        grads = {"feats_s": _grad(leaves)}
        grads.update({f"params.{k}": p.grad.detach().clone() for k, p in owner.named_parameters()
                      if p.grad is not None})
        return owner, params_before, loss.detach(), grads, _buffers(owner)

    owner, params_before, loss, grads, state_after = step(distiller)
    # the 3x3 connector (CONNECTOR.KERNEL_SIZE 3, padding 1): its own parameters and buffers
    _, params3, loss3, grads3, state3 = step(build(3))
    # per-stage terms and the masks' coverage, recomputed with the reference's own feat_loss
    # (after the buffers are read: this re-run moves the BN statistics again)
    with torch.no_grad():
        outs = [distiller.connectors.connectors[i](f) for i, f in enumerate(feats_s)]
    record = _record(
        "ofd", f"{ref} mdistiller/distillers/OFD.py class OFD (ofd_loss, feat_loss, ConnectorConvBN)",
        {"feat_weight": 1e-3, "ce_weight": 1.0, "connector_kernel_size": 1, "bn_mode": "train",
         "layers": "preact_feats[1:] of student and teacher (stage1..3 before the final ReLU)",
         "stage_weights": [0.25, 0.5, 1.0], "reduction": "sum over C,H,W, mean over the batch"},
        {"feats_s": feats_s, "preact_feats_t": feats_t, "bn_weight_t": bn_w, "bn_bias_t": bn_b},
        None, loss, grads, {}, "")
    record["trainable"] = [k for k, p in owner.named_parameters() if p.requires_grad]
    record["params"], record["state_after"] = params_before, state_after
    n = len(outs)
    terms, coverage = [], []
    for i, (o, f_t) in enumerate(zip(outs, feats_t)):
        target = F.adaptive_avg_pool2d(f_t, o.shape[-2:])
        m = distiller.margins[i].to(o)
        terms.append(ofd_mod.feat_loss(o, target, distiller.margins[i]) / 2 ** (n - i - 1))
        coverage.append([int(((o > m) & (target <= m)).sum()), int(((o > target) & (target > m) & (target <= 0)).sum()),
                         int((target > 0).sum())])
    record["extra"] = {"margins": margins, "loss_terms": terms, "mask_counts": coverage,
                       "kernel3": {"hparams": {"connector_kernel_size": 3}, "params": params3, "loss": loss3,
                                   "grads": grads3, "state_after": state3}}
    if args.overhaul:
        record["extra"]["overhaul"] = _overhaul_check(args.overhaul, bns, outs, feats_t)
    record["notes"] = (
        "loss = sum_i feat_loss(connector_i(s_i), pool(t_i -> s_i size), margin_i) / 2^(n-1-i) over the "
        "stage1..3 pre-activations, unweighted (the CIFAR FEAT_WEIGHT 1e-3 is not applied). feat_loss = "
        "sum over C,H,W of the batch mean of the partial L2: (s - m)^2 where s > m >= t, (s - t)^2 where "
        "s > t > m and t <= 0, (s - t)^2 where t > 0. Connector = 1x1 conv (no bias) + BN in training mode. "
        "Margins come from the teacher's BN before each ReLU (inputs bn_weight_t/bn_bias_t): "
        "m = E[x | x < 0] for x ~ N(bias, |weight|^2), or -3|weight| where P(x < 0) <= 0.001; the "
        "reference computes them with scipy and stores them in float32 (extra.margins, the exact values "
        "it used). mdistiller indexes margins by position in the aligned list, so a teacher with more "
        "stages than the student would get the margins of its first stages (not the case here: equal "
        "stage counts). extra.kernel3: CONNECTOR.KERNEL_SIZE 3 (3x3 conv, padding 1), with its own params "
        "(another initialisation), gradients and buffers. extra.overhaul: clovaai/overhaul-distillation CIFAR-100 "
        "distiller.py "
        "(distillation_loss, get_margin_from_BN) on the same connector outputs, divided by the batch as "
        "its training script does (it also divides by 1000 = FEAT_WEIGHT, not applied).")
    return record


def _overhaul_check(root, bns, outs, feats_t):
    """The original OFD code's loss and margins on the same tensors (a cross-check, in extra)."""
    repo, commit = REFERENCES["overhaul"]
    _check_commit("overhaul", root)
    mod = _load_file(os.path.join(root, "CIFAR-100", "distiller.py"), "_overhaul_distiller")
    margins = [mod.get_margin_from_BN(bn).double() for bn in bns]
    n = len(outs)
    loss = 0.0
    for i, (o, f_t, m) in enumerate(zip(outs, feats_t, margins)):
        # the original code pairs equal sizes; the mdistiller port pools the teacher first
        target = F.adaptive_avg_pool2d(f_t, o.shape[-2:])
        loss = loss + mod.distillation_loss(o, target, m.view(1, -1, 1, 1)) / 2 ** (n - i - 1)
    return {"reference": f"{repo}@{commit} CIFAR-100/distiller.py distillation_loss, get_margin_from_BN",
            "loss_over_batch": loss / outs[0].shape[0], "margins": margins}


# ---------------------------------------------------------------------------- ICKD
def make_ickd(args):
    ref = _check_commit("ickd", args.ickd)
    mod = _load_file(os.path.join(args.ickd, "Cifar100", "distiller_zoo", "ICKD.py"), "_ickd_ref")
    torch.manual_seed(SEED)
    (c_s, h_s, w_s), (c_t, h_t, w_t) = (32, 3, 3), (64, 5, 5)  # last maps of other, odd sizes
    # train_student.py: s_dim = feat_s[-2] channels, feat_dim = t_dim = feat_t[-2] channels
    opt = SimpleNamespace(s_dim=c_s, t_dim=c_t, feat_dim=c_t)
    criterion = mod.ICKDLoss(opt).double().train()
    feat_s = torch.randn(B, c_s, h_s, w_s, dtype=torch.float64).relu()
    feat_t = torch.randn(B, c_t, h_t, w_t, dtype=torch.float64).relu()
    params = _state(criterion)
    leaf = _leaf(feat_s)
    terms = criterion([leaf], [feat_t.clone()])
    loss = sum(terms)
    loss.backward()
    record = _record(
        "ickd", f"{ref} Cifar100/distiller_zoo/ICKD.py class ICKDLoss (Embed); layers and weights from "
        "Cifar100/train_student.py, helper/loops.py, README.md",
        {"feat_dim": c_t, "bn_mode": "train", "layers": "feat[-2] (last map before pooling), one pair",
         "beta_cifar": 2.5, "alpha_cifar": "0 (ICKD) or 1 (ICKD+KL)"},
        {"feat_s": feat_s, "feat_t": feat_t}, criterion, loss, {"feat_s": _grad(leaf)},
        {"loss_terms": [t.detach() for t in terms]}, "")
    record["params"] = params
    record["notes"] = (
        "loss = sum over b, i, j of (norm(G_s)[b,i,j] - norm(G_t)[b,i,j])^2 / (C * B), where G[b] = F F^T is "
        "the C x C inter-channel Gram matrix of sample b (F = map viewed as [C, H*W]; student and teacher "
        "sizes may differ), each row L2-normalised, and the student map first goes through embed_s = 1x1 "
        "conv (no bias) to the teacher's channels + BN (training mode). embed_t is built by the reference "
        "and put in the optimizer but never called: no gradient, not part of the method. torchdistill's "
        "ImageNet port (ICKDLoss/ChSimLoss) divides by C * B^2 instead; the CIFAR code divides by C * B. "
        "Reference beta 2.5, -a 0 (ICKD) or -a 1 (ICKD + KL).")
    return record


# ---------------------------------------------------------------------------- CAT-KD
class _CamNet(nn.Module):
    """Stands in for a CAT-KD ``*_test`` model: the classifier is a bias-free 1x1 conv applied
    before the global pool (``conv_test``), so ``feats[-1]`` is the class activation map.

    The conv weight is the linear classifier's weight viewed as [K, C, 1, 1], exactly as the
    reference's ``tools/train.py`` converts a trained teacher (its fc bias is dropped).
    """

    def __init__(self, feature, fc_weight):
        super().__init__()
        self.feature, self.fc_weight = feature, fc_weight  # plain tensors: gradients reach the leaves

    def forward(self, image):
        cam = F.conv2d(self.feature, self.fc_weight.view(*self.fc_weight.shape, 1, 1))  # conv_test
        return cam.mean(dim=(2, 3)), {"feats": [cam]}


def make_catkd(args):
    ref = _check_commit("catkd", args.catkd)
    mod = _load(args.catkd, "mdistiller.distillers.CAT_KD")
    torch.manual_seed(SEED)
    # own shapes: last maps larger than every CAM resolution on both sides, none a multiple of it, so both
    # are pooled with overlapping windows (5 -> 2, 3, 4 and 7 -> 2, 3, 4)
    c_s, c_t, hw_s, hw_t = 32, 64, 5, 7
    feat_s = torch.randn(B, c_s, hw_s, hw_s, dtype=torch.float64).relu()
    feat_t = torch.randn(B, c_t, hw_t, hw_t, dtype=torch.float64).relu()
    fc_s = torch.randn(CLASSES, c_s, dtype=torch.float64) / math.sqrt(c_s)
    fc_t = torch.randn(CLASSES, c_t, dtype=torch.float64) / math.sqrt(c_t)
    labels = torch.randint(0, CLASSES, (B,))

    def run(resolution, normalize, weight=1.0):
        cfg = SimpleNamespace(CAT_KD=SimpleNamespace(
            LOSS=SimpleNamespace(CE_WEIGHT=1.0, CAT_loss_weight=weight, CAM_RESOLUTION=resolution),
            onlyCAT=False, IF_NORMALIZE=normalize, IF_BINARIZE=False, IF_OnlyTransferPartialCAMs=False,
            CAMs_Nums=100, Strategy=0))
        leaf_f, leaf_w = _leaf(feat_s), _leaf(fc_s)
        distiller = mod.CAT_KD(_CamNet(leaf_f, leaf_w), _CamNet(feat_t.clone(), fc_t.clone()), cfg).train()
        _, losses = distiller.forward_train(image=None, target=labels)
        loss = losses["loss_CAT"]
        loss.backward()
        return loss, {"feat_s": _grad(leaf_f), "fc_s_weight": _grad(leaf_w)}

    loss, grads = run(2, False)  # resnet32x4 -> resnet8x4 config
    loss_n, grads_n = run(4, True)  # resnet32x4 -> ShuffleV1 config
    loss_3, grads_3 = run(3, False, 2.0)  # another resolution and weight
    record = _record(
        "catkd", f"{ref} mdistiller/distillers/CAT_KD.py class CAT_KD (forward_train, CAT_loss); "
        "CAMs as the *_test models and tools/train.py build them",
        {"cam_resolution": 2, "if_normalize": False, "cat_loss_weight": 1.0,
         "cat_loss_weight_res32x4_res8x4": 15.0, "if_binarize": False, "only_transfer_partial_cams": False},
        {"feat_s": feat_s, "fc_s_weight": fc_s, "feat_t": feat_t, "fc_t_weight": fc_t},
        None, loss, grads, {"normalized_res4": {"loss": loss_n.detach(), "grads": grads_n,
                                                "hparams": {"cam_resolution": 4, "if_normalize": True}},
                            "weight2_res3": {"loss": loss_3.detach(), "grads": grads_3,
                                             "hparams": {"cam_resolution": 3, "if_normalize": False,
                                                         "cat_loss_weight": 2.0}}}, "")
    record["notes"] = (
        "CAM = W x F: the class weights W [K, C] applied at every position of the last map F (a bias-free 1x1 "
        "conv; the reference's *_test models use it as their classifier, pooling after it, and convert a "
        "trained teacher by viewing its fc weight as the conv, dropping the fc bias). loss = MSE(n(pool(CAM_s)), "
        "n(pool(CAM_t))) over all elements, pool = adaptive average pooling to CAM_RESOLUTION x "
        "CAM_RESOLUTION, n = L2 normalisation of each CAM over its positions when IF_NORMALIZE, else identity. "
        "Loss weight 1 here (CIFAR configs: 15 for resnet32x4 -> resnet8x4, per pair otherwise). grads: the "
        "student map and the student classifier weight (the student's CAM goes through its own classifier). "
        "extra.normalized_res4: the same inputs with CAM_RESOLUTION 4 and IF_NORMALIZE True (the "
        "resnet32x4 -> ShuffleV1 config). extra.weight2_res3: CAM_RESOLUTION 3, CAT_loss_weight 2. Maps 5x5 "
        "(student) and 7x7 (teacher): every pooling has overlapping windows.")
    return record


# ---------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mdistiller", required=True, help="megvii-research/mdistiller checkout (OFD)")
    parser.add_argument("--overhaul", default="", help="clovaai/overhaul-distillation checkout (OFD cross-check)")
    parser.add_argument("--ickd", required=True, help="ADLab-AutoDrive/ICKD checkout")
    parser.add_argument("--catkd", required=True, help="GzyAftermath/CAT-KD checkout")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    for make in (make_ofd, make_ickd, make_catkd):
        record = make(args)
        path = os.path.join(args.out, f"{record['method']}.pt")
        torch.save(record, path)
        print(f"wrote {path}: loss {float(record['loss']):.6g}")


if __name__ == "__main__":
    main()
