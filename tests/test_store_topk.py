"""--teacher_store_dtype topk16 (issue 21 §7): the logits as their top k in float16 plus one logit for the rest,
read back within the printed bound; a run that fills such a store and one that reads it see the same values."""
import json
import math

import pytest
import torch

from engine import config
from engine.store_topk import TopKLogits
from test_teacher_store_training import fit_recorded

TINY = ["--dataset", "synthetic", "--data_opt", "train_size=128", "--data_opt", "test_size=32",
        "--batch_size", "32", "--num_workers", "0", "--no_tensorboard", "--loader", "device"]


@pytest.mark.parametrize("scale", [1.0, 4.0, 12.0])  # a flat teacher, a usual one, a confident one
def test_read_back_logits_respect_the_bound(scale):
    codec = TopKLogits(1000, 10)
    logits = torch.randn(64, 1000) * scale
    logits[torch.arange(64), torch.randint(0, 1000, (64,))] += 2 * scale  # each row a favourite class
    stored = codec.encode(logits).half().float()  # as the store holds it
    assert stored.shape == (64, 21) and codec.bytes_per_entry() == 47
    back = codec.decode(stored)
    values, index = logits.topk(10, dim=1)
    assert torch.equal(back.gather(1, index), values.half().float())  # the top 10: float16 rounding only
    rest = torch.ones_like(logits, dtype=torch.bool).scatter(1, index, False)
    assert torch.equal(back[rest].view(64, 990), stored[:, -1:].expand(64, 990))  # one logit for the rest
    p, q = logits.log_softmax(1), back.log_softmax(1)
    kl = (p.exp() * (p - q)).sum(1)
    bound = codec.kl_bound(logits)
    assert (kl <= bound + 1e-6).all()
    outside = 1 - p.exp().gather(1, index).sum(1)
    by_hand = outside * math.log(990) + 2 * (2 ** -11 * logits.abs().amax(1) + 2 ** -25)
    assert (bound <= by_hand * (1 + 1e-5) + 1e-6).all()
    # before the float16 rounding (which the bound covers) the rest keeps its exact probability mass at T=1
    exact = codec.decode(codec.encode(logits)).softmax(1)
    true_rest = p.exp()[rest].view(64, 990).sum(1)
    assert torch.allclose(exact[rest].view(64, 990).sum(1), true_rest, rtol=1e-4, atol=1e-9)
    assert (kl >= -1e-6).all() and (bound < 990 / 1000 * math.log(990) + 0.2).all()  # under the worst case


def test_bad_k_and_too_many_classes_are_refused():
    with pytest.raises(ValueError, match="--teacher_store_topk 10: must be in 1..9 for a 10-class teacher"):
        TopKLogits(10, 10)
    with pytest.raises(ValueError, match="exact up to 2048 classes; the teacher has 21843"):
        TopKLogits(21843, 10)


def test_a_topk16_store_fills_then_serves_the_same_values(tmp_path, capsys):
    from engine import cli
    teacher = tmp_path / "teacher"
    assert cli.teacher(TINY + ["--model", "resnet8", "--epochs", "1", "--save_dir", str(teacher)]) == 0

    def student(name, *extra):
        argv = TINY + ["--model_s", "resnet8", "--path_t", str(teacher / "latest.pth"), "--distill", "kd",
                       "--epochs", "2", "--save_dir", str(tmp_path / name), "--teacher_store", str(tmp_path / "store"),
                       "--teacher_store_dtype", "topk16", "--teacher_store_topk", "3"]
        return fit_recorded(config.parse(config.student_parser(), argv + list(extra)))

    cold, warm = student("cold"), student("warm")
    assert cold.teacher_rows > 0 and warm.teacher_rows == 0
    assert warm.step_losses == cold.step_losses  # a computed row is returned as stored, decoded
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["dtype"] == "float16" and meta["taps"]["logits"] == [7]
    assert meta["key"]["encoding"]["logits"]["topk"] == 3
    out = capsys.readouterr().out
    assert "teacher store topk16: logits as their top 3 of 10 in float16" in out and "KL(teacher || stored)" in out
    with pytest.raises(config.ConfigError, match="--teacher_store_topk 10: must be in 1..9"):
        student("bad", "--teacher_store_topk", "10")
