"""Make the golden files of the logit methods by running their fetched reference code.

    python tests/golden/make_logit_goldens.py --ref-dist DIR --ref-wsld DIR --ref-nkd DIR --ref-ls DIR [--out DIR]

Each ``DIR`` is a work tree of the reference commit in :data:`REFERENCES` (for example
``git --git-dir=MIRROR archive COMMIT | tar -x -C DIR``); the script checks that the reference
file there is that commit's blob, imports it from ``DIR`` and runs it as it is, on the CPU in
float64 with seed 0 on batch 5, 11 classes (odd sizes: nothing splits in halves). Nothing of the
references is copied here. Run-time
shims (each listed in the file's ``notes``): ``.cuda()`` is a no-op, the WSLD distiller's
hard-coded ``one_hot(num_classes=1000)`` uses the logits' 10 classes and its CE and loss weight
are neutralised to leave the distillation term, and cls_KD's ``mmcls.registry`` is a stub
(mmcls is not installed). Files, in the format of ``../shared/golden/README.md``:

dist, wsld, nkd                     the methods' reference losses, each at a second setting too (an ``extra``
                                    variant with its own ``hparams``)
kd_ls, dkd_ls                       logit standardisation, from its reference's own kd_loss / dkd_loss (and a
                                    second setting)
dist_ls, wsld_ls, nkd_ls            the standardisation reference's ``normalize`` applied to both logits,
                                    then the method's reference (no published code combines them)
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SEED, BATCH, CLASSES, TOLERANCE = 0, 5, 11, 1e-10

#: flag -> (owner/repo, commit, file, git blob id of that file at the commit).
REFERENCES = {
    "dist": ("hunto/image_classification_sota", "d9662f7df68fe46b973c4580b7c9b896cedcd301",
             "lib/models/losses/dist_kd.py", "4ae9aa002e5cd3c1c2f5548205d10d647cde617c"),
    "wsld": ("bellymonster/Weighted-Soft-Label-Distillation", "67820dd7c3c733d5331b78b1e66ef8a990391d5e",
             "knowledge_distiller.py", "555ab94073d99df7da8cab29a8fa82dc770c1735"),
    "nkd": ("yzd-v/cls_KD", "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66",
            "mmcls/models/dis_losses/nkd.py", "c32e85aa101d4a2e4284fed0499081e6a501ac32"),
    "ls_kd": ("sunshangquan/logit-standardization-KD", "f6e5aa5172bad618e801163c3385322eea673754",
              "mdistiller/distillers/KD.py", "0cf0578418239b9f2e4ce433fa7c795c4eea2d60"),
    "ls_dkd": ("sunshangquan/logit-standardization-KD", "f6e5aa5172bad618e801163c3385322eea673754",
               "mdistiller/distillers/DKD.py", "d864b0a6884b10ff7d73ba609b56d3ef7120b8d3"),
}
DIST_SUPERPROJECT = "hunto/DIST_KD@2418f18b1fedd7c2646a7b1b9a27d5c674c2170b (its classification submodule)"


def ref_name(key: str, what: str) -> str:
    repo, commit, path, _ = REFERENCES[key]
    return f"{repo}@{commit} {path} {what}"


def checked_file(root: Path, key: str) -> Path:
    """The reference file under ``root``, refused unless it is the recorded commit's blob."""
    _, commit, path, blob = REFERENCES[key]
    file = root / path
    data = file.read_bytes()
    found = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if found != blob:
        raise SystemExit(f"{file} is not {path} of commit {commit} (blob {found}, expected {blob})")
    return file


def load_file(name: str, file: Path):
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def cuda_is_a_no_op():
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda


# ---- the references, called as they are ---------------------------------------------------------
def load_references(args):
    refs = {}
    refs["dist"] = load_file("ref_dist_kd", checked_file(args.ref_dist, "dist"))

    sys.path.insert(0, str(args.ref_wsld))  # knowledge_distiller imports imagenet_train_cfg and tools
    with cuda_is_a_no_op():
        refs["wsld"] = load_file("ref_knowledge_distiller", checked_file(args.ref_wsld, "wsld"))

    registry = types.ModuleType("mmcls.registry")
    registry.MODELS = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    sys.modules.setdefault("mmcls", types.ModuleType("mmcls"))
    sys.modules["mmcls.registry"] = registry
    refs["nkd"] = load_file("ref_nkd", checked_file(args.ref_nkd, "nkd"))

    checked_file(args.ref_ls, "ls_kd"), checked_file(args.ref_ls, "ls_dkd")
    sys.path.insert(0, str(args.ref_ls))
    refs["ls_kd"] = importlib.import_module("mdistiller.distillers.KD")
    refs["ls_dkd"] = importlib.import_module("mdistiller.distillers.DKD")
    return refs


class Const(nn.Module):
    """Stands for a network whose output is given (the WSLD distiller calls t_net(x), s_net(x))."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


class NoHardLoss(nn.Module):
    """Replaces WSLDistiller.hard_loss (its CE): golden numbers are the distillation term alone."""

    def forward(self, logits, label):
        return logits.new_zeros(())


class OneHotOverLogits:
    """torch.nn.functional as the WSLD module sees it, except one_hot: the logits' classes, not 1000."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def one_hot(label, num_classes=-1):
        return F.one_hot(label, CLASSES)


def wsld_reference(refs, T):
    """The distiller's loss with hard_loss 0 and alpha 1: T^2 * mean(w * soft cross-entropy)."""
    module = refs["wsld"]
    module.F = OneHotOverLogits()

    def run(z_s, z_t, target):
        with cuda_is_a_no_op():
            distiller = module.WSLDistiller(Const(z_t), Const(z_s))
            distiller.hard_loss, distiller.T, distiller.alpha = NoHardLoss(), T, 1.0
            _, loss = distiller(torch.zeros(z_s.shape[0], 1), target)
        return loss
    return run


# ---- one record per file -------------------------------------------------------------------------
def draw_inputs():
    gen = torch.Generator().manual_seed(SEED)
    logit_s = 2.0 * torch.randn(BATCH, CLASSES, generator=gen, dtype=torch.float64)
    logit_t = 3.0 * torch.randn(BATCH, CLASSES, generator=gen, dtype=torch.float64)
    target = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    logit_t[torch.arange(BATCH), target] += 4.0  # a teacher that mostly knows the label
    return logit_s, logit_t, target


def record(method, reference, hparams, loss_fn, notes, with_target, extra_fns=(), variants=()):
    """Run ``loss_fn(logit_s, logit_t[, target])`` with a student leaf; extras are more calls.

    ``variants``: (name, hparams, loss_fn, extra_fns) of the same reference at another setting, run on
    the same inputs; each becomes ``extra[name]`` = {hparams, loss, grads, its extras}."""
    logit_s, logit_t, target = draw_inputs()
    call = (lambda fn, s: fn(s, logit_t, target)) if with_target else (lambda fn, s: fn(s, logit_t))

    def run(fn, fns):
        leaf = logit_s.clone().requires_grad_(True)
        loss = call(fn, leaf)
        loss.backward()
        with torch.no_grad():
            extras = {key: call(f, logit_s).detach() for key, f in fns}
        return loss.detach(), {"logit_s": leaf.grad.detach()}, extras

    loss, grads, extra = run(loss_fn, extra_fns)
    for name, variant_hparams, variant_fn, variant_fns in variants:
        v_loss, v_grads, v_extra = run(variant_fn, variant_fns)
        extra[name] = {"hparams": variant_hparams, "loss": v_loss, "grads": v_grads, **v_extra}
    inputs = {"logit_s": logit_s, "logit_t": logit_t}
    if with_target:
        inputs["target"] = target
    return {
        "method": method, "reference": reference, "hparams": hparams, "inputs": inputs, "params": {},
        "trainable": [], "loss": loss, "grads": grads,
        "state_after": {}, "extra": extra, "tolerance": TOLERANCE, "dtype": "float64", "split": "public",
        "seed": SEED, "torch_version": str(torch.__version__), "notes": notes,
    }


def build_records(refs):
    normalize = refs["ls_kd"].normalize
    ls_first = "logit standardisation first: " + ref_name("ls_kd", "function normalize") + " on both logits, then "

    def standardized(fn):
        return lambda s, t, *rest: fn(normalize(s), normalize(t), *rest)

    def dist(beta, gamma, tau=4.0):
        return refs["dist"].DIST(beta=beta, gamma=gamma, tau=tau)

    def nkd(gamma, temp=3.0):
        return refs["nkd"].NKDLoss(name="loss_nkd", use_this=True, temp=temp, gamma=gamma)

    dist_ref = ref_name("dist", f"class DIST; {DIST_SUPERPROJECT}")
    dist_hp = {"beta": 1.0, "gamma": 1.0, "tau": 4.0, "kd": "dist_t4 (configs/strategies/distill/dist_cifar.yaml)",
               "ori_loss_weight": 1.0, "kd_loss_weight": 2.0}
    dist_notes = ("DIST(beta=1, gamma=1, tau=4) of the CIFAR-100 recipe (kd: dist_t4); "
                  "loss = beta*inter + gamma*intra, the DIST term alone (no CE, kd_loss_weight 2 not applied). "
                  "extra.inter / extra.intra = the reference with gamma = 0 / beta = 0 (the weighted terms). "
                  "extra.beta2_gamma05_tau1: "
                  "DIST(beta=2, gamma=0.5, tau=1) (tau 1 is the class default and the ImageNet setting).")

    def dist_terms(beta, gamma, tau, of=lambda fn: fn):
        return (("inter", of(dist(beta, 0.0, tau))), ("intra", of(dist(0.0, gamma, tau))))

    dist_extra = dist_terms(1.0, 1.0, 4.0)
    dist_variant = ("beta2_gamma05_tau1", {"beta": 2.0, "gamma": 0.5, "tau": 1.0}, dist(2.0, 0.5, 1.0),
                    dist_terms(2.0, 0.5, 1.0))

    wsld_ref = ref_name("wsld", "class WSLDistiller")
    wsld_hp = {"T": 2.0, "alpha": 2.5, "note": "the repository's ImageNet values (T 2, alpha 2.5); alpha not applied"}
    wsld_notes = ("WSLDistiller.forward with its networks replaced by the given logits, hard_loss (CE) replaced by 0 "
                  "and alpha set to 1, so loss = T^2 * mean_i w_i * soft cross-entropy_i (T 2; extra.T4: its "
                  "distiller at T 4). Shims: .cuda() a no-op; the module's F.one_hot ignores the hard-coded "
                  f"num_classes=1000 and uses the logits' {CLASSES} classes (the reference is ImageNet-only as "
                  "written).")

    nkd_ref = ref_name("nkd", "class NKDLoss")
    nkd_hp = {"temp": 3.0, "gamma": 3.5, "config": "configs/distillers/cifar100/res34_distill_res18_cifar.py"}
    nkd_notes = ("NKDLoss(temp=3, gamma=3.5) of the repository's CIFAR-100 config (class defaults temp 1, gamma 1.5: "
                 "extra.class_defaults); loss = target term + non-target term, no CE. extra.target = the reference "
                 "with gamma 0, extra.non_target = loss - extra.target. Shim: mmcls.registry stubbed (only its "
                 "decorator is used).")

    def nkd_terms(fn_of, gamma=3.5, temp=3.0):
        target = fn_of(nkd(0.0, temp))
        return (("target", target), ("non_target", lambda *a: fn_of(nkd(gamma, temp))(*a) - target(*a)))

    kd_ls = refs["ls_kd"].kd_loss
    dkd_ls = refs["ls_dkd"].dkd_loss
    dkd_hp = {"alpha": 9.0, "beta": 72.0, "temperature": 2.0, "logit_stand": True,
              "recipe": "configs/cifar100/dkd/resnet32x4_resnet8x4.yaml --logit-stand --base-temp 2 --kd-weight 9: "
                        "ALPHA 1*9, BETA 8*9, T 2; CE 1; warm-up 20 epochs (factor 1 here)"}
    identity = lambda fn: fn  # noqa: E731

    return {
        "dist": record("dist", dist_ref, {**dist_hp, "logit_stand": False}, dist(1.0, 1.0), dist_notes, False,
                       dist_extra, [dist_variant]),
        "wsld": record("wsld", wsld_ref, {**wsld_hp, "logit_stand": False}, wsld_reference(refs, 2.0), wsld_notes,
                       True, (), [("T4", {"T": 4.0}, wsld_reference(refs, 4.0), ())]),
        "nkd": record("nkd", nkd_ref, {**nkd_hp, "logit_stand": False}, nkd(3.5), nkd_notes, True,
                      nkd_terms(identity),
                      [("class_defaults", {"temp": 1.0, "gamma": 1.5}, nkd(1.5, 1.0), nkd_terms(identity, 1.5, 1.0))]),
        "kd_ls": record(
            "kd_ls", ref_name("ls_kd", "function kd_loss (logit_stand=True)"),
            {"temperature": 2.0, "logit_stand": True, "kd_weight": 9.0, "ce_weight": 0.1,
             "recipe": "--logit-stand --base-temp 2 --kd-weight 9 (kd_weight and ce_weight not applied)"},
            lambda s, t: kd_ls(s, t, 2.0, True),
            "kd_loss with logit_stand=True at base temperature 2: KL of softmax(normalize(z)/2), times 2^2, "
            "batch mean. normalize(z) = (z - mean) / (1e-7 + std), unbiased std over the classes. extra.T4: "
            "the same at temperature 4.", False, (),
            [("T4", {"temperature": 4.0}, lambda s, t: kd_ls(s, t, 4.0, True), ())]),
        "dkd_ls": record(
            "dkd_ls", ref_name("ls_dkd", "function dkd_loss (logit_stand=True)"), dkd_hp,
            lambda s, t, y: dkd_ls(s, t, y, 9.0, 72.0, 2.0, True),
            "dkd_loss with logit_stand=True, alpha 9, beta 72, T 2 (the LS recipe for resnet32x4 -> resnet8x4); "
            "no CE, warm-up factor 1. extra.alpha_tckd / extra.beta_nckd = dkd_loss with beta 0 / alpha 0. "
            "extra.alpha1_beta18_T3: alpha 1, beta 18, T 3 (other weights and temperature).", True,
            (("alpha_tckd", lambda s, t, y: dkd_ls(s, t, y, 9.0, 0.0, 2.0, True)),
             ("beta_nckd", lambda s, t, y: dkd_ls(s, t, y, 0.0, 72.0, 2.0, True))),
            [("alpha1_beta18_T3", {"alpha": 1.0, "beta": 18.0, "temperature": 3.0},
              lambda s, t, y: dkd_ls(s, t, y, 1.0, 18.0, 3.0, True),
              (("alpha_tckd", lambda s, t, y: dkd_ls(s, t, y, 1.0, 0.0, 3.0, True)),
               ("beta_nckd", lambda s, t, y: dkd_ls(s, t, y, 0.0, 18.0, 3.0, True))))]),
        "dist_ls": record(
            "dist_ls", ls_first + dist_ref, {**dist_hp, "logit_stand": True}, standardized(dist(1.0, 1.0)),
            "Our composition (no published code runs DIST with logit standardisation): " + dist_notes, False,
            tuple((k, standardized(fn)) for k, fn in dist_extra)),
        "wsld_ls": record(
            "wsld_ls", ls_first + wsld_ref, {**wsld_hp, "logit_stand": True}, standardized(wsld_reference(refs, 2.0)),
            "Our composition (no published code runs WSLD with logit standardisation); the weight sees the "
            "standardised logits too. " + wsld_notes, True),
        "nkd_ls": record(
            "nkd_ls", ls_first + nkd_ref, {**nkd_hp, "logit_stand": True}, standardized(nkd(3.5)),
            "Our composition (no published code runs NKD with logit standardisation); both terms see the "
            "standardised logits. " + nkd_notes, True, nkd_terms(standardized)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref-dist", type=Path, required=True, help="hunto/image_classification_sota work tree")
    parser.add_argument("--ref-wsld", type=Path, required=True,
                        help="bellymonster/Weighted-Soft-Label-Distillation work tree")
    parser.add_argument("--ref-nkd", type=Path, required=True, help="yzd-v/cls_KD work tree")
    parser.add_argument("--ref-ls", type=Path, required=True, help="sunshangquan/logit-standardization-KD work tree")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    refs = load_references(args)
    for method, rec in build_records(refs).items():
        path = args.out / f"{method}.pt"
        torch.save(rec, path)
        print(f"{path}: loss {rec['loss'].item():.10f}")


if __name__ == "__main__":
    main()
