"""timm's architecture names read by numpy_vit (ViTConfig.preset / config_for_arch) against timm's own models and
pretrained configs, and a ViT whose weights are written by hand (tests/constructed_models.py) run in timm."""
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import timm, torch
from numpy_vit.weights.config_from_tensors import config_for_arch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from constructed_models import constructed_vit, object_image  # noqa: E402

NAMES = ["vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2.lvd142m", "vit_base_patch14_dinov2",
         "vit_large_patch14_reg4_dinov2", "deit3_small_patch16_224.fb_in1k", "deit3_medium_patch16_224",
         "deit3_base_patch16_384.fb_in22k_ft_in1k", "deit3_huge_patch14_224.fb_in22k_ft_in1k",
         "deit_small_patch16_224.fb_in1k", "deit_base_distilled_patch16_384.fb_in1k",
         "vit_base_patch16_224.augreg_in21k_ft_in1k", "vit_small_patch16_224.augreg_in21k",
         "vit_base_patch16_224.orig_in21k", "vit_small_patch16_224.dino", "vit_base_patch16_384.augreg_in1k",
         "vit_large_patch16_224.mae", "vit_base_patch8_224.augreg2_in21k_ft_in1k", "vit_tiny_patch16_384"]


@pytest.mark.parametrize("name", NAMES)
def test_a_timm_name_gives_timms_config(name):
    reference = timm.create_model(name, pretrained=False, depth=1)   # one block: timm's own config, cheaply
    cfg = reference.pretrained_cfg
    config = config_for_arch(name)
    assert config.name == name
    assert (config.embed_dim, config.num_heads, config.patch_size) == \
        (reference.embed_dim, reference.blocks[0].attn.num_heads, reference.patch_embed.patch_size[0])
    assert config.img_size == tuple(reference.patch_embed.img_size) == tuple(cfg["input_size"][1:])
    assert (config.num_reg_tokens, config.no_embed_class, config.num_prefix_tokens, config.distilled) == \
        (reference.num_reg_tokens, reference.no_embed_class, reference.num_prefix_tokens,
         getattr(reference, "dist_token", None) is not None)
    assert config.num_pos_embed == reference.pos_embed.shape[1]
    assert config.num_classes == reference.num_classes == cfg["num_classes"]
    np.testing.assert_allclose(config.mean, cfg["mean"], rtol=0, atol=1e-7)   # the same decimals, as floats
    np.testing.assert_allclose(config.std, cfg["std"], rtol=0, atol=1e-7)
    assert config.crop_pct == pytest.approx(cfg["crop_pct"])
    gamma = getattr(reference.blocks[0].ls1, "gamma", None)
    assert config.init_values == (None if gamma is None else pytest.approx(float(gamma.detach()[0])))


def test_the_constructed_sink_model_is_a_timm_vit():
    """Its hand-written state dict loads into timm's VisionTransformer with strict=True, and timm's layer-0 head 0
    sends every query to the sink patch, as ours does."""
    model = constructed_vit()
    c = model.config
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
        num_classes=0, global_pool="token").eval()
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.params.items()}, strict=True)
    image = object_image()
    trace = model.run(image, record=["input", "blocks.0.attn.pattern", "pooled"])
    x = torch.from_numpy(np.asarray(trace["input"]))
    with torch.no_grad():
        tokens = reference._pos_embed(reference.patch_embed(x))
        block = reference.blocks[0]
        q, k, _ = block.attn.qkv(block.norm1(tokens)).reshape(1, -1, 3, c.num_heads, c.head_dim).permute(2, 0, 3, 1, 4)
        pattern = (q @ k.transpose(-2, -1) * c.head_dim ** -0.5).softmax(-1)          # [1, H, N, N]
        pooled = reference(x)
    np.testing.assert_allclose(pattern.numpy(), trace["blocks.0.attn.pattern"], rtol=0, atol=1e-5)  # conftest TOL
    assert float(pattern[0, 0, :, 1 + 11 * 14 + 2].min()) > 0.99
    np.testing.assert_allclose(pooled.numpy(), trace["pooled"], rtol=0, atol=1e-4)                 # conftest TOL


FAMILY_PATTERNS = ["vit_*", "deit*", "beit*", "eva02*"]   # every family numpy_vit reads (CLIP, SigLIP, gap are vit_*)


def test_an_untagged_name_reads_as_timm_builds_it():
    """timm.create_model(name) without a tag takes its default pretrained tag's head and preprocessing: for every
    timm name numpy_vit reads, the untagged config must equal the config of the name with that tag (so
    config.TIMM_DEFAULT_TAGS lists exactly the names where the two would otherwise differ), and the head width
    must be timm's."""
    from timm.models import get_pretrained_cfg

    from numpy_vit import ViTConfig
    from numpy_vit.errors import ConfigError
    names = sorted({n for pattern in FAMILY_PATTERNS for n in timm.list_models(pattern)})
    checked = []
    for name in names:
        try:
            config = ViTConfig.preset(name)
        except ConfigError:
            continue   # a timm name of another architecture (RoPE-ViT, NaFlex, EVA-02 CLIP, ...): refused by name
        cfg = get_pretrained_cfg(name)
        tag = getattr(cfg, "tag", "") if cfg is not None else ""
        if not tag or tag == "untrained":
            continue
        tagged = ViTConfig.preset(f"{name}.{tag}")
        fields = ("num_classes", "mean", "std", "crop_pct", "img_size")
        assert [getattr(config, f) for f in fields] == [getattr(tagged, f) for f in fields], (name, tag)
        assert config.num_classes == (cfg.num_classes or 0), (name, config.num_classes, cfg.num_classes)
        assert config.name == name
        checked.append(name)
    assert len(checked) > 100, len(checked)   # 133 untagged names with weights in timm 1.0.31
