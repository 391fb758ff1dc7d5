"""SigLIP's image towers in numpy_vit against timm (``vit_*_siglip_*``, AttentionPoolLatent) and HF transformers
(``SiglipVisionModel``, read through weights/read_siglip.py): every block's attention pattern and residual stream,
the final norm, the pool's latent-query attention ``attn_pool.pattern`` [B, H, 1, P] and the pooled output (or
the logits of a classifier), float32 and float64, random weights and perturbed ones (every attention, the
pool's included, made peaky), at the training grid and at a non-square one (timm ``dynamic_img_size``, HF
``interpolate_pos_encoding``). Then the gradients of the attention pool against torch autograd.

Limits: conftest.TOL (the README's parity table); gradients: test_backward_parity's (float64 <= 1e-10 of the
array's scale; float32 against torch's own float32 error).

How the references' pool attention is read: timm computes it inline (``attn.softmax(dim=-1)`` inside
AttentionPoolLatent.forward, no module to hook), so ``torch.Tensor.softmax`` is wrapped while the pool runs and
its output kept: timm's own tensor. HF's head calls ``torch.nn.MultiheadAttention`` with its heads' weights
averaged; a hook keeps the head's (query, key, value) and the same module is called again on them with
``average_attn_weights=False``, which returns each head's probabilities from the same code path.
"""
import copy

import numpy as np
import pytest

from conftest import compare_traces, random_batch, timm_state_to_params, Recorder
from test_backward_parity import _randomise, compare

import numpy_vit as nv

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


# --- weights -------------------------------------------------------------------------------------------------

# the standard deviation of the perturbed attention scores: the blocks' as test_backward_parity's (4); the pool's
# 12, since its one latent row per head (6 rows in a batch of 2 with 3 heads) spreads over every patch (16 to 64
# here), and the largest of more draws sits closer to the next: at 8 (scores of std 7 across the 49 keys of a
# 112 px image in 16 px patches) the median row's largest probability is 0.48, under the 1/2 _assert_peaky asks;
# at 12 it is 0.61 to 0.92 over the cases below
PEAK = 4.0
PEAK_POOL = 12.0


def _peaky_pool(latent, query, key, width, seed=3):
    """The pool's scores q.k / sqrt(Dh) of standard deviation about PEAK_POOL: a latent of unit entries, query and
    key weights of std s = sqrt(PEAK_POOL / D) (q = S W_q has entries of std s sqrt(D), k likewise from the normed tokens,
    and the scaled score std D s^2), as test_backward_parity._peaky does for the blocks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latent.copy_(torch.randn(latent.shape, generator=g, dtype=latent.dtype))
        for w in (query, key):
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * (PEAK_POOL / width) ** 0.5)


def _peaky_blocks(qkv_weights, width, seed=10):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in qkv_weights:  # [3D, D], rows q | k | v
            w[:2 * width].copy_(torch.randn((2 * width, width), generator=g, dtype=w.dtype) * (PEAK / width) ** 0.5)


def timm_siglip(name, dtype, perturbed=False, dynamic_img_size=False, **overrides):
    """(timm model, numpy_vit model) with the same random weights (perturbed: every attention peaky)."""
    config = nv.ViTConfig.preset(name, **overrides)
    tm = _randomise(timm.create_model(name, pretrained=False, dynamic_img_size=dynamic_img_size, **overrides))
    D = config.embed_dim
    if perturbed:
        _peaky_blocks([blk.attn.qkv.weight for blk in tm.blocks], D)
        if config.global_pool == "map":
            _peaky_pool(tm.attn_pool.latent, tm.attn_pool.q.weight, tm.attn_pool.kv.weight[:D], D)
    tm = tm.eval()
    params = timm_state_to_params(tm)
    if dtype == np.float64:
        tm = tm.double()
    return tm, nv.ViT(config, params, dtype=dtype)


def _assert_peaky(label, trace):
    """The perturbation did what it says: the median row's largest probability >= 0.5 in every attention."""
    names = [k for k in trace if k.endswith("attn.pattern") or k == "attn_pool.pattern"]
    for name in names:
        top = float(np.median(trace[name].max(axis=-1)))
        assert top >= 0.5, f"{label}: {name} is not peaky (median row maximum {top:.2f})"


# --- timm ----------------------------------------------------------------------------------------------------

def run_timm(tm, model, x):
    """(our trace, timm's arrays under trace names): blocks, norm, attn_pool.pattern and the output."""
    rec = Recorder(tm)
    kept = {}
    softmax = torch.Tensor.softmax
    in_pool = []

    def pool_softmax(scores, *args, **kwargs):
        out = softmax(scores, *args, **kwargs)
        if in_pool:
            kept["attn_pool.pattern"] = out.detach().numpy()
        return out

    if tm.attn_pool is not None:
        rec.handles.append(tm.attn_pool.register_forward_pre_hook(lambda module, args: in_pool.append(True)))
        rec.handles.append(tm.attn_pool.register_forward_hook(lambda module, args, out: in_pool.clear()))
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "softmax", pool_softmax)
        feats = tm.forward_features(torch.from_numpy(x))
        out = tm.forward_head(feats, pre_logits=model.config.num_classes == 0)
    for handle in rec.handles:
        handle.remove()
    reference = {**rec.arrays, **kept}
    reference["logits" if model.config.num_classes else "pooled"] = out.numpy()
    if tm.attn_pool is not None:
        assert "attn_pool.pattern" in reference, "the pool's softmax was not seen"
    return model.forward(x), reference


# (timm name, overrides): 2 blocks of width 192 (3 heads of 64) on a 112 px image, each keeping its family's own
# features (GELU variant, pooling, MLP ratio, patch); every block runs the same code, so more blocks or width add
# only the accumulation of rounding. test_timm_siglip_full_width runs ViT-B's width (768, 12 heads) on 196 patches.
SMALL = dict(depth=2, embed_dim=192, num_heads=3, img_size=112)
TIMM_CASES = [
    ("vit_base_patch16_siglip_224", SMALL),                                # erf GELU, attention pool
    ("vit_base_patch32_siglip_256", dict(SMALL, img_size=128)),            # tanh GELU (timm's gelu_tanh)
    ("vit_so400m_patch14_siglip_224", SMALL),                              # M = 3.7362 D, 14 px patches
    ("vit_base_patch16_siglip_gap_224", SMALL),                            # mean over the patches, no pool
    ("vit_so400m_patch14_siglip_378.webli_ft_in1k", dict(SMALL, num_classes=10)),  # a classifier after the pool
]


def _label(source, name, overrides, perturbed, size=None):
    """The parity table's row name: the model, what the test changed of it, and "peaky" for perturbed weights."""
    words = {"depth": "{} blocks", "embed_dim": "D {}", "img_size": "{} px", "num_classes": "{} classes"}
    shown = ", ".join(words[k].format(v) for k, v in overrides.items() if k in words)
    return (f"{source} {name}" + (f" @ {size[0]}x{size[1]}" if size else "") + (f" ({shown})" if shown else "")
            + (", peaky" if perturbed else ""))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("perturbed", [False, True], ids=["random", "perturbed"])
@pytest.mark.parametrize("name, overrides", TIMM_CASES, ids=[c[0].replace("vit_", "") for c in TIMM_CASES])
def test_timm_siglip_matches(name, overrides, perturbed, dtype):
    tm, model = timm_siglip(name, dtype, perturbed=perturbed, **overrides)
    x = random_batch(model.config, batch=2, dtype=dtype)
    trace, reference = run_timm(tm, model, x)
    if perturbed:
        _assert_peaky(name, trace)
    compare_traces(trace, reference, dtype, _label("timm", name, overrides, perturbed), model.config.depth)


def test_timm_siglip_full_width():
    """ViT-B's width (768, 12 heads of 64) on its 196 patches, random weights, 2 blocks, float32: the rounding of
    longer sums (float64 shows that the formulas are timm's, which the narrow cases do as well)."""
    name, overrides = "vit_base_patch16_siglip_224", dict(depth=2)
    tm, model = timm_siglip(name, np.float32, **overrides)
    x = random_batch(model.config, batch=2)
    trace, reference = run_timm(tm, model, x)
    compare_traces(trace, reference, np.float32, _label("timm", name, overrides, False), model.config.depth)


@pytest.mark.parametrize("perturbed", [False, True], ids=["random", "perturbed"])
def test_timm_siglip_new_grid(perturbed):
    """timm's dynamic_img_size (resample_abs_pos_embed: bicubic with antialias, no prefix rows) at 224x160."""
    name, overrides = "vit_base_patch16_siglip_224", dict(SMALL, img_size=224)
    tm, model = timm_siglip(name, np.float32, perturbed=perturbed, dynamic_img_size=True, **overrides)
    x = random_batch(model.config, batch=2, size=(160, 96), seed=2)
    trace, reference = run_timm(tm, model, x)
    assert trace.grid == (10, 6) and trace["attn_pool.pattern"].shape == (2, 3, 1, 60)
    compare_traces(trace, reference, np.float32, _label("timm", name, overrides, perturbed, (160, 96)),
                   model.config.depth)


# --- HF transformers -------------------------------------------------------------------------------------------

def hf_siglip(folder, dtype, perturbed=False, act="gelu_pytorch_tanh", whole=False):
    """A random HF SigLIP image tower saved to ``folder`` (``whole``: inside a SiglipModel with a text tower, as
    google/siglip-base-patch16-224 is stored), loaded back by numpy_vit; (HF vision model, numpy_vit model)."""
    vision = transformers.SiglipVisionConfig(hidden_size=192, intermediate_size=720, num_hidden_layers=3,
                                             num_attention_heads=3, image_size=112, patch_size=16, hidden_act=act,
                                             attn_implementation="eager")  # the probabilities are not kept by SDPA
    torch.manual_seed(0)
    if whole:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        full = transformers.SiglipModel(transformers.SiglipConfig(vision_config=vision.to_dict(), text_config=text,
                                                                  attn_implementation="eager"))
        hf = full.vision_model  # a SiglipVisionModel
    else:
        full = hf = transformers.SiglipVisionModel(vision)
    g = torch.Generator().manual_seed(1)
    D = vision.hidden_size
    with torch.no_grad():  # biases, LayerNorms, the probe and the position embedding random too
        for pname, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if pname.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "norm" in pname:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise * (10 if "position" in pname or "probe" in pname else 1))
        if perturbed:
            for layer in hf.encoder.layers:
                a = layer.self_attn
                for w in (a.q_proj.weight, a.k_proj.weight):
                    w.copy_(torch.randn(w.shape, generator=g) * (PEAK / D) ** 0.5)
            in_proj = hf.head.attention.in_proj_weight
            _peaky_pool(hf.head.probe, in_proj[:D], in_proj[D:2 * D], D)
    full.eval().save_pretrained(folder)  # model.safetensors + config.json, as on the hub
    if dtype == np.float64:
        hf = hf.double()
    return hf, nv.ViT.from_pretrained(str(folder), dtype=dtype)


def run_hf(hf, x, interpolate=False):
    """HF's arrays under trace names: hidden states, attentions, post_layernorm, the head's per-head attention
    and pooler_output."""
    kept = {}

    def keep_head_inputs(module, args, kwargs):
        kept["qkv"] = (args + tuple(kwargs.values()))[:3]

    handle = hf.head.attention.register_forward_pre_hook(keep_head_inputs, with_kwargs=True)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(x), output_attentions=True, output_hidden_states=True,
                 interpolate_pos_encoding=interpolate)
        _, per_head = hf.head.attention(*kept["qkv"], need_weights=True, average_attn_weights=False)
    handle.remove()
    ref = {"norm": out.last_hidden_state.numpy(), "pooled": out.pooler_output.numpy(),
           "attn_pool.pattern": per_head.numpy()}
    for i, a in enumerate(out.attentions):
        ref[f"blocks.{i}.attn.pattern"] = a.numpy()
        ref[f"blocks.{i}.resid_pre"] = out.hidden_states[i].numpy()
        ref[f"blocks.{i}.resid_post"] = out.hidden_states[i + 1].numpy()
    return ref


@pytest.fixture
def float64_softmax(monkeypatch):
    """HF's eager attention computes its softmax in float32 whatever the model's dtype
    (modeling_siglip.eager_attention_forward: softmax(..., dtype=torch.float32)), which limits a float64
    comparison to ~1e-9: the softmax is kept in the input's dtype when that is float64."""
    softmax = torch.nn.functional.softmax

    def softmax_in_input_dtype(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", softmax_in_input_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("perturbed", [False, True], ids=["random", "perturbed"])
def test_hf_siglip_matches(tmp_path, dtype, perturbed, float64_softmax):
    hf, model = hf_siglip(tmp_path, dtype, perturbed=perturbed)
    c = model.config
    assert (c.global_pool, c.class_token, c.gelu, c.layer_norm_eps, c.num_classes) == ("map", False, "tanh", 1e-6, 0)
    x = random_batch(c, batch=2, dtype=dtype)
    trace = model.forward(x)
    if perturbed:
        _assert_peaky("HF SiglipVisionModel", trace)
    compare_traces(trace, run_hf(hf, x), dtype, "HF SiglipVisionModel (3 blocks, D 192, 112 px)" + (", peaky" if perturbed else ""), c.depth)


def test_hf_siglip_model_with_text_tower_and_new_grid(tmp_path):
    """A whole SiglipModel folder (the text tower left out), exact GELU, at 160x96 with HF's
    interpolate_pos_encoding (bicubic, a = -0.75, no antialias) from the 7 x 7 grid."""
    hf, model = hf_siglip(tmp_path, np.float32, act="gelu", whole=True)
    assert model.config.gelu == "erf" and model.config.pos_embed_resample == "bicubic_hf"
    x = random_batch(model.config, batch=2, size=(160, 96), seed=2)
    trace = model.forward(x)
    assert trace.grid == (10, 6)
    compare_traces(trace, run_hf(hf, x, interpolate=True), np.float32, "HF SiglipModel's image tower @ 160x96 (3 blocks, D 192)",
                   model.config.depth)


# --- gradients -------------------------------------------------------------------------------------------------

def _torch_pool_gradients(tm, x, cotangent):
    """torch autograd through timm's model: every parameter's gradient, and those of the pool's pattern, the
    final norm's output and the input image."""
    tm.zero_grad(set_to_none=True)
    image = torch.from_numpy(x).requires_grad_(True)
    kept = {}
    softmax = torch.Tensor.softmax
    in_pool = []

    def pool_softmax(scores, *args, **kwargs):
        out = softmax(scores, *args, **kwargs)
        if in_pool:
            out.retain_grad()
            kept["attn_pool.pattern"] = out
        return out

    def keep_norm(module, args, out):
        out.retain_grad()
        kept["norm"] = out

    handles = [tm.attn_pool.register_forward_pre_hook(lambda module, args: in_pool.append(True)),
               tm.attn_pool.register_forward_hook(lambda module, args, out: in_pool.clear()),
               tm.norm.register_forward_hook(keep_norm)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "softmax", pool_softmax)
        output = tm(image)
    for handle in handles:
        handle.remove()
    (output * torch.from_numpy(cotangent).to(output.dtype)).sum().backward()
    grads = {name: t.grad.numpy() for name, t in kept.items()}
    grads["input"] = image.grad.numpy()
    grads.update({f"param:{name}": p.grad.numpy() for name, p in tm.named_parameters()})
    return grads


def test_attention_pool_gradients_match_torch():
    """model.backward of a SigLIP tower (peaky attention everywhere) against torch autograd through timm, for a
    cotangent of the pooled features: every parameter (the pool's latent, q, kv, proj, norm and MLP, the blocks,
    the embeddings), the pool's pattern, the final norm's output and the image."""
    name, overrides = "vit_base_patch16_siglip_224", dict(depth=2, embed_dim=192, num_heads=3, img_size=64)
    tm32, model32 = timm_siglip(name, np.float32, perturbed=True, **overrides)
    tm64 = copy.deepcopy(tm32).double()
    model64 = model32.astype(np.float64)
    x64 = random_batch(model32.config, batch=2, dtype=np.float64, seed=4)
    cotangent = np.random.default_rng(5).standard_normal((2, 192))
    ours = {}
    for model, dtype in ((model32, np.float32), (model64, np.float64)):
        trace = model.forward(x64.astype(dtype))
        _assert_peaky(name, trace)
        grads = model.backward(trace, cotangent.astype(dtype))
        ours[dtype] = {**{k: np.asarray(grads[k]) for k in ("attn_pool.pattern", "norm", "input")},
                       **{f"param:{k}": v for k, v in grads.params.items()}}
    torch32 = _torch_pool_gradients(tm32, x64.astype(np.float32), cotangent)
    torch64 = _torch_pool_gradients(tm64, x64, cotangent)
    compare(f"timm {name}: attention pool, peaky (2 blocks, D 192, 64 px)", ours[np.float32], ours[np.float64], torch32, torch64)


# --- timm's names and files ------------------------------------------------------------------------------------

def test_every_timm_siglip_name_gives_timms_model():
    """Every SigLIP tower timm registers (34 architectures, each pretrained tag): our parameter names and shapes
    are its state dict's, in its order (built on the meta device: shapes without memory), its GELU is ours, and
    each tag's preprocessing and head are its pretrained config's. The two 384 px towers in 14 px patches are refused with
    a pointer to their 378 px twin (timm crops 6 pixels there that numpy_vit would not)."""
    names = [n for n in timm.list_models("vit_*siglip*") if "naflex" not in n]
    assert len(names) >= 30
    refused = []
    for name in names:
        try:
            config = nv.ViTConfig.preset(name)
        except nv.ConfigError as e:
            assert "whole number of 14 px patches" in str(e), name
            refused.append(name)
            continue
        with torch.device("meta"):
            reference = timm.create_model(name, pretrained=False)
        shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        assert list(shapes.items()) == list(nv.param_shapes(config).items()), name
        act = reference.blocks[0].mlp.act  # timm's GELUTanh, or torch's GELU (approximate "none")
        tanh = isinstance(act, timm.layers.activations.GELUTanh) or getattr(act, "approximate", "") == "tanh"
        assert isinstance(act, (torch.nn.GELU, timm.layers.activations.GELUTanh)), (name, act)
        assert (config.gelu == "tanh") == tanh, name
        for tagged in [name] + timm.list_pretrained(name + ".*"):  # a tag changes the head and preprocessing only
            config = nv.ViTConfig.preset(tagged)
            cfg = timm.models.get_pretrained_cfg(tagged).to_dict()  # the untagged name: timm's default tag
            assert (config.img_size, config.num_classes, config.mean, config.std, config.crop_pct) == \
                (tuple(cfg["input_size"][1:]), cfg["num_classes"], tuple(cfg["mean"]), tuple(cfg["std"]),
                 cfg["crop_pct"]), tagged
    assert sorted(refused) == ["vit_so400m_patch14_siglip_384", "vit_so400m_patch14_siglip_gap_384"]


def test_timm_pth_of_a_siglip_tower(tmp_path):
    """A timm .pth (torch.save of the state dict, in a {"state_dict": ...} wrapper) of a narrow tower."""
    overrides = dict(SMALL, depth=1)
    tm, _ = timm_siglip("vit_base_patch16_siglip_224", np.float32, **overrides)
    torch.save({"state_dict": tm.state_dict()}, tmp_path / "siglip.pth")
    model = nv.ViT.from_pretrained(str(tmp_path / "siglip.pth"),
                                   arch=nv.ViTConfig.preset("vit_base_patch16_siglip_224", **overrides))
    x = random_batch(model.config, batch=1)
    trace, reference = run_timm(tm, model, x)
    assert np.abs(trace["pooled"] - reference["pooled"]).max() <= 1e-4  # conftest.TOL's float32 pooled limit
