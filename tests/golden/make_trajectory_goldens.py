"""Generate the loop-level golden file: reference training loops run for several steps on the project's draws.

Usage (from the repository root; each path is an unpacked tree of the reference at the commit in
:data:`REFERENCES`; the git blob id of every reference file whose code runs is checked)::

    python tests/golden/make_trajectory_goldens.py --repdistiller PATH --giakoumoglou PATH \
        [--out tests/golden/trajectory/loop.pt]

Why: the one-step golden files check a loss; this file checks the loop around it. RepDistiller's own
``helper/loops.py`` ``train_distill`` (CRD) and giakoumoglou/distillers' own ``cifar/train_student.py``
``train`` (RRD with its FIFO queue) run unchanged, with their own models, losses, memories, SGD and
learning-rate rule, for two short epochs from recorded initial weights, fed the sample order, contrast
indices and augmented views that this project's loaders draw for the same seed (device loader, DataLoader,
DALI on the CPU). Their pixels are rendered by the reference's own transform chain (PIL: pad 4, crop,
flip, ToTensor, Normalize) with each random draw given. After every optimizer step the file records the
loss and its parts, the learning rate, the student's weights and BatchNorm buffers, the method's parts and
memories; at the end, the parameters the optimizer holds and their momentum buffers.

Nothing is copied from the references: their code is imported from those paths. Only the project's data
code (``data/``) is imported here, to record its draws; each draw is checked against the reference's rules
(exact positives, negatives of other classes without repeats, each image a view of its own sample).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import pickle
import sys
import tempfile
import types
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: name -> (GitHub repository, commit the file was generated from)
REFERENCES = {
    "repdistiller": ("HobbitLong/RepDistiller", "b84f547c5db6a35318d4671d7d5c4de74c822403"),
    "giakoumoglou": ("giakoumoglou/distillers", "a2ee80bd7179b808df63e4264318c40ca6e2966b"),
}
#: name -> {file whose code runs: its git blob id at that commit}
FILES = {
    "repdistiller": {"helper/loops.py": "039c16d133fc60f2f76f9c2b778fb50819fc02f5",
                     "helper/util.py": "3d01b345cda49ac6ed6ff70a2f617e3b644228b7",
                     "crd/criterion.py": "bb63034caf3ee3d43bdec06f295aa15204e3ab84",
                     "crd/memory.py": "20054e6e2c3f1b8034580624e4a62502247f976a",
                     "distiller_zoo/KD.py": "7b3e776c787ec28a5c8a69c04bb72770238a1717",
                     "models/resnet.py": "e5d9a27cb6d1adbe5fbe6d3204755969b649543b"},
    "giakoumoglou": {"cifar/train_student.py": "9f96caa4ce08a3b81dd7b6c46cf53741b4c4c20c",
                     "cifar/distillers/RRD.py": "4fa079477137b403292b3115096cb8966663f5d0",
                     "cifar/distillers/KD.py": "7b3e776c787ec28a5c8a69c04bb72770238a1717",
                     "cifar/models/resnet.py": "40cff0e41cf8c251f68814de4e1455dab9ad515c"},
}

SEED = 5                     # the project's --seed: sample order, contrast draws, views
N, CLASSES, B, EPOCHS = 64, 8, 16, 2  # 8 samples of each of 8 classes (labels of CIFAR-100's 100), 4 steps/epoch
NUM_CLASSES = 100            # cifar100: the models' outputs
STUDENT, TEACHER = "resnet8", "resnet8"  # the teacher: other weights (seed 2), frozen
SGD = {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "lr_decay_epochs": [1], "lr_decay_rate": 0.1}
CRD = {"feat_dim": 16, "nce_k": 16, "nce_t": 0.07, "nce_m": 0.5, "mode": "exact", "kd_T": 4.0,
       "gamma": 1.0, "alpha": 0.0, "beta": 0.8}
RRD = {"feat_dim": 16, "nce_k": 32, "nce_t_s": 0.1, "nce_t_t": 0.02, "memory_type": "fifo", "kd_T": 4.0,
       "gamma": 1.0, "alpha": 1.0, "beta": 1.0}
#: the seeded DALI views: a random-resized crop of scale and ratio 1 is the whole 32x32 image
DALI_GEOMETRY = {"crop": 32, "val_resize": 32, "rrc_scale": (1.0, 1.0), "rrc_ratio": (1.0, 1.0)}
PADDING = 4
#: per step the method's buffers (banks, Z, queue) are recorded whole, and every other tensor of up to SAMPLES
#: entries; a larger one as a strided sample of at most SAMPLES entries and its norm
SAMPLES = 32
LOADERS = ("device", "dataloader", "dali")
N_TAIL = 72                  # one epoch on 72 samples (9 per class): a last batch of 8 in the reference loops
RRD_LOADERS = ("device", "dataloader")  # its queue does not depend on the loader; DALI is checked with CRD


# ---------------------------------------------------------------------------- importing the references
def _check_commit(name: str, path: str) -> str:
    repo, commit = REFERENCES[name]
    for rel, blob in FILES[name].items():
        with open(os.path.join(path, rel), "rb") as f:
            data = f.read()
        if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() != blob:
            sys.exit(f"{os.path.join(path, rel)} is not the file of {repo}@{commit} (git blob {blob})")
    return f"{repo}@{commit}"


def _drop(tops) -> None:
    for key in [k for k in sys.modules if k.split(".")[0] in tops]:
        del sys.modules[key]


def _shells(root: str, packages) -> None:
    """Empty package shells under ``root`` (their ``__init__`` files, which import everything, are not run)."""
    _drop({p.split(".")[0] for p in packages})
    for name in packages:
        shell = types.ModuleType(name)
        shell.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = shell


@contextmanager
def _cpu_only():
    """``.cuda()`` is the identity and CUDA reports itself absent (RepDistiller's ContrastMemory calls
    ``self.multinomial.cuda()`` unconditionally)."""
    saved = (torch.Tensor.cuda, nn.Module.cuda, torch.cuda.is_available)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.is_available = lambda: False
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.cuda.is_available = saved


# ---------------------------------------------------------------------------- data
def make_images(n=N):
    """(uint8 images [n, 32, 32, 3], labels [n]) sorted by class, so that an image folder of them (sorted by
    class, then file name) has the same sample indices as the CIFAR pickles."""
    from data.synthetic import make_split
    images, labels = make_split(0, CLASSES, n, "train")
    order = np.argsort(labels, kind="stable")
    return images[order].permute(0, 2, 3, 1).contiguous(), torch.as_tensor(labels[order], dtype=torch.long)


def write_data(root: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The images as CIFAR-100 python pickles (``root/cifar-100-python``; the test split is every 4th
    image) and as an ImageNet-style folder of PNGs (``root/folder/{train,val}/c000..c099``)."""
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    chw = images.permute(0, 3, 1, 2).reshape(len(images), -1).numpy()
    for name, keep in (("train", slice(None)), ("test", slice(None, None, 4))):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": chw[keep], "fine_labels": labels[keep].tolist()}, f)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"c{c:03d}" for c in range(NUM_CLASSES)]}, f)
    for split, step in (("train", 1), ("val", 4)):
        for c in range(NUM_CLASSES):
            os.makedirs(os.path.join(root, "folder", split, f"c{c:03d}"), exist_ok=True)
        for i in range(0, len(images), step):
            Image.fromarray(images[i].numpy()).save(
                os.path.join(root, "folder", split, f"c{int(labels[i]):03d}", f"{i:03d}.png"))


def render(image: np.ndarray, view, mean, std) -> torch.Tensor:
    """The reference's train transform (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
    Normalize) on a uint8 HWC image, with its draws given: crop offsets (dx, dy) = torchvision's (j, i)."""
    dx, dy, flip = (int(v) for v in view)
    pil = TF.crop(TF.pad(Image.fromarray(image), PADDING), dy, dx, 32, 32)
    if flip:
        pil = TF.hflip(pil)
    return TF.normalize(TF.to_tensor(pil), mean, std)


def _identify(image: np.ndarray, served: torch.Tensor, mean, std):
    """The (dx, dy, flip) whose rendering equals ``served`` bit for bit, or None."""
    side = 2 * PADDING + 1
    for dy in range(side):
        for dx in range(side):
            for flip in (0, 1):
                if torch.equal(render(image, (dx, dy, flip), mean, std), served):
                    return dx, dy, flip
    return None


def project_draws(root: str, images: torch.Tensor, labels: torch.Tensor):
    """What this project's three training loaders serve for SEED over EPOCHS epochs: the order, the
    contrast indices (CRD's exact mode) and each loader's views, checked against the reference's rules."""
    import data as datasets
    from core.requests import ContrastSampling
    from data.dali_seeded import seeded_dali_loaders
    from data.device_loader import DeviceTrainLoader
    from data.loaders import DataLoaderTrainLoader
    from data.requests import served_dataset
    from data.seeded_views import rrc_params

    meta = datasets.dataset_info("cifar100")
    request = [ContrastSampling(CRD["nce_k"], CRD["mode"])]
    cifar = datasets.build_dataset("cifar100", root, "train")
    served = served_dataset(cifar, request, SEED)
    folder = datasets.build_dataset("imagenet", os.path.join(root, "folder"), "train", seeded_views=True,
                                    **DALI_GEOMETRY)
    assert [int(v) for v in folder.targets] == labels.tolist(), "the image folder's samples are not the pickles'"
    shard = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    dali_test = datasets.build_dataset("imagenet", os.path.join(root, "folder"), "test", **DALI_GEOMETRY)
    loaders = {
        "device": DeviceTrainLoader.from_dataset(served, meta["mean"], meta["std"], 0, 1, B, SEED, "cpu"),
        "dataloader": DataLoaderTrainLoader(served, 0, 1, B, 0, SEED),
        "dali": seeded_dali_loaders("cpu", 1, SEED, shard, B, served_dataset(folder, request, SEED), dali_test)[0],
    }
    norms = {"device": (meta["mean"], meta["std"]), "dataloader": (meta["mean"], meta["std"]),
             "dali": (folder.geometry.mean, folder.geometry.std)}
    hwc = images.numpy()
    orders, contrasts, views = {}, {}, {}
    for name, loader in loaders.items():
        order = torch.zeros(EPOCHS, N // B, B, dtype=torch.long)
        contrast = torch.full((EPOCHS, N, CRD["nce_k"] + 1), -1, dtype=torch.long)
        view = torch.full((EPOCHS, N, 3), -1, dtype=torch.long)
        for e in range(EPOCHS):
            loader.set_epoch(e + 1)
            steps = 0
            for s, batch in enumerate(loader):
                index = batch.index.cpu()
                order[e, s] = index
                contrast[e, index] = batch.contrast_idx.cpu()
                assert torch.equal(batch.labels.cpu(), labels[index]), f"{name}: labels are not the samples'"
                for k, i in enumerate(index.tolist()):
                    if name == "device":
                        view[e, i] = loader.last_views[k].cpu()
                    elif name == "dataloader":
                        found = _identify(hwc[i], batch.images[k], *norms[name])
                        assert found is not None, f"dataloader: the image of sample {i} is none of its views"
                        view[e, i] = torch.tensor(found)
                    else:
                        top, left, h, w, flip = rrc_params(SEED, e + 1, i, 32, 32, DALI_GEOMETRY["rrc_scale"],
                                                           DALI_GEOMETRY["rrc_ratio"])
                        assert (top, left, h, w) == (0, 0, 32, 32), "a seeded view of scale 1 is not the whole image"
                        view[e, i] = torch.tensor([PADDING, PADDING, int(flip)])  # the uncropped image
                steps += 1
            assert steps == N // B and sorted(order[e].flatten().tolist()) == list(range(N)), name
        orders[name], contrasts[name], views[name] = order, contrast, view
    for name in LOADERS[1:]:
        assert torch.equal(orders[name], orders["device"]), f"{name} serves another order than the device loader"
        assert torch.equal(contrasts[name], contrasts["device"]), f"{name} serves other contrast indices"
    _check_contrast(contrasts["device"], labels)
    return orders["device"], contrasts["device"], views, norms


def _check_contrast(contrast: torch.Tensor, labels: torch.Tensor) -> None:
    """RepDistiller's rules (CIFAR100InstanceSample, mode exact, k <= pool): the positive is the sample
    itself; the k negatives are of other classes, drawn without replacement."""
    for e in range(contrast.shape[0]):
        for i in range(contrast.shape[1]):
            row = contrast[e, i]
            assert int(row[0]) == i, f"epoch {e + 1}, sample {i}: the positive is not the sample itself"
            negatives = row[1:]
            assert (labels[negatives] != labels[i]).all(), f"epoch {e + 1}, sample {i}: a negative of its class"
            assert len(set(negatives.tolist())) == len(negatives), f"epoch {e + 1}, sample {i}: a repeated negative"


class ReferenceItems(Dataset):
    """The items of the reference's instance datasets (RepDistiller's ``CIFAR100InstanceSample``:
    ``(image, target, index, contrast_idx)``; ``CIFAR100Instance``: ``(image, target, index)``) for one
    epoch, with that epoch's view and contrast draws given per sample."""

    def __init__(self, images, labels, views, contrast, mean, std):
        self.images, self.labels, self.views, self.contrast = images.numpy(), labels.tolist(), views, contrast
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = render(self.images[index], self.views[index], self.mean, self.std)
        if self.contrast is None:
            return image, self.labels[index], index
        return image, self.labels[index], index, self.contrast[index].numpy()


def epoch_loader(data, epoch, drop_last):
    """The reference's DataLoader for ``epoch`` (1-based): the project's order as its sampler, batch B, and
    ``drop_last`` as the reference builds it (RepDistiller's get_cifar100_dataloaders_sample: False;
    giakoumoglou/distillers' get_cifar100_dataloaders, which its FIFO memories use: True)."""
    contrast = None if data.contrast is None else data.contrast[epoch - 1]
    items = ReferenceItems(data.images, data.labels, data.views[epoch - 1], contrast, data.mean, data.std)
    return DataLoader(items, batch_size=B, sampler=data.order[epoch - 1].flatten().tolist(), num_workers=0,
                      drop_last=drop_last)


# ---------------------------------------------------------------------------- recording
def summary(tensors, whole=()):
    """{name: the tensor whole (float32; integers as they are) if it is named in ``whole`` or has at most
    SAMPLES entries, else every ceil(n / SAMPLES)-th entry of its flattening}, and {name: float64 L2 norm}
    of the sampled ones."""
    values, norms = {}, {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        if not t.is_floating_point() or t.numel() <= SAMPLES or name in whole:
            values[name] = t.clone() if not t.is_floating_point() else t.float().clone()
        else:
            stride = -(-t.numel() // SAMPLES)
            values[name] = t.float().flatten()[::stride].clone()
            norms[name] = t.double().norm()
    return values, norms


class Recorder:
    """Records a step after the reference's own ``optimizer.step()`` (a wrapper; the loop is unchanged);
    forward hooks on its criteria give the loss parts. :meth:`result` stacks the steps: one tensor per
    recorded name, its first dimension the step; ``optimizer`` holds the parameters the optimizer holds (by
    ``named``) and their momentum buffers after the first and after the last step."""

    def __init__(self, optimizer, model_s, criterion, parts, weights, named):
        self.steps, self.seen, self.named, self.after_step1, self.batch_sizes = [], {}, named, None, []
        model_s.register_forward_pre_hook(lambda m, args: self.batch_sizes.append(len(args[0])))
        self.model_s, self.criterion, self.weights, self.optimizer = model_s, criterion, weights, optimizer
        for name, module in parts.items():
            module.register_forward_hook(lambda m, i, out, name=name: self.seen.__setitem__(name, out.detach()))
        step = optimizer.step

        def recorded(*args, **kwargs):
            out = step(*args, **kwargs)
            self.record()
            return out

        optimizer.step = recorded
        self.epoch = 0

    def record(self) -> None:
        g, a, b = self.weights
        seen = self.seen
        # the loop's own expression (helper/loops.py: opt.gamma * loss_cls + opt.alpha * loss_div + opt.beta * loss_kd)
        loss = g * seen["cls"] + a * seen["div"] + b * seen["kd"]
        student, student_norm = summary(self.model_s.state_dict())
        buffers = [n for n, _ in self.criterion.named_buffers()]
        method, method_norm = summary(self.criterion.state_dict(), buffers)
        if not self.steps:  # the first step's momentum: its gradients and weight decay, before any divergence
            self.after_step1 = optimizer_record(self.optimizer, self.named)
        self.steps.append({"epoch": torch.tensor(self.epoch), "lr": torch.tensor(self.optimizer.param_groups[0]["lr"],
                                                                                dtype=torch.float64),
                           "loss": loss.double().reshape(()),
                           "parts": {k: v.double().reshape(()) for k, v in seen.items()},
                           "student": student, "student_norm": student_norm, "method": method,
                           "method_norm": method_norm})
        self.seen = {}

    def result(self):
        def stack(values):
            if isinstance(values[0], dict):
                return {k: stack([v[k] for v in values]) for k in values[0]}
            return torch.stack(values)
        last = optimizer_record(self.optimizer, self.named)
        return {**stack(self.steps), "optimizer": {"params": last.pop("params"), "after_step1": self.after_step1,
                                                    "after_last_step": last}}


def optimizer_record(optimizer, named):
    """The optimizer's parameters by name, in its order, and a summary of their momentum buffers (a
    parameter that never had a gradient, such as RRD's detached embed_t, has none)."""
    names = {id(p): n for n, p in named}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    held = [names[id(p)] for p in params]
    momentum, norms = summary({names[id(p)]: optimizer.state[p]["momentum_buffer"] for p in params
                               if "momentum_buffer" in optimizer.state.get(p, {})})
    return {"params": held, "momentum_buffer": momentum, "momentum_buffer_norm": norms}


def fp16_exact(state):
    """Floating tensors rounded to float16 (stored as float16, loaded exactly as float32): initial weights
    are arbitrary, so they are made exactly representable in half the space."""
    return {k: v.half() if v.is_floating_point() else v.clone() for k, v in state.items()}


def f32(state):
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# ---------------------------------------------------------------------------- RepDistiller: CRD
def repdistiller(path: str):
    _check_commit("repdistiller", path)
    _shells(path, ["models", "helper", "crd", "distiller_zoo"])
    sys.path.insert(0, path)
    try:
        mods = SimpleNamespace(resnet=importlib.import_module("models.resnet"),
                               loops=importlib.import_module("helper.loops"),
                               util=importlib.import_module("helper.util"),
                               criterion=importlib.import_module("crd.criterion"),
                               kd=importlib.import_module("distiller_zoo.KD"))
    finally:
        sys.path.remove(path)
    return mods


def crd_opt(s_dim, t_dim, n_data=N):
    return SimpleNamespace(distill="crd", print_freq=10 ** 9, s_dim=s_dim, t_dim=t_dim, n_data=n_data, **CRD, **SGD)


def run_crd(ref, init, crd_state, data, epochs=EPOCHS):
    """train_student.py's CRD set-up (trainable: student, embed_s, embed_t; SGD; teacher appended after
    the optimizer), then its epoch loop: adjust_learning_rate, train_distill."""
    model_s = getattr(ref.resnet, STUDENT)(num_classes=NUM_CLASSES)
    model_t = getattr(ref.resnet, TEACHER)(num_classes=NUM_CLASSES)
    model_s.load_state_dict(f32(init["student"]))
    model_t.load_state_dict(f32(init["teacher"]))
    model_t.eval(), model_s.eval()
    with torch.no_grad():
        feat_t, _ = model_t(torch.zeros(2, 3, 32, 32), is_feat=True)
        feat_s, _ = model_s(torch.zeros(2, 3, 32, 32), is_feat=True)
    opt = crd_opt(feat_s[-1].shape[1], feat_t[-1].shape[1], len(data.labels))
    with _cpu_only():
        criterion_kd = ref.criterion.CRDLoss(opt)
    criterion_kd.load_state_dict(crd_state)
    module_list = nn.ModuleList([model_s, criterion_kd.embed_s, criterion_kd.embed_t])
    trainable_list = nn.ModuleList([model_s, criterion_kd.embed_s, criterion_kd.embed_t])
    criterion_cls, criterion_div = nn.CrossEntropyLoss(), ref.kd.DistillKL(opt.kd_T)
    criterion_list = nn.ModuleList([criterion_cls, criterion_div, criterion_kd])
    optimizer = optim.SGD(trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                          weight_decay=opt.weight_decay)
    module_list.append(model_t)
    named = [(f"student.{n}", p) for n, p in model_s.named_parameters()]
    named += [(f"method.{n}", p) for n, p in criterion_kd.named_parameters()]
    recorder = Recorder(optimizer, model_s, criterion_kd, {"cls": criterion_cls, "div": criterion_div,
                                                          "kd": criterion_kd, "crd_s": criterion_kd.criterion_s,
                                                          "crd_t": criterion_kd.criterion_t},
                        (opt.gamma, opt.alpha, opt.beta), named)
    with _cpu_only():
        for epoch in range(1, epochs + 1):
            ref.util.adjust_learning_rate(epoch, opt, optimizer)
            recorder.epoch = epoch
            ref.loops.train_distill(epoch, epoch_loader(data, epoch, drop_last=False), module_list, criterion_list,
                                    optimizer, opt)
    return recorder


def crd_init(ref):
    torch.manual_seed(1)
    student = getattr(ref.resnet, STUDENT)(num_classes=NUM_CLASSES)
    torch.manual_seed(2)
    teacher = getattr(ref.resnet, TEACHER)(num_classes=NUM_CLASSES)
    s_dim, t_dim = student.fc.in_features, teacher.fc.in_features
    torch.manual_seed(3)
    with _cpu_only():
        crd = ref.criterion.CRDLoss(crd_opt(s_dim, t_dim))
    return {"student": fp16_exact(student.state_dict()), "teacher": fp16_exact(teacher.state_dict()),
            "crd": {k: v.clone() for k, v in crd.state_dict().items()}}


# ---------------------------------------------------------------------------- giakoumoglou/distillers: RRD
def giakoumoglou(path: str):
    _check_commit("giakoumoglou", path)
    root = os.path.join(path, "cifar")
    _drop({"models", "distillers", "datasets"})
    sys.path.insert(0, root)
    try:
        main = importlib.import_module("train_student")  # its train(), adjust_learning_rate(), models, losses
    finally:
        sys.path.remove(root)
    return main


def rrd_opt(s_dim, t_dim, n_data=N):
    return SimpleNamespace(distill="rrd", print_freq=10 ** 9, s_dim=s_dim, t_dim=t_dim, n_data=n_data, **RRD, **SGD)


def rrd_init(main):
    dims = [main.model_dict[name](num_classes=NUM_CLASSES).fc.in_features for name in (STUDENT, TEACHER)]
    torch.manual_seed(4)
    return {k: v.clone() for k, v in main.RRDLoss(rrd_opt(*dims)).state_dict().items()}


def run_rrd(main, init, data, epochs=EPOCHS):
    """cifar/train_student.py's RRD (memory_type fifo) set-up and epoch loop: adjust_learning_rate, train."""
    model_s = main.model_dict[STUDENT](num_classes=NUM_CLASSES)
    model_t = main.model_dict[TEACHER](num_classes=NUM_CLASSES)
    model_s.load_state_dict(f32(init["student"]))
    model_t.load_state_dict(f32(init["teacher"]))
    opt = rrd_opt(model_s.fc.in_features, model_t.fc.in_features, len(data.labels))
    criterion_kd = main.RRDLoss(opt)
    criterion_kd.load_state_dict(init["rrd"])
    module_list = nn.ModuleList([model_s, criterion_kd.embed_s, criterion_kd.embed_t])
    trainable_list = nn.ModuleList([model_s, criterion_kd.embed_s, criterion_kd.embed_t])
    criterion_cls, criterion_div = nn.CrossEntropyLoss(), main.DistillKL(opt.kd_T)
    criterion_list = nn.ModuleList([criterion_cls, criterion_div, criterion_kd])
    optimizer = optim.SGD(trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                          weight_decay=opt.weight_decay)
    module_list.append(model_t)
    named = [(f"student.{n}", p) for n, p in model_s.named_parameters()]
    named += [(f"method.{n}", p) for n, p in criterion_kd.named_parameters()]
    recorder = Recorder(optimizer, model_s, criterion_kd, {"cls": criterion_cls, "div": criterion_div,
                                                          "kd": criterion_kd}, (opt.gamma, opt.alpha, opt.beta), named)
    with _cpu_only():
        for epoch in range(1, epochs + 1):
            main.adjust_learning_rate(epoch, opt, optimizer)
            recorder.epoch = epoch
            main.train(epoch, epoch_loader(data, epoch, drop_last=True), module_list, criterion_list, optimizer, opt)
    return recorder


# ---------------------------------------------------------------------------- a last partial batch
def tail_draws(n):
    """The project's draws for an ``n``-sample set whose size is not a multiple of B (epoch 1): the order of
    all n samples (its loaders serve the first n // B batches of it), device views, contrast rows."""
    import data as datasets
    from core.requests import ContrastSampling
    from data.device_loader import DeviceTrainLoader
    from data.requests import ContrastServer
    from data.samplers import EpochSampler

    images, labels = make_images(n)
    sampler = EpochSampler(range(n), 0, 1, seed=SEED)
    sampler.set_epoch(1)
    order = torch.tensor(list(sampler), dtype=torch.long)
    server = ContrastServer(ContrastSampling(CRD["nce_k"], CRD["mode"]), SimpleNamespace(targets=labels.numpy()), SEED)
    server.set_epoch(1)
    contrast = torch.stack([server.contrast_indices(i) for i in range(n)])
    _check_contrast(contrast[None], labels)
    meta = datasets.dataset_info("cifar100")
    loader = DeviceTrainLoader(images.numpy(), labels.numpy(), meta["mean"], meta["std"], 0, 1, B, SEED, "cpu")
    views = loader.views(torch.arange(n), 1)
    return SimpleNamespace(images=images, labels=labels, order=order[None], contrast=contrast[None],
                           views=views[None], mean=meta["mean"], std=meta["std"])


def tail(recorder, memory_before=None, memory_after=None):
    """What one epoch of the reference did with a last partial batch: its optimizer steps and their batch
    sizes, and (CRD) how many memory rows it updated."""
    out = {"steps": torch.tensor(len(recorder.steps)), "batch_sizes": torch.tensor(recorder.batch_sizes)}
    if memory_before is not None:
        out["rows_updated"] = torch.tensor(int((memory_before != memory_after).any(1).sum()))
    return out


# ---------------------------------------------------------------------------- main
NOTES = (
    "Reference loops unchanged: RepDistiller helper/loops.py train_distill (CRD) and giakoumoglou/distillers "
    "cifar/train_student.py train (RRD, memory_type fifo), each epoch preceded by the script's "
    "adjust_learning_rate, built as the scripts' main() builds them (trainable: student, embed_s, embed_t; "
    "SGD; the teacher appended after the optimizer, eval mode). Not run: the scripts' teacher and student "
    "validation between epochs (eval mode, no_grad: no state changes). Data: the project's draws for seed "
    f"{SEED} (order, contrast indices, views per loader), rendered by the reference's transform chain with "
    "the draws given. Recording: a wrapper around optimizer.step records after it; forward hooks on the "
    "criteria give the loss parts, and loss = gamma * cls + alpha * div + beta * kd is the loop's own "
    "expression on them. Shims: .cuda() is the identity and CUDA absent (RepDistiller's ContrastMemory "
    "calls .cuda() unconditionally). Initial student and teacher weights are float16-exact (stored as "
    "float16); the CRD and RRD parts are the references' own initialisation (seeds 3 and 4).")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repdistiller", required=True, help="HobbitLong/RepDistiller checkout")
    parser.add_argument("--giakoumoglou", required=True, help="giakoumoglou/distillers checkout")
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "golden", "trajectory", "loop.pt"))
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
    torch.set_num_threads(1)
    images, labels = make_images()
    with tempfile.TemporaryDirectory() as root:
        write_data(root, images, labels)
        order, contrast, views, norms = project_draws(root, images, labels)
    data = {name: SimpleNamespace(images=images, labels=labels, order=order, contrast=contrast, views=views[name],
                                  mean=norms[name][0], std=norms[name][1]) for name in LOADERS}
    tail_data = tail_draws(N_TAIL)
    ref = repdistiller(os.path.abspath(args.repdistiller))
    init = crd_init(ref)
    crd = {name: run_crd(ref, init, init["crd"], data[name]).result() for name in LOADERS}
    torch.manual_seed(3)
    with _cpu_only():
        dims = [init[side]["fc.weight"].shape[1] for side in ("student", "teacher")]
        tail_state = ref.criterion.CRDLoss(crd_opt(*dims, N_TAIL)).state_dict()
    recorder = run_crd(ref, init, tail_state, tail_data, epochs=1)
    tails = {"crd": tail(recorder, tail_state["contrast.memory_v1"],
                         recorder.criterion.state_dict()["contrast.memory_v1"])}
    main_g = giakoumoglou(os.path.abspath(args.giakoumoglou))
    init["rrd"] = rrd_init(main_g)
    rrd = {name: run_rrd(main_g, init, SimpleNamespace(**{**vars(data[name]), "contrast": None})).result()
           for name in RRD_LOADERS}
    tails["rrd"] = tail(run_rrd(main_g, init, SimpleNamespace(**{**vars(tail_data), "contrast": None}), epochs=1))
    tails = {k: {**v, "n": torch.tensor(N_TAIL), "order": tail_data.order[0]} for k, v in tails.items()}
    out = {
        "reference": {"crd": f"{_check_commit('repdistiller', args.repdistiller)} helper/loops.py train_distill, "
                             "crd/criterion.py CRDLoss, crd/memory.py ContrastMemory, helper/util.py "
                             "adjust_learning_rate, models/resnet.py",
                      "rrd": f"{_check_commit('giakoumoglou', args.giakoumoglou)} cifar/train_student.py train, "
                             "adjust_learning_rate; cifar/distillers/RRD.py RRDLoss (fifo), KD.py DistillKL, "
                             "cifar/models/resnet.py"},
        "hparams": {"seed": SEED, "n": N, "classes": CLASSES, "num_classes": NUM_CLASSES, "batch_size": B,
                    "epochs": EPOCHS, "student": STUDENT, "teacher": TEACHER, "sgd": dict(SGD), "crd": dict(CRD),
                    "rrd": dict(RRD), "dali_geometry": {k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in DALI_GEOMETRY.items()},
                    "padding": PADDING, "samples": SAMPLES},
        "inputs": {"images": images, "labels": labels, "order": order, "contrast_idx": contrast,
                   "views": views, "normalize": {k: [list(m), list(s)] for k, (m, s) in norms.items()}},
        "init": init,
        "trajectories": {"crd": crd, "rrd": rrd},
        "last_partial_batch": tails,
        "torch_version": str(torch.__version__),
        "notes": NOTES,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    torch.save(out, args.out)
    print(f"wrote {args.out}: {os.path.getsize(args.out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
