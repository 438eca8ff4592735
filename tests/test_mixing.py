"""Mixup and CutMix as a data request (issue 21 §6-§7): the plan a function of (seed, epoch, batch), the same
on every loader and after a mid-epoch resume; teacher and student fed the same mixed images; the mixed soft
targets reaching the cross-entropy; a teacher store exact under mixing; two processes mixing as one."""
import json

import pytest
import torch
import torch.nn.functional as F

from core.batch import MixPlan
from core.requests import Mixing
from data.mixing import draw_plan, mix_images, mixed_targets
from engine import cli, config
from engine.checkpoint import load
from engine.distributed import DistInfo
from engine.loop import Trainer
from test_interrupts import child, free_port
from test_teacher_store_training import fit_recorded
from test_trainer import PLUGIN

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard"]
MIX = ["--mixup", "0.8", "--cutmix", "1.0"]


def teacher_trainer(tmp, *extra) -> Trainer:
    args = config.parse(config.teacher_parser(), TINY + ["--model", "resnet8", "--epochs", "2", "--save_dir",
                                                         str(tmp)] + list(extra))
    return Trainer(args, DistInfo(), "teacher")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mix_teacher")
    assert cli.teacher(TINY + ["--model", "resnet8", "--epochs", "1", "--loader", "device",
                               "--save_dir", str(folder)]) == 0
    return str(folder / "latest.pth")


def test_the_plan_is_a_function_of_seed_epoch_and_batch():
    both = Mixing(0.8, 1.0, 0.5)
    plans = {(e, b): draw_plan(both, 3, e, b, 32, 32) for e in (1, 2) for b in range(8)}
    assert plans == {(e, b): draw_plan(both, 3, e, b, 32, 32) for e in (1, 2) for b in range(8)}  # replayed
    assert len({p[0] for p in plans.values()}) == len(plans)  # every batch its own lambda
    assert draw_plan(both, 4, 1, 0, 32, 32) != plans[(1, 0)]  # another seed, another plan
    kinds = {p[1] is None for p in plans.values()}
    assert kinds == {True, False}  # switch_prob 0.5 over 16 batches: both mixup and cutmix batches
    assert all(draw_plan(Mixing(0.8, 0.0), 3, 1, b, 32, 32)[1] is None for b in range(8))
    assert all(draw_plan(Mixing(0.0, 1.0), 3, 1, b, 32, 32)[1] is not None for b in range(8))
    assert all(draw_plan(Mixing(0.8, 1.0, 1.0), 3, 1, b, 32, 32)[1] is not None for b in range(8))
    for lam, box in plans.values():
        assert 0 <= lam <= 1
        if box is not None:  # lambda is the share of the image kept, as timm's correct_lam
            top, bottom, left, right = box
            assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
            assert lam == pytest.approx(1 - (bottom - top) * (right - left) / 1024)


def test_mixed_images_and_targets_follow_the_formulas():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    partner = torch.tensor([2, 3, 0, 1])
    mixed = mix_images(x, MixPlan(partner, 0.3))
    assert torch.allclose(mixed, 0.3 * x + 0.7 * x[partner])
    cut = mix_images(x, MixPlan(partner, 0.75, (2, 6, 0, 4)))
    assert torch.equal(cut[:, :, 2:6, 0:4], x[partner][:, :, 2:6, 0:4])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 0:4] = False
    assert torch.equal(cut[..., outside], x[..., outside])
    targets = mixed_targets(y, MixPlan(partner, 0.3), 3)
    assert torch.allclose(targets, torch.tensor([[0.3, 0, 0.7], [0, 1.0, 0], [0.7, 0, 0.3], [0, 1.0, 0]]))


def epoch_batches(trainer, epoch=1, skip=0):
    loader = trainer.run.train_loader
    loader.set_epoch(epoch, skip)
    return list(loader)


def test_mixing_is_the_same_on_every_loader_and_replays_after_a_mid_epoch_resume(tmp_path):
    device = teacher_trainer(tmp_path / "d", *MIX, "--loader", "device")
    plain = teacher_trainer(tmp_path / "p", *MIX, "--loader", "dataloader")
    unmixed = teacher_trainer(tmp_path / "u", "--loader", "device")
    a, b, raw = epoch_batches(device), epoch_batches(plain), epoch_batches(unmixed)
    assert len(a) == len(b) == 4
    for one, other, before in zip(a, b, raw):
        # the same samples in the same order on both loaders, so the same plan and the same soft targets
        assert torch.equal(one.labels, other.labels) and one.mix.lam == other.mix.lam
        assert one.mix.box == other.mix.box and torch.equal(one.mix.partner, other.mix.partner)
        assert torch.equal(one.targets, other.targets)
        assert torch.equal(one.mix.partner, (torch.arange(32) + 16) % 32)  # half a batch away
        assert torch.equal(one.images, mix_images(before.images, one.mix))  # the device loader's views, mixed
        assert torch.equal(one.labels, before.labels)  # hard labels stay the image's own
    assert len({batch.mix.lam for batch in a}) == 4
    # a resume at batch 2 of epoch 1 replays batches 2 and 3 exactly: images, plan, targets, store keys
    rest = epoch_batches(device, 1, skip=2)
    for one, again in zip(a[2:], rest):
        assert torch.equal(one.images, again.images) and torch.equal(one.targets, again.targets)
        assert one.mix.lam == again.mix.lam and torch.equal(one.keys[0], again.keys[0])
        assert torch.equal(one.keys[1], torch.zeros(32, dtype=torch.long))  # epoch 1's slot
    assert not torch.equal(epoch_batches(device, 2)[0].images, a[0].images)


def test_teacher_and_student_see_the_same_mixed_images_and_ce_reads_the_soft_targets(tmp_path, teacher):
    args = config.parse(config.student_parser(), TINY + MIX + [
        "--model_s", "resnet8", "--path_t", teacher, "--distill", "kd", "--label_smoothing", "0.1",
        "--no_teacher_store", "--epochs", "1", "--save_dir", str(tmp_path / "s")])
    trainer = Trainer(args, DistInfo(), "student")
    stepper, seen = trainer.stepper, {}
    s_call, t_call = stepper.s_taps.__class__.__call__, stepper.t_taps.__class__.__call__

    def spy(self, x, *a, **k):
        out = t_call(self, x, *a, **k)
        seen["teacher" if self is stepper.t_taps else "student"] = (x.clone(), out["logits"].detach().clone())
        return out

    batch = epoch_batches(trainer)[1]
    stepper.s_taps.__class__.__call__ = spy
    try:
        _, prediction, terms = stepper.forward(batch)
    finally:
        stepper.s_taps.__class__.__call__ = s_call
    assert torch.equal(seen["teacher"][0], batch.images) and torch.equal(seen["student"][0], batch.images)
    assert batch.mix is not None and 0 < batch.mix.lam < 1
    smoothed = batch.targets * 0.9 + 0.1 / 10  # timm's mixup_target with smoothing 0.1
    by_hand = -(smoothed * F.log_softmax(prediction.detach(), 1)).sum(1).mean()
    gamma = trainer.run.weights["gamma"]
    assert torch.allclose(terms["ce"].detach(), gamma * by_hand, rtol=1e-6, atol=1e-7)
    hard = F.cross_entropy(prediction.detach(), batch.labels, label_smoothing=0.1)
    assert not torch.allclose(terms["ce"].detach(), gamma * hard)  # not the hard labels


def test_a_store_fed_run_with_mixing_equals_one_without_and_a_warm_store_runs_no_teacher(tmp_path, teacher):
    def student(name, *extra):
        argv = TINY + MIX + ["--loader", "device", "--model_s", "resnet8", "--path_t", teacher, "--distill", "kd",
                             "--epochs", "2", "--save_dir", str(tmp_path / name), "--save_root", str(tmp_path)]
        return fit_recorded(config.parse(config.student_parser(), argv + list(extra)))

    plain = student("plain", "--no_teacher_store")
    cold = student("cold", "--teacher_store", str(tmp_path / "store"))
    warm = student("warm", "--teacher_store", str(tmp_path / "store"))
    assert plain.run.store is None and cold.run.store is not None
    assert plain.teacher_rows == cold.teacher_rows == 8 * 32  # each (sample, epoch) met once: all computed
    assert warm.teacher_rows == 0
    for run in (cold, warm):  # bit for bit: a mixed entry is computed in the same batch it is later read for
        assert run.step_losses == plain.step_losses
        for key, value in plain.run.model.state_dict().items():
            assert torch.equal(run.run.model.state_dict()[key], value), key
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["num_views"] == 2  # one slot per epoch
    views = meta["key"]["views"]
    assert views["mixing"].startswith("distillers/mixing/") and views["global_batch"] == 32
    assert (views["mixup_alpha"], views["cutmix_alpha"], views["num_views"]) == (0.8, 1.0, 162)
    # another mixing value is another key: the store is refused, naming the field, never read
    with pytest.raises(config.ConfigError, match="mixup_alpha"):
        student("other", "--teacher_store", str(tmp_path / "store"), "--mixup", "0.5")


def test_two_gloo_processes_mix_as_one_process_and_resume_bit_for_bit(tmp_path):
    common = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
              "--data_opt", "augment=false", "--batch_size", "32", "--num_workers", "0", "--no_tensorboard",
              "--model", "test_nobn", "--plugin", PLUGIN, "--epochs", "2", "--device", "cpu", "--ema", "0.9",
              "--optimizer", "adamw", "--learning_rate", "0.002", "--scheduler", "cosine", "--warmup_epochs", "1",
              "--label_smoothing", "0.1", "--clip_grad", "5"] + MIX
    assert cli.teacher(common + ["--save_dir", str(tmp_path / "one")]) == 0
    assert cli.teacher(common + ["--save_dir", str(tmp_path / "two"), "--nprocs", "2",
                                 "--dist-url", f"tcp://127.0.0.1:{free_port()}"]) == 0
    one, two = load(tmp_path / "one/latest.pth"), load(tmp_path / "two/latest.pth")
    for part in ("model", "ema"):
        a = one[part] if part == "model" else one[part]["weights"]
        b = two[part] if part == "model" else two[part]["weights"]
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), (part, key)
    assert not torch.allclose(one["model"]["fc.weight"], one["ema"]["weights"]["fc.weight"])
    assert two["epoch"] == 3 and one["ema"]["last"]["top1"] == pytest.approx(two["ema"]["last"]["top1"])
    # stopped in the middle of the warm-up epoch (only rank 1 signalled), resumed on two processes: the same run
    argv = common + ["--save_dir", str(tmp_path / "cut"), "--nprocs", "2"]
    code, _, err = child("train_teacher.py", argv + ["--dist-url", f"tcp://127.0.0.1:{free_port()}"],
                         "SIGTERM:train_step:1:2:1")
    assert code == 143, err
    assert (load(tmp_path / "cut/latest.pth")["epoch"], load(tmp_path / "cut/latest.pth")["step"]) == (1, 2)
    code, _, err = child("train_teacher.py", argv + ["--resume", "--dist-url", f"tcp://127.0.0.1:{free_port()}"])
    assert code == 0, err
    cut = load(tmp_path / "cut/latest.pth")
    for key in two["model"]:
        assert torch.equal(two["model"][key], cut["model"][key]), key
        assert torch.equal(two["ema"]["weights"][key], cut["ema"]["weights"][key]), key
    for key, value in two["optimizer"]["state"].items():
        assert all(torch.equal(t, cut["optimizer"]["state"][key][n]) for n, t in value.items()), key
    assert two["scheduler"] == cut["scheduler"] and two["ema"]["last"] == cut["ema"]["last"]


def test_ofa_reads_the_mixed_targets_as_its_reference_does():
    from distillers.base import ShapeSpec, build_distiller

    spec = ShapeSpec({"stages": [(4, 8, 8)] * 3, "pooled": (8,), "logits": (5,)}, {"pooled": (8,), "logits": (5,)})
    ofa = build_distiller("ofa", spec, ofa_eps=1.5)  # at eps 1 the labels do not count
    s = {"stages": [torch.randn(6, 4, 8, 8) for _ in range(3)], "pooled": torch.randn(6, 8),
         "logits": torch.randn(6, 5)}
    t = {"pooled": torch.randn(6, 8), "logits": torch.randn(6, 5)}
    hard = torch.tensor([0, 1, 2, 3, 4, 0])
    targets = mixed_targets(hard, MixPlan(torch.tensor([3, 4, 5, 0, 1, 2]), 0.3), 5)  # the partner's label wins
    mixed = ofa.total(ofa(s, t, {"labels": hard, "targets": targets}))
    assert torch.equal(mixed, ofa.total(ofa(s, t, {"labels": targets.argmax(1)})))
    assert not torch.equal(mixed, ofa.total(ofa(s, t, {"labels": hard})))
