"""SigLIP's image towers without torch: the attention pool against hand-worked numbers and finite differences,
timm's names read as configs, the readers (timm safetensors, HF SiglipVisionModel / SiglipModel folders written
by hand, the hub name through its local folder), the figures and ``numpy-vit show`` on a random tower, bad input.
The comparisons with timm and HF themselves: parity_tests/test_siglip_parity.py.
"""
import json
import math
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import numpy_vit as nv
from numpy_vit import cli, layers, weights
from numpy_vit.config import ViTConfig, param_shapes
from numpy_vit.errors import CheckpointError, ConfigError

TINY = dict(embed_dim=32, num_heads=2, depth=2, img_size=48)  # 9 patches of 16 px, width 32 (2 heads of 16)


def tiny_siglip(seed=0, dtype=np.float32, **overrides):
    return nv.ViT(ViTConfig.preset("vit_base_patch16_siglip_224", **{**TINY, **overrides}), seed=seed, dtype=dtype)


def _identity_pool(D, M=4):
    """Pool weights that leave the arithmetic visible: q, k, v and the output projection the identity, no biases,
    and an MLP whose second layer is zero (out = h)."""
    eye, zeros = np.eye(D), np.zeros
    return dict(q=dict(weight=eye, bias=zeros(D)), kv=dict(weight=np.concatenate([eye, eye]), bias=zeros(2 * D)),
                proj=dict(weight=eye, bias=zeros(D)), norm=dict(weight=np.ones(D), bias=zeros(D)),
                mlp=dict(fc1=dict(weight=np.ones((M, D)), bias=zeros(M)), fc2=dict(weight=zeros((D, M)), bias=zeros(D))))


# --- the attention pool, by hand -----------------------------------------------------------------------------

def test_attention_pool_by_hand():
    """One head of width 2: the latent (sqrt(2) ln 3, 0) against tokens (1, 0) and (0, 0) scores ln 3 and 0 after
    the 1/sqrt(2) scale, so the pattern is (3/4, 1/4) and the summary 3/4 (1, 0) + 1/4 (0, 0) = (0.75, 0)."""
    x = np.array([[[1.0, 0.0], [0.0, 0.0]]])  # [B=1, N=2, D=2]
    latent = np.array([[[math.sqrt(2) * math.log(3), 0.0]]])  # [1, L=1, D]
    kept = {}
    pooled = layers.attention_pool(x, latent, **_identity_pool(2), num_heads=1, eps=1e-6,
                                   record=lambda name, a: kept.setdefault(name, a))
    np.testing.assert_allclose(kept["pattern"], [[[[0.75, 0.25]]]], rtol=1e-15)
    np.testing.assert_allclose(pooled, [[0.75, 0.0]], rtol=1e-15, atol=1e-16)
    assert kept["q"].shape == (1, 1, 1, 2) and kept["k"].shape == kept["v"].shape == (1, 1, 2, 2)
    assert kept["out"].shape == (1, 1, 2)


def test_attention_pool_heads_read_their_own_slices():
    """Two heads of width 1 (scale 1): head 0 sees the tokens' first channel, head 1 their second. The latent
    (4, 4) scores (4, 0) in head 0 and (0, 4) in head 1, so head 0 takes token 0 and head 1 token 1 with weight
    p = e^4 / (1 + e^4) each, and each channel of the summary, written by its own head, is p."""
    x = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    latent = np.array([[[4.0, 4.0]]])
    kept = {}
    pooled = layers.attention_pool(x, latent, **_identity_pool(2), num_heads=2, eps=1e-6,
                                   record=lambda name, a: kept.setdefault(name, a))
    p = math.exp(4) / (1 + math.exp(4))
    np.testing.assert_allclose(kept["pattern"][0, :, 0], [[p, 1 - p], [1 - p, p]], rtol=1e-14)
    np.testing.assert_allclose(pooled, [[p, p]], rtol=1e-14)


def test_attention_pool_residual_and_mlp():
    """out = h + MLP(LN(h)): with fc2 adding a bias b and the rest zero, the summary moves by exactly b."""
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    weights_ = _identity_pool(4)
    base = layers.attention_pool(x, np.ones((1, 1, 4)), **weights_, num_heads=2, eps=1e-6)
    weights_["mlp"]["fc2"]["bias"] = np.array([1.0, -2.0, 0.5, 0.0])
    moved = layers.attention_pool(x, np.ones((1, 1, 4)), **weights_, num_heads=2, eps=1e-6)
    np.testing.assert_allclose(moved - base, np.broadcast_to([1.0, -2.0, 0.5, 0.0], (2, 4)), atol=1e-14)


def test_attention_pool_backward_against_finite_differences():
    """Every weight of the pool and its input, float64, central differences (step 1e-6: truncation ~1e-12,
    rounding ~1e-16 / 1e-6 = 1e-10 of the values, which are of order 1): within 1e-7 relative."""
    rng = np.random.default_rng(1)
    B, N, D, M, H = 2, 5, 6, 8, 2
    w = dict(latent=rng.standard_normal((1, 1, D)),
             q=dict(weight=rng.standard_normal((D, D)), bias=rng.standard_normal(D)),
             kv=dict(weight=rng.standard_normal((2 * D, D)) * 0.5, bias=rng.standard_normal(2 * D)),
             proj=dict(weight=rng.standard_normal((D, D)), bias=rng.standard_normal(D)),
             norm=dict(weight=1 + 0.1 * rng.standard_normal(D), bias=0.1 * rng.standard_normal(D)),
             mlp=dict(fc1=dict(weight=rng.standard_normal((M, D)), bias=rng.standard_normal(M)),
                      fc2=dict(weight=rng.standard_normal((D, M)), bias=rng.standard_normal(D))))
    x = rng.standard_normal((B, N, D))
    cotangent = rng.standard_normal((B, D))
    options = dict(num_heads=H, eps=1e-6, gelu_approximate="tanh")

    def objective(x_, w_):
        return float(np.sum(layers.attention_pool(x_, **w_, **options) * cotangent))

    saved = {}
    layers.attention_pool(x, **w, **options, record=lambda name, a: saved.setdefault(name, a))
    dx, grads = layers.attention_pool_backward(cotangent, x, saved, **w, **options)

    def check(array, gradient, evaluate, label):
        for index in list(np.ndindex(array.shape))[:: max(1, array.size // 12)]:  # a dozen entries of each
            old = array[index]
            array[index] = old + 1e-6
            up = evaluate()
            array[index] = old - 1e-6
            down = evaluate()
            array[index] = old
            numeric = (up - down) / 2e-6
            assert abs(gradient[index] - numeric) <= 1e-7 * max(1.0, abs(numeric)), (label, index)

    check(x, dx, lambda: objective(x, w), "x")
    check(w["latent"], grads["latent"], lambda: objective(x, w), "latent")
    for path in (("q", "weight"), ("q", "bias"), ("kv", "weight"), ("kv", "bias"), ("proj", "weight"),
                 ("norm", "weight"), ("norm", "bias"), ("mlp", "fc1", "weight"), ("mlp", "fc2", "bias")):
        array, gradient = w, grads
        for key in path:
            array, gradient = array[key], gradient[key]
        check(array, gradient, lambda: objective(x, w), ".".join(path))


def test_model_backward_reaches_the_pool_and_the_blocks():
    """model.backward of a tiny tower, float64, against central differences of the pooled features' projection:
    the pool's latent, a block weight and the final norm (same step and bound as above)."""
    model = tiny_siglip(dtype=np.float64)
    x = np.random.default_rng(2).standard_normal((2, 3, 48, 48))
    cotangent = np.random.default_rng(3).standard_normal((2, 32))
    grads = model.backward(model.forward(x), cotangent)
    assert set(grads.params) == set(model.params)
    assert grads["attn_pool.pattern"].shape == (2, 2, 1, 9)
    for name, index in (("attn_pool.latent", (0, 0, 3)), ("attn_pool.kv.weight", (40, 5)),
                        ("blocks.0.attn.qkv.weight", (7, 2)), ("norm.weight", (11,))):
        params = dict(model.params)
        values = []
        for step in (1e-6, -1e-6):
            changed = params[name].copy()
            changed[index] += step
            values.append(float(np.sum(nv.ViT(model.config, {**params, name: changed}, dtype=np.float64)
                                       .forward(x)["pooled"] * cotangent)))
        numeric = (values[0] - values[1]) / 2e-6
        assert abs(grads.params[name][index] - numeric) <= 1e-7 * max(1.0, abs(numeric)), name


# --- configs and timm's names --------------------------------------------------------------------------------

def test_siglip_trace_names_and_shapes():
    model = tiny_siglip()
    trace = model.run(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    assert trace.prefix_names == () and trace.grid == (3, 3)
    assert trace["attn_pool.pattern"].shape == (1, 2, 1, 9)  # [B, H, L, P]
    np.testing.assert_allclose(trace["attn_pool.pattern"].sum(-1), 1, rtol=1e-6)
    assert trace["attn_pool.q"].shape == (1, 2, 1, 16) and trace["attn_pool.k"].shape == (1, 2, 9, 16)
    assert trace["attn_pool.out"].shape == (1, 1, 32)
    np.testing.assert_array_equal(trace["pooled"], trace["attn_pool.out"][:, 0])
    assert "logits" not in trace and "norm" in trace
    for name in trace:
        assert name.startswith("blocks.") or any(name == key or name.startswith(key.split("{")[0])
                                                 for key in nv.TRACE_KEYS), name


@pytest.mark.parametrize("name, expected", [
    ("vit_base_patch16_siglip_224", dict(embed_dim=768, depth=12, num_heads=12, gelu="erf", global_pool="map")),
    ("vit_base_patch32_siglip_256.v2_webli", dict(patch_size=32, img_size=(256, 256), gelu="tanh")),
    ("vit_so400m_patch14_siglip_224.webli", dict(embed_dim=1152, depth=27, num_heads=16, mlp_dim=4304,
                                                 patch_size=14, gelu="erf")),
    ("vit_so400m_patch16_siglip_384.v2_webli", dict(gelu="tanh", img_size=(384, 384))),
    ("vit_large_patch16_siglip_512.v2_webli", dict(embed_dim=1024, depth=24, gelu="tanh")),
    ("vit_giantopt_patch16_siglip_gap_256.v2_webli", dict(embed_dim=1536, depth=40, global_pool="avg",
                                                          use_fc_norm=False, gelu="tanh")),
    ("vit_so400m_patch14_siglip_378.webli_ft_in1k", dict(num_classes=1000, crop_pct=1.0, global_pool="map")),
    ("vit_so400m_patch14_siglip_gap_448.pali_mix", dict(crop_pct=1.0, global_pool="avg", num_classes=0)),
])
def test_timm_siglip_names(name, expected):
    config = ViTConfig.preset(name)
    assert config.name == name and not config.class_token and config.mean == (0.5, 0.5, 0.5)
    for field, value in expected.items():
        assert getattr(config, field) == value, (name, field)
    keys = param_shapes(config)
    assert ("attn_pool.latent" in keys) == (config.global_pool == "map") and "cls_token" not in keys


@pytest.mark.parametrize("name, message", [
    ("vit_so400m_patch14_siglip_384", r"384 px is not a whole number of 14 px patches.*vit_so400m_patch14_siglip_378"),
    ("vit_huge_patch14_siglip_224", r"unknown size 'huge'.*base, large, so400m, giantopt"),
    ("vit_base_patch8_siglip_224", r"unknown patch size 8 for SigLIP base.*patch32, patch16"),
    ("vit_base_patch16_siglip_300", r"unknown resolution 300.*224, 256, 384, 512"),
    ("vit_base_patch16_siglip_224.laion2b", r"unknown pretrained tag 'laion2b'"),
    ("vit_base_patch16_224.webli", r"tag 'webli'.*belongs to siglip models"),
])
def test_unknown_siglip_names_say_which_part(name, message):
    with pytest.raises(ConfigError, match=message):
        ViTConfig.preset(name)


def test_map_pooling_config_errors():
    with pytest.raises(ConfigError, match="global_pool must be 'token', 'avg', 'map'"):
        ViTConfig(global_pool="attention")
    with pytest.raises(ConfigError, match="global_pool='map' has no pre_logits layer"):
        ViTConfig(global_pool="map", representation_size=64)
    with pytest.raises(ConfigError, match="global_pool='token' needs class_token=True"):
        ViTConfig.preset("vit_base_patch16_siglip_224", global_pool="token")


# --- readers -------------------------------------------------------------------------------------------------

def test_timm_safetensors_of_a_siglip_tower(tmp_path):
    model = tiny_siglip(seed=4)
    path = tmp_path / "siglip.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, str(path))  # safetensors wants C order
    with pytest.raises(CheckpointError, match="not have the architecture of vit_base_patch16_siglip_224"):
        nv.ViT.from_pretrained(str(path), arch="vit_base_patch16_siglip_224")   # 12 blocks of width 768
    loaded = nv.ViT.from_pretrained(str(path), arch=model.config.replace(global_pool="avg"))
    assert loaded.config.global_pool == "map" and not loaded.config.class_token   # the attn_pool keys decide
    assert loaded.config.grid_size == (3, 3) and loaded.config.embed_dim == 32 and loaded.config.num_heads == 2
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)["pooled"], model.forward(x)["pooled"])


def hf_siglip_folder(folder, model, whole=True, vision_fields=None, drop=()):
    """An HF SigLIP folder for numpy_vit ``model``'s weights, written without torch in HF's layout: the pool's
    q and kv become nn.MultiheadAttention's in_proj (rows q | k | v); ``whole``: a SiglipModel with a text tower."""
    p = model.params
    D, H = model.config.embed_dim, model.config.num_heads
    tensors = {
        "embeddings.patch_embedding.weight": p["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": p["patch_embed.proj.bias"],
        "embeddings.position_embedding.weight": p["pos_embed"][0],
        "post_layernorm.weight": p["norm.weight"], "post_layernorm.bias": p["norm.bias"],
        "head.probe": p["attn_pool.latent"],
        "head.attention.in_proj_weight": np.concatenate([p["attn_pool.q.weight"], p["attn_pool.kv.weight"]]),
        "head.attention.in_proj_bias": np.concatenate([p["attn_pool.q.bias"], p["attn_pool.kv.bias"]]),
        "head.attention.out_proj.weight": p["attn_pool.proj.weight"],
        "head.attention.out_proj.bias": p["attn_pool.proj.bias"],
    }
    for hf, ours in (("layernorm", "norm"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
        for part in ("weight", "bias"):
            tensors[f"head.{hf}.{part}"] = p[f"attn_pool.{ours}.{part}"]
    for i in range(model.config.depth):
        b, hb = f"blocks.{i}.", f"encoder.layers.{i}."
        for j, name in enumerate("qkv"):
            tensors[hb + f"self_attn.{name}_proj.weight"] = p[b + "attn.qkv.weight"][j * D:(j + 1) * D]
            tensors[hb + f"self_attn.{name}_proj.bias"] = p[b + "attn.qkv.bias"][j * D:(j + 1) * D]
        for hf, ours in (("layer_norm1", "norm1"), ("self_attn.out_proj", "attn.proj"), ("layer_norm2", "norm2"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for part in ("weight", "bias"):
                tensors[hb + f"{hf}.{part}"] = p[b + f"{ours}.{part}"]
    tensors = {"vision_model." + k: np.ascontiguousarray(v) for k, v in tensors.items() if k not in drop}
    vision = dict(hidden_size=D, intermediate_size=model.config.mlp_dim, num_hidden_layers=model.config.depth,
                  num_attention_heads=H, image_size=model.config.img_size[0], patch_size=model.config.patch_size,
                  model_type="siglip_vision_model")
    vision.update(vision_fields or {})
    if whole:
        tensors.update({"text_model.embeddings.token_embedding.weight": np.zeros((10, 4), np.float32),
                        "logit_scale": np.zeros(1, np.float32), "logit_bias": np.zeros(1, np.float32)})
        config = dict(model_type="siglip", architectures=["SiglipModel"], vision_config=vision,
                      text_config=dict(model_type="siglip_text_model", hidden_size=4))
    else:
        config = dict(vision, architectures=["SiglipVisionModel"])
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return str(folder)


@pytest.mark.parametrize("whole", [True, False], ids=["SiglipModel", "SiglipVisionModel"])
def test_hf_siglip_folder(tmp_path, whole):
    model = tiny_siglip(seed=5, gelu="tanh")
    folder = hf_siglip_folder(tmp_path / "hf", model, whole=whole)
    checkpoint = weights.read_checkpoint(folder)
    c = checkpoint.config
    assert checkpoint.format.startswith("HF transformers SigLIP")
    assert (c.global_pool, c.class_token, c.gelu, c.layer_norm_eps, c.pos_embed_resample, c.num_heads) == \
        ("map", False, "tanh", 1e-6, "bicubic_hf", 2)
    assert set(checkpoint.params) == set(model.params)
    assert all(np.array_equal(checkpoint.params[k], model.params[k]) for k in model.params)


def test_hf_siglip_without_head_and_with_exact_gelu(tmp_path):
    """vision_use_head=false: no head keys, the model ends with post_layernorm (global_pool='')."""
    model = tiny_siglip(seed=6)
    folder = hf_siglip_folder(tmp_path / "hf", model, vision_fields=dict(vision_use_head=False, hidden_act="gelu"),
                              drop={k for k in ("head.probe", "head.attention.in_proj_weight",
                                                "head.attention.in_proj_bias", "head.attention.out_proj.weight",
                                                "head.attention.out_proj.bias", "head.layernorm.weight",
                                                "head.layernorm.bias", "head.mlp.fc1.weight", "head.mlp.fc1.bias",
                                                "head.mlp.fc2.weight", "head.mlp.fc2.bias")})
    loaded = nv.ViT.from_pretrained(folder)
    assert loaded.config.global_pool == "" and loaded.config.gelu == "erf"
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)["norm"], model.forward(x)["norm"])


def test_the_hub_name_reads_the_siglip_folder(tmp_path, monkeypatch):
    """google/siglip-base-patch16-224 is a whole SiglipModel on the hub: a stand-in of its layout in the folder
    where hub names are looked for first (hub.local_folder), read by the SigLIP reader; nothing is downloaded."""
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    model = tiny_siglip(seed=7, gelu="tanh")
    hf_siglip_folder(tmp_path / "google--siglip-base-patch16-224", model, whole=True)
    with open(tmp_path / "google--siglip-base-patch16-224" / "preprocessor_config.json", "w") as f:
        json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
                   "size": {"height": 48, "width": 48}}, f)
    checkpoint = weights.read_checkpoint("google/siglip-base-patch16-224")
    assert checkpoint.format.startswith("HF transformers SigLIP")
    assert checkpoint.config.name == "google/siglip-base-patch16-224" and checkpoint.config.global_pool == "map"
    assert checkpoint.config.interpolation == "bicubic" and checkpoint.config.mean == (0.5, 0.5, 0.5)
    loaded = nv.ViT.from_pretrained("google/siglip-base-patch16-224")
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 48)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)["pooled"], model.forward(x)["pooled"])


def test_a_timm_hub_folder_of_a_siglip_tower(tmp_path, monkeypatch):
    """timm's hub layout (config.json with architecture, model_args and pretrained_cfg; timm's state dict) under
    a timm/ name: the architecture, tag and pooling from config.json, the geometry from the tensors."""
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    model = tiny_siglip(seed=9)
    folder = tmp_path / "timm--vit_base_patch16_siglip_224.webli"
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_siglip_224", "num_classes": 0, "global_pool": "map",
        "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 48},
        "pretrained_cfg": {"tag": "webli", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9,
                           "input_size": [3, 48, 48], "num_classes": 0}}))
    loaded = nv.ViT.from_pretrained("timm/vit_base_patch16_siglip_224.webli")
    assert loaded.config.name == "vit_base_patch16_siglip_224.webli" and loaded.config.global_pool == "map"
    x = np.random.default_rng(2).standard_normal((1, 3, 48, 48)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)["pooled"], model.forward(x)["pooled"])


def test_speedups_compute_the_same_tower():
    """numpy_vit.fast runs the encoder (the pool is the reference's at every setting): the same pooled features
    and pool attention within 1e-5 of their scale in float32 (the bound of a whole forward pass split into
    shards, tests/README.md), and the same gradients within 1e-4 of theirs."""
    model = tiny_siglip(seed=10)
    x = np.random.default_rng(3).standard_normal((3, 3, 48, 48)).astype(np.float32)
    results = []
    for speedups in (False, True):
        model.speedups = speedups
        trace = model.forward(x)
        results.append((trace, model.backward(trace, np.ones((3, 32), np.float32))))
    (reference, reference_grads), (fast, fast_grads) = results
    for name in ("pooled", "attn_pool.pattern", "norm"):
        scale = max(1.0, float(np.abs(reference[name]).max()))
        assert np.abs(fast[name] - reference[name]).max() <= 1e-5 * scale, name
    for name in ("attn_pool.latent", "attn_pool.kv.weight", "blocks.0.attn.qkv.weight"):
        scale = float(np.abs(reference_grads.params[name]).max())
        assert np.abs(fast_grads.params[name] - reference_grads.params[name]).max() <= 1e-4 * scale, name


def test_bad_siglip_files_are_named(tmp_path):
    model = tiny_siglip(seed=8)
    folder = hf_siglip_folder(tmp_path / "a", model)
    raw = load_file(folder + "/model.safetensors")
    raw["vision_model.head.attention.in_proj_weight"] = raw["vision_model.head.attention.in_proj_weight"][:-1]
    save_file(raw, folder + "/model.safetensors")
    with pytest.raises(CheckpointError, match=r"cannot convert vision_model\.head\.attention\.in_proj_weight|"
                                              r"head\.attention\.in_proj_weight \(95, 32\).*3 x D rows"):
        weights.read_checkpoint(folder)
    folder = hf_siglip_folder(tmp_path / "b", model, whole=False, vision_fields=dict(model_type="clip_vision_model"))
    with pytest.raises(CheckpointError, match="model_type 'clip_vision_model'.*'siglip'"):
        weights.read_checkpoint(folder)
    folder = hf_siglip_folder(tmp_path / "c", model, vision_fields=dict(hidden_act="relu"))
    with pytest.raises(CheckpointError, match="hidden_act 'relu' is not supported"):
        weights.read_checkpoint(folder)
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(CheckpointError, match="SigLIP weights; their config.json .* must sit next to them"):
        weights.read_checkpoint(os.path.join(folder, "model.safetensors"))


# --- the figures and the command line --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def siglip_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("siglip") / "tiny_siglip.npz"
    tiny_siglip(seed=3, img_size=64).save(str(path))
    return str(path)


def test_demo_and_show_run_on_a_siglip_tower(siglip_npz, tmp_path, capsys):
    """Every figure of the demo and of show --figure all on a tower without a class token: the figures read the
    mean over the patch queries where a class token would be (their titles say so); figure 8 explains a class,
    which a tower without classifier does not have, and says so."""
    from numpy_vit.viz.figures import FIGURES
    from numpy_vit.viz.demo import SAMPLE_IMAGE
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--model", siglip_npz, "--dpi", "30"]) == 0
    printed = capsys.readouterr().out
    assert "vis_7_attention_rollout.png" in printed and "no classifier" in printed
    assert cli.main(["show", SAMPLE_IMAGE, "--figure", "all", "--model", siglip_npz, "-o", str(tmp_path / "show"),
                     "--dpi", "30"]) == 0
    written = os.listdir(tmp_path / "show")
    assert len(written) >= len(FIGURES) - 1 and all(name.endswith(".png") for name in written)


def test_figure_3_adds_the_attention_pools_own_query(siglip_npz):
    """The per-layer panels read the mean over the patch queries (no class token); the last panel is the pool's
    latent query, the one whose output is the image's summary: its map is the trace's attn_pool.pattern."""
    from numpy_vit.viz.figures import make_figure
    model = nv.ViT.from_pretrained(siglip_npz)
    trace = model.run(np.full((64, 64, 3), 128, np.uint8))
    fig = make_figure("attention_layers", trace, head_index=1, interpolation="nearest")
    panels = [ax for ax in fig.get_axes() if ax.get_title()]
    assert panels[-1].get_title().startswith("Attention pool · head 1")
    assert "mean over patch queries" in fig._suptitle.get_text() and "latent query" in fig._suptitle.get_text()
    shown = np.asarray(panels[-1].images[-1].get_array())         # the heat map over the grey image, 64 x 64 px
    expected = trace["attn_pool.pattern"][0, 1, 0].reshape(trace.grid)   # [4, 4] patches of 16 px
    np.testing.assert_allclose(shown[8::16, 8::16], expected, rtol=1e-6)  # each patch's centre pixel (nearest)
    # asked for another query, the figure shows only that query's rows
    fig = make_figure("attention_layers", trace, query=(0, 0))
    assert not any(ax.get_title().startswith("Attention pool") for ax in fig.get_axes())
