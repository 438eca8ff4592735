"""Generic shape adapters (distillers/methods/_adapters.py) and the feature methods on cross-architecture
shapes: shapes, the spatial choice each pair of shapes gets, gradients, bfloat16 under autocast, and a
ViT-Tiny (patch 4, 32x32) distilled by FitNet from a CIFAR ResNet through the model API."""
import pytest
import torch
import torch.nn.functional as F

from core.taps import FeatureTaps, standard_taps
from distillers import ShapeSpec, build_distiller
from distillers.methods._adapters import (ChannelProjection, SpatialProjection, map_adapter, map_to_tokens,
                                          resize_map, tokens_to_map)
from distillers.methods._common import pool_to_smaller
from models import create_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_tokens_and_maps_round_trip():
    x = torch.randn(2, 1 + 12, 5)  # a class token and a 3x4 grid
    grid = tokens_to_map(x, prefix=1, grid=(3, 4))
    assert grid.shape == (2, 5, 3, 4)
    assert torch.equal(grid[:, :, 1, 2], x[:, 1 + 1 * 4 + 2])  # row-major positions
    assert torch.equal(map_to_tokens(grid), x[:, 1:])
    assert tokens_to_map(x[:, 1:13].reshape(2, 12, 5)[:, :9]).shape == (2, 5, 3, 3)  # square by default
    with pytest.raises(ValueError, match="12 patch tokens do not fill a 3x3 grid"):
        tokens_to_map(x, prefix=1, grid=(3, 3))


def test_resize_pools_down_and_interpolates_up():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(resize_map(x, (4, 4)), F.adaptive_avg_pool2d(x, 4))
    assert torch.equal(resize_map(x, (16, 16)), F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False))
    assert resize_map(x, (4, 16)).shape == (2, 3, 4, 16)
    assert resize_map(x, (8, 8)) is x


@pytest.mark.parametrize("s_shape,t_shape,mode", [
    ((6, 32, 32), (10, 8, 8), "merge4"), ((6, 8, 8), (10, 4, 4), "merge2"), ((6, 8, 8), (10, 32, 32), "expand4"),
    ((6, 4, 4), (10, 8, 8), "expand2"), ((6, 8, 8), (10, 6, 6), "interpolate"), ((6, 7, 7), (10, 7, 7), "project"),
    ((6,), (10, 4, 4), "expand4"),  # a vector is a 1x1 map
])
def test_spatial_projection_chooses_from_the_two_shapes(s_shape, t_shape, mode):
    adapter = map_adapter(s_shape, t_shape)
    assert adapter.mode == mode
    x = torch.randn(2, *s_shape, requires_grad=True)
    out = adapter(x if len(s_shape) == 3 else x[:, :, None, None])
    assert out.shape == (2, *t_shape)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in adapter.parameters())


def test_patch_merging_is_a_projection_of_concatenated_patches():
    adapter = SpatialProjection((3, 4, 4), (5, 2, 2))
    x = torch.randn(1, 3, 4, 4)
    patches = F.unfold(x, kernel_size=2, stride=2)  # (1, 3*2*2, 4 patches)
    by_hand = adapter.proj.weight.reshape(5, -1) @ patches + adapter.proj.bias[:, None]
    torch.testing.assert_close(adapter(x), by_hand.reshape(1, 5, 2, 2))


def test_parameter_free_adapter_keeps_channels():
    assert map_adapter((4, 8, 8), (4, 2, 2), learnt=False)(torch.randn(1, 4, 8, 8)).shape == (1, 4, 2, 2)
    with pytest.raises(ValueError, match="keeps the channels: student 4 vs teacher 6"):
        map_adapter((4, 8, 8), (6, 2, 2), learnt=False)
    with pytest.raises(ValueError, match=r"expected a map \(C, H, W\) or a vector \(C,\), got a shape \(65, 192\)"):
        map_adapter((65, 192), (4, 2, 2))


def test_channel_projection_is_one_linear_map_on_maps_vectors_and_tokens():
    proj = ChannelProjection(4, 6)
    x = torch.randn(2, 4, 3, 3)
    as_map = proj(x)
    torch.testing.assert_close(map_to_tokens(as_map), proj(map_to_tokens(x)))
    torch.testing.assert_close(as_map[:, :, 0, 0], proj(x[:, :, 0, 0]))


def test_adapters_under_bf16_autocast_and_with_a_bf16_input():
    adapters = [map_adapter((6, 8, 8), (10, 4, 4)), map_adapter((6, 8, 8), (10, 6, 6)),
                map_adapter((6, 4, 4), (10, 8, 8)), ChannelProjection(6, 10)]
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for adapter in adapters:
            inp = x if not isinstance(adapter, SpatialProjection) or adapter.mode != "expand2" else x[:, :, :4, :4]
            out = adapter(inp)
            assert out.dtype == torch.bfloat16
            out.float().square().mean().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    for adapter in adapters[:2]:  # outside autocast a bfloat16 feature meets float32 weights
        assert adapter(x.detach().bfloat16()).dtype == torch.float32


def test_pool_to_smaller_takes_maps_each_larger_in_one_dimension():
    a, b = torch.randn(2, 3, 8, 4), torch.randn(2, 5, 4, 8)
    pa, pb = pool_to_smaller(a, b)
    assert pa.shape[-2:] == pb.shape[-2:] == (4, 4)
    assert torch.equal(pa, F.adaptive_avg_pool2d(a, 4)) and torch.equal(pb, F.adaptive_avg_pool2d(b, 4))
    assert pool_to_smaller(a, a[:, :, :4, :2])[0].shape[-2:] == (4, 2)  # unchanged rule otherwise


def test_fitnet_adapter_option_connects_what_convreg_cannot():
    spec = ShapeSpec({"stage1": (192, 8, 8)}, {"stage1": (16, 32, 32)})  # ViT-T patch 4 -> a CIFAR ResNet's stage 1
    with pytest.raises(ValueError, match=r"cannot map a 8x8 student map onto a 32x32 .*\(--adapter auto maps any"):
        build_distiller("fitnet", spec, hint_layer=1)
    fitnet = build_distiller("fitnet", spec, hint_layer=1, adapter="auto")
    assert fitnet.regressor.conv.mode == "expand4"
    s = {"stage1": torch.randn(2, 192, 8, 8, requires_grad=True)}
    loss = fitnet.total(fitnet(s, {"stage1": torch.randn(2, 16, 32, 32)}))
    loss.backward()
    assert torch.isfinite(loss) and s["stage1"].grad.abs().sum() > 0


def test_ab_and_reviewkd_pair_the_deepest_stages_with_the_adapter_option():
    vit = [(192, 8, 8)] * 4
    resnet = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    for method, tap in (("ab", "stages_preact"), ("reviewkd", "stages")):
        spec = ShapeSpec({tap: vit, "stages": vit, "pooled": (192,)},
                         {"stages_preact": resnet, "pooled": (64,)})
        with pytest.raises(ValueError, match=r"the student has 4 stages, the teacher 3 \(--adapter auto pairs the "
                                             r"deepest 3\)"):
            build_distiller(method, spec)
        distiller = build_distiller(method, spec, adapter="auto")
        s = {k: [torch.randn(2, *x, requires_grad=True) for x in vit] for k in ("stages", "stages_preact")}
        s["pooled"] = torch.randn(2, 192, requires_grad=True)
        t = {"stages_preact": [torch.randn(2, *x) for x in resnet], "pooled": torch.randn(2, 64)}
        terms = distiller.init_forward(s, t) if method == "ab" else distiller(s, t)
        if method == "ab":
            assert list(terms) == ["ab2", "ab3", "ab4"]  # named after the student stage
            assert [c.conv.mode for c in distiller.connectors[:1]] == ["expand4"]
        loss = distiller.total(terms)
        loss.backward()
        grads = s["stages_preact" if method == "ab" else "stages"]
        assert torch.isfinite(loss) and grads[0].grad is None and grads[1].grad.abs().sum() > 0


def test_vit_tiny_patch4_on_32px_trains_by_fitnet_from_a_resnet_teacher():
    """The model API end to end: timm's ViT-Tiny with img_size 32 and patch 4, tapped, its FitNet
    connector built from the two dry-run shapes, one SGD step of CE + hint."""
    student = create_model("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    teacher = create_model("resnet20", num_classes=10).eval()
    x, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with FeatureTaps(student, standard_taps(student)) as s_taps, FeatureTaps(teacher, standard_taps(teacher)) as t_taps:
        spec = ShapeSpec(s_taps.shapes(x[:2]), t_taps.shapes(x[:2]), num_classes=10)
    assert spec.student["stage2"] == (192, 8, 8) and spec.teacher["stage2"] == (32, 16, 16)
    fitnet = build_distiller("fitnet", spec)
    params = list(student.parameters()) + list(fitnet.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05)
    before = [p.detach().clone() for p in student.parameters()]
    with FeatureTaps(student, ["logits", "stage2"]) as s_taps, FeatureTaps(teacher, ["stage2"]) as t_taps:
        s = s_taps(x)
        with torch.no_grad():
            t = t_taps(x)
    loss = F.cross_entropy(s["logits"], labels) + 100 * fitnet.total(fitnet(s, t))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert student.blocks[3].mlp.fc2.weight.grad.abs().sum() > 0  # the hint reaches block 3 (stage2 = blocks.3)
    assert sum(not torch.equal(p.detach(), b) for p, b in zip(student.parameters(), before)) > 0
