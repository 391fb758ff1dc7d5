"""CLIP image towers, average-pooled ViTs without a class token and the HF CLIP / DINOv2 readers, without torch:
the reference pieces against hand-worked numbers and finite differences, timm's names, the readers (HF folders
written by hand, the hub stand-in), the figures and the CLI on small random models, and bad input.
(parity_tests/test_clip_parity.py compares the same models with timm and HF transformers.)"""
import json
import math
import os

import numpy as np
import pytest

from bad_input_files import safetensors_bytes
from numpy_vit import ViT, ViTConfig, analysis, cli, layers
from numpy_vit.config import OPENAI_CLIP_MEAN, param_shapes
from numpy_vit.errors import CheckpointError, ConfigError
from numpy_vit.weights import load_any

TINY = dict(embed_dim=32, depth=2, num_heads=4, img_size=32, patch_size=8, num_classes=5)


def perturbed(model, seed=0, scale=0.3):
    """Every parameter moved by random values, so that LayerNorm gains, biases and tokens are not 1 or 0."""
    rng = np.random.default_rng(seed)
    for value in model.params.values():
        value += (scale * rng.standard_normal(value.shape)).astype(value.dtype)
    return model


# --- quick GELU -------------------------------------------------------------------------------------------------

def test_quick_gelu_against_hand_worked_values():
    """x * sigmoid(1.702 x) at a few points, worked with math.exp; large negative x keeps its relative precision
    (1 + exp(-1.702 x) would overflow float64 at x = -400 in a naive sigmoid)."""
    x = np.array([-400.0, -30.0, -1.0, 0.0, 0.5, 1.0, 30.0])
    expected = [v * math.exp(-1.702 * abs(v)) / (1 + math.exp(-1.702 * abs(v))) if v < 0 else v / (1 + math.exp(-1.702 * v))
                for v in x]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = layers.quick_gelu(x)
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)    # float64 rounding of a few operations
    assert got[0] < 0 and got[3] == 0 and got[-1] == 30.0
    assert layers.gelu(np.float32([1.0]), "quick").dtype == np.float32
    np.testing.assert_array_equal(layers.gelu(x, "quick"), got)


def test_quick_gelu_backward_is_the_derivative():
    """Central differences in float64: error O(h^2) ~ 1e-12 with h = 1e-5, well inside 1e-8."""
    x = np.linspace(-8, 8, 161)
    h = 1e-5
    numeric = (layers.quick_gelu(x + h) - layers.quick_gelu(x - h)) / (2 * h)
    np.testing.assert_allclose(layers.gelu_backward(np.ones_like(x), x, layers.quick_gelu(x), "quick"), numeric,
                               rtol=0, atol=1e-8)


# --- norm_pre, quick GELU and no class token in the model ----------------------------------------------------------

def test_norm_pre_is_a_layer_norm_of_the_embedded_tokens():
    config = ViTConfig.preset("vit_base_patch16_clip_quickgelu_224", **TINY)
    shapes = param_shapes(config)
    assert "norm_pre.weight" in shapes and "patch_embed.proj.bias" not in shapes   # CLIP's conv1 has no bias
    model = perturbed(ViT(config, dtype=np.float64))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    trace = model.forward(x)
    tokens = np.concatenate([np.broadcast_to(model.params["cls_token"], (2, 1, 32)), trace["patch_embed"]], 1)
    embedded = tokens + trace["pos_embed"]
    expected = layers.layer_norm(embedded, model.params["norm_pre.weight"], model.params["norm_pre.bias"], eps=1e-5)
    np.testing.assert_allclose(trace["norm_pre"], expected, rtol=0, atol=1e-13)
    assert np.array_equal(trace["blocks.0.resid_pre"], trace["norm_pre"])
    mlp = trace["blocks.0.mlp.pre"]
    np.testing.assert_allclose(trace["blocks.0.mlp.post"], mlp / (1 + np.exp(-1.702 * mlp)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["vit_base_patch16_clip_quickgelu_224", "vit_medium_patch16_reg4_gap_256",
                                  "vit_base_patch16_gap_224"])
def test_backward_matches_finite_differences(name):
    """model.backward of CLIP (norm_pre, quick GELU) and of the gap models (no class token, registers, mean pooling)
    against central differences of the logit in float64 (h = 1e-6: truncation ~1e-12, rounding ~1e-10)."""
    model = perturbed(ViT(ViTConfig.preset(name, **TINY), dtype=np.float64, seed=2))
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32))
    grads = model.backward(model.forward(x), 1)
    rng = np.random.default_rng(4)
    checked = [k for k in ("norm_pre.weight", "norm_pre.bias", "pos_embed", "blocks.0.mlp.fc1.weight",
                           "blocks.1.norm1.bias", "reg_token", "patch_embed.proj.weight") if k in model.params]
    for key in checked:
        value = model.params[key]
        for _ in range(2):
            index = tuple(rng.integers(0, n) for n in value.shape)
            old = value[index]
            value[index] = old + 1e-6
            up = model.forward(x, record=["logits"]).logits[:, 1].sum()
            value[index] = old - 1e-6
            down = model.forward(x, record=["logits"]).logits[:, 1].sum()
            value[index] = old
            assert abs((up - down) / 2e-6 - grads.params[key][index]) <= 1e-7 * max(1, abs(grads.params[key][index])), key
    dx = grads["input"]
    x2 = x.copy()
    x2[0, 1, 5, 7] += 1e-6
    up = model.forward(x2, record=["logits"]).logits[:, 1].sum()
    x2[0, 1, 5, 7] -= 2e-6
    down = model.forward(x2, record=["logits"]).logits[:, 1].sum()
    assert abs((up - down) / 2e-6 - dx[0, 1, 5, 7]) <= 1e-7


def test_speedups_compute_the_same_clip_model():
    """The threaded path (numpy_vit.fast) on a quick-GELU CLIP model: quick GELU runs the reference function, the
    matrix products are other BLAS calls, so the logits agree to float32 rounding of a dot product."""
    model = perturbed(ViT(ViTConfig.preset("vit_base_patch16_clip_quickgelu_224", **TINY), seed=5))
    x = np.random.default_rng(6).standard_normal((3, 3, 32, 32)).astype(np.float32)
    model.speedups = False
    reference = model.forward(x).logits
    model.speedups = True
    np.testing.assert_allclose(model.forward(x).logits, reference, rtol=0, atol=1e-5)


# --- timm's names ----------------------------------------------------------------------------------------------

def test_clip_names_and_tags():
    openai = ViTConfig.preset("vit_base_patch16_clip_224.openai")
    assert (openai.norm_pre, openai.gelu, openai.layer_norm_eps, openai.num_classes, openai.crop_pct) == \
        (True, "erf", 1e-5, 512, 0.9)
    assert openai.mean == OPENAI_CLIP_MEAN
    quick = ViTConfig.preset("vit_large_patch14_clip_quickgelu_336.openai")
    assert (quick.gelu, quick.embed_dim, quick.depth, quick.img_size, quick.num_classes) == \
        ("quick", 1024, 24, (336, 336), 768)
    assert ViTConfig.preset("vit_base_patch32_clip_224.laion2b_ft_in12k").num_classes == 11821
    assert ViTConfig.preset("vit_base_patch16_clip_224.openai_ft_in12k_in1k").crop_pct == 0.95
    assert ViTConfig.preset("vit_large_patch14_clip_224.laion2b").mean == (0.5, 0.5, 0.5)
    plus = ViTConfig.preset("vit_base_patch16_plus_clip_240.laion400m_e32")
    assert (plus.embed_dim, plus.num_heads, plus.num_classes) == (896, 14, 640)
    assert ViTConfig.preset("vit_base_patch16_clip_224.openai") != ViTConfig.preset("vit_base_patch16_clip_224")
    assert ViTConfig.preset("vit_base_patch16_clip_224").num_classes == 1000   # untagged: timm's default head


def test_gap_names_and_tags():
    base = ViTConfig.preset("vit_base_patch16_gap_224")
    assert (base.class_token, base.global_pool, base.use_fc_norm, base.num_heads, base.num_prefix_tokens) == \
        (False, "avg", False, 16, 0)
    medium = ViTConfig.preset("vit_medium_patch16_gap_384.sw_in12k_ft_in1k")
    assert (medium.qkv_bias, medium.init_values, medium.crop_pct, medium.img_size) == (False, 1e-6, 0.95, (384, 384))
    registers = ViTConfig.preset("vit_betwixt_patch16_reg4_gap_256.sbb_in12k")
    assert (registers.num_reg_tokens, registers.no_embed_class, registers.use_fc_norm, registers.num_classes) == \
        (4, True, True, 11821)
    assert ViTConfig.preset("vit_huge_patch14_gap_224.in22k_ijepa").num_classes == 0


@pytest.mark.parametrize("name, words", [
    ("vit_base_patch16_clip_224.laion5b", "unknown CLIP pretrained tag 'laion5b'"),
    ("vit_base_patch16_clip_224.openai_ft_in21k", "unknown CLIP pretrained tag"),
    ("vit_tiny_patch16_clip_224", "unknown CLIP size 'tiny'"),
    ("vit_base_patch16_clip_quick_224", "vit_<size>_patch<P>[_plus]_clip[_quickgelu]_<RES>"),
    ("vit_dwee_patch16_reg1_gap_256", "differential attention"),
    ("vit_small_patch16_gap_224", "unknown average-pooled ViT 'vit_small_patch16_gap'"),
    ("vit_base_patch16_gap_224.augreg_in1k", "unknown pretrained tag 'augreg_in1k'"),
])
def test_names_that_cannot_be_read_say_which_part(name, words):
    with pytest.raises(ConfigError, match=r".*" + words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        ViTConfig.preset(name)


@pytest.mark.parametrize("fields, words", [(dict(gelu="quickgelu"), "gelu must be 'erf', 'tanh' or 'quick'"),
                                           (dict(norm_pre="yes"), "norm_pre must be True or False")])
def test_bad_config_values(fields, words):
    with pytest.raises(ConfigError, match=words):
        ViTConfig(**fields)


# --- readers -----------------------------------------------------------------------------------------------------

def test_timm_clip_and_gap_state_dicts(tmp_path):
    for name in ("vit_base_patch16_clip_quickgelu_224.openai", "vit_medium_patch16_reg4_gap_256"):
        config = ViTConfig.preset(name, **TINY)
        model = ViT(config, seed=7)
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(safetensors_bytes(model.params))
        loaded, params = load_any(str(path), arch=config)
        assert (loaded.norm_pre, loaded.gelu, loaded.class_token, loaded.global_pool, loaded.num_reg_tokens) == \
            (config.norm_pre, config.gelu, config.class_token, config.global_pool, config.num_reg_tokens)
        assert all(np.array_equal(params[k], model.params[k]) for k in model.params)
    tensors = dict(model.params, **{"blocks.0.attn.q_norm.weight": np.ones(8, np.float32)})  # timm qk_norm
    (tmp_path / "odd.safetensors").write_bytes(safetensors_bytes(tensors))
    with pytest.raises(CheckpointError, match="unexpected keys that no rule of this reader maps: blocks.0.attn.q_norm.weight"):
        load_any(str(tmp_path / "odd.safetensors"), arch=config)


def hf_clip_tensors(model, prefix="vision_model.", text_tower=False):
    """An HF CLIP vision state dict of ``model``'s weights, written by hand (numpy), as on the hub."""
    p, D = model.params, model.config.embed_dim
    out = {f"{prefix}embeddings.class_embedding": p["cls_token"][0, 0],
           f"{prefix}embeddings.position_embedding.weight": p["pos_embed"][0],
           f"{prefix}embeddings.patch_embedding.weight": p["patch_embed.proj.weight"],
           f"{prefix}pre_layrnorm.weight": p["norm_pre.weight"], f"{prefix}pre_layrnorm.bias": p["norm_pre.bias"],
           f"{prefix}post_layernorm.weight": p["norm.weight"], f"{prefix}post_layernorm.bias": p["norm.bias"],
           "visual_projection.weight": p["head.weight"]}
    for i in range(model.config.depth):
        b, layer = f"blocks.{i}.", f"{prefix}encoder.layers.{i}."
        for part in ("weight", "bias"):
            for j, name in enumerate("qkv"):
                out[f"{layer}self_attn.{name}_proj.{part}"] = p[b + f"attn.qkv.{part}"][j * D:(j + 1) * D]
            for hf, ours in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[f"{layer}{hf}.{part}"] = p[f"{b}{ours}.{part}"]
    if text_tower:
        out["text_model.embeddings.token_embedding.weight"] = np.zeros((10, 8), np.float32)
        out["text_projection.weight"] = np.zeros((6, 8), np.float32)
        out["logit_scale"] = np.array(2.6592, np.float32)
    return out


def clip_model_for_hf(act="quick"):
    config = ViTConfig.preset("vit_base_patch16_clip_quickgelu_224", **dict(TINY, num_classes=6), gelu=act)
    model = ViT(config, seed=8)
    model.params["head.bias"][:] = 0  # HF's visual_projection has no bias
    return model


def write_clip_folder(folder, model, whole_clip_model=False, prefix="vision_model."):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(safetensors_bytes(hf_clip_tensors(model, prefix, whole_clip_model)))
    vision = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, hidden_act="quick_gelu" if model.config.gelu == "quick" else "gelu")
    config = ({"model_type": "clip", "projection_dim": 6, "vision_config": vision, "text_config": {}}
              if whole_clip_model else {"model_type": "clip_vision_model", "projection_dim": 6, **vision})
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("whole, prefix", [(False, "vision_model."), (True, "vision_model."), (False, "")],
                         ids=["CLIPVisionModelWithProjection", "CLIPModel", "transformers-5-layout"])
def test_hf_clip_folders(tmp_path, whole, prefix):
    model = clip_model_for_hf()
    write_clip_folder(tmp_path, model, whole, prefix)
    loaded = ViT.from_pretrained(str(tmp_path))
    c = loaded.config
    assert (c.norm_pre, c.gelu, c.layer_norm_eps, c.num_classes, c.pos_embed_resample, c.mean) == \
        (True, "quick", 1e-5, 6, "bicubic_hf", OPENAI_CLIP_MEAN)
    x = np.random.default_rng(9).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x).logits, model.forward(x).logits)


def test_hf_clip_gelu_and_unknown_keys(tmp_path):
    write_clip_folder(tmp_path, clip_model_for_hf("erf"))
    assert ViT.from_pretrained(str(tmp_path)).config.gelu == "erf"
    tensors = hf_clip_tensors(clip_model_for_hf())
    tensors["vision_model.encoder.layers.0.self_attn.rel_bias"] = np.zeros(3, np.float32)
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(tensors))
    with pytest.raises(CheckpointError, match="unexpected keys .*vision_model.encoder.layers.0.self_attn.rel_bias"):
        ViT.from_pretrained(str(tmp_path))


def hf_dinov2_tensors(model):
    p, D = model.params, model.config.embed_dim
    out = {"embeddings.cls_token": p["cls_token"], "embeddings.mask_token": np.zeros((1, D), np.float32),
           "embeddings.position_embeddings": p["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": p["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": p["patch_embed.proj.bias"],
           "layernorm.weight": p["norm.weight"], "layernorm.bias": p["norm.bias"]}
    for i in range(model.config.depth):
        b, layer = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            for j, name in enumerate(("query", "key", "value")):
                out[f"{layer}attention.attention.{name}.{part}"] = p[b + f"attn.qkv.{part}"][j * D:(j + 1) * D]
            for hf, ours in (("attention.output.dense", "attn.proj"), ("norm1", "norm1"), ("norm2", "norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[f"{layer}{hf}.{part}"] = p[f"{b}{ours}.{part}"]
        out[f"{layer}layer_scale1.lambda1"] = p[b + "ls1.gamma"]
        out[f"{layer}layer_scale2.lambda1"] = p[b + "ls2.gamma"]
    return out


def write_dinov2_folder(folder):
    config = ViTConfig(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4, init_values=1.0,
                       num_classes=0, pos_embed_resample="bicubic_hf")
    model = perturbed(ViT(config, seed=10))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(safetensors_bytes(hf_dinov2_tensors(model)))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "mlp_ratio": 4, "image_size": 28, "patch_size": 14, "layerscale_value": 1.0, "layer_norm_eps": 1e-6}))
    return model


def test_hf_dinov2_folder(tmp_path):
    model = write_dinov2_folder(tmp_path)
    loaded = ViT.from_pretrained(str(tmp_path))
    assert (loaded.config.init_values, loaded.config.num_classes, loaded.config.global_pool) == (1.0, 0, "token")
    x = np.random.default_rng(11).standard_normal((1, 3, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x)["pooled"], model.forward(x)["pooled"])


def test_hub_names_resolve_to_the_clip_and_dinov2_readers(tmp_path, monkeypatch):
    """The names users type, read from files put by hand in the hub cache (no download here)."""
    import sys
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never reached: the files are there
    model = clip_model_for_hf()
    write_clip_folder(tmp_path / "openai--clip-vit-base-patch32", model, whole_clip_model=True)
    dinov2 = write_dinov2_folder(tmp_path / "facebook--dinov2-small")
    clip_config, clip_params = load_any("openai/clip-vit-base-patch32")
    assert clip_config.norm_pre and clip_config.name == "openai/clip-vit-base-patch32"
    assert all(np.array_equal(clip_params[k], model.params[k]) for k in model.params)
    dinov2_config, dinov2_params = load_any("facebook/dinov2-small")
    assert dinov2_config.init_values == 1.0 and dinov2_config.name == "facebook/dinov2-small"
    assert all(np.array_equal(dinov2_params[k], dinov2.params[k]) for k in dinov2.params)


# --- figures -----------------------------------------------------------------------------------------------------

def test_summary_query():
    assert analysis.summary_query(("cls", "reg0")) == ("cls", "CLS token's query")
    assert analysis.summary_query(("reg0",)) == ("mean", "mean over patch queries: this model has no class token")
    assert analysis.summary_query(ViTConfig.preset("vit_base_patch16_gap_224"))[0] == "mean"
    assert analysis.query_token_index(None, (2, 2), ()) == "mean"


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("family_models")
    paths = {}
    for name in ("vit_base_patch16_gap_224", "vit_base_patch16_clip_quickgelu_224"):
        model = ViT(ViTConfig.preset(name, embed_dim=32, depth=2, num_heads=4, img_size=64, num_classes=3,
                                     labels=("circle", "square", "star")), seed=12)
        perturbed(model, scale=0.05)
        paths[name] = str(folder / f"{name}.npz")
        model.save(paths[name])
    return paths


def test_show_all_figures_on_a_gap_model(family_models, tmp_path):
    """Every figure of numpy-vit show on a model without a class token; their titles say what stands for CLS."""
    import matplotlib
    matplotlib.use("Agg")
    from numpy_vit.viz import figures

    model = ViT.from_pretrained(family_models["vit_base_patch16_gap_224"])
    assert cli.main(["show", os.path.join(os.path.dirname(figures.__file__), "assets", "sample.png"), "--figure",
                     "all", "--model", family_models["vit_base_patch16_gap_224"], "-o", str(tmp_path),
                     "--dpi", "30"]) == 0
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png")]) == len(figures.FIGURES)
    trace = model.run(np.random.default_rng(13).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for name in ("attention_layers", "attention_rollout", "cls_evolution"):
        fig = figures.make_figure(name, trace)
        assert "this model has no class token" in fig._suptitle.get_text(), name


def test_demo_on_a_clip_model(family_models, tmp_path):
    """The demo's figures, figure 8 and the explorer page on a quick-GELU CLIP model (norm_pre)."""
    from numpy_vit.viz.demo import run_demo
    written = run_demo(str(tmp_path), model=family_models["vit_base_patch16_clip_quickgelu_224"],
                       echo=lambda *a: None, dpi=30)
    assert all(os.path.isfile(path) for path in written) and len(written) >= 8
    assert os.path.isfile(tmp_path / "explorer.html")


def test_explorer_opens_on_the_summary_query():
    """The explorer page's metadata names the query it opens on: CLS, or the patch mean without a class token."""
    from numpy_vit.viz.explorer import describe
    for name, expected in (("vit_base_patch16_gap_224", "mean"), ("vit_base_patch16_clip_quickgelu_224", "cls")):
        model = ViT(ViTConfig.preset(name, **TINY), seed=14)
        meta = describe(model.forward(np.zeros((1, 3, 32, 32), np.float32)))
        assert meta["summary_query"] == expected
        assert ("no class token" in meta["summary_label"]) == (expected == "mean")


def test_explorer_page_of_a_gap_model_opens_on_the_patch_mean(tmp_path):
    """In headless Chromium (skipped as tests/test_explorer_browser.py skips without it): the page of a model
    without a class token opens on the mean over the patch queries, says so, and raises no script error."""
    from test_explorer_browser import CHROMIUM, IN_CI, _missing
    from numpy_vit.viz import explorer

    missing = _missing()
    if missing:
        if IN_CI:
            pytest.fail(f"the browser tests must run in CI: {missing}")
        pytest.skip(f"browser tests skipped on this machine: {missing}")
    from playwright.sync_api import sync_playwright

    model = ViT(ViTConfig.preset("vit_base_patch16_gap_224", **TINY), seed=15)
    trace = model.forward(np.random.default_rng(16).standard_normal((1, 3, 32, 32)).astype(np.float32))
    path = explorer.explore(trace).save(tmp_path / "explorer.html")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        page = chromium.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"file://{path}")
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        query = page.evaluate("document.body.dataset.query")
        label = page.locator("#nv-query-label").text_content()
        chromium.close()
    assert not errors and query == "mean"
    assert "this model has no class token" in label
