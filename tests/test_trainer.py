"""The trainer end to end on tiny synthetic data: resume, DDP, checkpoints, CLIs, bad input."""
import os
from pathlib import Path

import pytest
import torch
import yaml

from engine import cli, config, recipes
from engine.checkpoint import load
from engine.distributed import DistInfo
from engine.loop import Trainer

PLUGIN = str(Path(__file__).parent / "plugins" / "nobn_model.py")
TINY = ["--dataset", "synthetic", "--data_opt", "train_size=192", "--data_opt", "test_size=64",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard"]


def teacher_args(tmp, *extra):
    return config.parse(config.teacher_parser(), TINY + ["--model", "resnet8", "--save_dir", str(tmp)] + list(extra))


def student_args(tmp, *extra):
    return config.parse(config.student_parser(), TINY + ["--save_dir", str(tmp)] + list(extra))


def run_teacher(tmp, *extra):
    trainer = Trainer(teacher_args(tmp, *extra), DistInfo(), "teacher")
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    run_teacher(folder, "--epochs", "2")
    return str(folder / "latest.pth")


def weights(path):
    return load(path)["model"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bitwise(tmp_path):
    run_teacher(tmp_path / "straight", "--epochs", "2")
    run_teacher(tmp_path / "split", "--epochs", "1")
    run_teacher(tmp_path / "split", "--epochs", "2", "--resume")
    assert_same(weights(tmp_path / "straight/latest.pth"), weights(tmp_path / "split/latest.pth"))
    straight, split = load(tmp_path / "straight/latest.pth"), load(tmp_path / "split/latest.pth")
    assert straight["optimizer"]["state"].keys() == split["optimizer"]["state"].keys()
    for k, v in straight["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], split["optimizer"]["state"][k]["momentum_buffer"])


def test_checkpoint_contents_and_tensorboard(tmp_path):
    folder = tmp_path / "run"
    args = config.parse(config.teacher_parser(), [a for a in TINY if a != "--no_tensorboard"] +
                        ["--model", "resnet8", "--save_dir", str(folder), "--epochs", "1", "--log_every", "2"])
    Trainer(args, DistInfo(), "teacher").fit()
    state = load(folder / "latest.pth")
    for key in ("model", "optimizer", "scheduler", "rng", "config", "arch", "code_version", "epoch"):
        assert key in state
    assert state["arch"] == "resnet8" and state["epoch"] == 2 and (folder / "best.pth").exists()
    assert not [p for p in os.listdir(folder) if p.startswith(".tmp")]
    events = list((folder / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/ce", "train/lr", "train/images_per_s", "train/data_wait", "test/top1", "test/top5"} <= tags
    steps = [e.step for e in acc.Scalars("train_step/loss")]  # --log_every 2: 6 steps, 3 points
    assert steps == [2, 4, 6] and {"train_step/ce", "train_step/lr", "train_step/data_wait"} <= tags
    assert all(0 <= e.value <= 1 for e in acc.Scalars("train/data_wait") + acc.Scalars("train_step/data_wait"))


def test_student_kd_and_evaluate_reproduces_accuracy(tmp_path, teacher_ckpt, capsys):
    trainer = Trainer(student_args(tmp_path, "--path_t", teacher_ckpt, "--model_s", "resnet8", "--epochs", "1",
                                   "--distill", "kd"), DistInfo(), "student")
    result = trainer.fit()
    assert (trainer.run.weights["gamma"], trainer.run.weights["alpha"], trainer.run.weights["beta"]) == (0.1, 0.9, 0.0)
    out = capsys.readouterr().out
    assert "teacher check on synthetic" in out and "measured top-1" in out, out
    code = cli.student(["--evaluate", "--path_s", str(tmp_path / "latest.pth")] + TINY)
    out = capsys.readouterr().out
    assert code == 0
    assert f"test top-1 {result['top1']:.2f}%" in out and f"recorded at training time: {result['top1']:.2f}%" in out


def test_repdistiller_teacher_checkpoint_loads(tmp_path, teacher_ckpt):
    folder = tmp_path / "resnet8_vanilla"
    folder.mkdir()
    torch.save({"model": weights(teacher_ckpt), "epoch": 240}, folder / "ckpt_epoch_240.pth")
    trainer = Trainer(student_args(tmp_path / "s", "--path_t", str(folder / "ckpt_epoch_240.pth"),
                                   "--model_s", "resnet8", "--epochs", "1"), DistInfo(), "student")
    assert trainer.run.teacher.arch == "resnet8"
    assert_same(trainer.run.teacher.state_dict(), weights(teacher_ckpt))


def _cli_error(capsys, fn, argv):
    code = fn(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_bad_input_gives_clear_errors(tmp_path, teacher_ckpt, capsys):
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", teacher_ckpt, "--distill", "fitnett"])
    assert "Unknown distiller 'fitnett'" in err
    err = _cli_error(capsys, cli.teacher, TINY + ["--model", "resnet33"])
    assert "Unknown cifar model 'resnet33'" in err and "Did you mean 'resnet32'" in err
    err = _cli_error(capsys, cli.teacher, ["--dataset", "cifar1000"])
    assert "Unknown dataset 'cifar1000'" in err and "cifar100" in err
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", teacher_ckpt, "--model_t", "resnet20"])
    assert "--model_t resnet20 disagrees with the teacher checkpoint" in err and "records 'resnet8'" in err
    from models import create_model
    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp_path / "plain.pth")
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", str(tmp_path / "plain.pth"), "--model_t", "resnet8"])
    assert "does not fit architecture 'resnet8'" in err and len(err.strip().splitlines()) == 1, err
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", str(tmp_path / "nope.pth")])
    assert "does not exist" in err
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", teacher_ckpt, "--distill", "kd", "-r", "0", "-a", "0"])
    assert "every loss weight is 0: nothing to train" in err
    err = _cli_error(capsys, cli.teacher, ["--dataset", "imagefolder", "--data-root", str(tmp_path / "none"),
                                           "--num_workers", "0"])
    assert str(tmp_path / "none") in err
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", teacher_ckpt, "--model_s", "resnet8x4",
                                                  "--distill", "fsp"])
    assert "--distill fsp with teacher resnet8 and student resnet8x4" in err and "channels" in err
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", teacher_ckpt, "--distill", "crd", "--mode", "loose"])
    assert "loose" in err
    err = _cli_error(capsys, cli.student, TINY + ["--path_t", teacher_ckpt, "--distill", "kd", "--nce_k", "5"])
    assert "unrecognized arguments: --nce_k 5; --nce_k is an option of crd" in err and "not of --distill kd" in err
    err = _cli_error(capsys, cli.teacher, TINY + ["--model", "resnet8", "--batch_size", "500"])
    assert "smaller than one batch" in err


def test_yaml_config_command_line_wins_and_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 7, "learning_rate": 0.2, "lr_decay_epochs": "3,5", "nce_k": 64,
                                  "distill": "crd"}))
    args = config.parse(config.student_parser(), ["--config", str(cfg), "--epochs", "3"])
    assert (args.epochs, args.learning_rate, args.lr_decay_epochs) == (3, 0.2, [3, 5])
    assert config.method_options(args) == {"nce_k": 64}
    cfg.write_text(yaml.safe_dump({"nce_k": 64}))  # an option of another method than the default kd
    with pytest.raises(config.ConfigError, match="unknown key 'nce_k'; --nce_k is an option of crd"):
        config.parse(config.student_parser(), ["--config", str(cfg)])
    cfg.write_text(yaml.safe_dump({"epoch": 7}))
    with pytest.raises(config.ConfigError, match="unknown key 'epoch'"):
        config.parse(config.student_parser(), ["--config", str(cfg)])


def test_seed_flag_spellings():
    args = config.parse(config.student_parser(), [
        "--path-t", "t.pth", "-c", "0", "-d", "0", "-b", "1", "--batch", "16", "--lr_decay_epochs", "150", "180",
        "--lr_decay_gamma", "0.2", "--data_root", "/x"])
    assert (args.path_t, args.gamma, args.alpha, args.beta, args.batch_size) == ("t.pth", 0.0, 0.0, 1.0, 16)
    assert (args.lr_decay_epochs, args.lr_decay_rate, args.data_root) == ([150, 180], 0.2, "/x")


def test_small_lr_students_are_announced():
    args = config.parse(config.student_parser(), [])
    said = []
    recipes.apply_recipe(args, "cifar", "MobileNetV2", log=said.append)
    assert args.learning_rate == 0.01 and "0.01" in said[0]
    args = config.parse(config.student_parser(), ["--learning_rate", "0.05"])
    recipes.apply_recipe(args, "cifar", "ShuffleV1", log=said.append)
    assert args.learning_rate == 0.05


def test_two_gloo_processes_match_one_process(tmp_path):
    common = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
              "--data_opt", "augment=false", "--batch_size", "32", "--num_workers", "0", "--no_tensorboard",
              "--model", "test_nobn", "--plugin", PLUGIN, "--epochs", "2", "--device", "cpu"]
    assert cli.teacher(common + ["--save_dir", str(tmp_path / "one")]) == 0
    port = 29500 + os.getpid() % 1000
    assert cli.teacher(common + ["--save_dir", str(tmp_path / "two"), "--nprocs", "2",
                                 "--dist-url", f"tcp://127.0.0.1:{port}"]) == 0
    one, two = weights(tmp_path / "one/latest.pth"), weights(tmp_path / "two/latest.pth")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key
    assert load(tmp_path / "two/latest.pth")["epoch"] == 3


def test_init_stage_runs_logged_checkpointed_and_resumable(tmp_path, teacher_ckpt, capsys, monkeypatch):
    """AB's initialisation stage: runs before the main loop, saved per epoch, resumable mid-stage."""
    base = ["--path_t", teacher_ckpt, "--model_s", "resnet8x4", "--distill", "ab", "--init_epochs", "2",
            "--epochs", "1", "--save_dir", str(tmp_path)]
    monkeypatch.setenv("DISTILLERS_FAULT", "SIGINT:init_step:2:1")
    assert cli.student(TINY + base) == 130
    state = load(tmp_path / "latest.pth")
    assert (state["phase"], state["init_done"], state["step"]) == ("init", 1, 1)
    connectors = {k: v for k, v in state["distiller"].items() if k.endswith("conv.weight")}
    assert connectors
    out = capsys.readouterr().out
    assert "initialisation stage of ab: 2 epochs" in out and "init epoch 1/2" in out
    monkeypatch.delenv("DISTILLERS_FAULT", raising=False)
    resumed = Trainer(student_args(tmp_path, *base, "--resume"), DistInfo(), "student")
    resumed.fit()
    final = load(tmp_path / "latest.pth")
    assert (final["phase"], final["init_done"], final["epoch"]) == ("main", 2, 2)
    for name, param in resumed.run.method.named_parameters():
        assert not param.requires_grad, f"{name} should be frozen after the init stage"
    trained = {k: v for k, v in final["distiller"].items() if k in connectors}
    assert any(not torch.equal(trained[k], connectors[k]) for k in connectors)


def test_simkd_student_evaluates_without_teacher(tmp_path, teacher_ckpt, capsys):
    trainer = Trainer(student_args(tmp_path, "--path_t", teacher_ckpt, "--model_s", "resnet8", "--epochs", "1",
                                   "--distill", "simkd"), DistInfo(), "student")
    assert (trainer.run.weights["gamma"], trainer.run.weights["alpha"], trainer.run.weights["beta"]) == (0.0, 0.0, 1.0)
    result = trainer.fit()
    capsys.readouterr()
    os.rename(teacher_ckpt, teacher_ckpt + ".hidden")  # no teacher anywhere
    try:
        assert cli.student(["--evaluate", "--path_s", str(tmp_path / "latest.pth")] + TINY) == 0
    finally:
        os.rename(teacher_ckpt + ".hidden", teacher_ckpt)
    assert f"test top-1 {result['top1']:.2f}%" in capsys.readouterr().out


def test_crd_gets_contrast_indices_automatically(tmp_path, teacher_ckpt):
    trainer = Trainer(student_args(tmp_path, "--path_t", teacher_ckpt, "--model_s", "resnet8", "--epochs", "1",
                                   "--distill", "crd", "--nce_k", "16"), DistInfo(), "student")
    batch = next(iter(trainer.run.train_loader))
    assert batch.contrast_idx.shape == (32, 17)
    assert torch.equal(batch.contrast_idx[:, 0], batch.index)  # exact mode: the positive is the sample itself
    labels = torch.as_tensor(trainer.run.train_set.targets)
    assert (labels[batch.contrast_idx[:, 1:]] != batch.labels[:, None]).all()
    before = trainer.run.method.state_dict()["contrast.memory_v1"].clone()
    trainer.fit()
    assert not torch.equal(before, trainer.run.method.state_dict()["contrast.memory_v1"])


def test_dot_optimiser_with_any_method_trains_resumes_and_reduces_to_sgd(tmp_path, teacher_ckpt, monkeypatch):
    """--dot: two momenta (task, distillation) in the optimiser state; with delta 0 and no weight decay
    it is SGD with momentum on the summed gradient; an interrupted DOT run resumes bit for bit."""
    base = TINY + ["--path_t", teacher_ckpt, "--model_s", "resnet8", "--distill", "kd", "--epochs", "2",
                   "--weight_decay", "0"]
    assert cli.student(base + ["--save_dir", str(tmp_path / "sgd")]) == 0
    assert cli.student(base + ["--dot", "--dot_delta", "0", "--save_dir", str(tmp_path / "dot0")]) == 0
    dot = base + ["--dot", "--save_dir", str(tmp_path / "dot")]
    assert cli.student(dot) == 0
    sgd, dot0, dot75 = (weights(tmp_path / f"{n}/latest.pth") for n in ("sgd", "dot0", "dot"))

    def gap(a, b):  # largest weight difference over the network
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())

    # delta 0: SGD up to rounding (two updates per step instead of one), far below what delta 0.075 does
    assert gap(sgd, dot0) < 1e-3 and gap(sgd, dot75) > 20 * gap(sgd, dot0)
    state = load(tmp_path / "dot/latest.pth")["optimizer"]["state"]
    assert any("momentum_kd_buffer" in s for s in state.values()) and any("momentum_buffer" in s for s in state.values())
    cut = base + ["--dot", "--save_dir", str(tmp_path / "cut")]
    monkeypatch.setenv("DISTILLERS_FAULT", "SIGINT:train_step:2:2")
    assert cli.student(cut) == 130
    monkeypatch.delenv("DISTILLERS_FAULT", raising=False)
    assert cli.student(cut + ["--resume"]) == 0
    assert_same(weights(tmp_path / "dot/latest.pth"), weights(tmp_path / "cut/latest.pth"))


def test_two_view_methods_get_a_weak_and_a_strong_view(tmp_path, teacher_ckpt):
    """MLKD requests a further view, "strong" (ExtraView): the data path serves it (it adds RandAugment),
    one forward covers both views, the method reads the second in batch["strong"], and the task's
    cross-entropy covers both views, as the reference."""
    import torch.nn.functional as F

    trainer = Trainer(student_args(tmp_path, "--path_t", teacher_ckpt, "--model_s", "resnet8", "--epochs", "1",
                                   "--distill", "mlkd"), DistInfo(), "student")
    assert [type(r).__name__ for r in trainer.run.objective.data_requests()] == ["ExtraView"]
    batch = next(iter(trainer.run.train_loader))
    x, y, strong = batch.images, batch.labels, batch.views["strong"]
    assert x.shape == strong.shape == (32, 3, 32, 32) and not torch.equal(x, strong)
    seen = {}
    forward = trainer.run.method.forward

    def spy(s, t, batch=None):
        seen.update(s=s["logits"], strong=batch["strong"]["s"]["logits"], t_strong=batch["strong"]["t"]["logits"])
        return forward(s, t, batch)

    trainer.run.method.forward = spy
    loss, prediction, terms = trainer.train_step(batch, trainer.run.optimizer)
    assert seen["strong"].shape == seen["s"].shape and not torch.allclose(seen["strong"], seen["s"])
    ce = F.cross_entropy(seen["s"], y) + F.cross_entropy(seen["strong"], y)
    assert torch.allclose(terms["ce"], trainer.run.weights["gamma"] * ce)
    assert torch.isfinite(loss) and set(terms) == {"ce", "mlkd_instance", "mlkd_batch", "mlkd_class"}


def test_device_loader_trains_and_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    """--loader device: the same sample order as the DataLoader path, augmentations a function of
    (seed, epoch, sample), so even a mid-epoch resume is bit for bit without loader state."""
    argv = TINY + ["--model", "resnet8", "--epochs", "2", "--loader", "device"]
    assert cli.teacher(argv + ["--save_dir", str(tmp_path / "a")]) == 0
    monkeypatch.setenv("DISTILLERS_FAULT", "SIGTERM:train_step:2:2")
    assert cli.teacher(argv + ["--save_dir", str(tmp_path / "b")]) == 143
    monkeypatch.delenv("DISTILLERS_FAULT", raising=False)
    assert cli.teacher(argv + ["--save_dir", str(tmp_path / "b"), "--resume"]) == 0
    assert_same(weights(tmp_path / "a/latest.pth"), weights(tmp_path / "b/latest.pth"))
    assert load(tmp_path / "a/latest.pth")["acc"] > 0
