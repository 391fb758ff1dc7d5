"""The model's building blocks without torch: resampling weights, config, trace recording (the layer functions:
tests/test_layers.py)."""
import numpy as np
import pytest

import numpy_vit as nv
from numpy_vit.resample import resize_weights


@pytest.mark.parametrize("method", ["bicubic_antialias", "bicubic_hf", "bilinear"])
@pytest.mark.parametrize("n_in,n_out", [(7, 14), (14, 24), (24, 14), (14, 5), (3, 3)])
def test_resize_weights_are_partitions_of_unity(method, n_in, n_out):
    W = resize_weights(n_in, n_out, method)
    assert W.shape == (n_out, n_in)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)  # a constant grid stays constant


def test_presets_and_config_round_trip():
    for name in nv.PRESETS:
        config = nv.ViTConfig.preset(name)
        assert nv.ViTConfig.from_json(config.to_json()) == config
    dino = nv.ViTConfig.preset("vit_small_patch14_reg4_dinov2")
    assert dino.grid_size == (37, 37) and dino.prefix_names == ("cls", "reg0", "reg1", "reg2", "reg3")
    assert dino.num_pos_embed == 37 * 37  # no_embed_class: patches only
    deit = nv.ViTConfig.preset("deit_tiny_distilled_patch16_224")
    assert deit.prefix_names == ("cls", "dist") and deit.num_pos_embed == 2 + 196
    assert nv.ViTConfig(img_size=(224, 160)).grid_size == (14, 10)
    with pytest.raises(nv.ConfigError, match="multiple of patch_size"):
        nv.ViTConfig(img_size=230)


def test_trace_shapes_recording_and_resampling():
    config = nv.ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3,
                          num_reg_tokens=2)
    model = nv.ViT(config, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 24)).astype(np.float32)  # non-square: 4x3 grid
    trace = model.run(x)
    N = 1 + 2 + 12
    assert trace.grid == (4, 3)
    assert trace["blocks.1.attn.pattern"].shape == (2, 4, N, N)
    np.testing.assert_allclose(trace["blocks.1.attn.pattern"].sum(-1), 1.0, atol=1e-6)
    assert trace["blocks.0.mlp.pre"].shape == (2, N, 128)
    assert trace["pos_embed"].shape == (N, 32) and trace.logits.shape == (2, 3)
    # the residual stream adds up: resid_post = resid_mid + mlp_out = resid_pre + attn_out + mlp_out
    np.testing.assert_allclose(trace["blocks.0.resid_post"],
                               trace["blocks.0.resid_pre"] + trace["blocks.0.attn_out"] + trace["blocks.0.mlp_out"],
                               atol=1e-5)
    only = model.run(x, record=["blocks.*.attn.pattern"])
    assert sorted(only) == ["blocks.0.attn.pattern", "blocks.1.attn.pattern"]
    np.testing.assert_array_equal(only["blocks.1.attn.pattern"], trace["blocks.1.attn.pattern"])
    assert len(model.attention_maps) == 2
    # float64 on request gives the same answer to float32 precision
    np.testing.assert_allclose(model.astype(np.float64).run(x.astype(np.float64)).logits, trace.logits, atol=1e-5)


def test_guide_class_name_and_arguments():
    model = nv.ViTWithAttention(img_size=64, patch_size=16, num_classes=10, embed_dim=48, depth=2, num_heads=3)
    img = np.random.default_rng(1).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    trace = model.run(img)
    assert trace["input"].shape == (1, 3, 64, 64) and trace.image.shape == (64, 64, 3)
    assert len(trace.top_k(5)) == 5 and abs(sum(p for _, p in trace.top_k(10)) - 1) < 1e-5
