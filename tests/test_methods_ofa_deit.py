"""OFA-KD and DeiT's distillation token: against their official code (tests/golden/, made by
tests/golden/make_ofa_deit_goldens.py), inside a training step, and their build-time refusals.

OFA trains end to end through ``train_student.py`` on a CIFAR CNN pair. DeiT's student is a timm
``deit_*_distilled_*`` model, which the trainer cannot build yet (``models/external.py`` has no timm
ViT taps): its step is run here with ``timm.create_model`` and ``FeatureTaps`` and the trainer's own
objective (its CE term and the method's default weights).
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import OWN_GOLDEN, REPO
from core.taps import FeatureTaps, TapPoint, standard_taps
from distillers import golden
from distillers.base import DISTILLERS, ShapeSpec, build_distiller
from distillers.golden import GoldenCase
from distillers.methods.deit import CLS_HEAD, DIST_HEAD, has_distillation_head
from distillers.methods.kd import kd_loss
from distillers.methods.ofa import TokenHead, ofa_loss
from engine import cli, config
from engine.checkpoint import save_atomic
from engine.distributed import DistInfo
from engine.objective import Objective
from engine.tasks import TASKS
from engine.loop import Trainer
from models import create_model

FILES = ["ofa", "ofa_4stage", "ofa_token", "ofa_token_gap", "deit_soft", "deit_hard"]
TINY = ["--dataset", "synthetic", "--data_opt", "train_size=64", "--data_opt", "test_size=16",
        "--batch_size", "16", "--num_workers", "0", "--no_tensorboard", "--epochs", "1"]


def record(name):
    return torch.load(OWN_GOLDEN / f"{name}.pt", weights_only=True)


def built(case):
    """The file's distiller at the options its hparams record (the adapter's reading: every key declared)."""
    problems = []
    options = golden.entry_options(case.entry, case.record["hparams"], problems)
    assert problems == []
    return case.build(options)


def objective(method):
    """The trainer's objective for ``method`` at its default weights: its terms and the task's CE."""
    weights = dict(type(method).default_weights)
    return Objective([(weights["beta"], method)], TASKS.get("classification")().own_terms(weights))


# ----------------------------------------------------------------------------- golden files
def test_golden_files_pass_through_the_command():
    paths = [str(OWN_GOLDEN / f"{name}.pt") for name in FILES]
    proc = subprocess.run([sys.executable, "-m", "distillers.golden", *paths], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[:-1]] == ["PASS"] * len(FILES)
    for name in FILES:
        ref = record(name)
        assert ref["method"] == name and ref["reference"].startswith(
            ("Hao840/OFAKD@f7bb896", "facebookresearch/deit@7e160fe"))
        outcome = golden.check_file(str(OWN_GOLDEN / f"{name}.pt"))
        assert outcome.ok and outcome.max_err < float(ref["tolerance"]), outcome.problems


def test_ofa_files_check_a_second_setting():
    """extra.t2 (eps 1, temperature 2, stage heads weighted 0.5, the same parameters) is a variant the adapter
    checks, and a different loss: the options reach the numbers."""
    for name in FILES[:4]:
        ref = record(name)
        variant = golden.TABLE[name].variants["t2"]["options"]
        hp = ref["extra"]["t2"]["hparams"]
        assert variant == {"ofa_eps": hp["eps"], "ofa_temperature": hp["temperature"],
                           "ofa_loss_weight": hp["loss_weight"]}
        assert not torch.allclose(ref["extra"]["t2"]["loss"], ref["loss"], rtol=1e-3)


# ----------------------------------------------------------------------------- OFA
def ofa_step(name, **options):
    """One step on a golden file's inputs: its reference parameters, or fresh heads when ``options`` are given."""
    ref = record(name)
    case = GoldenCase(ref)
    s, t, batch = case.features(ref["inputs"])
    if options:
        shapes = lambda side: {k: [tuple(v.shape[1:]) for v in x] if isinstance(x, list) else tuple(x.shape[1:])  # noqa
                               for k, x in side.items()}
        distiller = build_distiller("ofa", ShapeSpec(shapes(s), shapes(t)), **options).double()
    else:
        distiller = built(case)
    t = {**t, "logits": t["logits"].clone().requires_grad_(True)}  # a teacher that could take gradients
    terms = distiller(s, t, batch)
    distiller.total(terms).backward()
    return distiller, s, t, terms


def test_ofa_gradients_reach_every_stage_and_head_and_not_the_teacher():
    distiller, s, t, terms = ofa_step("ofa")
    assert set(terms) == {"ofa_logits", "ofa_stage1", "ofa_stage2", "ofa_stage3"}
    assert s["logits"].grad.abs().sum() > 0
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s["stages"])
    for name, param in distiller.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert t["logits"].grad is None
    assert s["pooled"].grad is None  # read for its width only


def test_ofa_stages_option_picks_the_heads():
    distiller, s, _, terms = ofa_step("ofa_4stage", ofa_stages=(2, 4))
    assert set(terms) == {"ofa_logits", "ofa_stage2", "ofa_stage4"} and set(distiller.heads) == {"2", "4"}
    assert [f.grad is not None for f in s["stages"]] == [False, True, False, True]
    spec = ShapeSpec({"stages": [(4, 8, 8)] * 3, "pooled": (8,), "logits": (5,)}, {"pooled": (8,), "logits": (5,)})
    for bad in ((4,), (0,), (1, 1), ("a",)):
        with pytest.raises(ValueError, match=r"^ofa: option ofa_stages=.* is not accepted; expected distinct stage "
                                             r"numbers among 1\.\.3 \(the student's stages\)$"):
            build_distiller("ofa", spec, ofa_stages=bad)


def test_ofa_takes_soft_and_mixed_labels_as_their_argmax():
    ref = record("ofa_4stage")  # its golden labels are mixup-style soft targets, as the reference gets them
    assert ref["inputs"]["labels"].dim() == 2
    case = GoldenCase(ref)
    losses = []
    for labels in (ref["inputs"]["labels"], ref["inputs"]["labels"].argmax(dim=1)):
        distiller = built(case)
        s, t, _ = case.features(ref["inputs"])
        losses.append(distiller.total(distiller(s, t, {"labels": labels})))
    assert torch.allclose(losses[0], ref["loss"], rtol=1e-9, atol=1e-9) and torch.equal(losses[0], losses[1])
    distiller = built(case)
    s, t, _ = case.features(ref["inputs"])
    with pytest.raises(ValueError, match="soft labels have 3 classes, the logits 7"):
        distiller(s, t, {"labels": torch.rand(5, 3)})
    with pytest.raises(ValueError, match=r"ofa needs the labels \(batch\['labels'\]\)"):
        distiller(s, t, {})


def test_ofa_loss_with_eps_one_is_cross_entropy_to_the_teacher():
    """eps = 1: (p_t + y) - y = p_t, the labels drop out and the loss is CE to the teacher's distribution
    (KD at T = 1 plus the teacher's entropy); eps > 1 depends on the labels."""
    g = torch.Generator().manual_seed(3)
    z_s, z_t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    y1, y2 = torch.randint(0, 7, (5,), generator=g), torch.randint(0, 7, (5,), generator=g)
    p_t = F.softmax(z_t, 1)
    entropy = -(p_t * p_t.log()).sum(1).mean()
    one = ofa_loss(z_s, z_t, F.one_hot(y1, 7).double(), 1.0)
    assert torch.allclose(one, kd_loss(z_s, z_t, 1.0) + entropy)
    assert torch.allclose(one, ofa_loss(z_s, z_t, F.one_hot(y2, 7).double(), 1.0))
    assert not torch.allclose(ofa_loss(z_s, z_t, F.one_hot(y1, 7).double(), 1.5),
                              ofa_loss(z_s, z_t, F.one_hot(y2, 7).double(), 1.5))


def test_ofa_token_heads_read_maps_as_tokens():
    """The Swin-like golden's stages given as maps [B, C, H, W] (the trainer's timm taps) give the same numbers:
    the whole file, its stages and their gradients (main step and extra.t2) laid out as maps."""
    ref = record("ofa_token_gap")

    def as_maps(tokens):
        return [f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *(2 * [int(f.shape[1] ** 0.5)])) for f in tokens]

    t2 = ref["extra"]["t2"]
    maps = {**ref, "inputs": {**ref["inputs"], "feats_s": as_maps(ref["inputs"]["feats_s"])},
            "grads": {**ref["grads"], "feats_s": as_maps(ref["grads"]["feats_s"])},
            "extra": {**ref["extra"], "t2": {**t2, "grad_feats_s": as_maps(t2["grad_feats_s"])}}}
    assert maps["inputs"]["feats_s"][0].dim() == 4
    outcome = GoldenCase(maps, complete=True).run()
    assert outcome.ok, outcome.problems


def test_ofa_student_kind_auto_and_override():
    maps = {"stages": [(8, 28, 28), (16, 14, 14), (32, 7, 7), (32, 7, 7)], "pooled": (32,), "logits": (5,)}
    tokens = {**maps, "stages": [(784, 8), (196, 16), (49, 32), (49, 32)]}
    teacher = {"pooled": (16,), "logits": (5,)}

    def kind(student, arch, **options):
        return build_distiller("ofa", ShapeSpec(student, teacher, extra={"student_arch": arch}), **options)

    assert kind(maps, "resnet8").kind == "cnn"
    assert kind(maps, "timm:resnet18").kind == "cnn"
    assert kind(maps, "timm:swin_tiny_patch4_window7_224").kind == "token"
    assert kind(maps, "timm:vit_small_patch16_224").kind == "token"
    assert kind(tokens, "").kind == "token"
    overridden = kind(maps, "timm:vit_small_patch16_224", student_kind="cnn")
    assert overridden.kind == "cnn" and overridden.student_kind == "cnn"
    assert isinstance(kind(maps, "resnet8", student_kind="token").heads["1"], TokenHead)
    with pytest.raises(ValueError, match=r"cnn heads need stage maps \(C, H, W\); stage1 is \(784, 8\)"):
        kind(tokens, "", student_kind="cnn")


def test_ofa_refuses_a_spec_without_what_it_needs():
    teacher = {"pooled": (16,), "logits": (5,)}
    with pytest.raises(ValueError, match="the student has none"):
        build_distiller("ofa", ShapeSpec({"pooled": (8,), "logits": (5,)}, teacher))
    with pytest.raises(ValueError, match="the teacher has no 'pooled' tap"):
        build_distiller("ofa", ShapeSpec({"stages": [(4, 8, 8)], "pooled": (8,), "logits": (5,)}, {"logits": (5,)}))


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "resnet20.pth"
    torch.manual_seed(1)
    save_atomic({"arch": "resnet20", "model": create_model("resnet20", num_classes=10).state_dict()}, str(path))
    return str(path)


def test_ofa_training_step_trains_student_and_heads_not_teacher(teacher_path, tmp_path):
    args = config.parse(config.student_parser(), TINY + ["--model_s", "resnet8", "--path_t", teacher_path,
                                                         "--distill", "ofa", "--save_dir", str(tmp_path)])
    trainer = Trainer(args, DistInfo(), "student")
    assert trainer.run.method.kind == "cnn" and trainer.run.store is not None  # logits and pooled: the store serves them
    batch = next(iter(trainer.run.train_loader)).to(trainer.info.device)
    loss, _, terms = trainer.stepper.forward(batch)
    assert set(terms) == {"ce", "ofa_logits", "ofa_stage1", "ofa_stage2", "ofa_stage3"}
    loss.backward()
    for stage in ("layer1", "layer2", "layer3"):
        assert getattr(trainer.run.model, stage)[0].conv1.weight.grad.abs().sum() > 0, stage
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.run.method.parameters())
    assert all(p.grad is None for p in trainer.run.teacher.parameters())
    in_optimizer = {id(p) for group in trainer.run.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in trainer.run.method.parameters())


def test_ofa_trains_end_to_end_with_train_student(teacher_path, tmp_path, capsys):
    argv = TINY + ["--model_s", "resnet8", "--path_t", teacher_path, "--distill", "ofa", "--ofa_eps", "1.5",
                   "--ofa_stage", "2,3", "--save_dir", str(tmp_path / "run")]
    assert cli.student(argv) == 0
    assert "ofa(ofa_eps=1.5, ofa_stages=(2, 3)" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["distiller_name"] == "ofa" and state["distiller_options"]["ofa_stages"] == (2, 3)
    assert {k.split(".")[1] for k in state["distiller"]} == {"2", "3"}


# ----------------------------------------------------------------------------- DeiT
def test_deit_soft_normalisation_is_batch_times_classes():
    """DeiT divides its summed KL by B x C: the KD term's batch mean divided by the class count."""
    ref = record("deit_soft")
    z_dist, z_t, tau = ref["inputs"]["logit_dist"], ref["inputs"]["logit_t"], ref["hparams"]["tau"]
    classes = z_dist.shape[1]
    assert torch.allclose(kd_loss(z_dist, z_t, tau) / classes, ref["loss"], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(kd_loss(z_dist, z_t, tau), ref["loss"])
    distiller = built(GoldenCase(ref))
    assert distiller.distillation_tau == tau == 3.0
    s, t, _ = GoldenCase(ref).features(ref["inputs"])
    assert torch.allclose(distiller(s, t)["deit"], ref["loss"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["deit_soft", "deit_hard"])
def test_deit_default_weights_are_deits_alpha_half(name):
    """The trainer's objective at DeiT's default weights: (1 - 0.5) CE(class head) + 0.5 distillation."""
    ref = record(name)
    with_ce = ref["extra"]["with_ce"]
    case = GoldenCase(ref)
    distiller = built(case)
    assert DISTILLERS.get("deit").default_weights == {"gamma": 0.5, "alpha": 0.0, "beta": 0.5} == \
        {"gamma": 1 - with_ce["alpha"], "alpha": 0.0, "beta": with_ce["alpha"]}
    s, t, _ = case.features(ref["inputs"])
    s["logits"] = (s[CLS_HEAD] + s[DIST_HEAD]).detach() / 2  # the model's own output, flag off
    total, prediction, terms = objective(distiller)(s, t, {"labels": with_ce["labels"]})
    assert set(terms) == {"deit", "ce"} and prediction is s[CLS_HEAD]
    assert torch.allclose(total, with_ce["loss"], rtol=1e-10, atol=1e-10)
    total.backward()
    assert torch.allclose(s[CLS_HEAD].grad, with_ce["grad_logit_cls"], atol=1e-10)
    assert torch.allclose(s[DIST_HEAD].grad, with_ce["grad_logit_dist"], atol=1e-10)


#: a plain timm model has no tap map: its output as ``logits``, the heads by module path
OUTPUT = {"logits": TapPoint("", "output")}


def deit_student():
    import timm
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, num_classes=10,
                             depth=2)


def test_deit_training_step_on_a_timm_distilled_student():
    student, teacher = deit_student(), create_model("resnet8", num_classes=10).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    s_taps = FeatureTaps(student, ["logits", CLS_HEAD, DIST_HEAD], points=OUTPUT)
    t_taps = FeatureTaps(teacher, standard_taps(teacher))
    spec = ShapeSpec(s_taps.shapes(x), t_taps.shapes(x), num_classes=10,
                     extra={"student_arch": "timm:deit_tiny_distilled_patch16_224"})
    for kind in ("hard", "soft"):
        method = build_distiller("deit", spec, distillation_type=kind)
        student.train()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        before = {k: v.detach().clone() for k, v in student.state_dict().items()}
        s = s_taps(x)
        with torch.no_grad():
            t = t_taps(x)
        total, prediction, terms = objective(method)(s, t, {"labels": y})
        assert torch.equal(prediction, s[CLS_HEAD]) and torch.allclose(s["logits"], (s[CLS_HEAD] + s[DIST_HEAD]) / 2)
        raw = method(s, t)["deit"]
        assert torch.allclose(terms["deit"], 0.5 * raw)
        assert torch.allclose(terms["ce"], 0.5 * F.cross_entropy(s[CLS_HEAD], y))
        assert torch.allclose(total, terms["ce"] + terms["deit"])
        optimizer.zero_grad()
        total.backward()
        for name in ("head.weight", "head_dist.weight", "cls_token", "dist_token", "blocks.0.attn.qkv.weight",
                     "patch_embed.proj.weight"):
            assert student.get_parameter(name).grad.abs().sum() > 0, name
        assert all(p.grad is None for p in teacher.parameters())
        optimizer.step()
        assert not torch.equal(student.state_dict()["head_dist.weight"], before["head_dist.weight"])
        assert student.distilled_training is False  # the method never switches timm's flag on
    student.eval()
    with torch.no_grad():
        s = s_taps(x)
    assert torch.allclose(s["logits"], (s[CLS_HEAD] + s[DIST_HEAD]) / 2)  # inference averages the two heads
    s_taps.close()
    t_taps.close()


def test_deit_refuses_a_student_that_returns_both_heads():
    student = deit_student()
    student.set_distilled_training(True)
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(student, ["logits", CLS_HEAD, DIST_HEAD], points=OUTPUT) as taps:
        s = taps(x)
    method = build_distiller("deit", ShapeSpec({CLS_HEAD: (10,), DIST_HEAD: (10,)}, {"logits": (10,)}))
    with pytest.raises(ValueError, match=r"distilled_training flag is on.*set_distilled_training\(False\)"):
        method(s, {"logits": torch.randn(2, 10)})


def test_deit_needs_a_distillation_head(teacher_path, tmp_path, capsys):
    assert has_distillation_head("timm:deit_tiny_distilled_patch16_224")
    assert not has_distillation_head("timm:deit_tiny_patch16_224") and not has_distillation_head("resnet8")
    with pytest.raises(ValueError, match=r"^deit needs a student with a distillation head \(module 'head_dist'\)"
                                         r".*; got student 'timm:deit_tiny_patch16_224'$"):
        build_distiller("deit", ShapeSpec({"logits": (10,)}, {"logits": (10,)},
                                          extra={"student_arch": "timm:deit_tiny_patch16_224"}))
    code = cli.student(TINY + ["--model_s", "resnet8", "--path_t", teacher_path, "--distill", "deit",
                               "--save_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "deit needs a student with a distillation head" in err[0]
    assert "got student 'resnet8'" in err[0]
