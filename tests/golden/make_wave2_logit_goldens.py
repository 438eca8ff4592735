"""Make the golden files of TTM/WTTM, SDD (SD-KD, SD-DKD, SD-NKD) and KD++/DKD++ by running their official code.

    python tests/golden/make_wave2_logit_goldens.py --ttm DIR --sdd DIR --nd DIR [--out DIR]

Each ``DIR`` is a work tree of the commit in :data:`REFERENCES` (``git --git-dir=MIRROR archive COMMIT | tar -x
-C DIR``); the git blob id of every file imported is checked. The references run unchanged on the CPU in
float64 (seed 0) on odd sizes: batch 7, 11 classes; SDD's last maps are 5 x 5 (student) and 7 x 7 (teacher),
sides that 4 does not divide. Nothing of the references is copied here. Run-time shims, listed in each file's
``notes``: ``.cuda()`` is a no-op; SDD's packages are imported as empty shells (their ``__init__`` files import
every model and the datasets); SDD's networks are its own ``ResNet_SDD`` forward with the stem and stages
replaced by identities (so it starts from the given last map) and ``avgpool`` by a global average (its
``AvgPool2d(8)`` needs an 8 x 8 map; the logits only matter for ``--M [1]``); the loss weights the references
apply outside the method (SDD's KD_WEIGHT, ND's CE) are 1 or 0 so the number is the method's term; ND's
projector dropout is 0 (a random mask cannot be replayed).

ttm, ttm_l05             zkxufo/TTM distiller_zoo/ttm.py TTM(l) on logits, l 0.1 (its README) and 0.5
wttm, wttm_l05           distiller_zoo/wttm.py WTTM(l), l 0.2 (its README) and 0.5
sdd_{kd,dkd,nkd}         SDD_KD / SDD_DKD / SDD_NKDLoss.forward_train, --M [1,2,4]
sdd_{kd,dkd,nkd}_m12     the same with --M [1,2] and other temperature / beta / gamma / epoch
sdd_{kd,dkd,nkd}_m1      --M [1] (the base loss on the logits; method sdd_*_m1: it reads the logits, not the maps)
kdpp, dkdpp              CIFAR/train_cifar_kd.py / train_cifar_dkd.py train(), one batch, equal feature widths
kdpp_embtrans, ...       the same with a 64-wide student feature through EmbTrans (wrn40_1) to the teacher's 128
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import io
import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

SEED, BATCH, CLASSES, TOLERANCE = 0, 7, 11, 1e-8

#: flag -> (owner/repo, commit, {file imported: its git blob id at that commit})
REFERENCES = {
    "ttm": ("zkxufo/TTM", "fe457b33a71ba27536ec04fe3d32c5b04963522f",
            {"distiller_zoo/ttm.py": "b552f6f2697534bb68d141a98f24df15c1ec37e7",
             "distiller_zoo/wttm.py": "75484dc56ef4d96e95ba821bc9c4cc94cd68ef6b"}),
    "sdd": ("shicaiwei123/SDD-CVPR2024", "e412036c6b7b67d8ed25418d2dedad223ab49a71",
            {"mdistiller/distillers/KD.py": "ba04dee3d3d7c2c03178a1aef443c817c4e4bca8",
             "mdistiller/distillers/SDD_DKD.py": "e9ebaa0a19f481a8ac46d05731854429aaf632f6",
             "mdistiller/distillers/SDD_nkd.py": "291bb2f14db7c0b9c17a39d218aabe64bc5a82dc",
             "mdistiller/distillers/DKD.py": "191199b43f4fe5a866bfc39a0ddc11c456f1df49",
             "mdistiller/distillers/_base.py": "901ddcf9002c725f946a8459dbecc9fe038efe2c",
             "mdistiller/models/cifar/resnet.py": "61cf4939652e788022d6cc44592a12a4473d457d",
             "mdistiller/models/cifar/utils.py": "17f0d1e0aca87c835d3f6fb9ed4d3fc6eeacc333"}),
    "nd": ("WangYZ1608/Knowledge-Distillation-via-ND", "fc6f3f9058ed35189a1d3c0a79a7594025e4d88f",
           {"CIFAR/utils.py": "19b42c6068cb542ce2271048891b632509d442d9",
            "CIFAR/Models/embtrans_cifar.py": "b881c5872091436de346fa9779f2b61f3d3b4f8d",
            "CIFAR/train_cifar_kd.py": "449e96e23eef00bca6b4faa3a9a295ec87afd29d",
            "CIFAR/train_cifar_dkd.py": "273d7087c098010200924e50f1786f30753904b6"}),
}


def reference(key: str, root: Path) -> str:
    """``owner/repo@commit``, after checking every imported file of ``root`` against its blob id."""
    repo, commit, files = REFERENCES[key]
    for rel, blob in files.items():
        data = (root / rel).read_bytes()
        found = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if found != blob:
            raise SystemExit(f"{root / rel} is not {rel} of {repo}@{commit} (blob {found}, expected {blob})")
    return f"{repo}@{commit}"


def load_file(name: str, file: Path):
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_shelled(root: Path, dotted: str):
    """Import ``dotted`` from ``root`` with its parent packages as empty shells (their ``__init__`` not run)."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            shell = types.ModuleType(name)
            shell.__path__ = [str(root.joinpath(*parts[:i]))]
            sys.modules[name] = shell
    return importlib.import_module(dotted)


@contextlib.contextmanager
def cuda_is_a_no_op():
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def record(method, ref, hparams, inputs, loss, grads, notes, params=None, state_after=None, extra=None):
    return {"method": method, "reference": ref, "hparams": hparams, "inputs": inputs, "params": params or {},
            "trainable": sorted(k for k in (params or {}) if "running" not in k and "num_batches" not in k
                                and k != "T_EMB"),
            "loss": loss.detach().clone(), "grads": grads, "state_after": state_after or {}, "extra": extra or {},
            "tolerance": TOLERANCE, "dtype": "float64", "split": "public", "seed": SEED,
            "torch_version": str(torch.__version__), "notes": notes}


def draw_logits(gen):
    """Student and teacher logits and labels; the teacher mostly knows the label."""
    logit_s = 2.0 * torch.randn(BATCH, CLASSES, generator=gen)
    logit_t = 3.0 * torch.randn(BATCH, CLASSES, generator=gen)
    target = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    logit_t[torch.arange(BATCH), target] += 4.0
    return logit_s, logit_t, target


# ---- TTM / WTTM ----------------------------------------------------------------------------------------------
def make_ttm(root: Path):
    ref = reference("ttm", root)
    modules = {"ttm": load_file("ref_ttm", root / "distiller_zoo/ttm.py").TTM,
               "wttm": load_file("ref_wttm", root / "distiller_zoo/wttm.py").WTTM}
    out = {}
    for method, exponents in (("ttm", (0.1, 0.5)), ("wttm", (0.2, 0.5))):
        for i, l in enumerate(exponents):
            gen = torch.Generator().manual_seed(SEED + i)
            logit_s, logit_t, _ = draw_logits(gen)
            s = leaf(logit_s)
            loss = modules[method](l)(s, logit_t)
            loss.backward()
            readme = "its README's value" if i == 0 else "a second setting"
            notes = (f"{method.upper()}(l={l}) ({readme}) on logits: the loss alone, no CE (-r) and no weight (-b). "
                     "No shim.")
            name = method if i == 0 else f"{method}_l{str(l).replace('.', '')}"
            out[name] = record(method, f"{ref} distiller_zoo/{method}.py class {method.upper()}", {"l": l},
                               {"logit_s": logit_s, "logit_t": logit_t}, loss, {"logit_s": s.grad.clone()}, notes)
    return out


# ---- SDD -------------------------------------------------------------------------------------------------------
class PassThrough(nn.Module):
    """A stage of ResNet_SDD replaced by the identity (its stages return (output, pre-activation))."""

    def forward(self, x):
        return x, x


class GivenMap(nn.Module):
    """Stands for a network: the reference's ResNet_SDD forward run on a given last map.

    Returns its (logits, patch logits); the logits come back as a fresh leaf so that their gradient
    (used by ``--M [1]`` only) is recorded."""

    def __init__(self, resnet_sdd, feature_map, weight, bias, M):
        super().__init__()
        net = resnet_sdd(depth=8, num_filters=[4, 4, 4, 4], num_classes=CLASSES, M=M)
        net.conv1, net.bn1, net.relu = nn.Identity(), nn.Identity(), nn.Identity()
        net.layer1, net.layer2, net.layer3 = PassThrough(), PassThrough(), PassThrough()
        net.avgpool = nn.AdaptiveAvgPool2d(1)  # shim: its AvgPool2d(8) needs an 8x8 map
        net.fc = nn.Linear(weight.shape[1], CLASSES)
        with torch.no_grad():
            net.fc.weight.copy_(weight)
            net.fc.bias.copy_(bias)
        self.net, self.feature_map, self.logits = net, feature_map, None

    def forward(self, image):
        logits, patches = self.net(self.feature_map)
        self.logits = leaf(logits)
        return self.logits, patches


def draw_maps(gen):
    """Last maps (student 6 x 5 x 5, teacher 10 x 7 x 7), classifiers, logits' labels. The teacher's map carries
    its label's classifier row with a strength that varies over positions, so that regions and whole maps are
    right and wrong in every combination."""
    target = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    feat_s = torch.randn(BATCH, 6, 5, 5, generator=gen)
    fc_s_weight, fc_s_bias = torch.randn(CLASSES, 6, generator=gen), 0.1 * torch.randn(CLASSES, generator=gen)
    fc_t_weight, fc_t_bias = torch.randn(CLASSES, 10, generator=gen), 0.1 * torch.randn(CLASSES, generator=gen)
    strength = 1.5 * torch.randn(BATCH, 1, 7, 7, generator=gen) + 0.4
    feat_t = torch.randn(BATCH, 10, 7, 7, generator=gen) + strength * fc_t_weight[target][:, :, None, None]
    return feat_s, fc_s_weight, fc_s_bias, feat_t, fc_t_weight, fc_t_bias, target


def teacher_agreement(patches_t, target):
    """Counts of (whole map right/wrong) x (region right/wrong) over the regions after the first."""
    right = patches_t.argmax(1) == target[:, None]          # [B, N]
    whole, regions = right[:, :1].expand_as(right[:, 1:]), right[:, 1:]
    return torch.tensor([int((whole & regions).sum()), int((whole & ~regions).sum()),
                         int((~whole & regions).sum()), int((~whole & ~regions).sum())])


SDD_SETTINGS = {  # file -> (method, M, temperature, alpha, beta or gamma, warmup, 1-based epoch)
    "sdd_kd": ("sdd_kd", "[1,2,4]", 4.0, None, None, None, 30),
    "sdd_kd_m12": ("sdd_kd", "[1,2]", 2.0, None, None, None, 30),
    "sdd_kd_m1": ("sdd_kd", "[1]", 3.0, None, None, None, 30),
    "sdd_dkd": ("sdd_dkd", "[1,2,4]", 4.0, 1.0, 8.0, 20.0, 30),
    "sdd_dkd_m12": ("sdd_dkd", "[1,2]", 3.0, 2.0, 2.0, 20.0, 5),
    "sdd_dkd_m1": ("sdd_dkd", "[1]", 4.0, 1.0, 6.0, 20.0, 10),
    "sdd_nkd": ("sdd_nkd", "[1,2,4]", 4.0, None, 8.0, 20.0, 30),
    "sdd_nkd_m12": ("sdd_nkd", "[1,2]", 3.0, None, 6.0, 20.0, 5),
    "sdd_nkd_m1": ("sdd_nkd", "[1]", 4.0, None, 2.0, 20.0, 40),
}


def make_sdd(root: Path):
    ref = reference("sdd", root)
    resnet_sdd = load_shelled(root, "mdistiller.models.cifar.resnet").ResNet_SDD
    classes = {"sdd_kd": (load_shelled(root, "mdistiller.distillers.KD").SDD_KD, "mdistiller/distillers/KD.py SDD_KD"),
               "sdd_dkd": (load_shelled(root, "mdistiller.distillers.SDD_DKD").SDD_DKD,
                           "mdistiller/distillers/SDD_DKD.py SDD_DKD"),
               "sdd_nkd": (load_shelled(root, "mdistiller.distillers.SDD_nkd").SDD_NKDLoss,
                           "mdistiller/distillers/SDD_nkd.py SDD_NKDLoss")}
    out = {}
    for i, (name, (method, M, T, alpha, beta, warmup, epoch)) in enumerate(SDD_SETTINGS.items()):
        gen = torch.Generator().manual_seed(SEED + i)
        feat_s, fc_s_weight, fc_s_bias, feat_t, fc_t_weight, fc_t_bias, target = draw_maps(gen)
        s_map = leaf(feat_s)
        cfg = SimpleNamespace(M=M, warmup=warmup,
                              KD=SimpleNamespace(TEMPERATURE=T, LOSS=SimpleNamespace(CE_WEIGHT=1.0, KD_WEIGHT=1.0)),
                              DKD=SimpleNamespace(CE_WEIGHT=1.0, ALPHA=alpha, BETA=beta, T=T, WARMUP=warmup))
        with contextlib.redirect_stdout(io.StringIO()):  # its SPP and M=[1] branch print
            student = GivenMap(resnet_sdd, s_map, fc_s_weight, fc_s_bias, M)
            teacher = GivenMap(resnet_sdd, feat_t, fc_t_weight, fc_t_bias, M)
            cls, where = classes[method]
            distiller = cls(student, teacher, cfg)
            with cuda_is_a_no_op():
                _, losses = distiller.forward_train(torch.zeros(BATCH, 1), target, epoch=epoch)
        loss = losses["loss_kd"].reshape(())
        loss.backward()
        fc = student.net.fc
        grads = ({"logit_s": student.logits.grad.clone()} if M == "[1]" else
                 {"feat_s": s_map.grad.clone(), "fc_s_weight": fc.weight.grad.clone(),
                  "fc_s_bias": fc.bias.grad.clone()})
        with torch.no_grad():
            _, patches_t = teacher.net(feat_t)
        scales = [int(v) for v in M.strip("[]").split(",")]
        hparams = {"M": scales, "T": T, "warmup": warmup if warmup is not None else 0.0, "epoch": epoch}
        if method == "sdd_dkd":
            hparams.update(alpha=alpha, beta=beta)
        if method == "sdd_nkd":
            hparams.update(gamma=beta)
        notes = (f"{where}.forward_train(image, target, epoch={epoch}) with --M {M}; loss = its losses['loss_kd'] "
                 "(warm-up included, CE left out). Its networks are ResNet_SDD's own forward from the given last map "
                 "(stem and stages identities, avgpool a global average: shims), with the given classifiers. "
                 + ("The loss reads the logits only: the inputs are the logits the networks returned (a fresh "
                    "leaf: the gradient is the logits'), labels and epoch. " if M == "[1]" else
                    "The loss reads the region logits only: the inputs are the maps and classifiers (the logits, "
                    "read by the CE alone, are left out), labels and epoch. extra.teacher_agreement = regions after "
                    "the first with (whole, region) teacher predictions (right, right), (right, wrong), "
                    "(wrong, right), (wrong, wrong). ")
                 + "Shims: .cuda() a no-op, package "
                 "__init__ files not run" + (", KD.LOSS.KD_WEIGHT 1 (0.9 in its config)." if method == "sdd_kd" else
                                             ". Its NKD reads DKD.T and DKD.BETA (here T and gamma)."
                                             if method == "sdd_nkd" else "."))
        # the inputs the setting reads: the logits its networks returned (--M [1]), else the maps and classifiers
        inputs = ({"logit_s": student.logits.detach().clone(), "logit_t": teacher.logits.detach().clone()}
                  if M == "[1]" else
                  {"feat_s": feat_s, "fc_s_weight": fc_s_weight, "fc_s_bias": fc_s_bias, "feat_t": feat_t,
                   "fc_t_weight": fc_t_weight, "fc_t_bias": fc_t_bias})
        inputs.update(target=target, epoch=torch.tensor(epoch))
        extra = {} if M == "[1]" else {"teacher_agreement": teacher_agreement(patches_t, target)}
        # --M [1] reads other taps than the region settings: its own entry (method sdd_*_m1, M fixed)
        out[name] = record(f"{method}_m1" if M == "[1]" else method, f"{ref} {where}", hparams, inputs, loss, grads,
                           notes, extra=extra)
    return out


# ---- KD++ / DKD++ ----------------------------------------------------------------------------------------------
class GivenEmbedding(nn.Module):
    """Stands for a CIFAR model of the ND repository: ``model(images, embed=True)`` -> (feature, logits)."""

    def __init__(self, emb, logits):
        super().__init__()
        self.emb, self.logits = emb, logits

    def forward(self, x, embed=True):
        return (self.emb, self.logits) if embed else self.logits


ND_SETTINGS = {  # file -> (method, student width, teacher width, factors, 1-based epoch)
    "kdpp": ("kdpp", 16, 16, {"kd_loss_factor": 1.0, "nd_loss_factor": 2.0}, 6),
    "kdpp_embtrans": ("kdpp", 64, 128, {"kd_loss_factor": 3.5, "nd_loss_factor": 2.0}, 30),
    "dkdpp": ("dkdpp", 16, 16, {"dkd_alpha": 2.5, "dkd_beta": 4.0, "nd_loss_factor": 3.5}, 6),
    "dkdpp_embtrans": ("dkdpp", 64, 128, {"dkd_alpha": 1.0, "dkd_beta": 6.0, "nd_loss_factor": 1.0}, 30),
}


def make_nd(root: Path):
    ref = reference("nd", root)
    cifar = root / "CIFAR"
    sys.path.insert(0, str(cifar))  # the scripts import Models, Dataset and utils from there
    utils = importlib.import_module("utils")
    embtrans = importlib.import_module("Models.embtrans_cifar").EmbTrans
    scripts = {"kdpp": load_file("ref_train_cifar_kd", cifar / "train_cifar_kd.py"),
               "dkdpp": load_file("ref_train_cifar_dkd", cifar / "train_cifar_dkd.py")}
    out = {}
    for i, (name, (method, d_s, d_t, factors, epoch)) in enumerate(ND_SETTINGS.items()):
        gen = torch.Generator().manual_seed(SEED + 20 + i)
        logit_s, logit_t, target = draw_logits(gen)
        # post-ReLU features, as a pooled map's; the student's norm is the larger one for some samples
        emb_s = torch.randn(BATCH, d_s, generator=gen).abs() * (0.5 + 2.0 * torch.rand(BATCH, 1, generator=gen))
        emb_t = torch.randn(BATCH, d_t, generator=gen).abs() * (d_s / d_t) ** 0.5
        centers = torch.randn(CLASSES, d_t, generator=gen).abs() + 0.1  # stands for its class-mean JSON
        s_emb, s_logits = leaf(emb_s), leaf(logit_s)
        student = GivenEmbedding(s_emb, s_logits)
        projected = d_s != d_t
        model = embtrans(student=student, model_name="wrn40_1_cifar") if projected else student
        if projected:
            model.fc1[1].p = 0.0  # shim: no dropout mask
        params_before = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("fc1.")}
        args = SimpleNamespace(cls_loss_factor=0.0, warm_up=20.0)
        if method == "kdpp":
            logit_loss = utils.KDLoss(kl_loss_factor=factors["kd_loss_factor"], T=4.0)
        else:
            logit_loss = utils.DKDLoss(alpha=factors["dkd_alpha"], beta=factors["dkd_beta"], T=4.0)
        norm_dir = utils.DirectNormLoss(num_class=CLASSES, nd_loss_factor=factors["nd_loss_factor"])
        t_emb = {str(k): centers[k].tolist() for k in range(CLASSES)}
        trainable = [s_emb, s_logits] + ([p for p in model.fc1.parameters()] if projected else [])
        optimizer = torch.optim.SGD(trainable, lr=0.0)  # the step leaves every value and gradient as it is
        with cuda_is_a_no_op(), contextlib.redirect_stdout(io.StringIO()):
            nd_avg, logit_avg, cls_avg, loss_avg, _ = scripts[method].train(
                model, GivenEmbedding(emb_t, logit_t), t_emb, [(torch.zeros(BATCH, 1), target)], optimizer,
                nn.CrossEntropyLoss(), logit_loss, norm_dir, args, epoch - 1)
        assert cls_avg == 0.0
        larger = int((emb_s.norm(dim=1) > emb_t.norm(dim=1)).sum()) if not projected else None
        grads = {"logit_s": s_logits.grad.clone(), "emb_s": s_emb.grad.clone()}
        params = {"T_EMB": centers.clone(), **params_before}
        # the centres after the step: the reference reads T_EMB, never writes it
        state_after = {"T_EMB": torch.tensor([t_emb[str(k)] for k in range(CLASSES)])}
        if projected:
            grads.update({f"params.{k}": p.grad.clone() for k, p in model.named_parameters() if k.startswith("fc1.")})
            state_after.update({k: v.detach().clone() for k, v in model.state_dict().items()
                                if k.startswith("fc1.") and ("running" in k or "num_batches" in k)})
        script = "train_cifar_kd.py" if method == "kdpp" else "train_cifar_dkd.py"
        logit_name = "KDLoss" if method == "kdpp" else "DKDLoss"
        hparams = {"t": 4.0, "warm_up": 20.0, "dropout": 0.0 if projected else 0.5, "epoch": epoch, **factors}
        notes = (f"CIFAR/{script} train() for one batch at epoch {epoch - 1} (0-based; batch:epoch {epoch} here) with "
                 f"CIFAR/utils.py {logit_name} and DirectNormLoss; cls_loss_factor 0, so loss = logit loss x "
                 f"min(1, {epoch - 1}/20) + ND. Student feature {d_s} wide, teacher {d_t}"
                 + (": the student is Models/embtrans_cifar.py EmbTrans(model_name='wrn40_1_cifar') (BatchNorm1d, "
                    "Dropout with p set to 0 (shim), Linear 64 -> 128), in training mode" if projected else "")
                 + (f" ({larger} of {BATCH} student features have the larger norm)" if larger is not None else "")
                 + ". params.T_EMB = the class centres it reads from JSON (random here); state_after.T_EMB = "
                 "them after the step (train() reads them only). SGD lr 0 as its optimizer. "
                 "extra.nd_loss / extra.logit_loss = its two terms. Shims: .cuda() a no-op.")
        out[name] = record(method, f"{ref} CIFAR/{script} train, CIFAR/utils.py {logit_name} and DirectNormLoss"
                           + (", CIFAR/Models/embtrans_cifar.py EmbTrans" if projected else ""), hparams,
                           {"logit_s": logit_s, "logit_t": logit_t, "emb_s": emb_s, "emb_t": emb_t, "target": target,
                            "epoch": torch.tensor(epoch)}, torch.tensor(loss_avg), grads, notes, params=params,
                           state_after=state_after,
                           extra={"nd_loss": torch.tensor(nd_avg), "logit_loss": torch.tensor(logit_avg)})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttm", type=Path, help="zkxufo/TTM work tree")
    parser.add_argument("--sdd", type=Path, help="shicaiwei123/SDD-CVPR2024 work tree")
    parser.add_argument("--nd", type=Path, help="WangYZ1608/Knowledge-Distillation-via-ND work tree")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(SEED)
    records = {}
    with warnings.catch_warnings():  # the references' deprecated torch calls (size_average, implicit dim)
        warnings.simplefilter("ignore", UserWarning)
        for flag, make in (("ttm", make_ttm), ("sdd", make_sdd), ("nd", make_nd)):
            if getattr(args, flag) is not None:
                records.update(make(getattr(args, flag)))
    if not records:
        parser.error("give at least one of --ttm, --sdd, --nd")
    for name, rec in records.items():
        path = args.out / f"{name}.pt"
        torch.save(rec, path)
        print(f"{path}: loss {rec['loss'].item():.10f}")


if __name__ == "__main__":
    main()
