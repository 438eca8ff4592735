"""Generate the golden files of CRLD and ViTKD from their public reference code.

Usage (from the repository root; each path is an unpacked tree of the reference at the commit in
:data:`REFERENCES`; the git blob id of every file imported is checked)::

    python tests/golden/make_crld_vitkd_goldens.py --crld PATH --mdistiller PATH --cls-kd PATH [--out tests/golden]

Nothing is copied from the references: their own loss code is imported from those paths and run on the
CPU in float64. CRLD's ``forward_train`` runs on stub networks that return the given logits of each view;
its ``_base.py`` (not in the CRLD snapshot used here) is megvii-research/mdistiller's, the code base CRLD
names. ViTKD's ``ViTKDLoss`` gets the features its modified backbones hand it, made here from raw block
outputs exactly as ``mmcls/models/backbones/vision_transformer.py`` does (``x[:, 1:]`` of blocks 0 and 1,
stacked; the last block's normed patch tokens). ViTKD draws its masks from torch's generator, so its files
record ``rng_state`` (the generator right before the loss call), and its second setting is a second file.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import types
from types import SimpleNamespace

import torch
from torch import nn

#: name -> (GitHub repository, commit the files were generated from)
REFERENCES = {
    "crld": ("scx-822/CRLD-main", "c9d665706f7d8b3598ab8033f0d467ed006037f5"),
    "mdistiller": ("megvii-research/mdistiller", "a08d46f10d6102bd6e3f258ca5ac880b020ea259"),
    "cls_kd": ("yzd-v/cls_KD", "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66"),
}
#: name -> {imported file: its git blob id}. CRLD.py's is that of the text of the file as the search index
#: stores it at that commit (the repository could not be cloned here; its length, 2713 characters, matches).
FILES = {
    "crld": {"mdistiller/distillers/CRLD.py": "ef5c698c4b698b7d66d89a318632f70b152967b4"},
    "mdistiller": {"mdistiller/distillers/_base.py": "901ddcf9002c725f946a8459dbecc9fe038efe2c"},
    "cls_kd": {"mmcls/models/dis_losses/vitkd.py": "71e630f30ebacfdb2f70c87f96f2a8266706c08b"},
}
SEED = 0
TOLERANCE = 1e-10


def _check_commit(name: str, path: str) -> str:
    """``owner/repo@commit``, after checking that every file used from ``path`` is that commit's."""
    repo, commit = REFERENCES[name]
    for rel, blob in FILES[name].items():
        with open(os.path.join(path, rel), "rb") as f:
            data = f.read()
        if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() != blob:
            sys.exit(f"{os.path.join(path, rel)} is not the file of {repo}@{commit} (git blob {blob})")
    return f"{repo}@{commit}"


def _load(name: str, path: str, package: str = ""):
    """Import ``path`` as module ``name`` (its relative imports resolve inside ``package``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _record(method, reference, hparams, inputs, params, loss, grads, extra, notes, rng_state=None):
    record = {"method": method, "reference": reference, "hparams": hparams, "inputs": inputs, "params": params,
              "trainable": list(params), "loss": loss.detach().clone(), "grads": grads, "state_after": {},
              "extra": extra, "tolerance": TOLERANCE, "dtype": "float64", "split": "public", "seed": SEED,
              "torch_version": str(torch.__version__), "notes": notes}
    if rng_state is not None:
        record["rng_state"] = rng_state
    return record


# ---------------------------------------------------------------------------- CRLD
class _Views(nn.Module):
    """Stands in for a CIFAR network of mdistiller: ``net(image)`` returns (the given logits of that view, None);
    an image is the view's index (0 weak, 1 strong)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, image):
        return self.logits[int(image.item())], None


def _crld_class(args):
    _check_commit("mdistiller", args.mdistiller)
    for key in [k for k in sys.modules if k.startswith("crld_ref")]:
        del sys.modules[key]
    for name in ("crld_ref", "crld_ref.distillers"):
        shell = types.ModuleType(name)
        shell.__path__ = []
        sys.modules[name] = shell
    _load("crld_ref.distillers._base", os.path.join(args.mdistiller, "mdistiller/distillers/_base.py"),
          "crld_ref.distillers")
    return _load("crld_ref.distillers.CRLD", os.path.join(args.crld, "mdistiller/distillers/CRLD.py"),
                 "crld_ref.distillers").CRLD


def _crld_step(crld_class, hp, z):
    """One ``forward_train`` of the reference: (loss_kd_wv + loss_kd_cv, its terms, grads, mask counts)."""
    s_w, s_s = z["logit_s"].clone().requires_grad_(True), z["logit_s_strong"].clone().requires_grad_(True)
    cfg = SimpleNamespace(CRLD=SimpleNamespace(CE_WEIGHT=hp["ce_weight"], WV_WEIGHT=hp["wv_weight"],
                                               CV_WEIGHT=hp["cv_weight"], TEMPERATURE=hp["temperature"],
                                               TAU_W=hp["tau_w"], TAU_S=hp["tau_s"]))
    distiller = crld_class(_Views([s_w, s_s]), _Views([z["logit_t"], z["logit_t_strong"]]), cfg).train()
    _, losses = distiller(image_w=torch.tensor([0]), image_s=torch.tensor([1]), target=z["target"])
    loss = losses["loss_kd_wv"] + losses["loss_kd_cv"]
    loss.backward()
    conf = [torch.softmax(z[k], dim=1).max(dim=1).values for k in ("logit_t", "logit_t_strong")]
    counts = torch.tensor([int((conf[0] >= hp["tau_w"]).sum()), int((conf[1] >= hp["tau_s"]).sum())])
    out = {"loss": loss.detach(), "grads": {"logit_s": s_w.grad.detach().clone(),
                                            "logit_s_strong": s_s.grad.detach().clone()},
           "loss_kd_wv": losses["loss_kd_wv"].detach(), "loss_kd_cv": losses["loss_kd_cv"].detach(),
           "mask_counts": counts}
    return out


def make_crld(args):
    ref = _check_commit("crld", args.crld)
    crld_class = _crld_class(args)
    torch.manual_seed(SEED)
    b, classes = 7, 11
    target = torch.randint(0, classes, (b,))
    # teacher logits with a few confident rows, so both masks keep some samples and drop others at every setting
    boost = torch.tensor([7.0, 1.5, 4.0, 0.0, 9.0, 2.5, 0.5], dtype=torch.float64)[:, None]
    z = {"logit_s": 2 * torch.randn(b, classes, dtype=torch.float64),
         "logit_t": torch.randn(b, classes, dtype=torch.float64) + boost * torch.nn.functional.one_hot(target, classes),
         "logit_s_strong": 2 * torch.randn(b, classes, dtype=torch.float64),
         "logit_t_strong": 0.4 * torch.randn(b, classes, dtype=torch.float64)
         + 0.5 * boost * torch.nn.functional.one_hot(target, classes), "target": target}
    defaults = {"temperature": 4.0, "tau_w": 0.9, "tau_s": 0.2, "wv_weight": 2.0, "cv_weight": 0.5,
                "ce_weight": 1.0}
    main = _crld_step(crld_class, defaults, z)
    settings = {"imagenet_T1": {"temperature": 1.0, "ce_weight": 2.0},  # configs/imagenet/*/crld.yaml
                "tau05_weights1": {"tau_w": 0.5, "tau_s": 0.5, "wv_weight": 1.0, "cv_weight": 1.5}}
    extra = {"loss_kd_wv": main["loss_kd_wv"], "loss_kd_cv": main["loss_kd_cv"], "mask_counts": main["mask_counts"]}
    for key, changed in settings.items():
        step = _crld_step(crld_class, {**defaults, **changed}, z)
        extra[key] = {**step, "hparams": changed}
    for counts in [main["mask_counts"]] + [extra[k]["mask_counts"] for k in settings]:
        assert all(0 < int(c) < b for c in counts), counts  # every mask keeps some samples and drops others
    return _record(
        "crld", f"{ref} mdistiller/distillers/CRLD.py class CRLD (forward_train)", defaults, z, {}, main["loss"],
        main["grads"], extra,
        "loss = loss_kd_wv + loss_kd_cv of CRLD.forward_train (its loss_ce, CE_WEIGHT x the CE of both views, is "
        "the trainer's gamma * CE and is left out), batch 7, 11 classes, the cfg.py defaults (TEMPERATURE 4, "
        "TAU_W 0.9, TAU_S 0.2, WV_WEIGHT 2, CV_WEIGHT 0.5, CE_WEIGHT 1). Inputs: the student's and teacher's "
        "logits of the weak view (logit_s, logit_t) and of the strong view (logit_s_strong, logit_t_strong), "
        "labels (target). extra.mask_counts: samples kept by the weak and the strong mask (diagnostic). "
        "extra.imagenet_T1: the ImageNet configs' TEMPERATURE 1 (CE_WEIGHT 2 not applied); "
        "extra.tau05_weights1: TAU_W 0.5, TAU_S 0.5, WV_WEIGHT 1, CV_WEIGHT 1.5. Shims: the networks are stubs "
        "returning the given logits per view (an image is the view's index); mdistiller/distillers/_base.py is "
        "megvii-research/mdistiller@a08d46f's (Distiller: student, teacher, forward -> forward_train), imported "
        "under a private package name; the package __init__ files are not run.")


# ---------------------------------------------------------------------------- ViTKD
def _vitkd_class(args):
    """ViTKDLoss imported from its file; ``mmcls`` and ``mmcls.registry`` are stubs (the rest of mmcls needs
    mmcv and mmengine, and its ``__init__`` files import everything)."""
    _check_commit("cls_kd", args.cls_kd)
    for key in [k for k in sys.modules if k == "mmcls" or k.startswith("mmcls.")]:
        del sys.modules[key]
    registry = types.ModuleType("mmcls.registry")
    registry.MODELS = SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    sys.modules["mmcls"] = types.ModuleType("mmcls")
    sys.modules["mmcls.registry"] = registry
    path = os.path.join(args.cls_kd, "mmcls/models/dis_losses/vitkd.py")
    return _load("mmcls_vitkd_reference", path).ViTKDLoss


def make_vitkd(args, d_s=6, d_t=10, grid=5, prefix=1, alpha=3e-5, beta=3e-6, lam=0.5, scale=10.0, seed=SEED):
    ref = _check_commit("cls_kd", args.cls_kd)
    vitkd_loss = _vitkd_class(args)
    torch.manual_seed(seed)
    b, n = 5, grid * grid
    module = vitkd_loss("loss_vitkd", True, d_s, d_t, alpha_vitkd=alpha, beta_vitkd=beta, lambda_vitkd=lam)
    module = module.double().train()
    with torch.no_grad():
        module.mask_token.normal_()  # instead of its zero init, so that its value is checked too
    params = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def block(d):  # a raw block output: prefix tokens, then the patch tokens
        return scale * torch.randn(b, prefix + n, d, dtype=torch.float64)

    inputs = {"low_s_0": block(d_s), "low_s_1": block(d_s), "high_s": scale * torch.randn(b, d_s, grid, grid,
                                                                                         dtype=torch.float64),
              "low_t_0": block(d_t), "low_t_1": block(d_t), "high_t": scale * torch.randn(b, d_t, grid, grid,
                                                                                         dtype=torch.float64)}
    leaves = {k: inputs[k].clone().requires_grad_(True) for k in ("low_s_0", "low_s_1", "high_s")}

    def backbone(low0, low1, high):  # vision_transformer.py: low_f = x[:, 1:] of blocks 0 and 1; high_f = x[:, 1:]
        low = torch.cat((low0[:, prefix:].unsqueeze(1), low1[:, prefix:].unsqueeze(1)), dim=1)
        return [low, high.flatten(2).transpose(1, 2)]  # the last normed tokens, from their (D, h, w) map

    preds_s = backbone(leaves["low_s_0"], leaves["low_s_1"], leaves["high_s"])
    preds_t = backbone(inputs["low_t_0"], inputs["low_t_1"], inputs["high_t"])
    state = torch.get_rng_state()
    loss = module(preds_s, preds_t)
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in leaves.items()}
    grads.update({f"params.{k}": p.grad.detach().clone() for k, p in module.named_parameters()})
    torch.set_rng_state(state)
    keep = int(n * (1 - lam))
    hparams = {"alpha_vitkd": alpha, "beta_vitkd": beta, "lambda_vitkd": lam, "student_dims": d_s,
               "teacher_dims": d_t, "name": "loss_vitkd", "use_this": True}
    return _record(
        "vitkd", f"{ref} mmcls/models/dis_losses/vitkd.py class ViTKDLoss", hparams, inputs, params, loss, grads,
        {}, f"loss = ViTKDLoss([low_s, high_s], [low_t, high_t]), batch {b}, a {grid}x{grid} patch grid ({n} tokens, "
        f"{keep} kept per sample), {prefix} prefix token(s), widths {d_s} (student) and {d_t} (teacher: "
        f"{'align2 and align Linear layers' if d_s != d_t else 'no align layers'}), alpha {alpha:g}, beta {beta:g}, "
        f"lambda {lam:g}; features of magnitude ~{scale:g}. Inputs: low_*_0/1 = raw outputs of blocks 0 and 1 "
        f"(B, prefix + N, D), high_* = the last block's normed patch tokens as (B, D, h, w) maps. The backbone "
        "glue of mmcls/models/backbones/vision_transformer.py (x[:, 1:] of blocks 0 and 1, stacked; the tokens "
        "of the map) is applied here, every prefix token dropped (x[:, prefix:]: 2 prefix tokens are a "
        "distilled DeiT's, which the reference's backbones do not serve), so the prefix rows' gradients are 0. "
        "rng_state: the generator right before the loss call (random_masking's torch.rand). mask_token is drawn "
        "from N(0, 1) instead of its zero init. Shims: mmcls and mmcls.registry are stubs (only the "
        "register_module decorator is used).", rng_state=state)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crld", required=True, help="scx-822/CRLD-main tree (at least mdistiller/distillers/CRLD.py)")
    parser.add_argument("--mdistiller", required=True, help="megvii-research/mdistiller checkout")
    parser.add_argument("--cls-kd", required=True, help="yzd-v/cls_KD checkout")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    makers = {
        "crld.pt": lambda: make_crld(args),
        "vitkd.pt": lambda: make_vitkd(args),
        "vitkd_same_width.pt": lambda: make_vitkd(args, d_s=8, d_t=8, grid=3, prefix=2, alpha=0.01, beta=0.02,
                                                  lam=0.7, scale=1.0, seed=SEED + 1),
    }
    for name, make in makers.items():
        record = make()
        path = os.path.join(args.out, name)
        torch.save(record, path)
        print(f"wrote {path}: loss {float(record['loss']):.6g}")


if __name__ == "__main__":
    main()
