"""EVA-02 (Fang et al. 2023): the 2-D rotary position embedding and the SwiGLU MLP against hand-worked cases, their
backward by finite differences, the config and timm's names, the checkpoint readers (the hub through a stand-in
folder), and ``numpy-vit show`` / the demo on a random EVA-02 model. Parity with timm: parity_tests/test_eva_parity.py.
"""
import json
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image

import numpy_vit as nv
from numpy_vit import cli, layers, weights
from numpy_vit.errors import CheckpointError, ConfigError

# a small EVA-02 of each layout: 56 px with 14 px patches (a 4 x 4 grid, RoPE positions scaled to 16 x 16), width
# 32, 2 heads of 16 channels (4 frequencies per axis)
SMALL = dict(depth=2, img_size=56, embed_dim=32, num_heads=2, num_classes=3)
LAYOUTS = {"fused": "eva02_tiny_patch14_224", "separate": "eva02_base_patch14_224"}


def small_eva(layout="fused", seed=0, dtype=np.float64, **overrides):
    config = nv.ViTConfig.preset(LAYOUTS[layout], **{**SMALL, **overrides})
    model = nv.ViT(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)  # biases and gains away from 0 and 1, so that every path is exercised
    params = {k: v + 0.1 * rng.standard_normal(v.shape) if k.endswith(("bias", "weight")) and "norm" in k
              or k.endswith(("bias", "_bias")) else v for k, v in model.params.items()}
    return nv.ViT(config, params, dtype=dtype)


# --- the rotary position embedding ---------------------------------------------------------------------------

def test_rope_tables_by_hand():
    """A 1 x 2 grid, head width 4: one frequency per axis (theta_0 = 1). Patch (0, 1) turns its first pair by
    y * 1 = 0 and its second by x * 1 = 1 radian; patch (0, 0) not at all."""
    sin, cos = layers.rope_tables((1, 2), 4, dtype=np.float64)
    np.testing.assert_array_equal(sin, [[0, 0, 0, 0], [0, 0, math.sin(1), math.sin(1)]])
    np.testing.assert_array_equal(cos, [[1, 1, 1, 1], [1, 1, math.cos(1), math.cos(1)]])
    # head width 8: frequencies 1 and 10000^(-1/2) = 0.01; a 2 x 1 grid scaled to a reference of 4 x 1 puts row 1
    # at y = 2, so its row pairs turn by 2 and 0.02 radians, its column pairs not at all
    np.testing.assert_allclose(layers.rope_frequencies(8), [1.0, 0.01])
    sin, _ = layers.rope_tables((2, 1), 8, ref_grid=(4, 1), dtype=np.float64)
    np.testing.assert_allclose(sin[1], np.sin([2, 2, 0.02, 0.02, 0, 0, 0, 0]))


def test_apply_rope_turns_each_pair_and_leaves_the_prefix():
    """q = (1, 0, 0, 1) on patch (0, 1): pair (1, 0) by 0 stays, pair (0, 1) by 1 rad -> (-sin 1, cos 1); the
    class token in front keeps its q."""
    sin, cos = layers.rope_tables((1, 2), 4, dtype=np.float64)
    q = np.array([[2.0, 3.0, 4.0, 5.0], [1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]])[None, None]  # [1, 1, 3, 4]
    out = layers.apply_rope(q, sin, cos)
    np.testing.assert_array_equal(out[0, 0, 0], [2, 3, 4, 5])  # the prefix token
    np.testing.assert_array_equal(out[0, 0, 1], [1, 0, 0, 1])  # patch (0, 0): no turn
    np.testing.assert_allclose(out[0, 0, 2], [1, 0, -math.sin(1), math.cos(1)], atol=1e-15)
    # as complex numbers: each pair a + ib times e^(i angle) (RoFormer eq. 34's complex form)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 1 + 12, 16))
    sin, cos = layers.rope_tables((3, 4), 16, dtype=np.float64)
    angle = np.arctan2(sin[:, ::2], cos[:, ::2])  # [P, 8]
    turned = (x[..., 1:, 0::2] + 1j * x[..., 1:, 1::2]) * np.exp(1j * angle)
    out = layers.apply_rope(x, sin, cos)
    np.testing.assert_allclose(out[..., 1:, 0::2], turned.real, atol=1e-14)
    np.testing.assert_allclose(out[..., 1:, 1::2], turned.imag, atol=1e-14)


def test_rope_scores_depend_on_the_offset_only():
    """RoFormer's point: q_m . k_n after rotation depends on the positions through n - m alone. Along a row of
    a 1 x 8 grid, the same q and k give the same score for every pair of patches the same distance apart."""
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal(16), rng.standard_normal(16)
    sin, cos = layers.rope_tables((1, 8), 16, dtype=np.float64)
    qs = layers.apply_rope(np.tile(q, (1, 1, 8, 1)), sin, cos)[0, 0]  # [8, 16]: q at each column
    ks = layers.apply_rope(np.tile(k, (1, 1, 8, 1)), sin, cos)[0, 0]
    scores = qs @ ks.T  # [8, 8]
    for offset in range(-3, 4):
        along = np.diagonal(scores, offset)
        np.testing.assert_allclose(along, along[0], rtol=1e-12)
    assert np.ptp([np.diagonal(scores, o)[0] for o in range(4)]) > 1e-3  # and it does depend on the offset


def test_rope_backward_is_the_opposite_turn():
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((2, 2, 5, 8)), rng.standard_normal((2, 2, 5, 8))
    sin, cos = layers.rope_tables((2, 2), 8, dtype=np.float64)
    dx = layers.apply_rope_backward(dy, sin, cos)
    # a linear map's backward is its transpose: <dy, R x> = <R^T dy, x> for every x, dy
    np.testing.assert_allclose(np.sum(dy * layers.apply_rope(x, sin, cos)), np.sum(dx * x), rtol=1e-12)
    # and a rotation's transpose is its inverse
    np.testing.assert_allclose(layers.apply_rope_backward(layers.apply_rope(x, sin, cos), sin, cos), x, atol=1e-14)


# --- SwiGLU -------------------------------------------------------------------------------------------------

def test_silu_and_swiglu_by_hand():
    np.testing.assert_allclose(layers.silu(np.array([0.0, 1.0, -1.0, -800.0, 800.0])),
                               [0, 1 / (1 + math.exp(-1)), -1 / (1 + math.e), 0, 800])
    # D = 1, M = 1: gate 2x, value 3x + 1 at x = 1 -> SiLU(2) * 4, then fc2 = 0.5 and bias 1
    x = np.ones((1, 1, 1))
    fc1 = {"weight": np.array([[2.0], [3.0]]), "bias": np.array([0.0, 1.0])}  # packed: the gate's row first
    fc2 = {"weight": np.array([[0.5]]), "bias": np.array([1.0])}
    expected = 0.5 * (2 / (1 + math.exp(-2))) * 4 + 1
    np.testing.assert_allclose(layers.swiglu_mlp(x, fc2, fc1=fc1), [[[expected]]])
    # the same weights apart: fc1_g and fc1_x
    np.testing.assert_allclose(layers.swiglu_mlp(x, fc2, fc1_g={"weight": fc1["weight"][:1], "bias": fc1["bias"][:1]},
                                                 fc1_x={"weight": fc1["weight"][1:], "bias": fc1["bias"][1:]}),
                               [[[expected]]])


def _directional(f, x, direction, step=1e-6):
    return (f(x + step * direction) - f(x - step * direction)) / (2 * step)


@pytest.mark.parametrize("layout", ["packed", "apart with sub-LN"])
def test_swiglu_backward_by_finite_differences(layout):
    rng = np.random.default_rng(3)
    D, M = 6, 5
    x, dy = rng.standard_normal((2, 3, D)), rng.standard_normal((2, 3, D))
    fc2 = {"weight": rng.standard_normal((D, M)), "bias": rng.standard_normal(D)}
    if layout == "packed":
        mlp = {"fc1": {"weight": rng.standard_normal((2 * M, D)), "bias": rng.standard_normal(2 * M)}, "fc2": fc2}
    else:
        mlp = {"fc1_g": {"weight": rng.standard_normal((M, D)), "bias": rng.standard_normal(M)},
               "fc1_x": {"weight": rng.standard_normal((M, D)), "bias": rng.standard_normal(M)},
               "norm": {"weight": 1 + 0.1 * rng.standard_normal(M), "bias": 0.1 * rng.standard_normal(M)}, "fc2": fc2}
    saved = {}
    layers.swiglu_mlp(x, **mlp, record=lambda name, a: saved.setdefault(name, a))
    dx, grads = layers.swiglu_mlp_backward(dy, x, saved["gate"], saved["value"], saved["post"], **mlp)
    objective = lambda x_: np.sum(dy * layers.swiglu_mlp(x_, **mlp))  # noqa: E731
    v = rng.standard_normal(x.shape)
    np.testing.assert_allclose(np.sum(dx * v), _directional(objective, x, v), rtol=1e-7)
    for piece, tensors in grads.items():
        for name, g in tensors.items():
            v = rng.standard_normal(g.shape)

            def f(w, piece=piece, name=name):
                return np.sum(dy * layers.swiglu_mlp(x, **{**mlp, piece: {**mlp[piece], name: w}}))
            np.testing.assert_allclose(np.sum(g * v), _directional(f, mlp[piece][name], v), rtol=1e-7,
                                       err_msg=f"{piece}.{name}")


@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_model_backward_by_finite_differences(layout):
    """``model.backward`` of a small EVA-02 (RoPE, SwiGLU, q / v biases) in float64: the input's gradient and a
    few parameters of each kind, against central differences along a random direction (step 1e-5: the
    truncation error, O(step^2), and the rounding, O(1e-16 / step), both far below the 1e-6 asked)."""
    model = small_eva(layout)
    x = np.random.default_rng(4).standard_normal((2, 3, 56, 56))
    cotangent = np.random.default_rng(5).standard_normal((2, 3))
    grads = model.backward(model.forward(x), cotangent)
    objective = lambda m, x_: float(np.sum(cotangent * m.forward(x_, record=["logits"])["logits"]))  # noqa: E731
    rng = np.random.default_rng(6)
    v = rng.standard_normal(x.shape)
    np.testing.assert_allclose(np.sum(grads["input"] * v), _directional(lambda x_: objective(model, x_), x, v, 1e-5),
                               rtol=1e-6)
    names = ["blocks.1.attn.proj.weight", "blocks.0.norm1.weight", "pos_embed", "cls_token", "fc_norm.bias"]
    names += (["blocks.0.attn.q_bias", "blocks.1.attn.v_bias", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"]
              if layout == "fused" else
              ["blocks.0.attn.q_proj.bias", "blocks.1.attn.k_proj.weight", "blocks.0.mlp.fc1_g.weight",
               "blocks.1.mlp.fc1_x.bias", "blocks.0.mlp.norm.weight"])
    for name in names:
        v = rng.standard_normal(model.params[name].shape)

        def f(w, name=name):
            return objective(nv.ViT(model.config, {**model.params, name: w}, dtype=np.float64), x)
        np.testing.assert_allclose(np.sum(grads.params[name] * v), _directional(f, model.params[name], v, 1e-5),
                                   rtol=1e-6, err_msg=name)
    assert "blocks.0.attn.q_rot" in grads and "blocks.1.mlp.gate" in grads


def test_backward_needs_the_rotated_q_and_k():
    model = small_eva()
    x = np.random.default_rng(0).standard_normal((1, 3, 56, 56))
    trace = model.forward(x, record=[n for n in nv.BACKWARD_RECORD if "rot" not in n])
    with pytest.raises(nv.errors.ArgumentError, match="attn.q_rot"):
        model.backward(trace, 0)
    assert model.backward(model.forward(x, record=nv.BACKWARD_RECORD), 0).params  # the shared list covers EVA


# --- the model, the config and timm's names ------------------------------------------------------------------

def test_trace_records_the_rotated_q_and_k_and_the_swiglu():
    model = small_eva("separate", dtype=np.float32)
    trace = model.run(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8))
    B, H, N, Dh = trace["blocks.0.attn.q"].shape
    assert (B, H, N, Dh) == (1, 2, 17, 16) and trace["blocks.1.attn.k_rot"].shape == (B, H, N, Dh)
    np.testing.assert_array_equal(trace["blocks.0.attn.q_rot"][:, :, 0], trace["blocks.0.attn.q"][:, :, 0])
    assert not np.allclose(trace["blocks.0.attn.q_rot"][:, :, 2:], trace["blocks.0.attn.q"][:, :, 2:])
    M = model.config.mlp_dim
    for name in ("gate", "value", "post", "norm"):
        assert trace[f"blocks.0.mlp.{name}"].shape == (1, N, M)
    assert "norm" not in trace and trace["pooled"].shape == (1, 32)  # average pooling, then fc_norm
    assert model.params.keys() == nv.config.param_shapes(model.config).keys()


def test_eva02_names_and_tags():
    c = nv.ViTConfig.preset("eva02_small_patch14_336.mim_in22k_ft_in1k")
    assert (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size, c.mlp_dim) == (384, 12, 6, 14, (336, 336), 1024)
    assert c.rope and c.rope_ref_grid == (16, 16) and c.mlp == "swiglu" and not c.mlp_norm
    assert c.qkv_layout == "fused_qv_bias" and c.global_pool == "avg" and c.use_fc_norm and c.num_classes == 1000
    assert c.mean == nv.config.OPENAI_CLIP_MEAN and c.crop_pct == 1.0
    b = nv.ViTConfig.preset("eva02_base_patch14_448.mim_in22k_ft_in22k")
    assert b.qkv_layout == "separate" and b.mlp_norm and b.num_classes == 21841
    assert nv.ViTConfig.preset("eva02_large_patch14_224.mim_m38m").num_classes == 0  # a MIM backbone
    assert nv.ViTConfig.preset("eva02_tiny_patch14_224").num_classes == 0            # timm's default tag at 224
    assert nv.ViTConfig.preset("eva02_tiny_patch14_336").num_classes == 1000
    assert nv.ViTConfig.preset("eva02_large_patch14_224").mlp_dim == 2730
    assert nv.ViTConfig.preset("eva_large_patch14_196").mlp == "gelu"  # EVA-01-like preset: a plain ViT
    for bad, part in [("eva02_huge_patch14_224", "size 'huge'"), ("eva02_large_patch14_clip_224", "clip"),
                      ("eva02_tiny_patch14_448", "resolution 448"), ("eva02_small_patch14_224.laion", "tag 'laion'"),
                      ("eva02_small_patch16_224", "patch16")]:
        with pytest.raises(ConfigError, match=part):
            nv.ViTConfig.preset(bad)


@pytest.mark.parametrize("fields, message", [
    (dict(mlp="relu"), "mlp must be 'gelu' or 'swiglu'"),
    (dict(mlp_norm=True), "mlp_norm=True .* only with mlp='swiglu'"),
    (dict(qkv_layout="split"), "qkv_layout must be"),
    (dict(qkv_layout="separate", qkv_bias=False), "needs qkv_bias=True"),
    (dict(rope=True, embed_dim=24, num_heads=4), "multiple of 4"),
    (dict(rope_ref_grid=(16, 16)), "needs rope=True"),
    (dict(rope="yes"), "rope must be True or False"),
])
def test_bad_eva_fields_say_what_is_wrong(fields, message):
    with pytest.raises(ConfigError, match=message):
        nv.ViTConfig(**fields)


# --- checkpoint readers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_timm_files_read_with_arch(layout, tmp_path):
    from safetensors.numpy import save_file
    model = small_eva(layout, dtype=np.float32)
    tensors = {**model.params, "rope.pos_embed": np.zeros((16, 32), np.float32)}  # a rope buffer: ignored
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp_path / "m.safetensors"))
    loaded = nv.ViT.from_pretrained(str(tmp_path / "m.safetensors"), arch=model.config)
    assert loaded.config.qkv_layout == model.config.qkv_layout and loaded.config.mlp_norm == (layout == "separate")
    assert loaded.config.block_names == "vit"   # q_bias / v_bias without BEiT's gamma_1 or bias tables: not a BEiT
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)
    with pytest.raises(CheckpointError, match="EVA-02 checkpoint.*no weights.*arch='eva02_"):
        nv.ViT.from_pretrained(str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="EVA-02 checkpoint"):
        nv.ViT.from_pretrained(str(tmp_path / "m.safetensors"), arch="vit_small_patch16_224")


def test_timm_pth_reads_with_arch(tmp_path):
    torch = pytest.importorskip("torch")
    model = small_eva("fused", dtype=np.float32)
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.params.items()}},
               tmp_path / "m.pth")
    loaded = nv.ViT.from_pretrained(str(tmp_path / "m.pth"), arch=model.config)
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)


def test_hub_name_resolves_to_the_timm_reader(tmp_path, monkeypatch):
    """``timm/eva02_tiny_patch14_336.mim_in22k_ft_in1k`` through the offline route (files in our cache folder):
    timm's config.json names the architecture, which brings the RoPE and the SwiGLU."""
    from safetensors.numpy import save_file
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never reached: the files are there
    folder = tmp_path / "timm--eva02_tiny_patch14_336.mim_in22k_ft_in1k"
    folder.mkdir()
    config = nv.ViTConfig.preset("eva02_tiny_patch14_336.mim_in22k_ft_in1k", depth=1)
    params = nv.model.init_params(config)
    save_file(params, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "eva02_tiny_patch14_336", "num_classes": 1000, "global_pool": "avg",
        "model_args": {"depth": 1},
        "pretrained_cfg": {"tag": "mim_in22k_ft_in1k", "input_size": [3, 336, 336], "crop_pct": 1.0,
                           "interpolation": "bicubic", "mean": list(nv.config.OPENAI_CLIP_MEAN),
                           "std": list(nv.config.OPENAI_CLIP_STD)}}))
    loaded_config, loaded = weights.load_any("timm/eva02_tiny_patch14_336.mim_in22k_ft_in1k")
    assert loaded_config.rope and loaded_config.mlp == "swiglu" and loaded_config.qkv_layout == "fused_qv_bias"
    assert loaded_config.name == "eva02_tiny_patch14_336.mim_in22k_ft_in1k" and loaded_config.labels[0] == "tench"
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


# --- the command line and the figures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def eva_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("eva") / "eva.npz"
    config = nv.ViTConfig.preset("eva02_base_patch14_224", **{**SMALL, "img_size": 112},
                                 labels=("circle", "square", "triangle"))
    small_eva("separate", seed=3, dtype=np.float32, img_size=112, labels=config.labels).save(str(path))
    return str(path)


def test_show_all_figures_on_a_random_eva02(eva_npz, tmp_path):
    from numpy_vit.viz.figures import FIGURES
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "figs"
    assert cli.main(["show", str(image), "--figure", "all", "--model", eva_npz, "-o", str(out), "--dpi", "30"]) == 0
    assert sorted(os.listdir(out)) == sorted(f"img_{name}.png" for name in FIGURES)


def test_demo_on_a_random_eva02(eva_npz, tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--model", eva_npz, "--dpi", "30"]) == 0
    assert "vis_7_attention_rollout.png" in os.listdir(tmp_path)
    assert "prediction:" in capsys.readouterr().out


# --- numpy_vit.fast ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["fused", "separate"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_eva_block_and_model_equal_the_reference(monkeypatch, layout, dtype):
    """``fast.block`` with RoPE and SwiGLU on two threads, and the model's forward by each (a batch in shards),
    record the names ``layers.block`` records and the same numbers within 1e-5 (float32) / 1e-12 (float64) of
    each array's scale: the two differ only in how BLAS blocks the products (tests/test_fast.py's tolerance)."""
    from numpy_vit import fast
    monkeypatch.setattr(fast, "_num_threads", 2)
    model = small_eva(layout, dtype=dtype)
    x = np.random.default_rng(7).standard_normal((3, 3, 56, 56)).astype(dtype)
    limit = 1e-5 if dtype == np.float32 else 1e-12
    h = np.random.default_rng(8).standard_normal((3, 17, 32)).astype(dtype)
    weights, options = model._fused_qkv_block(0), model._block_options((4, 4))
    ref, got = {}, {}
    expected = layers.block(h, **weights, **options, record=ref.__setitem__)
    out = fast.block(h, **weights, **options, record=got.__setitem__)
    assert list(got) == list(ref) and {"attn.q_rot", "attn.k_rot", "mlp.gate", "mlp.value"} <= set(ref)
    for key in ref:
        assert np.max(np.abs(got[key] - ref[key])) <= limit * max(1.0, np.max(np.abs(ref[key]))), key
    assert np.max(np.abs(out - expected)) <= limit * max(1.0, np.max(np.abs(expected)))
    model.speedups = False
    reference = model.forward(x)
    model.speedups = True
    faster = model.forward(x)
    assert sorted(faster) == sorted(reference)
    for key in reference:
        assert np.max(np.abs(faster[key] - reference[key])) <= limit * max(1.0, np.max(np.abs(reference[key]))), key
