"""Metric learning (issue #8): datasets and splits, m-per-class batches, samplers, Recall@K, the
metric golden files, a training step of the teacher and of each loss through the one trainer
(the step's loss equals the golden adapter's computation on the tapped features), eval mode,
resume, and clear errors for bad input. Tiny generated trees at 32 px, ResNet18 from scratch.
"""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data import metric_learning as md
from distillers import ShapeSpec, build_distiller, golden
from distillers.golden import GoldenCase
from distillers.methods import _pairs
from distillers.retrieval import recall_at_k
from engine import cli, config
from engine.checkpoint import load, save_atomic
from engine.distributed import DistInfo
from engine.loop import Trainer
from models import create_model
from conftest import GOLDEN, REPO

METRIC_GOLDEN = sorted(m for m, e in golden.TABLE.items() if e.task == "metric")
EMBED = 16


PLUGIN = str(REPO / "tests" / "plugins" / "metric_tiny.py")
cli.load_plugins([PLUGIN])  # tiny_metric, tiny_metric_wide: fast 4-stage embedding nets


def _image(path, colour, rng, size=8):
    pixels = np.clip(np.array(colour)[None, None, :] + rng.integers(-40, 40, (size, size, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """10 classes x 6 images: metric_folder with train_classes=6 (val 2, train 4) and 4 test classes."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(10):
        folder = root / f"class{c:02d}" / "images"  # one level deeper, as Tiny-ImageNet
        folder.mkdir(parents=True)
        colour = rng.integers(40, 215, 3)
        for i in range(6):
            _image(folder / f"{i}.png", colour, rng)
    return str(root)


def folder_args(tree, save_dir, *extra):
    return ["--dataset", "metric_folder", "--data", tree, "--data_opt", "image_size=32",
            "--data_opt", "train_classes=6", "--data_opt", "val_classes=2", "--base", "tiny_metric",
            "--no-pretrained", "--embedding_size", str(EMBED), "--batch", "12", "--num_image_per_class", "4",
            "--iter_per_epoch", "2", "--epochs", "1", "--num_workers", "0", "--no_tensorboard",
            "--save_dir", str(save_dir), "--lr", "1e-3", "--plugin", PLUGIN] + list(extra)


def _teacher_ckpt(path, arch, embedding=32):
    torch.manual_seed(3)
    model = create_model(arch, family="metric", embedding_size=embedding, pretrained=False)
    save_atomic({"arch": arch, "model": model.state_dict(),
                 "config": {"embedding_size": embedding, "l2normalize": True}}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    return {"tiny_metric": _teacher_ckpt(folder / "tiny.pth", "tiny_metric"),
            "tiny_metric_wide": _teacher_ckpt(folder / "wide.pth", "tiny_metric_wide")}


# ----------------------------------------------------------------------------- datasets
def test_cub_layout_loads_with_class_disjoint_splits(tmp_path):
    rng = np.random.default_rng(1)
    images = tmp_path / "CUB_200_2011" / "images"
    for c in range(200):
        folder = images / f"{c + 1:03d}.Bird_{c}"
        folder.mkdir(parents=True)
        for i in range(2):
            _image(folder / f"Bird_{c}_{i}.jpg", (c, 100, 200 - c), rng)
    opts = {"resize": 36, "crop": 32}
    train = md.build_split("cub200", str(tmp_path), "train", **opts)
    val = md.build_split("cub200", str(tmp_path), "val", **opts)
    test = md.build_split("cub200", str(tmp_path), "test", **opts)
    assert sorted(set(train.targets)) == list(range(80)) and sorted(set(val.targets)) == list(range(80, 100))
    assert sorted(set(test.targets)) == list(range(100, 200)) and len(test) == 200
    assert test.class_names[100] == "101.Bird_100"
    every = md.build_split("cub200", str(tmp_path), "train", val_classes=0, **opts)
    assert sorted(set(every.targets)) == list(range(100))
    x, y = test[0]
    assert x.shape == (3, 32, 32) and y == 100
    import data
    assert data.dataset_info("cub200")["task"] == "metric"
    assert data.build_dataset("cub200", str(tmp_path), "test", **opts).num_classes == 100


def test_cars_layout_reads_the_mat_annotations(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "Cars196"
    (root / "car_ims").mkdir(parents=True)
    rng = np.random.default_rng(2)
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    rows, n = [], 0
    for c in range(1, 197):
        for _ in range(2):
            n += 1
            name = f"car_ims/{n:06d}.jpg"
            _image(root / name, (c, 50, 255 - c), rng)
            rows.append((name, np.array([[1]]), np.array([[1]]), np.array([[5]]), np.array([[5]]),
                         np.array([[c]], dtype=np.uint8), np.array([[n % 2]], dtype=np.uint8)))
    annotations = np.array(rows, dtype=dtype).reshape(1, -1)
    class_names = np.array([f"Car {c}" for c in range(1, 197)], dtype=object).reshape(1, -1)
    scipy_io.savemat(str(root / "cars_annos.mat"), {"annotations": annotations, "class_names": class_names})
    train = md.build_split("cars196", str(tmp_path), "train", val_classes=0, resize=36, crop=32)
    test = md.build_split("cars196", str(tmp_path), "test", resize=36, crop=32)
    val = md.build_split("cars196", str(tmp_path), "val", resize=36, crop=32)
    assert sorted(set(train.targets)) == list(range(98)) and len(train) == 196
    assert sorted(set(test.targets)) == list(range(98, 196)) and test.class_names[98] == "Car 99"
    assert sorted(set(val.targets)) == list(range(78, 98))
    assert test[0][0].shape == (3, 32, 32)


def test_sop_layout_and_its_recall_ks(tmp_path):
    base = tmp_path / "Stanford_Online_Products"
    (base / "bicycle_final").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for split, classes in (("train", range(1, 6)), ("test", range(6, 10))):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for i in range(2):
                rel = f"bicycle_final/{c}_{i}.JPG"
                _image(base / rel, (10 * c, 0, 0), rng)
                lines.append(f"{len(lines)} {c} 1 {rel}")
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    train = md.build_split("stanford", str(tmp_path), "train", val_classes=1, resize=36, crop=32)
    test = md.build_split("stanford", str(tmp_path), "test", val_classes=1, resize=36, crop=32)
    assert sorted(set(train.targets)) == [0, 1, 2, 3] and sorted(set(test.targets)) == [5, 6, 7, 8]
    import data
    assert data.dataset_info("stanford")["recall_ks"] == (1, 10, 100, 1000)


def test_metric_folder_split_by_sorted_class(tree):
    train = md.build_split("metric_folder", tree, "train", train_classes=6, val_classes=2)
    val = md.build_split("metric_folder", tree, "val", train_classes=6, val_classes=2)
    test = md.build_split("metric_folder", tree, "test", train_classes=6, val_classes=2)
    assert sorted(set(train.targets)) == [0, 1, 2, 3] and sorted(set(val.targets)) == [4, 5]
    assert sorted(set(test.targets)) == [6, 7, 8, 9] and len(test) == 24
    assert test.class_names[9] == "class09"


@pytest.mark.parametrize("name, expected", [("cub200", "CUB_200_2011/images"), ("cars196", "cars_annos.mat"),
                                            ("stanford", "Ebay_train.txt")])
def test_missing_files_name_the_layout_and_the_official_page(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError) as err:
        md.build_split(name, str(tmp_path), "train")
    text = str(err.value)
    assert expected in text and md.PAGES[name].split()[0] in text and str(tmp_path) in text


def test_missing_dataset_is_a_one_line_cli_error(tmp_path, capsys):
    code = cli.teacher(["--dataset", "cub200", "--data", str(tmp_path), "--no-pretrained", "--save_dir",
                        str(tmp_path / "run"), "--no_tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and "CUB_200_2011" in err and "Traceback" not in err


# ------------------------------------------------------------------------- seed commands
SEED_TEACHER = "--mode train --dataset cub200 --base resnet50 --sample distance --margin 0.2 --embedding_size 512 " \
               "--save_dir teacher"
SEED_STUDENT = "--dataset cub200 --base resnet18 --embedding_size 64 --l2normalize false --teacher_base resnet50 " \
               "--teacher_embedding_size 512 --teacher_load teacher/best.pth --dist_ratio 1 --angle_ratio 2 " \
               "--save_dir student"
SEED_AOMD = "--dataset cars196 --epochs 80 --lr_decay_epochs 40 60 --lr_decay_gamma 0.1 --batch 128 --base resnet18 " \
            "--embedding_size 128 --l2normalize true --aomd_ratio 2e2 --aomd_mode 1 --teacher_base resnet50 " \
            "--teacher_embedding_size 512 --teacher_load cars196_resnet50_512/best.pth --save_dir s --data data"


def test_the_seed_commands_map_onto_our_flags():
    from engine.metric_learning_task import MetricTask

    args = config.parse(config.teacher_parser(), SEED_TEACHER.split())
    MetricTask().configure(args, "teacher", log=lambda *a: None)
    assert (args.model, args.embedding_size, args.l2normalize, args.evaluate) == ("resnet50", 512, True, False)
    assert (args.learning_rate, args.epochs, args.lr_decay_epochs, args.lr_decay_rate, args.batch_size) == \
        (1e-5, 40, [25, 30, 35], 0.5, 64)  # run.py's --batch default (its example scripts pass 128)
    assert args.method__triplet_sample == "distance" and args.method__margin == 0.2 and args.pretrained
    args = config.parse(config.teacher_parser(), "--mode eval --dataset cub200 --base resnet18 --l2normalize false "
                                                 "--embedding_size 64 --load student/best.pth".split())
    assert args.evaluate and args.path_s == "student/best.pth" and args.l2normalize is False
    args = config.parse(config.student_parser(), SEED_STUDENT.split())
    MetricTask().configure(args, "student", log=lambda *a: None)
    assert (args.model_s, args.model_t, args.path_t, args.distill) == ("resnet18", "resnet50", "teacher/best.pth",
                                                                       "metric")
    assert (args.learning_rate, args.epochs, args.lr_decay_epochs, args.lr_decay_rate) == (1e-4, 80, [40, 60], 0.1)
    assert args.batch_size == 64  # run_distill.py's --batch default
    assert config.method_options(args) == {"dist_ratio": 1.0, "angle_ratio": 2.0}
    assert args.teacher_embedding_size == 512 and args.l2normalize is False
    args = config.parse(config.student_parser(), SEED_AOMD.split())
    MetricTask().configure(args, "student", log=lambda *a: None)
    assert config.method_options(args) == {"aomd_ratio": 200.0, "aomd_mode": 1}
    assert args.data_root == "data" and args.batch_size == 128 and args.l2normalize is True


# ------------------------------------------------------------------------------ batches
def test_m_per_class_batches_are_seeded_per_epoch_and_rank():
    labels = [c for c in range(10) for _ in range(7)] + [10, 10]  # class 10 has only 2 images
    sampler = md.MPerClassBatchSampler(labels, batch_size=18, m=4, iter_per_epoch=5, seed=7)
    batches = sampler.batches(1)
    assert len(batches) == 5
    for batch in batches:
        assert len(batch) == 18 and len(set(batch)) == 18
        counts = np.bincount([labels[i] for i in batch])
        assert counts.max() <= 4 and sum(1 for c in counts if c == 4) >= 3  # classes come m at a time
    assert sampler.batches(1) == batches and sampler.batches(2) != batches
    other_rank = md.MPerClassBatchSampler(labels, 18, 4, 5, seed=7, rank=1)
    assert other_rank.batches(1) != batches
    sampler.epoch, sampler.start = 1, 3
    assert list(sampler) == batches[3:] and len(sampler) == 2
    with pytest.raises(ValueError, match="num_image_per_class"):
        md.MPerClassBatchSampler(labels, 18, 1, 5)


# ------------------------------------------------------------------------------- models
def test_resnet_embedding_nets_match_the_reference_layout(tree, tmp_path):
    from core.taps import FeatureTaps, standard_taps

    for arch, pool in (("resnet18", 512), ("resnet50", 2048)):
        model = create_model(arch, family="metric", embedding_size=64, pretrained=False)
        with FeatureTaps(model, standard_taps(model)) as taps:
            shapes = taps.shapes(torch.zeros(2, 3, 64, 64))
        assert shapes["pooled"] == (pool,) and shapes["logits"] == shapes["embedding"] == (64,)
        assert [tuple(s[1:]) for s in shapes["stages"]] == [(16, 16), (8, 8), (4, 4), (2, 2)]
        assert {"base.layer4.0.conv1.weight", "linear.weight", "linear.bias"} <= set(model.state_dict())
        assert torch.allclose(model.eval()(torch.randn(3, 3, 64, 64)).norm(dim=1), torch.ones(3))
    # a reference best.pth (LinearEmbedding's bare state_dict) is a valid --load
    reference = create_model("resnet18", family="metric", embedding_size=64, l2normalize=False, pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "best.pth")
    loaded = create_model("resnet18", family="metric", embedding_size=64, l2normalize=False,
                          init_weights=str(tmp_path / "best.pth"))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in reference.state_dict().items())
    with pytest.raises(ValueError, match="--embedding_size"):
        create_model("resnet18", family="metric", embedding_size=32, init_weights=str(tmp_path / "best.pth"))
    # one training step of a ResNet18 teacher: triplet loss, distance-weighted sampling
    args = config.parse(config.teacher_parser(), folder_args(tree, tmp_path / "run", "--base", "resnet18",
                                                             "--sample", "distance", "--select", "test"))
    trainer = Trainer(args, DistInfo(), "teacher")
    before = trainer.run.model.linear.weight.detach().clone()
    batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
    loss, _, terms = trainer.stepper.forward(batch)
    assert set(terms) == {"triplet"} and torch.isfinite(loss)
    loss.backward()
    trainer.run.optimizer.step()
    assert not torch.equal(before, trainer.run.model.linear.weight)


# ----------------------------------------------------------------------------- samplers
def test_samplers_follow_the_reference_rules():
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(9, 5), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    d = _pairs.pdist(e)
    a, p, n = _pairs.sample_triplets(e, labels, "all")
    assert len(a) == 9 * 2 * 6 and bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())
    a, p, n = _pairs.sample_triplets(e, labels, "hard")
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        negs = [m for m in range(9) if labels[m] != labels[i]]
        assert k == min(negs, key=lambda m: d[i, m])
    a, p, n = _pairs.sample_triplets(e, labels, "semihard")
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        negs = [m for m in range(9) if labels[m] != labels[i]]
        farther = [m for m in negs if d[i, m] > d[i, j]]
        assert k == (min(farther, key=lambda m: d[i, m]) if farther else max(negs, key=lambda m: d[i, m]))
    for name in ("random", "distance"):
        a, p, n = _pairs.sample_triplets(e, labels, name)
        assert len(a) == 18 and bool((labels[a] != labels[n]).all())
    one_class = _pairs.sample_triplets(e[:3], labels[:3], "distance")
    assert all(x.numel() == 0 for x in one_class)
    with pytest.raises(ValueError, match="triplet_sample='bogus' is not accepted"):
        build_distiller("triplet", ShapeSpec(student={"logits": (5,)}, teacher={}), triplet_sample="bogus")


# ------------------------------------------------------------------------------ Recall@K
def test_blocked_recall_equals_the_full_matrix():
    torch.manual_seed(0)
    x, labels = torch.randn(203, 12), torch.randint(0, 17, (203,))
    full = torch.cdist(x, x).pow(2)
    full.fill_diagonal_(float("inf"))
    order = full.argsort(dim=1)
    expected = [float((labels[order[:, :k]] == labels[:, None]).any(dim=1).double().mean()) for k in (1, 2, 4, 8)]
    for block in (1, 7, 64, 203, None):
        got = recall_at_k(x, labels, (1, 2, 4, 8), block=block)
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64)), block


# ------------------------------------------------------------------------------- golden
def test_metric_golden_files_pass_through_the_adapter_command():
    files = [str(GOLDEN / f"{m}.pt") for m in METRIC_GOLDEN]
    assert len(files) == 10
    proc = subprocess.run([sys.executable, "-m", "distillers.golden"] + files, cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sum(line.startswith("PASS") for line in proc.stdout.splitlines()) == 10


# ------------------------------------------------------------------------- training steps
def test_teacher_trains_with_triplet_distance_sampling_and_evaluates(tree, tmp_path, capsys):
    args = config.parse(config.teacher_parser(), folder_args(tree, tmp_path, "--sample", "distance",
                                                             "--margin", "0.2"))
    trainer = Trainer(args, DistInfo(), "teacher")
    assert trainer.run.config["learning_rate"] == 1e-3 and trainer.run.config["lr_decay_epochs"] == [25, 30, 35]
    assert type(trainer.run.optimizer).__name__ == "Adam" and trainer.run.optimizer.defaults["weight_decay"] == 1e-5
    before = copy.deepcopy(trainer.run.model.state_dict())
    batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
    assert batch.images.shape == (12, 3, 32, 32) and np.bincount(batch.labels.numpy()).max() == 4
    loss, embedding, terms = trainer.stepper.forward(batch)
    assert set(terms) == {"triplet"} and torch.isfinite(loss) and embedding.shape == (12, EMBED)
    (term,) = trainer.run.objective.terms  # the teacher's objective: the triplet part of the metric method
    assert term.name == "triplet" and term.weight == 1.0 and term.distiller.triplet_sample == "distance"
    result = trainer.fit()
    assert not torch.equal(before["linear.weight"], trainer.run.model.state_dict()["linear.weight"])
    assert {"recall@1", "recall@8", "val_recall@1", "best_recall@1"} <= set(result)
    state = load(tmp_path / "latest.pth")
    assert state["arch"] == "tiny_metric" and state["config"]["embedding_size"] == EMBED
    out = capsys.readouterr().out
    assert "R@1/2/4/8" in out and "held-out training classes" in out
    # the seeds' run.py --mode eval through train_teacher.py
    assert cli.teacher(["--mode", "eval", "--dataset", "metric_folder", "--data", tree, "--data_opt", "image_size=32",
                        "--data_opt", "train_classes=6", "--num_workers", "0", "--load",
                        str(tmp_path / "latest.pth")]) == 0
    printed = capsys.readouterr().out
    assert f"test R@1/2/4/8 {result['recall@1']:.2f}" in printed
    code = cli.teacher(["--mode", "eval", "--dataset", "metric_folder", "--data", tree, "--data_opt", "image_size=32",
                        "--embedding_size", "99", "--load", str(tmp_path / "latest.pth")])
    assert code == 2 and "--embedding_size 99 does not match" in capsys.readouterr().err


def test_teacher_resume_is_bitwise(tree, tmp_path):
    def run(folder, *extra):
        args = config.parse(config.teacher_parser(), folder_args(tree, folder, "--sample", "semihard",
                                                                 "--select", "test", *extra))
        Trainer(args, DistInfo(), "teacher").fit()
        return load(folder / "latest.pth")["model"]

    straight = run(tmp_path / "a", "--epochs", "2")
    run(tmp_path / "b", "--epochs", "1")
    resumed = run(tmp_path / "b", "--epochs", "2", "--resume")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def student(tree, tmp_path, teacher, *extra):
    args = config.parse(config.student_parser(), folder_args(tree, tmp_path, "--teacher_load", teacher, *extra))
    return Trainer(args, DistInfo(), "student")


def _flags(options):
    out = []
    for key, value in options.items():
        out += [f"--{key}", ",".join(value) if isinstance(value, tuple) else str(value)]
    return out


STEP_CASES = {  # golden method -> (teacher, training-time options replacing the file's fixed triplets)
    "rkd_metric": ("tiny_metric", {}), "darkrank": ("tiny_metric", {}), "metric_sp": ("tiny_metric", {}),
    "metric_at": ("tiny_metric_wide", {}), "metric_fitnet": ("tiny_metric_wide", {}), "aomd": ("tiny_metric_wide", {}),
    "triplet": ("tiny_metric", {"triplet_sample": "hard"}),
    "metric_contrastive": ("tiny_metric", {"triplet_sample": "all"}),
}


@pytest.mark.filterwarnings("ignore:no loss term")  # AT, AOMD, FitNet on stages alone: expected
@pytest.mark.parametrize("method_name", sorted(STEP_CASES))
def test_training_step_of_each_loss_matches_the_golden_adapter(method_name, tree, teachers, tmp_path):
    entry = golden.TABLE[method_name]
    arch, extra = STEP_CASES[method_name]
    options = {**entry.options, **extra}
    trainer = student(tree, tmp_path, teachers[arch], "--teacher_base", arch, "--distill", entry.distiller,
                      *_flags(options))
    method = trainer.run.method
    captured = {}
    forward = method.forward

    def spy(s, t, batch=None):
        out = forward(s, t, batch)
        captured.update(s=s, t=t, batch=batch, loss=method.total(out))
        if method_name == "aomd":  # the golden input is after the adapters (before this step's update)
            captured["adapted"] = [f.detach() for f in method.adapt(s["stages"])]
        return out

    method.forward = spy
    params_before = copy.deepcopy(method.state_dict())
    batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
    loss, _, _ = trainer.stepper.forward(batch)
    trainer.run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.run.optimizer.step()
    assert torch.allclose(loss, captured["loss"])

    s, t, batch = captured["s"], captured["t"], dict(captured["batch"])
    if "anchor_idx" in entry.inputs:  # the sampler's triplets on the captured embeddings
        mined = _pairs.sample_triplets(s["logits"].detach(), batch["labels"], options["triplet_sample"],
                                       squared=method_name == "triplet")
        batch.update(zip(("anchor_idx", "pos_idx", "neg_idx"), mined))
    inputs = golden.record_inputs(entry, s, t, batch)
    if method_name == "aomd":  # the golden file's student maps are those after the adapters
        inputs.update({name: [v.double() for v in captured["adapted"]]
                       for name, role in entry.inputs.items() if role.startswith("s:")})
    params = {}
    if method_name == "metric_fitnet":
        params = {"transform.weight": params_before["regressors.stage2.weight"].double()}
    hparams = {key: getattr(method, option) for option, key in entry.hparam_options.items()}
    record = {"method": method_name, "hparams": hparams, "inputs": inputs, "params": params,
              "loss": loss.detach().double(), "tolerance": 1e-4, "extra": {}}
    outcome = GoldenCase(record).run()
    assert outcome.ok, outcome.problems
    for name, param in method.named_parameters():  # trained parts (FitNet regressors, AOMD adapters)
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert not torch.equal(param.detach(), params_before[name]), name
    if method_name == "aomd":
        assert len(list(method.parameters())) == 8  # 4 adapters (conv weight + bias): channels differ


def test_composite_objective_trains_every_term_and_checkpoints_its_parts(tree, teachers, tmp_path):
    ratios = ["--triplet_ratio", "1", "--dist_ratio", "1", "--angle_ratio", "2", "--dark_ratio", "1",
              "--at_ratio", "1e3", "--fitnet_ratio", "1", "--sp_ratio", "2e1", "--aomd_ratio", "2e2",
              "--aomd_mode", "1", "--teacher_base", "tiny_metric_wide"]
    trainer = student(tree, tmp_path, teachers["tiny_metric_wide"], *ratios)
    assert trainer.run.config["distill"] == "metric" and trainer.run.config["learning_rate"] == 1e-3
    assert trainer.run.config["lr_decay_epochs"] == [40, 60]
    assert trainer.run.weights["alpha"] == 0 and trainer.run.weights["gamma"] == 0
    batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
    loss, _, terms = trainer.stepper.forward(batch)
    assert set(terms) == {"triplet", "dist", "angle", "dark", "at", "fitnet", "sp", "aomd"}
    assert torch.allclose(loss, sum(terms.values()))
    # the ratios are the objective's weights of ordinary terms, not weights hidden inside one method
    assert {term.name: term.weight for term in trainer.run.objective.terms} == {
        "triplet": 1.0, "dist": 1.0, "angle": 2.0, "dark": 1.0, "at": 1e3, "fitnet": 1.0, "sp": 20.0, "aomd": 200.0}
    assert "2 * angle=metric_rkd(distance_weight=0.0, angle_weight=1.0)" in trainer.run.objective.describe()
    trainer.run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimised = {id(p) for g in trainer.run.optimizer.param_groups for p in g["params"]}
    for name, param in trainer.run.method.named_parameters():
        assert id(param) in optimised and param.grad is not None, name
    trainer.run.optimizer.step()
    trainer.save("latest.pth", 0.0)
    saved = trainer.run.method.state_dict()
    assert any(k.startswith("terms.fitnet.regressors.") for k in saved)
    assert any(k.startswith("terms.aomd.adapters.") for k in saved)
    resumed = student(tree, tmp_path, teachers["tiny_metric_wide"], *ratios, "--resume")
    resumed.resume(str(tmp_path / "latest.pth"))
    for key, value in saved.items():
        assert torch.equal(value, resumed.run.method.state_dict()[key]), key


def test_aomd_alone_warns_that_the_embedding_head_gets_no_gradient(tree, teachers, tmp_path):
    trainer = student(tree, tmp_path, teachers["tiny_metric_wide"], "--teacher_base", "tiny_metric_wide",
                      "--aomd_ratio", "2e2")
    with pytest.warns(UserWarning, match="no loss term reaches"):
        trainer.fit()


def test_rkd_student_end_to_end_through_the_cli(tree, teachers, tmp_path, capsys):
    code = cli.student(folder_args(tree, tmp_path, "--teacher_base", "tiny_metric", "--teacher_load",
                                   teachers["tiny_metric"], "--l2normalize", "false", "--dist_ratio", "1",
                                   "--angle_ratio", "2", "--select", "test"))
    out = capsys.readouterr().out
    assert code == 0 and "teacher tiny_metric test R@1/2/4/8" in out and "selected on the test split" in out
    state = load(tmp_path / "latest.pth")
    assert state["distiller_name"] == "metric" and state["config"]["l2normalize"] is False
    # the seeds evaluate a student with run.py --mode eval: train_teacher.py --mode eval here
    assert cli.teacher(["--mode", "eval", "--dataset", "metric_folder", "--data", tree, "--data_opt", "image_size=32",
                        "--data_opt", "train_classes=6", "--l2normalize", "false", "--embedding_size", str(EMBED),
                        "--num_workers", "0", "--plugin", PLUGIN, "--load", str(tmp_path / "latest.pth")]) == 0
    assert "tiny_metric (" in capsys.readouterr().out


# ------------------------------------------------------------- the seeds' commands as typed
def test_the_start_message_says_how_best_pth_is_selected():
    from engine.metric_learning_task import MetricTask

    lines = []
    args = config.parse(config.teacher_parser(), SEED_TEACHER.split())
    MetricTask().configure(args, "teacher", log=lines.append)
    text = "\n".join(lines)
    assert "best Recall@1 on 20 of the 100 training classes, held out of training (--select val, the default" in text
    assert "--select test reproduces the seeds' protocol" in text
    lines.clear()
    args = config.parse(config.student_parser(), SEED_STUDENT.split() + ["--select", "test"])
    MetricTask().configure(args, "student", log=lines.append)
    assert any("best test Recall@1 (--select test, the seeds' protocol" in line for line in lines)
    assert args.data_opts["val_classes"] == 0


class _SeedBackbone(torch.nn.Module):
    """The RKD seed's model/backbone/resnet.py ResNet18: torchvision's modules by name, no fc."""

    def __init__(self):
        super().__init__()
        import torchvision
        net = torchvision.models.resnet18(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            self.add_module(name, getattr(net, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class _SeedEmbedding(torch.nn.Module):
    """The seed's model/embedding.py LinearEmbedding (base, linear, optional L2 normalisation)."""

    def __init__(self, embedding_size=16):
        super().__init__()
        self.base, self.linear = _SeedBackbone(), torch.nn.Linear(512, embedding_size)

    def forward(self, x):
        return torch.nn.functional.normalize(self.linear(self.base(x).view(x.size(0), -1)), p=2, dim=1)


def test_a_seed_best_pth_evaluates_with_mode_eval(tree, tmp_path, capsys, monkeypatch):
    from engine.metric_learning_task import MetricTask

    torch.manual_seed(5)
    seed_model = _SeedEmbedding().eval()
    path = tmp_path / "best.pth"
    torch.save(seed_model.state_dict(), path)  # run.py: torch.save(model.state_dict(), "<save_dir>/best.pth")
    argv = ["--mode", "eval", "--dataset", "metric_folder", "--data", tree, "--data_opt", "image_size=32",
            "--data_opt", "train_classes=6", "--num_workers", "0", "--load", str(path)]
    evaluated, evaluate = {}, MetricTask.evaluate

    def spy(self, model, *args, **kwargs):
        evaluated.update(model.state_dict())
        return evaluate(self, model, *args, **kwargs)

    monkeypatch.setattr(MetricTask, "evaluate", spy)
    assert cli.teacher(argv) == 0
    assert set(evaluated) == set(seed_model.state_dict())  # the seed's module names are ours
    assert all(torch.equal(evaluated[k], v) for k, v in seed_model.state_dict().items())
    out = capsys.readouterr().out
    assert "bare state_dict (the RKD seed's format): resnet18 (from its head's 512-d input), embedding size 16" in out
    test = md.build_split("metric_folder", tree, "test", train_classes=6, image_size=32)
    with torch.no_grad():
        embeddings = seed_model(torch.stack([test[i][0] for i in range(len(test))]))
    expected = recall_at_k(embeddings, torch.tensor(test.targets), (1, 2, 4, 8))
    assert "resnet18 (" in out and "test R@1/2/4/8 " + " ".join(f"{100 * float(r):.2f}" for r in expected) in out
    # the architecture may be named; a wrong one, or no metric dataset, is one error line
    assert cli.teacher(argv + ["--base", "resnet18", "--embedding_size", "16"]) == 0
    capsys.readouterr()
    assert cli.teacher(argv + ["--base", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert "does not fit architecture 'resnet50'" in err and len(err.strip().splitlines()) == 1
    assert cli.teacher(["--mode", "eval", "--load", str(path)]) == 2  # the default dataset is CIFAR-100
    err = capsys.readouterr().err
    assert "--mode is a metric-learning flag: give --dataset cub200" in err and "Traceback" not in err


def _cub_tree(root):
    rng = np.random.default_rng(4)
    for c in range(200):
        folder = root / "CUB_200_2011" / "images" / f"{c + 1:03d}.Bird_{c}"
        folder.mkdir(parents=True)
        for i in range(2):
            _image(folder / f"{i}.jpg", (c, 100, 200 - c), rng)
    return str(root)


def test_eval_on_another_dataset_takes_the_command_line_data_options(tree, tmp_path, capsys):
    from engine.evaluate import data_options

    cub = _cub_tree(tmp_path / "cub")
    run = tmp_path / "run"
    assert cli.teacher(["--dataset", "cub200", "--data", cub, "--data_opt", "resize=36", "--data_opt", "crop=32",
                        "--base", "tiny_metric", "--no-pretrained", "--embedding_size", str(EMBED), "--batch", "12",
                        "--num_image_per_class", "2", "--iter_per_epoch", "1", "--epochs", "1", "--num_workers", "0",
                        "--no_tensorboard", "--save_dir", str(run), "--plugin", PLUGIN]) == 0
    assert load(run / "latest.pth")["config"]["data_opts"] == {"resize": 36, "crop": 32}
    capsys.readouterr()
    argv = ["--mode", "eval", "--dataset", "metric_folder", "--data", tree, "--data_opt", "image_size=32",
            "--data_opt", "train_classes=6", "--num_workers", "0", "--load", str(run / "latest.pth")]
    assert cli.teacher(argv) == 0  # was an uncaught TypeError: metric_folder() got resize=36
    out = capsys.readouterr().out
    assert "left out: resize=36, crop=32" in out and "tiny_metric (" in out and "test R@1/2/4/8" in out
    assert cli.teacher(argv + ["--data_opt", "crop=24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data_opt crop: dataset 'metric_folder' takes no option 'crop'" in err
    assert "image_size" in err
    # on the training dataset the recorded options apply and the command line's win
    assert data_options("cub200", {"resize": 36, "crop": 32}, {"crop": 24}) == {"resize": 36, "crop": 24}
    assert cli.teacher(["--mode", "eval", "--dataset", "cub200", "--data", cub, "--data_opt", "crop=40",
                        "--num_workers", "0", "--load", str(run / "latest.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "crop 40, resize 36" in err


def _gather_worker(rank, port, tree, out):
    import torch.distributed as dist
    from data.loaders import eval_loader
    from engine.metric_learning_task import MetricTask

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        test = md.build_split("metric_folder", tree, "test", train_classes=6, image_size=32)
        torch.manual_seed(0)
        model = create_model("tiny_metric", family="metric", embedding_size=8, pretrained=False)
        embeddings, labels = MetricTask().embed(model, eval_loader(test, rank, 2, 5, 0), torch.device("cpu"))
        if rank == 0:
            torch.save((embeddings, labels), out)
    finally:
        dist.destroy_process_group()


def test_ddp_evaluation_gathers_every_sample_once(tree, tmp_path):
    from data.loaders import eval_loader
    from engine.metric_learning_task import MetricTask

    port = 29500 + (os.getpid() + 500) % 1000
    torch.multiprocessing.spawn(_gather_worker, args=(port, tree, str(tmp_path / "g.pt")), nprocs=2)
    gathered, labels = torch.load(tmp_path / "g.pt", weights_only=True)
    test = md.build_split("metric_folder", tree, "test", train_classes=6, image_size=32)
    torch.manual_seed(0)
    model = create_model("tiny_metric", family="metric", embedding_size=8, pretrained=False)
    full, full_labels = MetricTask().embed(model, eval_loader(test, 0, 1, 5, 0), torch.device("cpu"))
    order = list(range(0, len(test), 2)) + list(range(1, len(test), 2))  # rank 0's shard, then rank 1's
    assert torch.equal(labels, full_labels[order]) and torch.allclose(gathered, full[order], atol=1e-6)


def test_two_gloo_processes_train_a_metric_teacher(tree, tmp_path):
    port = 29500 + (os.getpid() + 700) % 1000
    argv = folder_args(tree, tmp_path, "--sample", "distance", "--batch", "16", "--device", "cpu", "--nprocs", "2",
                       "--dist-url", f"tcp://127.0.0.1:{port}")
    assert cli.teacher(argv) == 0
    assert load(tmp_path / "latest.pth")["epoch"] == 2


# -------------------------------------------------------------------------------- errors
def test_bad_input_gives_clear_errors(tree, teachers, tmp_path, capsys, monkeypatch):
    base = folder_args(tree, tmp_path, "--teacher_base", "tiny_metric", "--teacher_load", teachers["tiny_metric"])
    code = cli.student(base + ["--teacher_embedding_size", "64", "--dist_ratio", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--teacher_embedding_size 64 does not match the teacher checkpoint" in err
    assert "has 32 outputs" in err
    assert cli.student(base) == 2 and "every loss ratio is 0" in capsys.readouterr().err
    for parse in (lambda: config.parse(config.teacher_parser(), ["--dataset", "cub200", "--sample", "bogus"]),
                  lambda: config.parse(config.student_parser(), ["--dataset", "cub200", "--triplet_sample", "bogus"])):
        with pytest.raises(SystemExit):
            parse()
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    code = cli.student(base + ["--dist_ratio", "1", "-a", "0.9"])
    assert code == 2 and "does not apply to metric learning" in capsys.readouterr().err

    import torchvision.models._api as api
    from urllib.error import URLError

    def offline(*a, **k):
        raise URLError("Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="--no-pretrained"):
        create_model("resnet18", family="metric", pretrained=True)
