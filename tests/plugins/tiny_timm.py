"""Small unmodified timm models under registered names, for cross-architecture tests on 32x32 data.

A registered name fixes the model's options, so a trainer builds it from ``--model_s`` alone and a
teacher checkpoint rebuilds it from its recorded ``arch``. The Mixer is timm's ``MlpMixer`` class
at a small width (its named variants fix width and depth), tapped by the same derived map as any
``timm:`` model.
"""
from models import create_model, register_model
from models.external import timm_tap_points


@register_model("test_vit_t4", family="cifar", override=True)
def vit_tiny_patch4(num_classes=10):
    """ViT-Tiny (192 wide, class token) on 32x32: patch 4 (an 8x8 grid), 4 blocks."""
    return create_model("timm:vit_tiny_patch16_224", num_classes=num_classes, img_size=32, patch_size=4, depth=4)


@register_model("test_deit_s8", family="cifar", override=True)
def deit_small_distilled_patch8(num_classes=10):
    """Distilled DeiT-Small (384 wide, class + distillation tokens) on 32x32: patch 8 (4x4), 4 blocks."""
    return create_model("timm:deit_small_distilled_patch16_224", num_classes=num_classes, img_size=32,
                        patch_size=8, depth=4)


@register_model("test_mixer", family="cifar", override=True)
def mixer_tiny(num_classes=10):
    """MLP-Mixer (128 wide, no prefix tokens) on 32x32: patch 4 (8x8), 4 blocks."""
    from timm.models.mlp_mixer import MlpMixer

    model = MlpMixer(num_classes=num_classes, img_size=32, patch_size=4, num_blocks=4, embed_dim=128)
    model.tap_points = timm_tap_points(model)
    return model
