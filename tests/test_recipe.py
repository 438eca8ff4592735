"""The ViT recipe (issue 21 §6, §8): EMA by its formula and resumed bit for bit with mixing, AdamW and a
warmed-up cosine schedule; gradient clipping before the step (also under the fp16 scaler); drop path as the
timm model option; one-line errors for bad values; the DeiT and OFA-KD recipes as configs."""
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import cli, config
from engine.checkpoint import load
from engine.distributed import DistInfo
from engine.ema import ModelEma
from engine.loop import Trainer
from test_trainer import _cli_error

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard", "--model", "resnet8"]
RECIPE = ["--mixup", "0.8", "--cutmix", "1.0", "--label_smoothing", "0.1", "--ema", "0.9", "--optimizer", "adamw",
          "--learning_rate", "0.002", "--weight_decay", "0.05", "--scheduler", "cosine", "--warmup_epochs", "1",
          "--clip_grad", "2.0"]


def test_ema_follows_the_formula_and_copies_the_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, 0.75)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))  # moves the BatchNorm statistics
        ema.update(model)
        for name, p in model.named_parameters():
            expected[name] = 0.75 * expected[name] + 0.25 * p.detach()
    state = ema.module.state_dict()
    for name, _ in model.named_parameters():
        assert torch.allclose(state[name], expected[name], rtol=1e-6, atol=1e-7), name
        assert not torch.allclose(state[name], model.state_dict()[name])
    for name, buffer in model.named_buffers():
        assert torch.equal(state[name], buffer), name  # copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_ema_mixing_adamw_and_warmup_resume_bit_for_bit_in_the_middle_of_an_epoch(tmp_path, monkeypatch, capsys):
    argv = TINY + RECIPE + ["--epochs", "2", "--loader", "device"]
    assert cli.teacher(argv + ["--save_dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "recipe: mixup 0.8, cutmix 1" in out and "EMA decay 0.9" in out and "EMA 0.9: test top-1" in out
    monkeypatch.setenv("DISTILLERS_FAULT", "SIGTERM:train_step:1:2")  # during the warm-up epoch, after batch 2
    assert cli.teacher(argv + ["--save_dir", str(tmp_path / "b")]) == 143
    monkeypatch.delenv("DISTILLERS_FAULT", raising=False)
    stopped = load(tmp_path / "b/latest.pth")
    assert (stopped["epoch"], stopped["step"]) == (1, 2)
    assert cli.teacher(argv + ["--save_dir", str(tmp_path / "b"), "--resume"]) == 0
    a, b = load(tmp_path / "a/latest.pth"), load(tmp_path / "b/latest.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["weights"][key], b["ema"]["weights"][key]), key
    assert not torch.equal(a["ema"]["weights"]["fc.weight"], a["model"]["fc.weight"])
    assert a["ema"]["last"] == b["ema"]["last"] and a["ema"]["decay"] == 0.9
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, value in a["optimizer"]["state"].items():  # AdamW's moments and step counts
        assert set(value) >= {"exp_avg", "exp_avg_sq", "step"}
        for name, tensor in value.items():
            assert torch.equal(tensor, b["optimizer"]["state"][key][name]), (key, name)
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["last_epoch"] == 2
    groups = a["optimizer"]["param_groups"][0]
    assert groups["weight_decay"] == 0.05 and groups["initial_lr"] == 0.002
    assert groups["lr"] == pytest.approx(0.0)  # warm-up 0.001, then 0.002, then the cosine's end
    assert a["acc"] == b["acc"]


def grad_norms_at_step(trainer):
    """The global gradient norm the optimiser saw at each of one epoch's steps."""
    norms, step = [], trainer.run.optimizer.step

    def spied(*args, **kwargs):
        grads = [p.grad for g in trainer.run.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(*args, **kwargs)

    trainer.run.optimizer.step = spied
    trainer.state.epoch = 1
    trainer.train_epoch(trainer.run.optimizer)
    return norms


@pytest.mark.parametrize("amp", [None, "fp16"])
def test_clip_grad_bounds_the_global_norm_the_optimiser_sees(tmp_path, amp):
    extra = ["--amp", amp, "--data_opt", "train_size=64"] if amp else []  # float16 on the CPU is slow: 2 steps

    def trainer(*flags):
        args = config.parse(config.teacher_parser(), TINY + extra + ["--save_dir", str(tmp_path / str(flags))]
                            + list(flags))
        return Trainer(args, DistInfo(), "teacher")

    free = grad_norms_at_step(trainer())
    clipped = grad_norms_at_step(trainer("--clip_grad", "0.05"))
    assert len(free) == len(clipped) == (2 if amp else 4) and min(free) > 0.05  # the clip acts on every step
    assert max(clipped) <= 0.05 * (1 + 1e-4)  # unscaled first under fp16: the true norm is clipped
    assert max(clipped) > 0.04


def test_drop_path_is_the_timm_model_option_and_a_clear_error_elsewhere(tmp_path, capsys):
    vit = ["--model", "timm:vit_tiny_patch16_224", "--model_opt", "img_size=32", "--model_opt", "patch_size=8",
           "--model_opt", "depth=2"]
    args = config.parse(config.teacher_parser(), TINY[:-2] + vit + ["--drop_path", "0.1", "--epochs", "1",
                                                                      "--save_dir", str(tmp_path / "vit")])
    trainer = Trainer(args, DistInfo(), "teacher")
    rates = [m.drop_prob for m in trainer.run.model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)  # timm spreads the rate over the depth
    assert trainer.run.config["model_opts"]["drop_path_rate"] == 0.1  # recorded, rebuilt from checkpoints
    err = _cli_error(capsys, cli.teacher, TINY + ["--drop_path", "0.1", "--save_dir", str(tmp_path / "r")])
    assert "--drop_path 0.1: resnet8 takes no model option 'drop_path_rate'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flags, said", [
    (["--mixup", "-1"], "--mixup -1.0: must be 0 (off) or a positive Beta alpha"),
    (["--cutmix", "-0.5"], "--cutmix -0.5: must be 0 (off) or a positive Beta alpha"),
    (["--mixup", "0.8", "--mixup_switch_prob", "1.5"], "--mixup_switch_prob 1.5: must be a probability in [0, 1]"),
    (["--label_smoothing", "1"], "--label_smoothing 1.0: must be in [0, 1)"),
    (["--ema", "1"], "--ema 1.0: must be a decay in (0, 1)"),
    (["--drop_path", "-0.1"], "--drop_path -0.1: must be a rate in [0, 1)"),
    (["--clip_grad", "0"], "--clip_grad 0.0: must be a positive gradient norm"),
    (["--mixup", "0.8", "--batch_size", "31"], "the batch per process (31) must be even"),
])
def test_bad_values_are_one_line_errors(tmp_path, capsys, flags, said):
    argv = TINY + ["--save_dir", str(tmp_path / "run")] + flags
    err = _cli_error(capsys, cli.teacher, argv)
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_clip_grad_with_dot_is_refused(tmp_path, capsys):
    teacher = tmp_path / "t"
    assert cli.teacher(TINY + ["--epochs", "1", "--save_dir", str(teacher)]) == 0
    err = _cli_error(capsys, cli.student, TINY[:-2] + ["--model_s", "resnet8", "--path_t", str(teacher / "latest.pth"),
                                                       "--dot", "--clip_grad", "1", "--save_dir", str(tmp_path / "s")])
    assert "--clip_grad 1.0 and --dot" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, expected", [
    ("deit_tiny.yaml", dict(distill="deit", optimizer="adamw", learning_rate=0.001, scheduler="cosine", warmup_epochs=5,
                            min_lr=1e-5, mixup=0.8, cutmix=1.0, label_smoothing=0.1, ema=0.99996, drop_path=0.1,
                            clip_grad=None, weight_decay=0.05, epochs=300, batch_size=1024, gamma=0.5, beta=0.5)),
    ("ofa_cifar100.yaml", dict(distill="ofa", optimizer="adamw", learning_rate=5e-4, scheduler="cosine",
                               warmup_epochs=20, min_lr=1e-5, mixup=0.8, cutmix=1.0, label_smoothing=0.1, ema=None,
                               clip_grad=5.0, weight_decay=0.05, epochs=300, batch_size=128, gamma=1.0, beta=1.0)),
    *[(f"vitkd_deit_{size}.yaml", dict(
        distill="vitkd", model_s=f"timm:deit_{size}_patch16_224", model_t=f"timm:deit3_{teacher}_patch16_224",
        optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, no_wd_bias_norm=True, scheduler="cosine",
        warmup_epochs=20, min_lr=1e-5, clip_grad=5.0, mixup=0.8, cutmix=1.0, mixup_switch_prob=0.5,
        label_smoothing=0.1, epochs=300, batch_size=1024, gamma=1.0, alpha=0.0, beta=1.0,
        ema=0.99996 if size == "base" else None, drop_path=0.1 if size == "base" else None))
      for size, teacher in (("tiny", "small"), ("small", "base"), ("base", "large"))],
])
def test_the_vit_recipes_are_configs_the_student_parser_reads(name, expected):
    args = config.parse(config.student_parser(), ["--config", str(REPO / "configs" / "vit" / name)])
    assert {k: getattr(args, k) for k in expected} == expected
    deit_augmentation = {"rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "interpolation": "bicubic"}
    if name.startswith("ofa"):
        assert args.model_opts == {"img_size": 32, "patch_size": 4} and config.method_options(args)["ofa_eps"] == 1.0
    elif name.startswith("vitkd"):  # cls_KD's weights, on mmcls's DeiT recipe
        assert config.method_options(args) == {"alpha_vitkd": 3e-5, "beta_vitkd": 3e-6, "lambda_vitkd": 0.5}
        assert args.data_opts == deit_augmentation
    else:
        assert config.method_options(args)["distillation_type"] == "hard"
        assert args.data_opts == deit_augmentation and args.no_wd_bias_norm


def test_mixing_and_label_smoothing_are_refused_for_a_task_without_class_targets():
    from argparse import Namespace

    from engine.data_setup import mixing_requests
    from engine.metric_learning_task import MetricTask
    from engine.tasks import ClassificationTask

    args = Namespace(mixup=0.8, cutmix=0.0, mixup_switch_prob=0.5, label_smoothing=0.0, dataset="cub200")
    assert [type(r).__name__ for r in mixing_requests(args, ClassificationTask())] == ["Mixing"]
    with pytest.raises(config.ConfigError, match="--mixup/--cutmix: the cub200 task has no class targets"):
        mixing_requests(args, MetricTask())
    args.mixup, args.label_smoothing = 0.0, 0.1
    assert mixing_requests(args, ClassificationTask()) == []
    with pytest.raises(config.ConfigError, match="--label_smoothing: the cub200 task"):
        mixing_requests(args, MetricTask())


def test_a_vit_student_learns_from_a_resnet_teacher_by_fitnet_from_the_command_line(tmp_path, capsys):
    """Issue 21's command: an unmodified timm ViT-Tiny (patch 4 on 32x32 images) distilled by FitNet
    from a CIFAR ResNet, then evaluated from its checkpoint alone (its model options recorded)."""
    import models

    teacher = tmp_path / "t"
    assert cli.teacher(TINY + ["--epochs", "1", "--save_dir", str(teacher)]) == 0
    vit = ["--model_s", "timm:vit_tiny_patch16_224", "--model_opt", "img_size=32", "--model_opt", "patch_size=4"]
    student = tmp_path / "s"
    assert cli.student(TINY[:-2] + vit + ["--path_t", str(teacher / "latest.pth"), "--distill", "fitnet",
                                          "--epochs", "2", "--save_dir", str(student)]) == 0
    out = capsys.readouterr().out
    assert "fitnet(" in out and "nan" not in out.split("loss =")[-1].split("\n")[0]
    state = load(student / "latest.pth")
    assert state["arch"] == "timm:vit_tiny_patch16_224" and state["model_options"] == {"img_size": 32, "patch_size": 4}
    torch.manual_seed(0)
    fresh = models.create_model("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    fresh.load_state_dict(state["model"])  # rebuilt from what the checkpoint records
    hint = [k for k in state["distiller"] if "weight" in k]
    assert hint and all(torch.isfinite(state["distiller"][k]).all() for k in hint)  # FitNet's regressor trained
    assert cli.student(["--evaluate", "--path_s", str(student / "latest.pth")] + TINY[:-2]) == 0
    assert f"{state['acc']:.2f}" in capsys.readouterr().out


def test_no_wd_bias_norm_spares_biases_norms_and_the_vits_tokens_as_deit_does(tmp_path):
    """--no_wd_bias_norm: biases, norm weights and the ViT's no_weight_decay() set (pos_embed, cls_token) get no
    weight decay, the student's and the method's matrices do; one AdamW step on zero gradients moves only those."""
    teacher = tmp_path / "t"
    assert cli.teacher(TINY + ["--epochs", "1", "--save_dir", str(teacher)]) == 0
    vit = ["--model_s", "timm:vit_tiny_patch16_224", "--model_opt", "img_size=32", "--model_opt", "patch_size=8"]
    argv = TINY[:-2] + vit + ["--path_t", str(teacher / "latest.pth"), "--distill", "fitnet", "--adapter", "auto",
                              "--optimizer", "adamw", "--learning_rate", "0.1", "--weight_decay", "0.5",
                              "--epochs", "1", "--save_dir", str(tmp_path / "s")]
    plain = Trainer(config.parse(config.student_parser(), argv), DistInfo(), "student").run
    assert [g["weight_decay"] for g in plain.optimizer.param_groups] == [0.5]
    run = Trainer(config.parse(config.student_parser(), argv + ["--no_wd_bias_norm", "--overwrite"]), DistInfo(),
                  "student").run
    spared, decayed = run.optimizer.param_groups
    assert (spared["weight_decay"], decayed["weight_decay"]) == (0.0, 0.5)
    names = {id(p): f"model.{n}" for n, p in run.model.named_parameters()}
    names.update({id(p): f"method.{n}" for n, p in run.method.named_parameters()})
    spared_names = {names[id(p)] for p in spared["params"]}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert {"model.pos_embed", "model.cls_token", "model.norm.weight", "model.head.bias",
            "model.blocks.0.attn.qkv.bias"} <= spared_names
    assert {"model.patch_embed.proj.weight", "model.blocks.0.attn.qkv.weight", "model.head.weight"} <= decayed_names
    assert any(n.startswith("method.") and n.endswith("weight") for n in decayed_names)  # FitNet's regressor
    assert len(spared_names) + len(decayed_names) == len(names)  # every trainable parameter, once
    before = {id(p): p.detach().clone() for g in run.optimizer.param_groups for p in g["params"]}
    for group in run.optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    run.optimizer.step()
    assert all(torch.equal(p, before[id(p)]) for p in spared["params"])
    assert all(torch.allclose(p, before[id(p)] * (1 - 0.1 * 0.5)) for p in decayed["params"])


def test_key_value_options_of_a_config_and_the_command_line_merge_key_by_key():
    """A config's model_opt/data_opt mapping and repeated --model_opt/--data_opt flags: both apply, and where
    both set a key the command line wins (a mapping once made argparse's append fail)."""
    ofa = ["--config", str(REPO / "configs" / "vit" / "ofa_cifar100.yaml")]
    args = config.parse(config.student_parser(), ofa + ["--model_opt", "patch_size=8", "--model_opt", "depth=6"])
    assert args.model_opts == {"img_size": 32, "patch_size": 8, "depth": 6}
    assert config.parse(config.student_parser(), ofa).model_opts == {"img_size": 32, "patch_size": 4}
