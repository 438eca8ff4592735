"""Contrastive family: crd, crd_queue, rrd, dcd (memories, DDP consistency, zoo pairs, errors).

Golden parity and the training of golden-listed parameters are checked for every method by
test_golden.py and test_methods_training.py.
"""
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from core.requests import ContrastSampling
from distillers.base import ShapeSpec, build_distiller

MEMORY_OPTS = {"crd": {"nce_k": 8}, "crd_queue": {"nce_k": 8}, "rrd": {"nce_k": 8},
               "rrd_momentum": {"nce_k": 8, "memory_type": "momentum"}, "dcd": {}}


def _spec(s_dim=6, t_dim=10, num_data=32):
    return ShapeSpec({"pooled": (s_dim,)}, {"pooled": (t_dim,)}, num_data=num_data)


def _contrast_batch(index, k, num_data, gen=None):
    """CRD's contrast-sample batch: column 0 = the sample itself (exact mode), then k negatives."""
    negatives = torch.randint(0, num_data, (len(index), k), generator=gen)
    return {"index": index, "contrast_idx": torch.cat([index[:, None], negatives], dim=1)}


# zoo pairs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")])
def test_zoo_pairs_forward_backward(pair):
    import models
    from core.taps import FeatureTaps, standard_taps

    teacher, student = (models.create_model(n, num_classes=10) for n in pair)
    shapes = {}
    for role, model in (("teacher", teacher), ("student", student)):
        with FeatureTaps(model, standard_taps(model)) as taps:
            shapes[role] = taps.shapes(torch.randn(2, 3, 32, 32))
    spec = ShapeSpec(shapes["student"], shapes["teacher"], num_classes=10, num_data=16)
    distillers = {name: build_distiller(name.replace("_momentum", ""), spec, **opts)
                  for name, opts in MEMORY_OPTS.items()}
    taps_s = {tap for d in distillers.values() for tap in d.student_taps}
    taps_t = {tap for d in distillers.values() for tap in d.teacher_taps}
    x = torch.randn(4, 3, 32, 32)
    with FeatureTaps(student, taps_s) as taps:
        s = taps(x)
    with torch.no_grad(), FeatureTaps(teacher, taps_t) as taps:
        t = taps(x)
    total = 0
    for distiller in distillers.values():  # one student pass serves all five
        batch = _contrast_batch(torch.arange(4), 8, 16) if distiller.data_requests() else {}
        loss = distiller.total(distiller({k: s[k] for k in distiller.student_taps},
                                         {k: t[k] for k in distiller.teacher_taps}, batch))
        assert torch.isfinite(loss)
        total = total + loss
    total.backward()
    for distiller in distillers.values():
        assert distiller.embed_s.linear.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# memories ----------------------------------------------------------------------------------
def test_queue_pointer_wraps_and_keeps_the_last_batches():
    distiller = build_distiller("crd_queue", _spec(), nce_k=8, feat_dim=4)
    pushed = []
    for _ in range(3):
        t = {"pooled": torch.randn(4, 10)}
        distiller({"pooled": torch.randn(4, 6)}, t)
        pushed.append(distiller.embed_t(t["pooled"]).detach())
    assert int(distiller.memory.queue_ptr) == 4  # 0 -> 4 -> 0 -> 4
    torch.testing.assert_close(distiller.memory.queue, torch.cat([pushed[2], pushed[1]]))


@pytest.mark.parametrize("name", ["crd_queue", "rrd"])
def test_enqueue_order(name):
    """Score-then-enqueue scores against the queue as it was; enqueue-first includes the batch."""
    s, t = {"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 10)}
    losses = {}
    for first in (False, True):
        torch.manual_seed(3)
        distiller = build_distiller(name, _spec(), nce_k=8, enqueue_first=first)
        queue = distiller.memory.queue.clone()
        losses[first] = distiller.total(distiller(s, t))
        assert not torch.equal(distiller.memory.queue[:4], queue[:4])
    assert not torch.allclose(losses[False], losses[True])


def test_rrd_defaults_are_the_paper_settings():
    rrd = build_distiller("rrd", _spec(), nce_k=8)
    assert (rrd.nce_t_s, rrd.nce_t_t, rrd.enqueue_first) == (0.04, 0.10, False)
    torch.testing.assert_close(rrd.memory.queue.norm(dim=1), torch.ones(8))
    assert rrd.data_requests() == () and not hasattr(rrd, "contrast")
    ref_init = build_distiller("rrd", _spec(), nce_k=8, queue_row_norm=False)
    torch.testing.assert_close(ref_init.memory.queue.norm(dim=0), torch.ones(128))
    momentum = build_distiller("rrd", _spec(), nce_k=8, memory_type="momentum")
    assert momentum.data_requests() == (ContrastSampling(8),) and not hasattr(momentum, "memory")


def test_crd_fixes_z_once_and_checkpoints_its_memory():
    crd = build_distiller("crd", _spec(), nce_k=8)
    assert {"contrast.memory_v1", "contrast.memory_v2", "contrast.params"} <= set(crd.state_dict())
    s, t = {"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 10)}
    crd(s, t, _contrast_batch(torch.arange(4), 8, 32))
    z = crd.contrast.params[2:4].clone()
    assert (z > 0).all()
    clone = build_distiller("crd", _spec(), nce_k=8)
    clone.load_state_dict(crd.state_dict())
    batch = _contrast_batch(torch.arange(4, 8), 8, 32)
    out, out_clone = crd(s, t, batch), clone(s, t, batch)
    torch.testing.assert_close(crd.contrast.params[2:4], z)
    torch.testing.assert_close(crd.total(out), clone.total(out_clone))
    torch.testing.assert_close(crd.contrast.memory_v1, clone.contrast.memory_v1)


def test_dcd_scale_and_bias_are_parameters():
    dcd = build_distiller("dcd", _spec())
    names = dict(dcd.named_parameters())
    assert names["tau"].item() == 1.0 and names["b"].item() == 0.0
    assert {"tau", "b"} <= set(dcd.state_dict())
    out = dcd({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 10)})
    dcd.total(out).backward()
    assert names["tau"].grad.abs() > 0 and names["b"].grad.abs() < 1e-6


# errors ------------------------------------------------------------------------------------
def test_queue_size_must_divide_by_the_global_batch():
    distiller = build_distiller("crd_queue", _spec(), nce_k=6)
    with pytest.raises(ValueError, match=r"nce_k=6 .*B=4"):
        distiller({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 10)})


@pytest.mark.parametrize("name,opts", [("crd", {}), ("rrd", {"memory_type": "momentum"})])
def test_missing_num_data(name, opts):
    with pytest.raises(ValueError, match="num_data"):
        build_distiller(name, _spec(num_data=None), **opts)


@pytest.mark.parametrize("name,opts,match", [
    ("crd", {"mode": "relaxed"}, "crd: option mode='relaxed' is not accepted; expected one of exact, relax"),
    ("crd", {"nce_m": 1.0}, "crd: option nce_m=1.0 is not accepted; expected a number >= 0 and < 1"),
    ("crd", {"nce_k": 0}, "crd: option nce_k=0 is not accepted; expected an integer >= 1"),
    ("crd_queue", {"nce_t": 0}, "crd_queue: option nce_t=0.0 is not accepted; expected a number > 0"),
    ("rrd", {"memory_type": "fifo"}, "rrd: option memory_type='fifo' is not accepted; expected one of queue, momentum"),
    ("rrd", {"nce_t_t": -1}, "rrd: option nce_t_t=-1.0 is not accepted"),
    ("dcd", {"dcd_alpha": -0.5}, "dcd: option dcd_alpha=-0.5 is not accepted"),
])
def test_bad_options(name, opts, match):
    with pytest.raises(ValueError, match=match):
        build_distiller(name, _spec(), **opts)


def test_unknown_option_and_missing_pooled_tap():
    with pytest.raises(TypeError, match="unknown option"):
        build_distiller("crd_queue", _spec(), nce_t_s=0.1)
    spec = ShapeSpec({"last_map": (8, 4, 4)}, {"pooled": (10,)}, num_data=8)
    with pytest.raises(ValueError, match="'pooled'"):
        build_distiller("dcd", spec)


def test_contrast_idx_width_is_checked():
    crd = build_distiller("crd", _spec(), nce_k=8)
    with pytest.raises(ValueError, match="nce_k \\+ 1"):
        crd({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 10)},
            _contrast_batch(torch.arange(4), 5, 32))


# DDP: memories stay identical across ranks and equal to one process on the global batch ----
GLOBAL_BATCH, STEPS = 8, 3


def _train_memories(rank: int, world: int):
    """Feed rank ``rank``'s slice of STEPS global batches to crd_queue and crd, DDP-style."""
    torch.manual_seed(0)
    spec = _spec()
    distillers = {"crd_queue": build_distiller("crd_queue", spec, nce_k=16, feat_dim=8).double(),
                  "crd": build_distiller("crd", spec, nce_k=5, feat_dim=8).double()}
    optims = {k: torch.optim.SGD(d.parameters(), lr=0.5) for k, d in distillers.items()}
    gen = torch.Generator().manual_seed(1)
    part = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    for _ in range(STEPS):
        s = torch.randn(GLOBAL_BATCH, 6, generator=gen, dtype=torch.float64)
        t = torch.randn(GLOBAL_BATCH, 10, generator=gen, dtype=torch.float64)
        contrast = _contrast_batch(torch.randperm(32, generator=gen)[:GLOBAL_BATCH], 5, 32, gen)
        for name, distiller in distillers.items():
            batch = {k: v[part] for k, v in contrast.items()} if name == "crd" else {}
            optims[name].zero_grad()
            distiller.total(distiller({"pooled": s[part]}, {"pooled": t[part]}, batch)).backward()
            for p in distiller.parameters():  # what DDP does: average the gradients
                if world > 1:
                    torch_dist.all_reduce(p.grad)
                    p.grad /= world
            optims[name].step()
    return {f"{n}.{k}": v for n, d in distillers.items() for k, v in d.state_dict().items()}


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_train_memories(rank, world), f"{out_dir}/rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_memories_match_across_ranks_and_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg_init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _train_memories(0, 1)
    buffers = ["crd_queue.memory.queue", "crd_queue.memory.queue_ptr", "crd.contrast.params",
               "crd.contrast.memory_v1", "crd.contrast.memory_v2"]
    assert set(buffers) <= set(single)
    assert int(single["crd_queue.memory.queue_ptr"]) == (STEPS * GLOBAL_BATCH) % 16
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-10, atol=1e-10, msg=key)


@pytest.mark.parametrize("width", [50, 100])  # 300 rows: gathered when K+1 = 50, one GEMM when K+1 = 100
def test_contrast_dots_are_the_gathered_dot_products_either_way(width):
    from distillers.methods._memory import contrast_dots
    torch.manual_seed(0)
    bank = torch.randn(300, 16, dtype=torch.float64)
    anchors = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 300, (8, width))
    weights = torch.randn(8, width, dtype=torch.float64)
    expected = (bank[index] * anchors[:, None]).sum(-1)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), anchors)
    got = contrast_dots(bank, anchors, index)
    bank.add_(1.0)  # the memory update after scoring overwrites the bank in place before backward
    (grad,) = torch.autograd.grad((got * weights).sum(), anchors)
    assert torch.allclose(got, expected) and torch.allclose(grad, expected_grad)
