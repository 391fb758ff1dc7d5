"""Attention sinks, token norms and the rollout that survives them, on ViTs whose weights are written by hand
(tests/constructed_models.py): the sink, the object and the high-norm patch are where the weights put them,
so every assertion checks a known answer. And timm's architecture names, against timm's own definitions."""
import numpy as np
import pytest
from matplotlib.patches import Circle

from constructed_models import constructed_vit, object_image
from numpy_vit import ViT, analysis
from numpy_vit.config import ViTConfig
from numpy_vit.errors import ArgumentError, CheckpointError, ConfigError
from numpy_vit.viz.attention_budget import attention_shares, token_groups
from numpy_vit.viz.figures import make_figure, record_for
from numpy_vit.viz._common import TokenLayout
from numpy_vit.weights.config_from_tensors import config_for_arch, infer_config

SINK = (11, 2)                              # where constructed_vit puts layer 0 head 0's sink
SINK_TOKEN = 1 + SINK[0] * 14 + SINK[1]     # after the class token
OBJECT_ROWS, OBJECT_COLS = (2, 8), (7, 13)  # object_image's white square, in patches


@pytest.fixture(scope="module")
def sink_trace():
    model = constructed_vit(high_norm=(0, 0))
    return model.run(object_image(), record=["blocks.*.attn.pattern", "blocks.*.resid_post", "input", "logits",
                                             "pooled"])


def test_the_sink_is_found_and_named(sink_trace):
    sinks = analysis.attention_sinks(sink_trace)
    # layer 0 head 0 reads one patch; the later heads spread over the 36 object patches (1/36 < 10/197 each)
    assert [(s.layer, s.head, s.token, s.name, s.position) for s in sinks] == \
        [(0, 0, SINK_TOKEN, "patch 156", SINK)]
    assert sinks[0].share > 0.99                                  # softmax scores 25 apart: e^-25 elsewhere
    assert "layer 0 head 0 -> patch 156 (row 11, col 2)" in sinks[0].describe()
    with pytest.raises(ArgumentError, match="threshold must be a share"):
        analysis.attention_sinks(sink_trace, threshold=2.0)


def test_a_model_of_ten_tokens_or_fewer_has_no_sinks_and_its_figures_draw(tmp_path):
    """At N <= 10 tokens ten times the uniform share is all of a row's attention or more: no key can pass it,
    so the default threshold is 1 (none found) instead of an impossible share that stopped the figures."""
    model = ViT(img_size=48, patch_size=16, embed_dim=16, depth=2, num_heads=2, num_classes=3)   # 1 + 3 x 3 tokens
    trace = model.run(np.zeros((48, 48, 3), np.uint8))
    assert analysis.attention_sinks(trace) == []
    assert analysis.majority_sink_threshold(10) == 1.0
    for name in ("attention_rollout", "attention_budget"):
        make_figure(name, trace, save_path=str(tmp_path / f"{name}.png"))
        assert (tmp_path / f"{name}.png").is_file()


def test_token_norms_flag_the_high_norm_patch(sink_trace):
    norms = analysis.token_norms(sink_trace)
    assert norms.norms.shape == (4, 197)
    assert norms.patch_outliers() == {1}                          # patch 0 = token 1, given a 10x larger norm
    assert {name for _, _, name, _ in norms.outliers} == {"patch 0"}
    ratio = np.delete(norms.norms, 1, axis=1)[:, 1:] / norms.median[:, None]
    assert ratio.max() < 2.0                                      # every other patch is ordinary


def test_the_rollout_without_the_sink_lands_on_the_object(sink_trace):
    layers = analysis.trace_layers(sink_trace)
    sinks = analysis.attention_sinks(sink_trace)
    plain = analysis.attention_rollout_row(layers, 0, num_prefix_tokens=1)
    assert int(np.argmax(plain[1:])) == SINK_TOKEN - 1            # the plain rollout is one bright dot
    assert analysis.dominating_sinks(plain, sinks, (14, 14), 1) == sinks
    row, excluded = analysis.rollout_without_sinks(layers, sinks, 0, "mean", 1, (14, 14))
    assert excluded == [(0, 0)]
    grid = row[1:].reshape(14, 14)
    on_object = grid[slice(*OBJECT_ROWS), slice(*OBJECT_COLS)]
    assert np.unravel_index(np.argmax(grid), grid.shape) in {(r, c) for r in range(*OBJECT_ROWS)
                                                              for c in range(*OBJECT_COLS)}
    assert on_object.sum() / grid.sum() > 0.5                     # 36 of 196 patches hold most of the mass
    assert analysis.dominating_sinks(row, sinks, (14, 14), 1) == []
    # the same as the full rollout with the sink head fused out, read at the class token's row
    full = analysis.attention_rollout(layers, num_prefix_tokens=1, exclude_heads=[(0, 0)])[0, 0]
    np.testing.assert_allclose(row, full, rtol=0, atol=1e-12)    # float64 sums of <= 197 terms, another order


def test_rollout_row_and_exclusions_agree_with_the_full_matrices():
    rng = np.random.default_rng(0)
    layers = [rng.dirichlet(np.ones(10), size=(2, 3, 10)).astype(np.float32) for _ in range(4)]
    for fusion in analysis.HEAD_FUSIONS:
        for options in ({}, {"start_layer": 2}, {"exclude_layers": [1]}, {"exclude_heads": [(0, 1), (3, 2)]},
                        {"discard_ratio": 0.5}):
            full = analysis.attention_rollout(layers, fusion, num_prefix_tokens=1, **options)   # [B, N, N]
            for query in (0, 4):
                row = analysis.attention_rollout_row(layers, query, fusion, num_prefix_tokens=1, image=1, **options)
                np.testing.assert_allclose(row, full[1, query], rtol=0, atol=1e-12)   # float64, 10-term sums
            mean_row = analysis.attention_rollout_row(layers, "mean", fusion, num_prefix_tokens=1, **options)
            np.testing.assert_allclose(mean_row, full[0, 1:].mean(0), rtol=0, atol=1e-12)
    # an excluded head is fused out of its layer: the rollout of the layers with that head removed
    kept = [np.delete(a, 1, axis=1) if i == 0 else a for i, a in enumerate(layers)]
    np.testing.assert_allclose(analysis.attention_rollout(layers, exclude_heads=[(0, 1)]),
                               analysis.attention_rollout(kept), rtol=0, atol=1e-12)
    # a layer whose heads are all excluded keeps only its residual path, as before start_layer
    np.testing.assert_allclose(analysis.attention_rollout(layers, exclude_layers=[0, 1]),
                               analysis.attention_rollout(layers, start_layer=2), rtol=0, atol=1e-12)
    with pytest.raises(ArgumentError, match=r"exclude_heads must hold \(layer, head\) pairs"):
        analysis.attention_rollout(layers, exclude_heads=[3])


def test_the_rollout_figure_names_and_marks_the_sink(sink_trace, tmp_path):
    fig = make_figure("attention_rollout", sink_trace, save_path=tmp_path / "rollout.png")
    titles = [ax.get_title() for ax in fig.get_axes() if ax.get_title()]
    dominated = [t for t in titles if "dominated by a sink" in t]
    assert len(dominated) == 2 and all("patch 156" in t and "L0·H0" in t for t in dominated)   # mean and max
    assert titles.index(dominated[0]) + 1 == titles.index("Rollout without the sink head L0·H0\nhead fusion: mean")
    rings = [p for ax in fig.get_axes() for p in ax.patches if isinstance(p, Circle)]
    assert len(rings) == 2
    centre = ((SINK[1] + 0.5) * 16 - 0.5, (SINK[0] + 0.5) * 16 - 0.5)
    assert all(np.allclose(ring.center, centre) for ring in rings)
    # asked to start after the sink's layer, nothing dominates and no panel is added
    fig = make_figure("attention_rollout", sink_trace, start_layer=1)
    assert not any("sink" in ax.get_title() for ax in fig.get_axes())


def test_figure_9_shows_where_the_attention_goes(sink_trace, tmp_path):
    layout = TokenLayout.of_trace(sink_trace)
    groups = token_groups(layout, [SINK_TOKEN])
    shares = attention_shares(analysis.trace_layers(sink_trace), groups)
    # layer 0: head 0 of 4 gives the sink all, the 3 uniform heads 1/197 each
    np.testing.assert_allclose(shares["sink patches"][0], 0.25 + 0.75 / 197, rtol=1e-5)   # float32 softmax
    np.testing.assert_allclose(sum(shares.values()), 1.0, rtol=1e-5)                     # rows sum to 1
    fig = make_figure("attention_budget", sink_trace, save_path=tmp_path / "budget.png")
    text = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "1 outlier patch(es)" in text and "1 sink patch(es)" in text and "here patch 156" in text
    assert set(record_for(["attention_budget"])) >= {"blocks.*.attn.pattern", "blocks.*.resid_post"}


def test_a_register_that_soaks_up_attention_is_named():
    model = constructed_vit(grid=(6, 6), width=32, depth=3, heads=2, sink=(5, 0), registers=4,
                            register_sink_layer=1)
    trace = model.run(object_image((6, 6), 16, (1, 5), (1, 5)), record=["blocks.*.attn.pattern"])
    found = {(s.layer, s.head, s.name, s.position) for s in analysis.attention_sinks(trace)}
    assert (1, 1, "reg0", None) in found and (0, 0, "patch 30", (5, 0)) in found


# --- names ------------------------------------------------------------------------------------------

# What timm's definitions say (timm/models/vision_transformer.py, deit.py: the model functions' model_args and
# the pretrained cfgs); parity_tests/test_timm_names.py checks every row against timm itself.
#   name: (img, patch, width, heads, registers, no_embed_class, init_values, classes, mean[0], crop_pct)
TIMM_TABLE = {
    "vit_small_patch14_dinov2.lvd142m": (518, 14, 384, 6, 0, False, 1e-5, 0, 0.485, 1.0),
    "vit_small_patch14_reg4_dinov2.lvd142m": (518, 14, 384, 6, 4, True, 1e-5, 0, 0.485, 1.0),
    "vit_large_patch14_reg4_dinov2": (518, 14, 1024, 16, 4, True, 1e-5, 0, 0.485, 1.0),
    "deit3_small_patch16_224.fb_in1k": (224, 16, 384, 6, 0, True, 1e-6, 1000, 0.485, 0.9),
    "deit3_base_patch16_384.fb_in22k_ft_in1k": (384, 16, 768, 12, 0, True, 1e-6, 1000, 0.485, 1.0),
    "deit_base_distilled_patch16_384.fb_in1k": (384, 16, 768, 12, 0, False, None, 1000, 0.485, 1.0),
    "vit_base_patch16_224.augreg_in21k_ft_in1k": (224, 16, 768, 12, 0, False, None, 1000, 0.5, 0.9),
    "vit_small_patch16_224.augreg_in21k": (224, 16, 384, 6, 0, False, None, 21843, 0.5, 0.9),
    "vit_base_patch16_224.orig_in21k": (224, 16, 768, 12, 0, False, None, 0, 0.5, 0.9),
    "vit_small_patch16_224.dino": (224, 16, 384, 6, 0, False, None, 0, 0.485, 0.9),
}


@pytest.mark.parametrize("name", TIMM_TABLE)
def test_a_timm_name_gives_its_familys_config_and_keeps_its_name(name):
    config = config_for_arch(name)
    assert (config.img_size[0], config.patch_size, config.embed_dim, config.num_heads, config.num_reg_tokens,
            config.no_embed_class, config.init_values, config.num_classes, config.mean[0], config.crop_pct) == \
        TIMM_TABLE[name]
    assert config.name == name == ViTConfig.from_json(config.to_json()).name     # through a converted .npz too
    assert config.distilled == ("distilled" in name)


def test_a_checkpoint_without_registers_does_not_keep_a_reg4_name(tmp_path):
    truth = config_for_arch("vit_small_patch14_dinov2.lvd142m", depth=1)
    params = ViT(truth, seed=0).params
    loaded = infer_config(params, "m.safetensors", base=config_for_arch("vit_small_patch14_reg4_dinov2.lvd142m",
                                                                        depth=1))
    assert (loaded.name, loaded.num_reg_tokens, loaded.no_embed_class) == \
        ("vit_small_patch14_dinov2.lvd142m", 0, False)
    ViT(loaded, params).save(tmp_path / "m.npz")
    assert ViT.from_pretrained(tmp_path / "m.npz").config.name == "vit_small_patch14_dinov2.lvd142m"


@pytest.mark.parametrize("name, part", [
    ("vit_base_patch16_rope_224.naver_in1k", "unknown part 'rope_224'"),   # timm's RoPE-ViT: not modelled
    ("vit_giant_patch14_dinov2", "unknown size 'giant'.*SwiGLU"),
    ("vit_small_patch16_224.lvd999m", "unknown pretrained tag 'lvd999m'"),
    ("deit_small_patch16_224.lvd142m", "tag 'lvd142m' .* belongs to dinov2 models"),
    ("vit_small_patch16_reg4_224", "registers .* only for the DINOv2 names"),
])
def test_an_unmappable_name_says_which_part_is_unknown(name, part):
    with pytest.raises(CheckpointError, match=part):
        config_for_arch(name)
    with pytest.raises(ConfigError, match=part):
        ViTConfig.preset(name)
