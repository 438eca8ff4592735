"""Generate the golden files of MGD, ITRD, SRD and FCFD from their public reference code.

Usage (from the repository root; each path is an unpacked tree of the reference at the commit in
:data:`REFERENCES`; the git blob id of every file imported is checked)::

    python tests/golden/make_wave2_feature_goldens.py --mgd PATH --cls-kd PATH --itrd PATH \
        --torchdistill PATH --srd PATH --fcfd PATH [--out tests/golden]

Nothing is copied from the references: their own loss code is imported from those paths and run on
the CPU in float64, on odd batches (5) and maps of odd sizes. Where a reference needs a network, a
stub returns the given tensors (ITRD's and FCFD's models, the torchdistill wrapper's model); where
it needs a training loop, its own loop runs one batch (ITRD's ``train_distill``, FCFD's
``train_one_epoch``). Run-time shims are named in each file's ``notes``. Methods that draw random
numbers (MGD's masks, FCFD's paths) record ``rng_state``: the state of torch's generator right before
the reference's loss call, which the adapter sets again before ours.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import sys
import types
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn

#: name -> (GitHub repository, commit the files were generated from)
REFERENCES = {
    "mgd": ("yzd-v/MGD", "2c9da0b28625eb948db57afc02c824452c3910fe"),
    "cls_kd": ("yzd-v/cls_KD", "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66"),
    "itrd": ("roymiles/ITRD", "5d08c6b33e601228252e11cc1756d9f1af04a547"),
    "torchdistill": ("yoshitomo-matsubara/torchdistill", "3e4373c45214c5c56eebac481d5bfe8b8735aa05"),
    "srd": ("roymiles/Simple-Recipe-Distillation", "31e8477cfdd6bb6ec7cdc332915fd4496b6de7b6"),
    "fcfd": ("LiuDongyang6/FCFD", "2aefb7bc74ed81185c13e3fee350d36a9db8d250"),
}
#: name -> {imported file: its git blob id at that commit}
FILES = {
    "mgd": {"cls/mmcls/distillation/losses/mgd.py": "a385272844c08e2c39b44227bfb3ee35f6f0e982",
            "det/mmdet/distillation/losses/mgd.py": "4c65801b890a312d719e34f999d96f2364dbc1c1"},
    "cls_kd": {"mmcls/models/dis_losses/mgd.py": "4938476ab8afca3ef25c4d41ec2d95e10f569c4a"},
    "itrd": {"distiller_zoo/IT.py": "5db8d6ea50ebe19ff4787dbc65a83a9577d40fc3",
             "helper/loops.py": "98a1de056d9ce99a2e0cb9f0b40a44fe84e166a1",
             "helper/util.py": "83ce04b69822189b837bfcf2aba47e2f80f1cd08"},
    "torchdistill": {"torchdistill/models/wrapper.py": "e31e07f8b70d9c43b43dd89a97509aee749d86a2",
                     "torchdistill/losses/mid_level.py": "eaa6e9f0940995fcf5bc34c070b40f25174396ef"},
    "srd": {"imagenet/torchdistill/losses/single.py": "030fb97d42bab9350e32e194ba2d900e7f22b38f"},
    "fcfd": {"classification/models/meta.py": "7613fb5f8492743877f8dc1b3bc9ee25168f237c",
             "classification/cifar/main.py": "89f8bb1067d2bce08fe3cd744672f136ce2d41c6",
             "classification/utils.py": "837140eaa3a0c55677fee2c1771336201041f0fe"},
}
SEED = 0
TOLERANCE = 1e-8
B, CLASSES = 5, 10


# ---------------------------------------------------------------------------- importing
def _check_commit(name: str, path: str) -> str:
    """``owner/repo@commit``, after checking that every file used from ``path`` is that commit's."""
    repo, commit = REFERENCES[name]
    for rel, blob in FILES[name].items():
        with open(os.path.join(path, rel), "rb") as f:
            data = f.read()
        if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() != blob:
            sys.exit(f"{os.path.join(path, rel)} is not the file of {repo}@{commit} (git blob {blob})")
    return f"{repo}@{commit}"


def _shells(root: str, packages, stubs=None):
    """Empty package shells under ``root`` (their ``__init__`` files, which import everything, are not
    run), after dropping any module of the same top-level names; ``stubs``: module name -> attributes."""
    tops = {p.split(".")[0] for p in list(packages) + list(stubs or {})}
    for key in [k for k in sys.modules if k.split(".")[0] in tops]:
        del sys.modules[key]
    for name in packages:
        shell = types.ModuleType(name)
        shell.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = shell
    for name, attrs in (stubs or {}).items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


class _Registry:
    """Stands in for an mm* registry: only ``register_module()`` is used, as a class decorator."""

    def register_module(self, *args, **kwargs):
        return lambda cls: cls


@contextmanager
def _cpu_only():
    """``.cuda()`` is the identity and CUDA reports itself absent (the references call both)."""
    saved = (torch.Tensor.cuda, nn.Module.cuda, torch.cuda.is_available, torch.cuda.max_memory_allocated)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.is_available = lambda: False
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.cuda.is_available, torch.cuda.max_memory_allocated = saved


# ---------------------------------------------------------------------------- helpers
def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _grad(x):
    return [_grad(v) for v in x] if isinstance(x, (list, tuple)) else x.grad.detach().clone()


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _buffers(module):
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def _param_grads(module, skip=()):
    return {f"params.{k}": p.grad.detach().clone() for k, p in module.named_parameters()
            if p.grad is not None and not k.startswith(tuple(skip))}


def _record(method, reference, hparams, inputs, params, loss, grads, state_after, extra, notes, rng_state=None):
    record = {"method": method, "reference": reference, "hparams": hparams, "inputs": inputs, "params": params,
              "trainable": [k for k in params if "running_" not in k and "num_batches" not in k],
              "loss": loss.detach().clone(), "grads": grads, "state_after": state_after, "extra": extra,
              "tolerance": TOLERANCE, "dtype": "float64", "split": "public", "seed": SEED,
              "torch_version": str(torch.__version__), "notes": notes}
    if rng_state is not None:
        record["rng_state"] = rng_state
    return record


# ---------------------------------------------------------------------------- MGD
def _mgd_class(root: str, kind: str):
    """MGD's loss class of yzd-v/MGD (``cls``: the classification code, ``det``: the detection code), imported
    with its package shells and a stub ``builder`` registry."""
    package = {"cls": "mmcls", "det": "mmdet"}[kind]
    _shells(os.path.join(root, kind), [package, f"{package}.distillation", f"{package}.distillation.losses"],
            {f"{package}.distillation.builder": {"DISTILL_LOSSES": _Registry()}})
    module = importlib.import_module(f"{package}.distillation.losses.mgd")
    return module.MGDLoss if kind == "cls" else module.FeatureLoss  # the detection code names it FeatureLoss


def _mgd_step(loss_module, feat_s, feat_t):
    """One reference call: (loss, grads of the student map, rng_state before the call)."""
    leaf = _leaf(feat_s)
    state = torch.get_rng_state()
    loss = loss_module(leaf, feat_t.clone())
    loss.backward()
    return loss, leaf.grad.detach().clone(), state


def make_mgd(args):
    """Channel masks (the classification code) with an align conv; a second call continues the generator."""
    ref = _check_commit("mgd", args.mgd)
    cls_kd = _check_commit("cls_kd", args.cls_kd)
    mgd_loss = _mgd_class(args.mgd, "cls")
    torch.manual_seed(SEED)
    (c_s, c_t), hw = (6, 10), (5, 7)
    alpha, lam = 1.0, 0.15
    module = mgd_loss(c_s, c_t, "loss_mgd", alpha_mgd=alpha, lambda_mgd=lam).double().train()
    params = _state(module)
    feat_s = torch.randn(B, c_s, *hw, dtype=torch.float64).relu()
    feat_t = torch.randn(B, c_t, *hw, dtype=torch.float64).relu()
    torch.manual_seed(SEED + 1)
    loss, grad_s, state = _mgd_step(module, feat_s, feat_t)
    grads = {"preds_S": grad_s, **_param_grads(module)}
    torch.set_rng_state(state)
    masked = (torch.rand(B, c_t, 1, 1) < lam).double().mean()  # the first call's mask, drawn again
    # step 2: the generator continues (no reseed), the parameters are unchanged
    module.zero_grad(set_to_none=True)
    feat_s2 = torch.randn(B, c_s, *hw, dtype=torch.float64).relu()
    feat_t2 = torch.randn(B, c_t, *hw, dtype=torch.float64).relu()
    torch.set_rng_state(state)
    torch.rand(B, c_t, 1, 1)  # the draw of step 1
    loss2, grad_s2, _ = _mgd_step(module, feat_s2, feat_t2)
    step2 = {"inputs": {"preds_S": feat_s2, "preds_T": feat_t2}, "loss": loss2.detach(),
             "grads": {"preds_S": grad_s2, **_param_grads(module)}}
    # the same class in yzd-v/cls_KD, on the same tensors and generator state
    _shells(os.path.join(args.cls_kd), ["mmcls", "mmcls.models", "mmcls.models.dis_losses"],
            {"mmcls.registry": {"MODELS": _Registry()}})
    twin = importlib.import_module("mmcls.models.dis_losses.mgd").MGDLoss("loss_mgd", True, c_s, c_t, alpha, lam)
    twin = twin.double()
    twin.load_state_dict(params)
    torch.set_rng_state(state)
    twin_loss = twin(feat_s.clone(), feat_t.clone())
    assert torch.allclose(twin_loss, loss, rtol=1e-12, atol=0), (twin_loss, loss)
    return _record(
        "mgd", f"{ref} cls/mmcls/distillation/losses/mgd.py class MGDLoss",
        {"alpha_mgd": alpha, "lambda_mgd": lam, "mask": "channel", "alpha_mgd_cifar100": 0.0012,
         "alpha_mgd_imagenet": 7e-5},
        {"preds_S": feat_s, "preds_T": feat_t}, params, loss, grads, {},
        {"step2": step2, "masked_fraction_step1": masked,
         "cls_kd": {"reference": f"{cls_kd} mmcls/models/dis_losses/mgd.py class MGDLoss", "loss": twin_loss.detach()}},
        "loss = alpha_mgd * sum((G(A(s) * M) - t)^2) / N, A = 1x1 align conv (6 -> 10 channels here), "
        "G = conv3x3-ReLU-conv3x3, M[n, c] = 0 where a uniform draw < lambda_mgd (one draw per sample and "
        "channel, torch.rand((N, C, 1, 1)) on the CPU generator). alpha 1 here (the CIFAR-100 config of "
        "yzd-v/cls_KD uses 0.0012, the ImageNet configs 7e-5). rng_state: the generator right before the "
        "call; extra.step2 is a second call with new inputs that continues the same generator (no reseed, "
        "parameters unchanged). extra.cls_kd: yzd-v/cls_KD's copy of the class gives the same loss. "
        "Shims: the package __init__ files are not run; mmcls.distillation.builder / mmcls.registry are "
        "stub registries.", rng_state=state)


def make_mgd_spatial(args):
    """Position masks: the detection code, equal channels (no align conv)."""
    ref = _check_commit("mgd", args.mgd)
    mgd_loss = _mgd_class(args.mgd, "det")
    torch.manual_seed(SEED + 2)
    c, hw = 8, (6, 9)
    alpha, lam = 1.0, 0.65
    module = mgd_loss(c, c, "loss_mgd", alpha_mgd=alpha, lambda_mgd=lam).double().train()
    params = _state(module)
    feat_s = torch.randn(B, c, *hw, dtype=torch.float64)
    feat_t = torch.randn(B, c, *hw, dtype=torch.float64)
    loss, grad_s, state = _mgd_step(module, feat_s, feat_t)
    return _record(
        "mgd", f"{ref} det/mmdet/distillation/losses/mgd.py class FeatureLoss",
        {"alpha_mgd": alpha, "lambda_mgd": lam, "mask": "spatial"},
        {"preds_S": feat_s, "preds_T": feat_t}, params, loss, {"preds_S": grad_s, **_param_grads(module)}, {}, {},
        "The detection code's mask: M[n, 0, h, w] = 0 where a uniform draw > 1 - lambda_mgd "
        "(torch.rand((N, 1, H, W))), lambda 0.65 (its default), equal channels (no align conv), alpha 1. "
        "Shims: package __init__ files not run; mmdet.distillation.builder is a stub registry.", rng_state=state)


# ---------------------------------------------------------------------------- ITRD
class _FeatNet(nn.Module):
    """Stands in for a RepDistiller CIFAR model: ``model(x, is_feat=True, preact=...)`` returns the given
    pooled feature as ``feat[-1]`` and the given logits."""

    def __init__(self, feat, logits):
        super().__init__()
        self.feat, self.logits = feat, logits
        self.dummy = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, is_feat=False, preact=False):
        return [self.feat], self.logits


def make_itrd(args, s_dim=12, t_dim=20, alpha_it=1.01, seed=SEED):
    ref = _check_commit("itrd", args.itrd)
    _shells(args.itrd, ["distiller_zoo", "helper"])
    it = importlib.import_module("distiller_zoo.IT")
    loops = importlib.import_module("helper.loops")
    torch.manual_seed(seed)
    opt = SimpleNamespace(s_dim=s_dim, t_dim=t_dim, n_data=100, alpha_it=alpha_it, lambda_corr=2.0,
                          lambda_mutual=1.0, gamma=0.0, beta=1.0, n_cls=CLASSES, print_freq=1)
    criterion = it.ITLoss(opt).double()
    params = _state(criterion)
    feat_s = torch.randn(B, s_dim, dtype=torch.float64).relu() + 0.1 * torch.rand(B, s_dim, dtype=torch.float64)
    feat_t = torch.randn(B, t_dim, dtype=torch.float64).relu() + 0.1 * torch.rand(B, t_dim, dtype=torch.float64)
    leaf = _leaf(feat_s)
    logits = torch.randn(B, CLASSES, dtype=torch.float64)
    model_s, model_t = _FeatNet(leaf, logits), _FeatNet(feat_t.clone(), logits.clone())
    loader = [(torch.zeros(B, 3, 32, 32), torch.randint(0, CLASSES, (B,)), torch.arange(B))]
    optimizer = torch.optim.SGD(criterion.parameters(), lr=0.0)
    with _cpu_only():
        _, _, corr, mutual = loops.train_distill(1, loader, nn.ModuleList([model_s, criterion, model_t]),
                                                 nn.ModuleList([nn.CrossEntropyLoss(), criterion]), optimizer, opt)
    loss = mutual + corr  # loss_kd as the loop sums it (CE weight -r 0, -b 1)
    return _record(
        "itrd", f"{ref} distiller_zoo/IT.py class ITLoss (forward_correlation_it, forward_mutual_it, Embed), "
        "weighed by helper/loops.py train_distill",
        {"lambda_corr": 2.0, "lambda_mutual": 1.0, "alpha_it": alpha_it, "s_dim": s_dim, "t_dim": t_dim},
        {"feat_s": feat_s, "feat_t": feat_t}, params, loss, {"feat_s": _grad(leaf), **_param_grads(criterion)}, {},
        {"loss_correlation": corr.detach(), "loss_mutual": mutual.detach()},
        "One batch through the reference's own train_distill (-r 0 -b 1: loss = lambda_corr * correlation + "
        "lambda_mutual * mutual; its SGD step has lr 0, so the gradients are read after it). feat_s/feat_t "
        "are the models' feat[-1] (pooled features). The mutual term embeds the student only when s_dim != "
        "t_dim" + (" (here they differ)." if s_dim != t_dim else " (here they are equal: raw features).")
        + " Shims: the model is a stub returning the given feature; .cuda() is the identity, CUDA absent.")


# ---------------------------------------------------------------------------- SRD
class _Model(nn.Module):
    """What the torchdistill wrapper wraps: the pooled map comes through the io dict instead."""

    def forward(self, x):
        return x


def make_srd(args, exponent=4.0, temperature=1.0, seed=SEED):
    ref = _check_commit("torchdistill", args.torchdistill)
    _shells(args.torchdistill, ["torchdistill", "torchdistill.models", "torchdistill.losses", "torchdistill.common"])
    wrapper = importlib.import_module("torchdistill.models.wrapper")
    mid = importlib.import_module("torchdistill.losses.mid_level")
    torch.manual_seed(seed)
    s_dim, t_dim = 12, 20
    norm = {"num_features": t_dim, "eps": 0.0001, "affine": False}
    layer = {"path": "model.layer4", "io": "output"}
    cpu = torch.device("cpu")
    s_wrap = wrapper.SRDModelWrapper(layer, norm, cpu, None, False, linear_kwargs={"in_features": s_dim,
                                     "out_features": t_dim}, student_model=_Model()).double().train()
    t_wrap = wrapper.SRDModelWrapper(layer, norm, cpu, None, False, teacher_model=_Model()).double().train()
    owner = nn.Module()  # the method's parts under this project's names
    owner.projector, owner.norm_s, owner.norm_t = s_wrap.linear, s_wrap.norm_layer, t_wrap.norm_layer
    params = _state(owner)
    feat_s = torch.randn(B, s_dim, dtype=torch.float64).relu()
    feat_t = torch.randn(B, t_dim, dtype=torch.float64).relu()
    logit_s = torch.randn(B, CLASSES, dtype=torch.float64)
    logit_t = 2 * torch.randn(B, CLASSES, dtype=torch.float64)
    leaf_f, leaf_l = _leaf(feat_s), _leaf(logit_s)
    captured = {}
    for name, wrap in (("s", s_wrap), ("t", t_wrap)):  # torchdistill's forward hook on 'norm_layer'
        wrap.norm_layer.register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out))
    s_wrap.secondary_forward({"model.layer4": {"output": leaf_f[:, :, None, None]}})
    t_wrap.secondary_forward({"model.layer4": {"output": feat_t.clone()[:, :, None, None]}})
    criterion = mid.SRDLoss("norm_layer", "output", "norm_layer", "output", ".", "output", ".", "output",
                            exponent=exponent, temperature=temperature, reduction="batchmean")
    loss = criterion({"norm_layer": {"output": captured["s"]}, ".": {"output": leaf_l}},
                     {"norm_layer": {"output": captured["t"]}, ".": {"output": logit_t.clone()}})
    loss.backward()
    grads = {"feat_s": _grad(leaf_f), "logit_s": _grad(leaf_l), **_param_grads(owner)}
    extra = {}
    if exponent == 4.0 and temperature == 1.0:
        extra["simple_recipe"] = _srd_author_check(args, params, feat_s, feat_t, logit_s, logit_t, loss)
    return _record(
        "srd", f"{ref} configs/official/ilsvrc2012/roymiles/aaai2024/srd-resnet18_from_resnet34.yaml: "
        "torchdistill/models/wrapper.py class SRDModelWrapper, torchdistill/losses/mid_level.py class SRDLoss",
        {"exponent": exponent, "temperature": temperature, "s_dim": s_dim, "t_dim": t_dim, "eps": 1e-4},
        {"feat_s": feat_s, "feat_t": feat_t, "logit_s": logit_s, "logit_t": logit_t}, params, loss, grads,
        _buffers(owner), extra,
        "The wrappers' secondary_forward on the pooled features (given as [B, C, 1, 1] maps: the mean over "
        "the singleton positions is the identity), a forward hook on 'norm_layer' capturing its output as "
        "torchdistill's box does, then SRDLoss: 2 * log(sum |bn_s(W z_s) - bn_t(z_t)|^exponent) + "
        "KLDivLoss(batchmean)(log_softmax(y_s / T), softmax(y_t / T)). Batch norms without affine "
        "parameters, eps 1e-4, in training mode: state_after holds their running statistics after the step. "
        "Param names are this project's (projector = the student wrapper's linear, norm_s / norm_t = the "
        "wrappers' norm_layer). extra.simple_recipe: the author's OurDistillationLoss on the same tensors.")


def _srd_author_check(args, params, feat_s, feat_t, logit_s, logit_t, loss):
    """roymiles/Simple-Recipe-Distillation's own loss on the same tensors: the same number at exponent 4, T 1."""
    ref = _check_commit("srd", args.srd)
    _shells(os.path.join(args.srd, "imagenet"), ["torchdistill", "torchdistill.losses", "torchdistill.common"])
    single = importlib.import_module("torchdistill.losses.single")
    with _cpu_only():
        author = single.OurDistillationLoss(mode="log_bn_corr_4")
    # its widths are fixed at 512 in __init__; same-type parts of this file's widths replace them
    author.embed = nn.Linear(feat_s.shape[1], feat_t.shape[1])
    author.bn_s = nn.BatchNorm1d(feat_t.shape[1], eps=0.0001, affine=False)
    author.bn_t = nn.BatchNorm1d(feat_t.shape[1], eps=0.0001, affine=False)
    author = author.double().train()
    author.embed.load_state_dict({k[len("projector."):]: v for k, v in params.items() if k.startswith("projector.")})
    value = author({"layer4": {"output": feat_s[:, :, None, None]}, "fc": {"output": logit_s}},
                   {"layer4": {"output": feat_t[:, :, None, None]}, "fc": {"output": logit_t}}, None)
    assert torch.allclose(value, loss, rtol=1e-12, atol=0), (value, loss)
    return {"reference": f"{ref} imagenet/torchdistill/losses/single.py class OurDistillationLoss "
                         "(its 512-wide embed and batch norms replaced by this file's widths)",
            "loss": value.detach()}


# ---------------------------------------------------------------------------- FCFD
class _StageNet(nn.Module):
    """Stands in for an FCFD model: the pure path returns given stage maps (leaves, as this project's taps
    are), a stage run on any other input is a 3x3 conv; the head is the mean over positions, then fc.

    ``maps[k]`` is the output of stage k + 1 and equals ``convs[k - 1](maps[k - 1])`` for k >= 1, so the
    maps are what the stages compute (the method checks that on its first step)."""

    def __init__(self, maps, convs, fc, stage_input):
        super().__init__()
        self.maps, self.convs, self.fc, self.stage_input = maps, convs, fc, stage_input
        self.marker = torch.zeros(1)

    def forward(self, x):  # MetaModel's dry run: channels and sizes of stem + stages
        return [torch.zeros(1, 3, *self.maps[0].shape[2:])] + [torch.zeros(1, *m.shape[1:]) for m in self.maps]

    def stage_forward(self, stage, x):
        if stage == 0:
            return self.marker
        if stage == 1 or x is self.maps[stage - 2]:
            return self.maps[stage - 1]
        return self.convs[stage - 2](x)

    def get_stage_module(self, stage):
        return self.convs[stage - 2] if stage >= 2 else nn.Identity()

    def forward_classifier(self, x):
        return self.fc(x.mean(dim=(2, 3)))


class _TorchSample:
    """The reference's ``random.sample`` drawn from torch's generator (the one this project draws from)."""

    def __init__(self):
        self.drawn = []

    def sample(self, population, k):
        chosen = [population[i] for i in torch.randperm(len(population))[:k].tolist()]
        self.drawn.append(chosen)
        return chosen


def _stage_net(channels, hw, classes, stage_input, trainable):
    convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(channels[:-1], channels[1:])).double()
    fc = nn.Linear(channels[-1], classes).double()
    with torch.no_grad():
        maps = [torch.randn(B, channels[0], *hw, dtype=torch.float64).relu()]
        for conv in convs:
            maps.append(conv(maps[-1]))
    maps = [_leaf(m) if trainable else m.detach().clone() for m in maps]
    return _StageNet(maps, convs, fc, stage_input)


def make_fcfd(args, s_ch=(3, 4, 5), t_ch=(6, 7, 8), s_hw=(5, 5), t_hw=(10, 10), stage_input="afterrelu",
              extra_paths=2, temperature=4.0, weight_l2=5.0, weight_func=1.0, epoch=4, seed=SEED):
    ref = _check_commit("fcfd", args.fcfd)
    root = os.path.join(args.fcfd, "classification")
    class EasyDict(dict):  # attribute access, as easydict's (not installed)
        __getattr__ = dict.__getitem__
    _shells(root, ["models"], {"easydict": {"EasyDict": EasyDict}, "torchsummary": {"summary": lambda *a, **k: None}})
    sys.path.insert(0, root)
    try:
        meta = importlib.import_module("models.meta")
        main = _load_main(root)
    finally:
        sys.path.remove(root)
    torch.manual_seed(seed)
    teacher = _stage_net(t_ch, t_hw, CLASSES, stage_input, trainable=False)
    student = _stage_net(s_ch, s_hw, CLASSES, stage_input, trainable=True)
    model = meta.MetaModel([teacher, student], extra_type="bi").double()
    model.freeze_teacher()
    dead = f"bridges.{len(s_ch)}.1.0."  # the last stage's teacher-to-student bridge: built, never used
    params = {k: v for k, v in _state(model.bridges).items() if not k.startswith(dead[len("bridges."):])}
    params = {f"bridges.{k}": v for k, v in params.items()}
    sampler = _TorchSample()
    meta.random = sampler  # the reference draws its paths with random.sample: here from torch's generator

    zero = {"x": [0], "y": [0]}
    config = EasyDict(T=temperature, weight_l2=weight_l2, extra_paths=extra_paths, num_classes=CLASSES,
                      loss_teacher=EasyDict(label=zero, kl_student=[zero, zero, zero]),
                      loss_student=EasyDict(label=zero, kl_student=[zero, zero, zero]),
                      loss_mixture=EasyDict(label=zero, kl_student=[{"x": [0], "y": [weight_func]}, zero, zero]),
                      is_train=True, save_name="model")
    images, labels = torch.zeros(B, 3, *s_hw, dtype=torch.float64), torch.randint(0, CLASSES, (B,))

    class _Loader(list):
        dataset = list(range(B))

    trainer = main.Trainer(config, (_Loader([(images, labels)]), _Loader()))
    trainer.model, trainer.output_stages = model, model.output_stages
    captured = {}

    def scaler(loss, optimizer):
        captured["loss"] = loss
        loss.backward()

    trainer.scaler = scaler
    trainer.optimizer = SimpleNamespace(zero_grad=lambda set_to_none=True: None, param_groups=[{"lr": 0.0}])
    torch.manual_seed(seed + 100)
    state = torch.get_rng_state()
    with _cpu_only():
        trainer.train_one_epoch(epoch)
    loss = captured["loss"]
    paths = sampler.drawn[0]
    grads = {"feats_s": _grad(student.maps)}
    for k, conv in enumerate(student.convs, start=2):
        if conv.weight.grad is not None:
            grads.update({f"s_stage{k}_weight": _grad(conv.weight), f"s_stage{k}_bias": _grad(conv.bias)})
    if student.fc.weight.grad is not None:
        grads.update({"fc_s_weight": _grad(student.fc.weight), "fc_s_bias": _grad(student.fc.bias)})
    grads.update({k: v for k, v in _param_grads(model, skip=("models.", f"bridges.{len(s_ch)}.1.0.")).items()})
    assert not any(p.grad is not None for p in teacher.parameters()), "the frozen teacher got a gradient"
    after = {f"bridges.{k}": v for k, v in _buffers(model.bridges).items() if not k.startswith(dead[len("bridges."):])}
    inputs = {"feats_s": [m.detach().clone() for m in student.maps], "feats_t": [m.clone() for m in teacher.maps]}
    for side, net in (("s", student), ("t", teacher)):
        for k, conv in enumerate(net.convs, start=2):
            inputs[f"{side}_stage{k}_weight"], inputs[f"{side}_stage{k}_bias"] = _state(conv).values()
        inputs[f"fc_{side}_weight"], inputs[f"fc_{side}_bias"] = _state(net.fc).values()
        inputs[f"pooled_{side}"] = net.maps[-1].detach().mean(dim=(2, 3))
    with torch.no_grad():
        inputs["logit_t"] = teacher.forward_classifier(teacher.maps[-1])
    inputs["epoch"] = torch.tensor(epoch + 1)  # the reference counts epochs from 0, this project from 1
    return _record(
        "fcfd", f"{ref} classification/models/meta.py class MetaModel (bridges, mixed paths, GhostForward), "
        "classification/cifar/main.py Trainer.train_one_epoch (the losses)",
        {"extra_paths": extra_paths, "extra_type": "bi", "T": temperature, "weight_l2": weight_l2,
         "weight_func": weight_func, "stage_input": stage_input, "epoch_from_0": epoch},
        inputs, params, loss, grads, after, {"paths": [".".join(map(str, p)) for p in paths]},
        "One batch through the reference's own train_one_epoch with its MetaModel on stub networks of three "
        "stages (stage 1 given, stages 2-3 a 3x3 conv each; head = mean over positions, then fc): the pure "
        "paths return the given maps as leaves (as this project's taps are), mixed paths run the convs. "
        "Config: CE and the student's KL weights 0 (they are -r/-a here), loss_mixture KL to the teacher "
        f"{weight_func}, T {temperature}, weight_l2 {weight_l2}, epoch {epoch} (from 0: appearance warm-up "
        f"{min(1.0, (epoch + 1) / 20):g}). loss = sum over mixed paths of KL(teacher || path) * T^2 * weight + "
        "weight_l2 * warm-up * sum over stages of the MSE of every student-born map in the teacher's space to "
        "the teacher's map (plus, at the last stage, of their ReLU-pooled vectors). extra.paths: the paths "
        "drawn (teacher 0, student 1, per stem+stage). grads: the student's maps, the student's stage convs "
        "and classifier (teacher-to-student paths), the bridges. The last stage's teacher-to-student bridge, "
        "which the reference builds and no path uses, is left out of params and state_after. Shims: "
        "random.sample in meta.py draws with torch.randperm (rng_state is the generator before the step); "
        "easydict and torchsummary are stubs; .cuda() is the identity, CUDA absent; the optimizer and the "
        "scaler are stand-ins that backpropagate without stepping.", rng_state=state)


def _load_main(root):
    spec = importlib.util.spec_from_file_location("_fcfd_main", os.path.join(root, "cifar", "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, what in (("mgd", "yzd-v/MGD"), ("cls-kd", "yzd-v/cls_KD"), ("itrd", "roymiles/ITRD"),
                       ("torchdistill", "yoshitomo-matsubara/torchdistill"),
                       ("srd", "roymiles/Simple-Recipe-Distillation"), ("fcfd", "LiuDongyang6/FCFD")):
        parser.add_argument(f"--{name}", required=True, help=f"{what} checkout")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    makers = {
        "mgd.pt": lambda: make_mgd(args), "mgd_spatial.pt": lambda: make_mgd_spatial(args),
        "itrd.pt": lambda: make_itrd(args), "itrd_same_width.pt": lambda: make_itrd(args, 16, 16, 1.5, SEED + 1),
        "srd.pt": lambda: make_srd(args), "srd_exponent2_T2.pt": lambda: make_srd(args, 2.0, 2.0, SEED + 1),
        "fcfd.pt": lambda: make_fcfd(args),
        "fcfd_all_paths.pt": lambda: make_fcfd(args, s_ch=(4, 4, 6), t_ch=(5, 7, 6), s_hw=(5, 7), t_hw=(5, 7),
                                               stage_input="beforerelu", extra_paths=4, temperature=8.0,
                                               weight_l2=0.02, weight_func=0.2, epoch=25, seed=SEED + 1),
    }
    for name, make in makers.items():
        record = make()
        path = os.path.join(args.out, name)
        torch.save(record, path)
        print(f"wrote {path}: loss {float(record['loss']):.6g}")


if __name__ == "__main__":
    main()
