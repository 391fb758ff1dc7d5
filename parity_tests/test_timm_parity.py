"""numpy_vit against timm: every preset, random weights, a batch of 2, every block compared."""
import numpy as np
import pytest

from conftest import Recorder, compare_traces, max_err, random_batch, scale_of, timm_state_to_params

import numpy_vit as nv

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

PRESETS = [
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "vit_base_patch32_224",
    "vit_base_patch16_384",
    "deit_tiny_distilled_patch16_224",
    "vit_small_patch14_reg4_dinov2",
    "vit_small_patch16_224.dino",
    "eva_large_patch14_196",
]


def _randomise(model, seed=0):
    """timm zero-initialises the head (and some models the layer scale): fill every tensor with random
    values of a realistic size so that the head, biases and prefix tokens are really compared."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            elif name.endswith("gamma"):
                p.copy_(0.1 + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g).clamp(-2, 2) * (10 if "token" in name or "pos" in name else 1))
    return model


def _pair(name, dtype, dynamic_img_size=False, **overrides):
    """(timm model, numpy_vit model) holding the same random weights; ``overrides`` go to both."""
    config = nv.ViTConfig.preset(name, **overrides)
    tm = timm.create_model(name, pretrained=False, dynamic_img_size=dynamic_img_size, **overrides)
    tm = _randomise(tm).eval()
    if dtype == np.float64:
        tm = tm.double()
    model = nv.ViT(config, timm_state_to_params(tm), dtype=dtype)
    return tm, model


def _run_both(tm, model, x):
    rec = Recorder(tm)
    with torch.no_grad():
        feats = tm.forward_features(torch.from_numpy(x))
        out = tm.forward_head(feats, pre_logits=model.config.num_classes == 0)
    trace = model.forward(x)
    reference = dict(rec.arrays)
    reference["logits" if model.config.num_classes else "pooled"] = out.numpy()
    return trace, reference


# The suite runs the heavy cases on their first blocks: every block runs the same code (same width, heads and
# shapes) as the first, so more blocks add only the accumulation of rounding through depth, which the full-depth
# runs at native resolution cover: ViT-Ti, ViT-S, ViT-B/16, ViT-B/32, DeiT and DINO in float32, and ViT-Ti,
# ViT-S, DeiT and DINO in float64 (12 blocks each). Each shortened preset keeps its own features: ViT-L's width
# 1024 and 16 heads, EVA's 14 px patches at 196, ViT-B/16-384's 24 x 24 position grid at its native 384 px,
# DINOv2's registers, layer scale and 14 px patches (float32 at its native 518 px, the longest sequence: 1373
# tokens). float64 checks that the formulas are timm's to rounding (1e-10), which two blocks show as well as
# twelve. bench/parity_full.py runs every preset at full depth and native resolution in both dtypes, and the
# resampled cases below at full depth.
SHORTENED = {
    np.float32: {
        "vit_large_patch16_224": dict(depth=4),
        "eva_large_patch14_196": dict(depth=4),
        "vit_base_patch16_384": dict(depth=4),
        "vit_small_patch14_reg4_dinov2": dict(depth=2),
    },
    np.float64: {
        "vit_base_patch16_224": dict(depth=4),
        "vit_base_patch32_224": dict(depth=4),
        "vit_large_patch16_224": dict(depth=4),
        "eva_large_patch14_196": dict(depth=4),
        "vit_base_patch16_384": dict(depth=2),
        "vit_small_patch14_reg4_dinov2": dict(depth=4, img_size=224),
    },
}
# (preset, input size, the suite's overrides): the position embedding is resampled before the first block, so
# ViT-B runs two blocks at 384 px (576 patches); the small models run all of theirs
RESAMPLED = [
    ("vit_tiny_patch16_224", (224, 160), {}),                # non-square input on a square model
    ("vit_base_patch16_224", (384, 384), dict(depth=2)),     # 384 on a 224 model: pos-embed upsampled 14x14 -> 24x24
    ("vit_small_patch16_224", (128, 96), {}),                # smaller than trained: downsampled with antialias
    ("vit_small_patch14_reg4_dinov2", (224, 168), {}),       # registers + no_embed_class + layer scale, non-square
]


def _label(name, overrides, suffix=""):
    details = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return f"timm {name}{suffix}" + (f" ({details})" if details else "")


def compare_preset(name, dtype, **overrides):
    """A batch of 2 through timm and numpy_vit with the same random weights, every block compared (asserts)."""
    tm, model = _pair(name, dtype, **overrides)
    x = random_batch(model.config, batch=2, dtype=dtype)
    trace, reference = _run_both(tm, model, x)
    compare_traces(trace, reference, dtype, _label(name, overrides), model.config.depth)
    # the recorded probabilities are distributions
    np.testing.assert_allclose(trace["blocks.0.attn.pattern"].sum(-1), 1.0, atol=1e-5 if dtype == np.float32 else 1e-12)


def compare_resampled(name, size, **overrides):
    """timm resamples with resample_abs_pos_embed (bicubic, antialias) when dynamic_img_size=True: a float32
    batch of 2 at ``size`` on a model of its preset's size, every block compared (asserts)."""
    tm, model = _pair(name, np.float32, dynamic_img_size=True, **overrides)
    x = random_batch(model.config, batch=2, size=size, seed=1)
    trace, reference = _run_both(tm, model, x)
    gh, gw = size[0] // model.config.patch_size, size[1] // model.config.patch_size
    assert trace.grid == (gh, gw)
    assert trace["blocks.0.attn.pattern"].shape[-1] == model.config.num_prefix_tokens + gh * gw
    compare_traces(trace, reference, np.float32, _label(name, overrides, f" @ {size[0]}x{size[1]}"),
                   model.config.depth)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_timm(name, dtype):
    compare_preset(name, dtype, **SHORTENED[dtype].get(name, {}))


@pytest.mark.parametrize("name,size,overrides", RESAMPLED, ids=[f"{n}-{h}x{w}" for n, (h, w), _ in RESAMPLED])
def test_resampled_pos_embed_matches_timm(name, size, overrides):
    compare_resampled(name, size, **overrides)


def test_resampled_pos_embed_float64():
    """In float64 timm's resampler casts to float32 (``posemb.float()``), so the model cannot agree to 1e-10
    there; the resampler itself is compared with torch's F.interpolate in float64 instead."""
    import torch.nn.functional as F

    from numpy_vit.resample import resample_grid

    rng = np.random.default_rng(0)
    for (gh, gw), (nh, nw) in [((14, 14), (24, 24)), ((14, 14), (14, 10)), ((24, 24), (7, 5)), ((37, 37), (16, 12))]:
        grid = rng.standard_normal((gh, gw, 16))
        t = torch.from_numpy(grid).permute(2, 0, 1)[None]
        for method, kwargs in [("bicubic_antialias", dict(mode="bicubic", antialias=True)),
                               ("bicubic_hf", dict(mode="bicubic")), ("bilinear", dict(mode="bilinear"))]:
            ref = F.interpolate(t, size=(nh, nw), align_corners=False, **kwargs)[0].permute(1, 2, 0).numpy()
            assert max_err(resample_grid(grid, (nh, nw), method), ref) <= 1e-12, (method, (gh, gw), (nh, nw))
            # float32: ours is the correctly rounded result; torch sums its 16 taps in float32, so the two differ
            # by a few ulp of the values (here up to ~4): 1e-5 absolute for timm's method (the target), and
            # 1e-5 times the values' scale for the others
            ref32 = F.interpolate(t.float(), size=(nh, nw), align_corners=False, **kwargs)[0].permute(1, 2, 0).numpy()
            err32 = max_err(resample_grid(grid.astype(np.float32), (nh, nw), method), ref32)
            limit = 1e-5 if method == "bicubic_antialias" else 1e-5 * scale_of(ref32)
            assert err32 <= limit, (method, (gh, gw), (nh, nw), err32)


def test_guide_model_and_selective_recording():
    """The guide's ViTWithAttention keyword arguments, and recording by glob keeps only what was asked."""
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, depth=2).eval()
    _randomise(tm)
    model = nv.ViTWithAttention(img_size=224, patch_size=16, num_classes=10, embed_dim=192, depth=2, num_heads=3)
    model = nv.ViT(model.config, timm_state_to_params(tm))
    x = random_batch(model.config, batch=2, seed=3)
    trace = model.run(x, record=["blocks.*.attn.pattern", "logits"])
    assert sorted(trace) == ["blocks.0.attn.pattern", "blocks.1.attn.pattern", "logits"]
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert max_err(trace.logits, ref) <= 1e-4
    assert len(model.attention_maps) == 2 and model.attention_maps[1].shape == (2, 3, 197, 197)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("batch, threads", [(3, 1), (3, 2), (3, 3), (1, 2), (1, 3)])
def test_threaded_paths_match_timm(monkeypatch, batch, threads, dtype):
    """The paths a multi-core machine takes, with BLAS on one thread: a batch of 3 as shards of images, one per
    thread (``numpy_vit.fast.encoder_in_shards``), and one image whose layers split their work between the
    threads; and one thread, the reference functions of numpy_vit.layers. All match timm."""
    monkeypatch.setattr(nv.fast, "_num_threads", threads)
    shards, row_splits = [], []
    original = nv.fast.encoder_in_shards
    monkeypatch.setattr(nv.fast, "encoder_in_shards", lambda x, n, *a, **k: shards.append(n) or original(x, n, *a, **k))
    split = nv.fast.linear_split_between_threads
    monkeypatch.setattr(nv.fast, "linear_split_between_threads", lambda *a: row_splits.append(a[-1]) or split(*a))
    overrides = dict(depth=4) if dtype == np.float64 else {}
    tm, model = _pair("vit_small_patch16_224", dtype, **overrides)
    x = random_batch(model.config, batch=batch, seed=5, dtype=dtype)
    trace, reference = _run_both(tm, model, x)
    assert shards == ([threads] if batch > 1 and threads > 1 else [])
    assert set(row_splits) == ({threads} if threads > 1 else set())  # a batch: the patch embedding outside the blocks
    compare_traces(trace, reference, dtype, f"timm vit_small_patch16_224, batch {batch} on {threads} thread(s)",
                   model.config.depth)
