"""BEiT / BEiT v2 without torch: the relative position index, bias and their backward on hand-worked cases, the
bias inside attention (reference and fast path), the table's resampling, the gradients by finite differences,
names and configs, the readers (timm safetensors, an HF folder, the hub name's stand-in), the figures, the CLI
and bad input. parity_tests/test_beit_parity.py compares the same model with timm and HF transformers.
"""
import json

import numpy as np
import pytest

import numpy_vit as nv
from numpy_vit import fast, layers, weights
from numpy_vit.config import PRESETS, ViTConfig, param_shapes
from numpy_vit.errors import CheckpointError, ConfigError
from numpy_vit.resample import geometric_offsets, resample_rel_pos_table, resize_weights
from numpy_vit.weights.read_hf_beit import BEIT_TABLE

# width 16, 2 heads, 2 blocks, a 2x2 grid of 16-pixel patches: every test here runs in well under a second
TINY = ViTConfig.preset("beit_base_patch16_224", img_size=32, embed_dim=16, depth=2, num_heads=2, num_classes=3)


def c_order(params):
    """Row-major copies: the model keeps its block weights column-major, and safetensors.numpy would write a
    column-major array's memory as it lies, transposed."""
    return {k: np.ascontiguousarray(v) for k, v in params.items()}


def perturbed(config, seed=0, dtype=np.float32):
    """A model of ``config`` whose every parameter is random (timm starts the tables and biases at zero, which
    would hide a wrong index or a wrong bias layout)."""
    rng = np.random.default_rng(seed)
    params = {k: (rng.standard_normal(s) * (0.5 if "table" in k or "gamma" in k else 0.2)).astype(np.float32)
              for k, s in param_shapes(config).items()}
    return nv.ViT(config, params, dtype=dtype)


def images(shape, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- the relative position index and bias, by hand ---------------------------------------------------------

def test_relative_position_index_of_a_2x2_grid():
    # patches (row, col): 0 (0,0), 1 (0,1), 2 (1,0), 3 (1,1); offsets (dy + 1) * 3 + (dx + 1) of 3 x 3 = 9,
    # then 9 class to patch, 10 patch to class, 11 class to class
    assert layers.relative_position_index((2, 2)).tolist() == [
        [11, 9, 9, 9, 9],
        [10, 4, 3, 1, 0],
        [10, 5, 4, 2, 1],
        [10, 7, 6, 4, 3],
        [10, 8, 7, 5, 4]]


def test_relative_position_index_shares_entries_exactly_between_equal_offsets():
    gh, gw = 2, 3  # not square: rows and columns must not be confused
    index = layers.relative_position_index((gh, gw))[1:, 1:]  # [P, P]
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    offsets = [(rows[i] - rows[j], cols[i] - cols[j]) for i in range(gh * gw) for j in range(gh * gw)]
    for a, offset_a in enumerate(offsets):
        for b, offset_b in enumerate(offsets):
            assert (index.flat[a] == index.flat[b]) == (offset_a == offset_b)
    assert index.min() == 0 and index.max() == (2 * gh - 1) * (2 * gw - 1) - 1


def test_relative_position_bias_gathers_one_column_per_head():
    index = layers.relative_position_index((2, 2))
    table = np.arange(12 * 3, dtype=np.float64).reshape(12, 3)  # [T, H]: entry t of head h is 3 t + h
    bias = layers.relative_position_bias(table, index)  # [H, N, N]
    assert bias.shape == (3, 5, 5)
    assert np.array_equal(bias, 3 * index[None] + np.arange(3)[:, None, None])


def test_relative_position_bias_backward_adds_repeated_entries():
    index = layers.relative_position_index((2, 2))
    d_bias = np.ones((2, 5, 5))
    d_table = layers.relative_position_bias_backward(d_bias, index, 12)  # [T, H]
    # each entry's gradient counts the pairs that read it: offset (0, 0) (entry 4) is read by the 4 patches
    counts = np.bincount(index.ravel(), minlength=12)
    assert counts[4] == 4 and counts[9] == 4 and counts[11] == 1
    assert np.array_equal(d_table, np.repeat(counts[:, None], 2, axis=1))
    # and it is the transpose of the gather: <d_bias, gather(table)> == <scatter(d_bias), table>
    rng = np.random.default_rng(0)
    table, d_bias = rng.standard_normal((12, 2)), rng.standard_normal((2, 5, 5))
    assert np.isclose(np.sum(d_bias * layers.relative_position_bias(table, index)),
                      np.sum(layers.relative_position_bias_backward(d_bias, index, 12) * table), rtol=1e-13)


def test_attention_adds_the_bias_before_the_softmax():
    rng = np.random.default_rng(0)
    B, N, D, H = 2, 5, 8, 2
    x = rng.standard_normal((B, N, D))
    qkv = {"weight": rng.standard_normal((3 * D, D)), "bias": rng.standard_normal(3 * D)}
    proj = {"weight": rng.standard_normal((D, D)), "bias": rng.standard_normal(D)}
    bias = rng.standard_normal((H, N, N))
    kept = {}
    out = layers.attention(x, qkv, proj, num_heads=H, bias=bias, record=lambda n, a: kept.setdefault(n, a.copy()))
    q, k = kept["q"], kept["k"]
    expected = (q / np.sqrt(D // H)) @ k.swapaxes(-1, -2) + bias  # [B, H, N, N]
    assert np.allclose(kept["scores"], expected, rtol=1e-12, atol=1e-12)
    assert np.array_equal(kept["bias"], bias)
    assert np.allclose(kept["pattern"], layers.softmax(expected), rtol=1e-12)
    # a bias that is constant along each row (what a key bias would add) changes nothing: the softmax cancels it
    row_constant = np.broadcast_to(rng.standard_normal((H, N, 1)), (H, N, N))
    assert np.allclose(layers.attention(x, qkv, proj, num_heads=H, bias=bias + row_constant), out, rtol=1e-10)


def test_fast_attention_adds_the_same_bias():
    """Tolerance: the fast path's products are other BLAS calls (layers vs fast), within float32 rounding of
    a dot product of length Dh = 4 and of N = 5 keys: 1e-6 relative."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    qkv = {"weight": rng.standard_normal((24, 8)).astype(np.float32),
           "bias": rng.standard_normal(24).astype(np.float32)}
    proj = {"weight": rng.standard_normal((8, 8)).astype(np.float32), "bias": np.zeros(8, np.float32)}
    bias = rng.standard_normal((2, 5, 5)).astype(np.float32)
    ref, got = {}, {}
    expected = layers.attention(x, qkv, proj, num_heads=2, bias=bias, record=lambda n, a: ref.setdefault(n, a))
    actual = fast.attention(x, qkv, proj, num_heads=2, bias=bias, record=lambda n, a: got.setdefault(n, a))
    assert np.allclose(actual, expected, rtol=1e-5, atol=1e-5)
    for name in ("bias", "scores", "pattern"):
        assert np.allclose(got[name], ref[name], rtol=1e-5, atol=1e-6), name


def test_model_fast_and_reference_agree_on_a_beit():
    model = perturbed(TINY)
    x = images((3, 3, 32, 48))  # a 2x3 grid: the table is resampled
    model.speedups = False
    ref = model.forward(x)
    model.speedups = True
    got = model.forward(x)
    assert np.allclose(got.logits, ref.logits, rtol=1e-4, atol=1e-5)  # float32, other BLAS calls, 2 blocks
    assert np.array_equal(got["blocks.1.attn.bias"], ref["blocks.1.attn.bias"])  # the same gather, no arithmetic
    assert got["blocks.1.attn.bias"].shape == (2, 7, 7) and got.batch_size == 3


# --- the table at another grid -----------------------------------------------------------------------------

def test_geometric_offsets_by_hand():
    # a 2x2 grid's 3 offsets -1, 0, 1 read at the 5 offsets of a 3x3 grid: the ratio stays near 1.01 (one term)
    assert np.allclose(geometric_offsets(3, 5), [-1, 0, 1])
    W = resize_weights(3, 5, "geometric")  # beyond the outermost offsets: the end values
    assert np.array_equal(W, [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]])
    # 7 offsets (a 4x4 grid) for 9 (5x5): 0, +-1, +-(1 + r), +-(1 + r + r^2) reaching 9 // 2 = 4: r = 1.3028
    points = geometric_offsets(7, 9)
    r = points[5] - points[4]
    assert abs(points[-1] - 4) < 1e-5 and np.allclose(points[4:], [1, 1 + r, 1 + r * (1 + r)])
    assert abs(r - (np.sqrt(13) - 1) / 2) < 1e-5  # the root of 1 + r + r^2 = 4
    # for 11 (6x6) the sum would need r = 1.56, beyond the search's 1.5: it stops at 1 + 1.5 + 2.25 = 4.75
    assert abs(geometric_offsets(7, 11)[-1] - 4.75) < 1e-5
    assert np.allclose(resize_weights(7, 11, "geometric").sum(axis=1), 1)  # a linear interpolation


def test_resampled_table_keeps_the_class_token_entries():
    table = np.random.default_rng(0).standard_normal((12, 2))  # a 2x2 grid's table
    for method in ("geometric", "bilinear"):
        new = resample_rel_pos_table(table, (2, 2), (3, 4), method)
        assert new.shape == ((2 * 3 - 1) * (2 * 4 - 1) + 3, 2)
        assert np.array_equal(new[-3:], table[-3:])
        assert resample_rel_pos_table(table, (2, 2), (2, 2), method) is table


# --- gradients: finite differences in float64 --------------------------------------------------------------

@pytest.mark.parametrize("config, shape", [
    (TINY, (2, 3, 32, 32)),
    (TINY, (1, 3, 48, 32)),                                            # a 3x2 grid, the table resampled (timm)
    (TINY.replace(rel_pos_resample="bilinear", layer_norm_eps=1e-12), (1, 3, 32, 48)),  # HF's resampling
    (TINY.replace(rel_pos_bias="shared", init_values=None, global_pool="token", fc_norm=None), (2, 3, 32, 32)),
    (TINY.replace(abs_pos_embed=True), (1, 3, 32, 32)),                # BEiT with both kinds of position
], ids=["layer", "new-grid-geometric", "new-grid-bilinear", "shared-token", "abs-and-rel"])
def test_backward_matches_finite_differences(config, shape):
    """d logit / d parameter along a random direction per parameter, against central differences with step 1e-5:
    their error is O(step^2) times the third derivative, about 1e-10 relative here, so 1e-7 is a safe margin."""
    model = perturbed(config, seed=2, dtype=np.float64)
    x = images(shape, dtype=np.float64)
    grads = model.backward(model.forward(x), 1)
    rng = np.random.default_rng(3)
    step = 1e-5
    for name, value in model.params.items():
        direction = rng.standard_normal(value.shape)
        analytic = float(np.sum(grads.params[name] * direction))
        logits = []
        for sign in (1, -1):
            moved = nv.ViT(config, {**model.params, name: value + sign * step * direction}, dtype=np.float64)
            logits.append(moved.forward(x, record=["logits"]).logits[:, 1].sum())
        numeric = (logits[0] - logits[1]) / (2 * step)
        assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (name, analytic, numeric)
    # the bias's gradient, under its trace name: the softmax input's gradient summed over the batch
    for i in range(config.depth):
        assert np.allclose(grads[f"blocks.{i}.attn.bias"], grads[f"blocks.{i}.attn.scores"].sum(axis=0), rtol=1e-12)


# --- names, presets and configs --------------------------------------------------------------------------

@pytest.mark.parametrize("name, fields", [
    ("beit_base_patch16_224", dict(embed_dim=768, depth=12, init_values=0.1, crop_pct=0.9, mean=(0.5,) * 3)),
    ("beit_base_patch16_384.in22k_ft_in22k_in1k", dict(img_size=(384, 384), crop_pct=1.0, num_classes=1000)),
    ("beit_large_patch16_512.in22k_ft_in22k_in1k", dict(embed_dim=1024, depth=24, num_heads=16, init_values=1e-5,
                                                         img_size=(512, 512))),
    ("beit_large_patch16_224.in22k_ft_in22k", dict(num_classes=21841)),
    ("beitv2_base_patch16_224.in1k_ft_in22k_in1k", dict(mean=nv.config.IMAGENET_MEAN, init_values=1e-5)),
    ("beitv2_large_patch16_224.in1k_ft_in1k", dict(crop_pct=0.95, std=nv.config.IMAGENET_STD)),
])
def test_timm_beit_names(name, fields):
    config = ViTConfig.preset(name)
    assert config.block_names == "beit" and config.rel_pos_bias == "layer" and not config.abs_pos_embed
    assert config.global_pool == "avg" and config.use_fc_norm and config.name == name
    for field, value in fields.items():
        assert getattr(config, field) == value, field


def test_presets_and_param_names():
    assert {"beit_base_patch16_224", "beitv2_base_patch16_224"} <= set(PRESETS)
    shapes = param_shapes(TINY)
    assert "pos_embed" not in shapes and "blocks.0.attn.qkv.bias" not in shapes
    assert shapes["blocks.0.attn.relative_position_bias_table"] == (3 * 3 + 3, 2)
    assert shapes["blocks.1.attn.q_bias"] == shapes["blocks.1.attn.v_bias"] == shapes["blocks.1.gamma_2"] == (16,)
    assert "fc_norm.weight" in shapes and "norm.weight" not in shapes
    shared = param_shapes(TINY.replace(rel_pos_bias="shared"))
    assert shared["rel_pos_bias.relative_position_bias_table"] == (12, 2)
    assert "blocks.0.attn.relative_position_bias_table" not in shared
    assert ViTConfig.from_json(TINY.to_json()) == TINY


@pytest.mark.parametrize("name, message", [
    ("beit_huge_patch16_224", "unknown size 'huge'.*base and large"),
    ("beit_base_patch14_224", "timm has no BEiT of patch 14 at 224 px"),
    ("beit_base_patch16_224.in1k_ft_in1k", "unknown pretrained tag 'in1k_ft_in1k'.*in22k_ft_in22k_in1k"),
    ("beitv2_base_patch16_384", "no BEiT of patch 16 at 384"),
    ("beit_base_gap_patch16_224", "not of the form beit"),
])
def test_unknown_beit_names_say_which_part(name, message):
    with pytest.raises(ConfigError, match=message):
        ViTConfig.preset(name)


@pytest.mark.parametrize("fields, message", [
    (dict(rel_pos_bias="yes"), "rel_pos_bias must be ''"),
    (dict(rel_pos_resample="bicubic"), "rel_pos_resample must be 'geometric'"),
    (dict(block_names="eva"), "block_names must be 'vit' or 'beit'"),
    (dict(num_reg_tokens=2), "rel_pos_bias needs exactly one prefix token"),
    (dict(abs_pos_embed="no"), "abs_pos_embed must be True or False"),
])
def test_bad_beit_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        TINY.replace(**fields)


# --- readers ------------------------------------------------------------------------------------------------

def test_timm_safetensors_reads_heads_and_grid_from_the_table(tmp_path):
    from safetensors.numpy import save_file
    model = perturbed(TINY.replace(img_size=48))
    save_file(c_order(model.params), str(tmp_path / "beit.safetensors"))
    config, params = weights.load_any(tmp_path / "beit.safetensors")  # no arch: the table has a column per head
    assert config.num_heads == 2 and config.img_size == (48, 48) and config.block_names == "beit"
    assert config.rel_pos_bias == "layer" and not config.abs_pos_embed and config.init_values is not None
    assert all(np.array_equal(params[k], model.params[k]) for k in model.params)
    with pytest.raises(CheckpointError, match="table has 2 heads .columns., beit_base_patch16_224 has 4"):
        weights.load_any(tmp_path / "beit.safetensors", arch=TINY.replace(img_size=48, num_heads=4))


def test_timm_index_buffer_is_checked(tmp_path):
    from safetensors.numpy import save_file
    model = perturbed(TINY)
    index = layers.relative_position_index(TINY.grid_size)
    save_file({**c_order(model.params), "blocks.0.attn.relative_position_index": index},
              str(tmp_path / "ok.safetensors"))
    config, _ = weights.load_any(tmp_path / "ok.safetensors", arch=TINY)
    assert config.rel_pos_bias == "layer"
    save_file({**c_order(model.params), "blocks.1.attn.relative_position_index": index.T.copy()},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="blocks.1.attn.relative_position_index .* is not the relative position "
                                              "index of a 2x2 grid"):
        weights.load_any(tmp_path / "bad.safetensors", arch=TINY)


def hf_state_dict(params, depth):
    """Our params under HF BEiT's on-disk names (BeitForImageClassification), by running BEIT_TABLE backwards."""
    raw = {}
    for r in (e for r in BEIT_TABLE for e in r.expand(depth)):
        if r.target not in params:
            continue
        if len(r.sources) == 3:  # query, key, value stacked into qkv
            for source, part in zip(r.sources, np.split(params[r.target], 3)):
                raw["beit." + source] = part
        else:
            raw[("" if r.sources[0].startswith("classifier") else "beit.") + r.sources[0]] = params[r.target]
    return raw


def hf_config(config):
    return {"model_type": "beit", "architectures": ["BeitForImageClassification"], "hidden_size": config.embed_dim,
            "num_hidden_layers": config.depth, "num_attention_heads": config.num_heads,
            "intermediate_size": config.mlp_dim, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
            "image_size": config.img_size[0], "patch_size": config.patch_size, "num_channels": 3,
            "use_absolute_position_embeddings": False, "use_relative_position_bias": True,
            "use_shared_relative_position_bias": False, "layer_scale_init_value": 0.1, "use_mean_pooling": True,
            "id2label": {str(i): f"class {i}" for i in range(config.num_classes)}}


def write_hf_folder(folder, model):
    from safetensors.numpy import save_file
    folder.mkdir(parents=True)
    save_file(c_order(hf_state_dict(model.params, model.config.depth)), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(model.config)))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}))


def test_hf_folder_and_the_hub_name_stand_in(tmp_path, monkeypatch):
    import sys
    model = perturbed(TINY)
    write_hf_folder(tmp_path / "folder", model)
    config, params = weights.load_any(tmp_path / "folder")
    assert config.rel_pos_resample == "bilinear" and config.layer_norm_eps == 1e-12 and config.labels[2] == "class 2"
    assert params.keys() == model.params.keys()
    assert all(np.array_equal(params[k], model.params[k]) for k in model.params)
    # the name a user types: its files put by hand into our cache folder (what a download leaves there)
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never reached: the files are there
    write_hf_folder(tmp_path / "cache" / "microsoft--beit-base-patch16-224", model)
    hub_model = nv.ViT.from_pretrained("microsoft/beit-base-patch16-224")
    assert hub_model.config.name == "microsoft/beit-base-patch16-224" and hub_model.config.block_names == "beit"
    x = images((1, 3, 32, 32))
    assert np.allclose(hub_model.forward(x).logits, model.forward(x).logits, rtol=1e-6, atol=1e-6)  # eps differs


def test_hf_folder_with_a_key_bias_is_refused(tmp_path):
    model = perturbed(TINY)
    write_hf_folder(tmp_path / "folder", model)
    from safetensors.numpy import load_file, save_file
    raw = load_file(str(tmp_path / "folder" / "model.safetensors"))
    raw["beit.encoder.layer.0.attention.attention.key.bias"] = np.zeros(16, np.float32)
    save_file(raw, str(tmp_path / "folder" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys .*attention.attention.key.bias"):
        weights.load_any(tmp_path / "folder")


def test_npz_round_trip_and_img_size(tmp_path):
    from numpy_vit.weights.named_models import at_img_size
    model = perturbed(TINY)
    model.save(str(tmp_path / "beit.npz"))
    loaded = nv.ViT.from_pretrained(str(tmp_path / "beit.npz"))
    assert loaded.config == model.config
    x = images((1, 3, 48, 32))
    resized = at_img_size(loaded, (48, 32))  # the tables resampled once, as each run does at that size
    assert resized.config.num_relative_distance == 5 * 3 + 3
    assert np.allclose(resized.forward(x).logits, model.forward(x).logits, rtol=1e-6, atol=1e-6)


# --- the figures and the command line on a random BEiT -------------------------------------------------------

def test_show_all_figures_and_the_demo_on_a_random_beit(tmp_path):
    import os
    from PIL import Image
    from numpy_vit import cli
    from numpy_vit.viz.figures import FIGURES
    path = tmp_path / "beit.npz"
    perturbed(TINY.replace(img_size=64, num_classes=3, labels=("a", "b", "c"))).save(str(path))
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    assert cli.main(["show", str(image), "--figure", "all", "--model", str(path), "-o", str(tmp_path / "show"),
                     "--dpi", "30"]) == 0
    assert sorted(os.listdir(tmp_path / "show")) == sorted(f"img_{name}.png" for name in FIGURES)
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--model", str(path), "--dpi", "30"]) == 0
    assert "vis_2_position_embedding.png" in os.listdir(tmp_path / "demo")


def test_figure_2_draws_the_relative_bias_without_a_position_embedding():
    import matplotlib
    matplotlib.use("Agg")
    from numpy_vit.viz import figures
    model = perturbed(TINY.replace(img_size=64))  # a 4x4 grid
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    trace = model.run(image, record=figures.record_for(["position_embedding"]))
    assert "pos_embed" not in trace and "blocks.0.attn.bias" in trace
    fig = figures.make_figure("position_embedding", trace)
    assert "Relative position bias of layer 0" in fig.get_suptitle()
    fig = figures.make_figure("attention_rollout", model.run(image))
    assert "relative position bias (BEiT)" in fig.get_supxlabel()


def test_a_model_without_position_embedding_says_so():
    import matplotlib
    matplotlib.use("Agg")
    from numpy_vit.trace import TraceKeyError
    from numpy_vit.viz import visualize_position_embedding
    model = perturbed(TINY.replace(img_size=64))
    trace = model.run(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(TraceKeyError, match="no absolute position embedding .*blocks.0.attn.bias"):
        trace["pos_embed"]
    for source in (model, trace):  # the guide's function, given the model or its trace
        fig = visualize_position_embedding(source)
        assert "Relative position bias of layer 0" in fig.get_suptitle()


def test_timm_hub_name_stand_in(tmp_path, monkeypatch):
    """timm's hub folder: config.json (architecture, model_args, pretrained_cfg with its tag) + model.safetensors."""
    import sys
    from safetensors.numpy import save_file
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never reached: the files are there
    folder = tmp_path / "timm--beitv2_base_patch16_224.in1k_ft_in1k"
    folder.mkdir()
    model = perturbed(ViTConfig.preset("beitv2_base_patch16_224.in1k_ft_in1k", img_size=32, embed_dim=16, depth=2,
                                       num_heads=2))
    save_file(c_order(model.params), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "beitv2_base_patch16_224", "num_classes": 1000, "global_pool": "avg",
        "model_args": {"depth": 2, "embed_dim": 16, "num_heads": 2, "img_size": 32},
        "pretrained_cfg": {"tag": "in1k_ft_in1k", "input_size": [3, 32, 32], "interpolation": "bicubic",
                           "crop_pct": 0.9, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}))
    loaded = nv.ViT.from_pretrained("timm/beitv2_base_patch16_224.in1k_ft_in1k")
    assert loaded.config.name == "beitv2_base_patch16_224.in1k_ft_in1k" and loaded.config.init_values == 1e-5
    assert loaded.config.rel_pos_resample == "geometric" and loaded.config.labels[0] == "tench"
    x = images((1, 3, 32, 32))
    assert np.allclose(loaded.forward(x).logits, model.forward(x).logits, rtol=1e-6, atol=1e-7)  # the same weights
