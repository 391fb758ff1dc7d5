"""CLIP image towers, average-pooled ViTs without a class token, and DINOv2 through HF: numpy_vit against timm and
HF transformers (eager attention), the same weights, a batch of 2, every block's attention pattern and residual
stream and the output compared, float32 and float64, with the limits of conftest.py (the README's parity table).

Each model runs at a small width (64, 4 heads, 2-3 blocks, 64 px images): every block runs the same code as at
full size, and the pieces this family adds (CLIP's norm_pre and quick GELU, no class token, registers with average
pooling, layer scale without q/k/v biases, HF's CLIP and DINOv2 layouts) are all in the first blocks. "random":
the reference's own initialisation; "perturbed": every tensor (biases, LayerNorms, tokens, head) set to random
values of a realistic size, so that none is left at a value (0 or 1) that would hide a wiring mistake.
"""
import numpy as np
import pytest

from conftest import compare_traces, random_batch, timm_state_to_params
from test_timm_parity import _randomise, _run_both

import numpy_vit as nv

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SMALL = dict(embed_dim=64, depth=2, num_heads=4, img_size=64, num_classes=10)

TIMM_MODELS = [  # (timm name, overrides for both timm and numpy_vit)
    ("vit_base_patch16_clip_224", SMALL),                            # CLIP: norm_pre, eps 1e-5, no patch bias
    ("vit_base_patch16_clip_quickgelu_224", SMALL),                  # OpenAI's quick GELU
    ("vit_base_patch16_gap_224", SMALL),                             # no class token, norm then patch mean
    ("vit_medium_patch16_gap_256", dict(SMALL, depth=3)),            # + no q/k/v bias, layer scale 1e-6
    ("vit_medium_patch16_reg4_gap_256", SMALL),                      # + 4 registers (no position), fc_norm
]


def _timm_pair(name, dtype, perturbed, dynamic_img_size=False, **overrides):
    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False, dynamic_img_size=dynamic_img_size, **overrides).eval()
    if perturbed:
        _randomise(tm)
    if dtype == np.float64:
        tm = tm.double()
    model = nv.ViT(nv.ViTConfig.preset(name, **overrides), timm_state_to_params(tm), dtype=dtype)
    return tm, model


def _label(source, name, overrides, perturbed, suffix=""):
    details = ", ".join(f"{k}={v}" for k, v in overrides.items() if k not in ("embed_dim", "num_heads", "num_classes"))
    return f"{source} {name}{suffix}, {'perturbed' if perturbed else 'random'} (width 64, {details})"


@pytest.mark.parametrize("perturbed", [False, True], ids=["random", "perturbed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,overrides", TIMM_MODELS, ids=[n for n, _ in TIMM_MODELS])
def test_timm_family_matches(name, overrides, dtype, perturbed):
    tm, model = _timm_pair(name, dtype, perturbed, **overrides)
    x = random_batch(model.config, batch=2, dtype=dtype)
    trace, reference = _run_both(tm, model, x)
    if model.config.norm_pre:
        assert "norm_pre" in trace and np.array_equal(trace["norm_pre"], trace["blocks.0.resid_pre"])
    compare_traces(trace, reference, dtype, _label("timm", name, overrides, perturbed), model.config.depth)


@pytest.mark.parametrize("name", ["vit_base_patch16_clip_quickgelu_224", "vit_medium_patch16_reg4_gap_256"])
def test_timm_family_non_square_input(name):
    """timm resamples the position embedding (bicubic, antialias) with dynamic_img_size=True: 64 x 48 px on a
    model trained at 64 x 64, so a 4 x 3 grid from the 4 x 4 table."""
    tm, model = _timm_pair(name, np.float32, True, dynamic_img_size=True, **SMALL)
    x = random_batch(model.config, batch=2, size=(64, 48), seed=1)
    trace, reference = _run_both(tm, model, x)
    assert trace.grid == (4, 3)
    compare_traces(trace, reference, np.float32, _label("timm", name, SMALL, True, " @ 64x48"), model.config.depth)


# --- HF transformers -----------------------------------------------------------------------------------------

@pytest.fixture
def float64_softmax(monkeypatch):
    """HF's eager attention computes its softmax in float32 whatever the model's dtype (softmax(..., dtype=
    torch.float32)), which limits a float64 comparison to ~1e-9: keep it in float64 for a float64 model."""
    softmax = torch.nn.functional.softmax

    def softmax_in_input_dtype(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", softmax_in_input_dtype)


def _perturb_hf(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "lambda1" in name:
                p.copy_(0.1 + 0.05 * torch.randn(p.shape, generator=g))
            else:
                big = any(part in name for part in ("class_embedding", "cls_token", "register", "position"))
                p.copy_(0.02 * torch.randn(p.shape, generator=g) * (10 if big else 1))
    return model


def _hf_pair(tmp_path, model_class, config, dtype, perturbed):
    """(HF model, numpy_vit model read from the folder it saved, as from the hub)."""
    torch.manual_seed(0)
    hf = model_class(config).eval()
    if perturbed:
        _perturb_hf(hf)
    hf.save_pretrained(tmp_path)
    model = nv.ViT.from_pretrained(str(tmp_path), dtype=dtype)
    return (hf.double() if dtype == np.float64 else hf), model


def _hf_reference(hf, x, depth, output, interpolate=False):
    """Every block's pattern and input, the last block's output, and the model's output under our name."""
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(x), output_attentions=True, output_hidden_states=True,
                 interpolate_pos_encoding=interpolate)
    reference = {}
    for i in range(depth):
        reference[f"blocks.{i}.attn.pattern"] = out.attentions[i].numpy()
        reference[f"blocks.{i}.resid_pre"] = out.hidden_states[i].numpy()
    reference[f"blocks.{depth - 1}.resid_post"] = out.hidden_states[depth].numpy()
    for ours, theirs in output.items():
        reference[ours] = getattr(out, theirs).numpy()
    return reference


def _clip_config(act, **changes):
    fields = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=16, projection_dim=24, hidden_act=act, attn_implementation="eager")
    return transformers.CLIPVisionConfig(**{**fields, **changes})


@pytest.mark.usefixtures("float64_softmax")
@pytest.mark.parametrize("perturbed", [False, True], ids=["random", "perturbed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hf_clip_with_projection_matches(tmp_path, act, dtype, perturbed):
    """CLIPVisionModelWithProjection: our logits are HF's image_embeds (the projection is the head)."""
    hf, model = _hf_pair(tmp_path, transformers.CLIPVisionModelWithProjection, _clip_config(act), dtype, perturbed)
    assert model.config.gelu == ("quick" if act == "quick_gelu" else "erf") and model.config.norm_pre
    assert model.config.num_classes == 24 and not model.params["head.bias"].any()
    x = random_batch(model.config, batch=2, dtype=dtype)
    reference = _hf_reference(hf, x, 2, {"logits": "image_embeds"})
    compare_traces(model.forward(x), reference, dtype,
                   _label("HF CLIPVisionModelWithProjection", act, dict(depth=2), perturbed), 2)


@pytest.mark.usefixtures("float64_softmax")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_hf_clip_vision_model_matches(tmp_path, dtype):
    """CLIPVisionModel (no projection): our pooled output is HF's pooler_output, post_layernorm of the class token."""
    hf, model = _hf_pair(tmp_path, transformers.CLIPVisionModel, _clip_config("quick_gelu", num_hidden_layers=3),
                         dtype, True)
    assert model.config.num_classes == 0
    x = random_batch(model.config, batch=2, dtype=dtype)
    reference = _hf_reference(hf, x, 3, {"pooled": "pooler_output"})
    compare_traces(model.forward(x), reference, dtype, _label("HF CLIPVisionModel", "quick_gelu", dict(depth=3), True),
                   3)


def test_hf_clip_non_square_input(tmp_path):
    """interpolate_pos_encoding=True: HF resamples CLIP's table with plain bicubic (a = -0.75), as ours
    ("bicubic_hf"), 64 x 48 px from the 4 x 4 table."""
    hf, model = _hf_pair(tmp_path, transformers.CLIPVisionModelWithProjection, _clip_config("quick_gelu"),
                         np.float32, True)
    x = random_batch(model.config, batch=2, size=(64, 48), seed=1)
    trace = model.forward(x)
    assert trace.grid == (4, 3)
    reference = _hf_reference(hf, x, 2, {"logits": "image_embeds"}, interpolate=True)
    compare_traces(trace, reference, np.float32,
                   _label("HF CLIPVisionModelWithProjection", "quick_gelu", dict(depth=2), True, " @ 64x48"), 2)


def _dinov2_config(registers, **changes):
    config_class = transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config
    fields = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14,
                  layerscale_value=0.5, attn_implementation="eager")
    return config_class(**{**fields, **changes})


@pytest.mark.usefixtures("float64_softmax")
@pytest.mark.parametrize("perturbed", [False, True], ids=["random", "perturbed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("registers", [False, True], ids=["Dinov2Model", "Dinov2WithRegistersModel"])
def test_hf_dinov2_matches(tmp_path, registers, dtype, perturbed):
    """Dinov2Model / Dinov2WithRegistersModel: our pooled output is HF's pooler_output (the final LayerNorm's class
    token) and our final norm its last_hidden_state."""
    model_class = transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model
    hf, model = _hf_pair(tmp_path, model_class, _dinov2_config(registers), dtype, perturbed)
    assert model.config.num_reg_tokens == (4 if registers else 0) and model.config.init_values == 0.5
    x = random_batch(model.config, batch=2, dtype=dtype)
    reference = _hf_reference(hf, x, 2, {"pooled": "pooler_output", "norm": "last_hidden_state"})
    compare_traces(model.forward(x), reference, dtype,
                   _label("HF", model_class.__name__, dict(depth=2), perturbed), 2)


@pytest.mark.parametrize("registers", [False, True], ids=["Dinov2Model", "Dinov2WithRegistersModel"])
def test_hf_dinov2_non_square_input(tmp_path, registers):
    """HF's DINOv2 resamples its table (plain bicubic, in float32) for any input that is not its own square size:
    56 x 42 px, a 4 x 3 grid from the 4 x 4 table."""
    model_class = transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model
    hf, model = _hf_pair(tmp_path, model_class, _dinov2_config(registers), np.float32, True)
    x = random_batch(model.config, batch=2, size=(56, 42), seed=1)
    trace = model.forward(x)
    assert trace.grid == (4, 3)
    reference = _hf_reference(hf, x, 2, {"pooled": "pooler_output"})
    compare_traces(trace, reference, np.float32, _label("HF", model_class.__name__, dict(depth=2), True, " @ 56x42"),
                   2)


# --- timm's names ------------------------------------------------------------------------------------------------

def _family_names():
    """Every pretrained timm name of the CLIP towers and of the average-pooled plain ViTs numpy_vit reads."""
    names = [n for n in timm.list_pretrained() if n.startswith("vit_") and
             ("_clip_" in n or ("_gap_" in n and "siglip" not in n and "_rope_" not in n))]
    refused = ("vit_dwee_", "vit_dlittle_", "vit_pwee_", "vit_dpwee_")   # other attention or blocks: refused by name
    return [n for n in names if not n.startswith(refused)]


def test_every_pretrained_name_gives_timms_preprocessing_and_head():
    """All of timm's pretrained CLIP and gap names (tag included): head width, crop, mean, std and input size as
    in its pretrained_cfg (no model built)."""
    names = _family_names()
    assert len(names) > 100
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        config = nv.ViTConfig.preset(name)
        assert config.num_classes == cfg.num_classes, name
        assert config.crop_pct == pytest.approx(cfg.crop_pct), name
        assert config.img_size == tuple(cfg.input_size[1:]), name
        np.testing.assert_allclose(config.mean, cfg.mean, rtol=0, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(config.std, cfg.std, rtol=0, atol=1e-7, err_msg=name)


def test_every_architecture_is_timms():
    """Each architecture of those names built by timm on the meta device (shapes only, no memory): width, depth,
    heads, MLP width, prefix tokens, position rows, pooling, norms, biases, layer scale, eps and activation."""
    for base in sorted({n.split(".")[0] for n in _family_names()}):
        with torch.device("meta"):
            m = timm.create_model(base, pretrained=False)
        c = nv.ViTConfig.preset(base)
        theirs = (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads, m.patch_embed.patch_size[0],
                  tuple(m.patch_embed.img_size), m.blocks[0].mlp.fc1.out_features, m.num_prefix_tokens,
                  m.pos_embed.shape[1], m.cls_token is not None, m.global_pool,
                  not isinstance(m.fc_norm, torch.nn.Identity), not isinstance(m.norm_pre, torch.nn.Identity),
                  m.patch_embed.proj.bias is not None, m.blocks[0].attn.qkv.bias is not None,
                  not isinstance(m.blocks[0].ls1, torch.nn.Identity), m.blocks[0].norm1.eps,
                  type(m.blocks[0].mlp.act).__name__)
        ours = (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size, c.mlp_dim, c.num_prefix_tokens,
                c.num_pos_embed, c.class_token, c.global_pool, c.use_fc_norm, c.norm_pre,
                "patch_embed.proj.bias" in nv.param_shapes(c), c.qkv_bias, c.init_values is not None,
                c.layer_norm_eps, {"erf": "GELU", "quick": "QuickGELU"}[c.gelu])
        assert ours == theirs, base


# --- gradients: model.backward against torch autograd ---------------------------------------------------------

GRADIENT_MODELS = {  # label: (timm name, overrides), attention made peaky as in test_backward_parity.py
    "CLIP quick GELU, norm_pre": ("vit_base_patch16_clip_quickgelu_224", dict(SMALL, embed_dim=48, depth=2)),
    "gap: no class token, norm before the mean": ("vit_base_patch16_gap_224", dict(SMALL, embed_dim=48, depth=2)),
    "gap: 4 registers, fc_norm, layer scale": ("vit_medium_patch16_reg4_gap_256", dict(SMALL, embed_dim=48, depth=2)),
}


@pytest.mark.parametrize("label", list(GRADIENT_MODELS))
def test_gradients_match_torch_autograd(label):
    """Every parameter's and every traced array's gradient (norm_pre's included), with the limits and the
    method of parity_tests/test_backward_parity.py: float64 within 1e-10 of each array's scale, float32 within
    twice torch's own float32 error (root-mean-square) and 4 times its largest."""
    from test_backward_parity import (_with_params, assert_peaky, check_values, compare, ours, timm_hooks,
                                      timm_pair, torch_gradients)

    name, overrides = GRADIENT_MODELS[label]
    tm32, tm64, ours32, ours64 = timm_pair(name, **overrides)

    def hooks(tm, kept):
        timm_hooks(tm, kept)
        if not isinstance(tm.norm_pre, torch.nn.Identity):
            kept.output(tm.norm_pre, "norm_pre")

    x32 = random_batch(ours32.config, batch=2, seed=3)
    x64 = x32.astype(np.float64)
    trace64, g64 = ours(ours64, x64, [3, 7])
    _, g32 = ours(ours32, x32, [3, 7])
    assert_peaky(label, trace64)
    runs = {}
    for dtype, tm, x in ((np.float32, tm32, x32), (np.float64, tm64, x64)):
        values, grads, params = torch_gradients(tm, x, [3, 7], hooks, ours32.config.num_classes)
        runs[dtype] = _with_params(grads, params)
        if dtype == np.float64:
            check_values(label, trace64, values, dtype)
    compare(f"timm {label}", g32, g64, runs[np.float32], runs[np.float64])
