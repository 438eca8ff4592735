"""Loop-level fidelity (issue 22): the trainer follows the reference training loops step by step.

A one-step golden file checks a loss; this checks the loop around it. ``tests/golden/trajectory/loop.pt``
(``tests/golden/make_trajectory_goldens.py``) holds RepDistiller's ``train_distill`` (CRD) and
giakoumoglou/distillers' ``train`` (RRD, FIFO queue) run unchanged for two epochs of four steps from recorded
initial weights, on the sample order, contrast indices and augmented views this project draws for the same
seed. Here ``train_student.py``'s flags build the trainer on the same data, the same initial weights are
loaded, ``Trainer.fit`` runs the same steps fed by each loader (device, DataLoader with 0 and 2 workers,
DALI on the CPU), and after every step the batch (which samples, labels, contrast rows, pixels), the
learning rate, the loss and its terms, the student's weights and BatchNorm buffers, and the method's
parameters and memories are compared with the reference's; at the end, the parameters the optimiser holds.
A failure names the case, the step and the tensor.
"""
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from conftest import OWN_GOLDEN
from engine import config
from engine.distributed import DistInfo
from engine.loop import Trainer

GOLDEN = OWN_GOLDEN / "trajectory" / "loop.pt"

#: float32 on the CPU, the same operations in another grouping (tolerances: tests/golden/README.md, "Trajectories")
RTOL, ATOL = 1e-4, 1e-5          # weights, memories, first momentum buffers: |ours - ref| <= ATOL + RTOL * |ref|
LOSS_RTOL = 1e-4                 # loss and terms
GRADIENT_NOISE = 2e-2            # last momentum buffers: |ours - ref| <= GRADIENT_NOISE * max |ref| (a gradient sum)
PIXEL_ATOL = {"dali": 2e-6}      # DALI normalises (x - 255 m) / (255 s), the reference (x / 255 - m) / s
#: the method's state names: reference -> ours (CRD's are the same)
RENAMES = {"rrd": {"memory.embed_s.weight": "embed_s.linear.weight", "memory.embed_s.bias": "embed_s.linear.bias",
                   "memory.embed_t.weight": "embed_t.linear.weight", "memory.embed_t.bias": "embed_t.linear.bias"}}
CASES = [("crd", "device"), ("crd", "device_warm_store"), ("crd", "dataloader"), ("crd", "dataloader_2_workers"),
         ("crd", "dali"), ("rrd", "device"), ("rrd", "dataloader")]
#: the loader each case must run on (run.settings.loader)
KIND = {"device": "device", "device_warm_store": "device", "dataloader": "dataloader",
        "dataloader_2_workers": "dataloader", "dali": "dali"}


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def one_thread():
    """The reference trajectories were recorded with one torch thread: the same kernels, reduction order
    and so the same rounding here (another thread count is float noise that ReLU flips amplify: README)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def _write_cifar100(root, images, labels, num_classes):
    """``images`` (uint8 [N, 32, 32, 3]) as CIFAR-100 python pickles under ``root`` (test split: every 4th)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    chw = images.permute(0, 3, 1, 2).reshape(len(images), -1).numpy()
    for name, keep in (("train", slice(None)), ("test", slice(None, None, 4))):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": chw[keep], "fine_labels": labels[keep].tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{c:03d}" for c in range(num_classes)]}, f)


@pytest.fixture(scope="module")
def data_root(golden, tmp_path_factory):
    """The golden images as CIFAR-100 pickles and as an ImageNet-style folder (as the generator wrote them),
    and the teacher as a checkpoint."""
    root = tmp_path_factory.mktemp("trajectory_data")
    images, labels = golden["inputs"]["images"], golden["inputs"]["labels"]
    num_classes = golden["hparams"]["num_classes"]
    _write_cifar100(root, images, labels, num_classes)
    for split, step in (("train", 1), ("val", 4)):
        for c in range(num_classes):
            (root / "folder" / split / f"c{c:03d}").mkdir(parents=True)
        for i in range(0, len(images), step):
            Image.fromarray(images[i].numpy()).save(root / "folder" / split / f"c{int(labels[i]):03d}" / f"{i:03d}.png")
    teacher = root / "teacher.pth"
    init = golden["init"]["teacher"]
    torch.save({"arch": golden["hparams"]["teacher"], "model": {k: v.float() if v.is_floating_point() else v
                                                                 for k, v in init.items()}}, teacher)
    return root


def _argv(golden, method, loader, root, run_dir):
    h = golden["hparams"]
    sgd, opts = h["sgd"], h[method]
    argv = ["--model_s", h["student"], "--path_t", str(root / "teacher.pth"), "--distill", method,
            "--batch_size", str(h["batch_size"]), "--epochs", str(h["epochs"]), "--seed", str(h["seed"]),
            "--learning_rate", str(sgd["learning_rate"]), "--momentum", str(sgd["momentum"]),
            "--weight_decay", str(sgd["weight_decay"]), "--lr_decay_rate", str(sgd["lr_decay_rate"]),
            "--lr_decay_epochs", *[str(e) for e in sgd["lr_decay_epochs"]],
            "-r", str(opts["gamma"]), "-a", str(opts["alpha"]), "-b", str(opts["beta"]),
            "--feat_dim", str(opts["feat_dim"]), "--nce_k", str(opts["nce_k"]),
            "--save_dir", str(run_dir), "--no_tensorboard"]
    if method == "crd":
        argv += ["--nce_t", str(opts["nce_t"]), "--nce_m", str(opts["nce_m"]), "--mode", opts["mode"]]
    else:  # the reference's FIFO queue: enqueue first, unit-column initial queue, its script's temperatures
        argv += ["--memory_type", "queue", "--enqueue_first", "true", "--queue_row_norm", "false",
                 "--nce_t_s", str(opts["nce_t_s"]), "--nce_t_t", str(opts["nce_t_t"]), "--kd_T", str(opts["kd_T"])]
    if loader == "dali":
        g = h["dali_geometry"]
        argv += ["--dataset", "imagenet", "--data-root", str(root / "folder"), "--dali", "cpu", "--num_workers", "1",
                 "--data_opt", "seeded_views=true", "--data_opt", f"crop={g['crop']}",
                 "--data_opt", f"val_resize={g['val_resize']}", "--data_opt", f"rrc_scale={g['rrc_scale']}",
                 "--data_opt", f"rrc_ratio={g['rrc_ratio']}"]
    else:
        workers = "2" if loader.endswith("2_workers") else "0"
        argv += ["--dataset", "cifar100", "--data-root", str(root), "--num_workers", workers, "--loader", KIND[loader]]
    if loader == "device_warm_store":  # a store another run filled: every teacher output is read from it
        argv += ["--teacher_store", str(run_dir.parent / "store")]
    return argv


def _register_cifar_models_for_imagenet(golden):
    """``--dali`` reads ``imagenet`` folders, whose model family has no RepDistiller CIFAR zoo: the same
    CIFAR networks are registered there for this test (the conftest fixture removes them afterwards)."""
    from models import create_model, register_model
    for name in {golden["hparams"]["student"], golden["hparams"]["teacher"]}:
        register_model(name, family="imagenet")(
            lambda num_classes=1000, _name=name, **kw: create_model(_name, num_classes=num_classes, family="cifar",
                                                                    **kw))


def _summary(tensors, whole=(), samples=32):
    """The generator's record of a state: whole tensors (those in ``whole``, integers, and up to ``samples``
    entries), otherwise every ceil(n / samples)-th entry of the flattening and the float64 norm."""
    values, norms = {}, {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        if not t.is_floating_point() or t.numel() <= samples or name in whole:
            values[name] = t.clone() if not t.is_floating_point() else t.float().clone()
        else:
            values[name] = t.float().flatten()[::-(-t.numel() // samples)].clone()
            norms[name] = t.double().norm()
    return values, norms


def _render(image, view, mean, std, padding):
    """The reference's train transform (RandomCrop(32, padding), flip, ToTensor, Normalize) with its draws given."""
    dx, dy, flip = (int(v) for v in view)
    pil = TF.crop(TF.pad(Image.fromarray(image), padding), dy, dx, 32, 32)
    return TF.normalize(TF.to_tensor(TF.hflip(pil) if flip else pil), mean, std)


class Run:
    """One trajectory of the project: the trainer of a case, started from the golden initial state,
    recording after each ``train_step`` (the public step the loop calls)."""

    def __init__(self, golden, method, loader, root, run_dir):
        if loader == "dali":
            _register_cifar_models_for_imagenet(golden)
        args = config.parse(config.student_parser(), _argv(golden, method, loader, root, run_dir))
        self.trainer = trainer = Trainer(args, DistInfo(), "student")
        self.method, self.renames = method, RENAMES.get(method, {})
        init = golden["init"]
        trainer.run.model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                           for k, v in init["student"].items()})
        trainer.run.method.load_state_dict({self.renames.get(k, k): v for k, v in init[method].items()})
        self.steps, self.after_step1 = [], None
        step = trainer.train_step

        def recorded(batch, optimizer, stage=None):
            result = step(batch, optimizer, stage)
            self.steps.append(self._snapshot(batch, result, optimizer))
            if self.after_step1 is None:
                self.after_step1 = self.optimizer_record()
            return result

        trainer.train_step = recorded

    def _snapshot(self, batch, result, optimizer):
        run = self.trainer.run
        ours = {v: k for k, v in self.renames.items()}
        method_state = {ours.get(k, k): v for k, v in run.method.state_dict().items()}
        buffers = [ours.get(n, n) for n, _ in run.method.named_buffers()]
        student, student_norm = _summary(run.model.state_dict())
        method, method_norm = _summary(method_state, buffers)
        return {"epoch": self.trainer.state.epoch, "lr": optimizer.param_groups[0]["lr"],
                "loss": result.loss.detach().double(),
                "terms": {k: v.detach().double() for k, v in result.terms.items()},
                "images": batch.images.detach().cpu().clone(), "labels": batch.labels.cpu().clone(),
                "index": None if batch.index is None else batch.index.cpu().clone(),
                "contrast_idx": None if batch.contrast_idx is None else batch.contrast_idx.cpu().clone(),
                "student": student, "student_norm": student_norm, "method": method, "method_norm": method_norm,
                "store": None if run.store is None else (run.store.hits, run.store.lookups)}

    def optimizer_record(self):
        run = self.trainer.run
        ours = {v: k for k, v in self.renames.items()}
        named = [(f"student.{n}", p) for n, p in run.model.named_parameters()]
        named += [(f"method.{ours.get(n, n)}", p) for n, p in run.method.named_parameters()]
        names = {id(p): n for n, p in named}
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        momentum, norms = _summary({names[id(p)]: run.optimizer.state[p]["momentum_buffer"] for p in params
                                    if "momentum_buffer" in run.optimizer.state.get(p, {})})
        return {"params": [names.get(id(p), f"<unnamed {tuple(p.shape)}>") for p in params],
                "momentum_buffer": momentum, "momentum_buffer_norm": norms}


def _close(where, name, ours, ref, rtol=RTOL, atol=ATOL):
    """Fail naming ``where`` and ``name`` when ``ours`` and the reference's ``ref`` differ beyond tolerance."""
    ours, ref = (v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64) for v in (ours, ref))
    assert ours.shape == ref.shape, f"{where}: {name} has shape {list(ours.shape)}, the reference {list(ref.shape)}"
    if not ref.is_floating_point():
        bad = (ours != ref).nonzero()
        assert len(bad) == 0, (f"{where}: {name} differs from the reference at {bad[0].tolist()}: "
                               f"ours {ours[tuple(bad[0])].item()}, reference {ref[tuple(bad[0])].item()}")
        return
    ours, ref = ours.double(), ref.double()
    excess = (ours - ref).abs() - (atol + rtol * ref.abs())
    if excess.numel() and excess.max() > 0:
        at = np.unravel_index(int(excess.argmax()), tuple(excess.shape)) if excess.dim() else ()
        raise AssertionError(f"{where}: {name} differs from the reference beyond atol {atol:g} + rtol {rtol:g}: at "
                             f"{list(at)} ours {ours[at].item():.9g}, reference {ref[at].item():.9g} (max |diff| "
                             f"{(ours - ref).abs().max().item():.3g})")


def _check_batch(where, step, golden, loader, e, s, method):
    """The batch of step ``s`` of epoch ``e`` holds the recorded samples, labels, contrast rows and views."""
    inputs, h = golden["inputs"], golden["hparams"]
    expected = inputs["order"][e - 1, s]
    if step["index"] is not None:
        _close(where, "the batch's sample indices", step["index"], expected)
    _close(where, "the batch's labels", step["labels"], inputs["labels"][expected])
    if method == "crd":
        _close(where, "the batch's contrast indices", step["contrast_idx"], inputs["contrast_idx"][e - 1, expected])
    views = inputs["views"]["dali" if loader == "dali" else "dataloader" if loader.startswith("dataloader")
                            else "device"]
    mean, std = inputs["normalize"]["dali" if loader == "dali" else "device"]
    images = inputs["images"].numpy()
    for k, i in enumerate(expected.tolist()):
        want = _render(images[i], views[e - 1, i], mean, std, h["padding"])
        tol = PIXEL_ATOL.get(loader, 0.0)
        _close(where, f"the image in row {k} (sample {i}, view {views[e - 1, i].tolist()})", step["images"][k], want,
               rtol=0.0, atol=tol)


@pytest.mark.parametrize("method,loader", CASES, ids=[f"{m}-{l}" for m, l in CASES])
def test_trainer_follows_the_reference_loop_step_by_step(golden, data_root, tmp_path, one_thread, method, loader):
    if loader == "dali" and not _has_dali():
        pytest.skip("NVIDIA DALI is not installed (the optional [dali] extra)")
    ref = golden["trajectories"][method]["dali" if loader == "dali" else
                                         "dataloader" if loader.startswith("dataloader") else "device"]
    weights = golden["hparams"][method]
    if loader == "device_warm_store":
        Run(golden, method, loader, data_root, tmp_path / "fill").trainer.fit()
    run = Run(golden, method, loader, data_root, tmp_path / "run")
    run.trainer.fit()
    kind = run.trainer.run.settings.loader
    assert kind == KIND[loader], f"{method}/{loader} ran on the {kind} loader"
    steps_per_epoch = golden["hparams"]["n"] // golden["hparams"]["batch_size"]
    assert len(run.steps) == len(ref["loss"]), (
        f"{method}/{loader}: {len(run.steps)} steps, the reference {len(ref['loss'])}")
    parts = {"crd": {"ce": ("cls", "gamma"), "crd_s": ("crd_s", "beta"), "crd_t": ("crd_t", "beta")},
             "rrd": {"ce": ("cls", "gamma"), "kd": ("div", "alpha"), "rrd": ("kd", "beta")}}[method]
    for n, step in enumerate(run.steps):
        e, s = int(ref["epoch"][n]), n % steps_per_epoch
        where = f"{method}/{loader} step {n + 1} (epoch {e}, batch {s + 1})"
        assert step["epoch"] == e, f"{where}: the trainer is in epoch {step['epoch']}"
        _check_batch(where, step, golden, loader, e, s, method)
        if loader == "device_warm_store":
            hits, lookups = step["store"]
            assert 0 < hits == lookups, f"{where}: {hits} of {lookups} teacher outputs read from the filled store"
        _close(where, "the learning rate", step["lr"], ref["lr"][n], rtol=1e-12, atol=0)
        _close(where, "the loss", step["loss"], ref["loss"][n], rtol=LOSS_RTOL, atol=0)
        assert set(step["terms"]) == set(parts), f"{where}: terms {sorted(step['terms'])}, expected {sorted(parts)}"
        for term, (part, weight) in parts.items():
            _close(where, f"the term {term}", step["terms"][term], weights[weight] * ref["parts"][part][n],
                   rtol=LOSS_RTOL, atol=0)
        for side in ("student", "method"):
            assert set(step[side]) == set(ref[side]), (
                f"{where}: {side} state names on one side only: {sorted(set(step[side]) ^ set(ref[side]))}")
            for name in ref[side]:
                _close(where, f"{side} {name}", step[side][name], ref[side][name][n])
            for name in ref[f"{side}_norm"]:
                _close(where, f"{side} {name} (norm)", step[f"{side}_norm"][name], ref[f"{side}_norm"][name][n])
    _check_optimizer(f"{method}/{loader}", run, ref["optimizer"])


def _check_optimizer(case, run, ref):
    """The optimiser holds the reference's parameters; their momentum buffers after step 1 (its gradient and
    weight decay) match tightly, after the last step within the gradients' float noise (tests/golden/README.md)."""
    last = run.optimizer_record()
    assert sorted(last["params"]) == sorted(ref["params"]), (
        f"{case}: the optimiser holds {sorted(set(last['params']) ^ set(ref['params']))} unlike the reference")
    for when, ours, theirs in (("after step 1", run.after_step1, ref["after_step1"]),
                               ("after the last step", last, ref["after_last_step"])):
        where = f"{case} {when}"
        assert set(ours["momentum_buffer"]) == set(theirs["momentum_buffer"]), (
            f"{where}: momentum buffers of {sorted(set(ours['momentum_buffer']) ^ set(theirs['momentum_buffer']))} "
            "on one side only")
        for name, value in theirs["momentum_buffer"].items():
            tol = dict(rtol=0.0, atol=GRADIENT_NOISE * value.abs().max().item()) if when != "after step 1" else {}
            _close(where, f"the momentum buffer of {name}", ours["momentum_buffer"][name], value, **tol)


@pytest.mark.parametrize("method, loader, keep", [("crd", "device", True), ("crd", "dataloader", True),
                                                  ("crd", "dali", True), ("crd", "device", False),
                                                  ("rrd", "device", False)])
def test_an_epoch_ending_in_a_partial_batch_takes_the_reference_steps(golden, data_root, tmp_path, one_thread,
                                                                      method, loader, keep):
    """One epoch on a set whose size is no multiple of the batch: the steps, their batch sizes and (CRD) the
    memory rows updated are the reference loop's. RepDistiller's CRD loader (a DataLoader without drop_last)
    trains on the last partial batch: ``--keep_last_batch`` does so on every loader; by default the project
    drops it, one step fewer, as giakoumoglou's FIFO loader (RRD) does."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (CI installs it)")
        _register_cifar_models_for_imagenet(golden)
    tail = golden["last_partial_batch"][method]
    n, classes = int(tail["n"]), golden["hparams"]["classes"]
    images, labels = golden["inputs"]["images"], golden["inputs"]["labels"]
    extra = torch.arange(0, len(images), len(images) // classes)[: n - len(images)]  # one more sample per class
    images, labels = torch.cat([images, images[extra]]), torch.cat([labels, labels[extra]])
    root = tmp_path / "data"
    _write_cifar100(root, images, labels, golden["hparams"]["num_classes"])
    for c in range(golden["hparams"]["num_classes"]):  # the same set as an image folder, for DALI
        (root / "folder" / "train" / f"c{c:03d}").mkdir(parents=True)
    for i in range(len(images)):
        Image.fromarray(images[i].numpy()).save(root / "folder" / "train" / f"c{int(labels[i]):03d}" / f"{i:03d}.png")
    shutil.copytree(data_root / "folder" / "val", root / "folder" / "val")
    shutil.copy(data_root / "teacher.pth", root / "teacher.pth")
    argv = _argv(golden, method, loader, root, tmp_path / "run") + (["--keep_last_batch"] if keep else [])
    argv[argv.index("--epochs") + 1] = "1"
    trainer = Trainer(config.parse(config.student_parser(), argv), DistInfo(), "student")
    sizes, step = [], trainer.train_step

    def recorded(batch, optimizer, stage=None):
        sizes.append(len(batch))
        return step(batch, optimizer, stage)

    trainer.train_step = recorded
    before = trainer.run.method.state_dict()["contrast.memory_v1"].clone() if method == "crd" else None
    trainer.fit()
    reference = tail["batch_sizes"].tolist()
    if method == "crd" and not keep:  # the project's default: the partial batch dropped
        assert sizes == reference[:-1] and reference[-1] < reference[0], sizes
        return
    assert sizes == reference, (
        f"{method}/{loader}: one epoch of {n} samples at batch {golden['hparams']['batch_size']} took steps of "
        f"{sizes} samples, the reference {reference}")
    if method == "crd":
        rows = int((trainer.run.method.state_dict()["contrast.memory_v1"] != before).any(1).sum())
        assert rows == int(tail["rows_updated"]), (
            f"crd: {rows} memory rows updated in the epoch, the reference {int(tail['rows_updated'])}")
