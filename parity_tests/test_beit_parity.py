"""BEiT against timm's Beit and HF's BeitForImageClassification: the same weights (timm's initialisation, and
every parameter perturbed), float32 and float64, every block's attention pattern, residual stream and relative
position bias, the logits; at a new patch grid each reference's own way of resizing the bias table; the
gradients against torch autograd.

What each reference supports at another input size:
- timm's Beit is built for one image size (its patch embedding refuses others); a checkpoint is moved to another
  size when it is loaded into a model made for it, through ``checkpoint_filter_fn``, which resizes each table
  with ``resize_rel_pos_bias_table`` (geometric offsets, linear interpolation, in float32). Our config keeps
  the training grid and resizes the table the same way on each run (``rel_pos_resample="geometric"``).
- HF's ``BeitRelativePositionBias`` resizes the table to the input's grid on every call, by bilinear
  interpolation (align_corners=False), whatever ``interpolate_pos_encoding`` says (``rel_pos_resample="bilinear"``,
  which our HF reader sets).

The rows this file prints (``conftest.MEASURED``) are the BEiT rows of the README's "Parity with torch" table.
"""
import numpy as np
import pytest

from conftest import GRADIENTS, Recorder, compare_traces, max_err, random_batch, timm_state_to_params

import numpy_vit as nv
from numpy_vit.resample import resample_rel_pos_table

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from timm.models.beit import checkpoint_filter_fn  # noqa: E402

# BEiT-base's recipe (layer scale 0.1, a table per block, no absolute position embedding) at a small width and a
# 64-pixel input (a 4x4 grid): the comparison is of the math, which does not depend on the size
SMALL = dict(img_size=64, embed_dim=96, depth=4, num_heads=3, num_classes=10)


def _perturb(module, seed):
    """Every parameter random (timm and HF start the tables, q / v biases and head at zero, which would hide a
    wrong index or a bias in the wrong place); layer scale near 1 so every block changes the residual stream."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "relative_position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=g))             # scores' scale: a bias that matters
            elif "gamma" in name or "lambda" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def timm_beit(name="beit_base_patch16_224", perturbed=True, dtype=np.float32, timm_args=(), **overrides):
    """timm's model (non-fused attention, so the pattern can be hooked) and our config for it; ``timm_args``:
    keywords for timm's constructor, ``overrides`` the same choices in our config's fields."""
    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False, **{**SMALL, **dict(timm_args)}).eval()
    if perturbed:
        _perturb(tm, seed=1)
    config = nv.ViTConfig.preset(name, **{**SMALL, **overrides})
    if dtype == np.float64:
        tm = tm.double()
    return tm, config


def _timm_reference(tm, x):
    recorder = Recorder(tm)
    with torch.no_grad():
        logits = tm(torch.from_numpy(x)).numpy()
    ref = dict(recorder.arrays, logits=logits)
    for i, blk in enumerate(tm.blocks):  # the bias timm adds to block i's scores (its own table's)
        if blk.attn.relative_position_bias_table is None:
            continue
        with torch.no_grad():
            ref[f"blocks.{i}.attn.bias"] = blk.attn._get_rel_pos_bias()[0].numpy()
    return ref


def _label(source, perturbed, extra=""):
    return f"{source} ({'perturbed' if perturbed else 'timm init'}{', ' + extra if extra else ''})"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, perturbed", [("beit_base_patch16_224", False), ("beit_base_patch16_224", True),
                                             ("beitv2_base_patch16_224", False)])
def test_timm_beit_matches(name, perturbed, dtype):
    tm, config = timm_beit(name, perturbed, dtype)
    params = timm_state_to_params(tm)
    model = nv.ViT(config, params, dtype=dtype)
    assert set(model.params) == set(params)  # our names are timm's (its index buffers are not in the state dict)
    x = random_batch(config, batch=2, dtype=dtype)
    compare_traces(model.forward(x), _timm_reference(tm, x), dtype,
                   _label(f"timm {name}", perturbed, "depth=4, width 96"), config.depth)


def test_timm_shared_table_and_absolute_embedding():
    """The variant with one table for every block (use_shared_rel_pos_bias, as BEiT's pre-training) and an
    absolute position embedding (use_abs_pos_emb): both through the timm reader of a saved state dict."""
    tm, config = timm_beit(timm_args=dict(use_shared_rel_pos_bias=True, use_rel_pos_bias=False, use_abs_pos_emb=True),
                           rel_pos_bias="shared", abs_pos_embed=True)
    model = nv.ViT(config, timm_state_to_params(tm))
    x = random_batch(config, batch=2)
    ref = _timm_reference(tm, x)
    with torch.no_grad():
        shared = tm.rel_pos_bias().numpy()
    ref.update({f"blocks.{i}.attn.bias": shared for i in range(config.depth)})
    compare_traces(model.forward(x), ref, np.float32, _label("timm beit (shared table, abs. pos.)", True),
                   config.depth)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_timm_beit_at_a_new_grid(dtype):
    """Trained at 64x64 (4x4), run at 64x96 (4x6): timm's model made for 64x96, the 64x64 weights loaded through
    its ``checkpoint_filter_fn``. timm resizes the table in float32 whatever the model's dtype (``.float()``
    in ``resize_rel_pos_bias_table``), so our resized table is compared with its to float32's rounding of the
    interpolation weights (1e-6 of the table's scale); the float64 forward pass is then compared, to 1e-10,
    with the table timm made, given to both."""
    tm, config = timm_beit(dtype=dtype)
    state = tm.state_dict()
    torch.manual_seed(0)
    wide = timm.create_model("beit_base_patch16_224", pretrained=False, **{**SMALL, "img_size": (64, 96)}).eval()
    wide.load_state_dict(checkpoint_filter_fn({k: v.float() for k, v in state.items()}, wide))
    if dtype == np.float64:
        wide = wide.double()
    model = nv.ViT(config, timm_state_to_params(tm), dtype=dtype)
    for i in range(config.depth):
        ours = resample_rel_pos_table(model.params[f"blocks.{i}.attn.relative_position_bias_table"], (4, 4), (4, 6),
                                      "geometric")
        theirs = wide.blocks[i].attn.relative_position_bias_table.detach().numpy()
        assert ours.shape == theirs.shape == (7 * 11 + 3, 3)
        assert max_err(ours, theirs) <= 1e-6 * np.abs(theirs).max(), i
    if dtype == np.float64:  # the same table in both, so that the comparison is of the forward pass alone
        params = dict(model.params)
        for i in range(config.depth):
            params[f"blocks.{i}.attn.relative_position_bias_table"] = timm_state_to_params(wide)[
                f"blocks.{i}.attn.relative_position_bias_table"]
        model = nv.ViT(config.replace(img_size=(64, 96)), params, dtype=dtype)
    x = random_batch(config, batch=2, size=(64, 96), seed=2, dtype=dtype)
    trace = model.forward(x)
    assert trace.grid == (4, 6)
    compare_traces(trace, _timm_reference(wide, x), dtype,
                   _label("timm beit_base_patch16_224 @ 64x96", True, "trained at 64x64"), config.depth)


def test_every_timm_beit_name_maps_to_its_config():
    """Each pretrained BEiT / BEiT v2 name timm lists: our config has its model's width, depth, heads, layer
    scale, head and its pretrained_cfg's input size, mean, std and crop (the models built on the meta device:
    no weights). BEiT-3 (timm beit3.py) is another architecture, refused by name."""
    names = [n for n in timm.list_pretrained("beit*") if not n.startswith("beit3")]
    assert len(names) >= 13
    for name in names:
        with torch.device("meta"):
            tm = timm.create_model(name, pretrained=False)
        config, cfg = nv.ViTConfig.preset(name), tm.pretrained_cfg
        ours = (config.embed_dim, config.depth, config.num_heads, config.init_values, config.num_classes,
                config.img_size, config.mean, config.std, config.crop_pct, config.global_pool)
        theirs = (tm.embed_dim, len(tm.blocks), tm.blocks[0].attn.num_heads, tm.blocks[0].init_values,
                  tm.num_classes, tuple(cfg["input_size"][1:]), tuple(cfg["mean"]), tuple(cfg["std"]),
                  cfg["crop_pct"], tm.global_pool)
        assert ours == theirs, name
        assert tm.pos_embed is None and tm.blocks[0].attn.relative_position_bias_table is not None
    with pytest.raises(nv.errors.ConfigError, match="BEiT-3"):
        nv.ViTConfig.preset("beit3_base_patch16_224.in22k_ft_in1k")


# --- HF transformers -----------------------------------------------------------------------------------------

def _hf_beit(tmp_path, perturbed, dtype):
    config = transformers.BeitConfig(
        image_size=64, patch_size=16, hidden_size=96, num_hidden_layers=4, num_attention_heads=3,
        intermediate_size=384, use_relative_position_bias=True, use_absolute_position_embeddings=False,
        use_mean_pooling=True, layer_scale_init_value=0.1, num_labels=10, attn_implementation="eager",
        id2label={i: f"label_{i}" for i in range(10)}, label2id={f"label_{i}": i for i in range(10)})
    torch.manual_seed(0)
    hf = transformers.BeitForImageClassification(config).eval()
    if perturbed:
        _perturb(hf, seed=1)
    hf.save_pretrained(tmp_path)  # model.safetensors + config.json, as on the hub
    return hf.double() if dtype == np.float64 else hf


def _hf_reference(hf, x):
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(x), output_attentions=True, output_hidden_states=True,
                 interpolate_pos_encoding=True)
    ref = {"logits": out.logits.numpy()}
    window = (x.shape[2] // 16, x.shape[3] // 16)
    for i, a in enumerate(out.attentions):
        ref[f"blocks.{i}.attn.pattern"] = a.numpy()
        ref[f"blocks.{i}.resid_pre"] = out.hidden_states[i].numpy()
        ref[f"blocks.{i}.resid_post"] = out.hidden_states[i + 1].numpy()
        with torch.no_grad():
            ref[f"blocks.{i}.attn.bias"] = hf.beit.layers[i].relative_position_bias(
                window, interpolate_pos_encoding=True, dim_size=a.shape[-1])[0].numpy()
    return ref


@pytest.fixture
def float64_softmax(monkeypatch):
    """HF's eager attention takes its softmax in float32 whatever the model's dtype (``softmax(..., dtype=
    torch.float32)``), which limits a float64 comparison to ~1e-9: keep it in the input's dtype for the run."""
    softmax = torch.nn.functional.softmax

    def softmax_in_input_dtype(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", softmax_in_input_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("perturbed", [False, True], ids=["hf-init", "perturbed"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)], ids=["64x64", "64x96"])
def test_hf_beit_matches(tmp_path, perturbed, dtype, size, float64_softmax):
    hf = _hf_beit(tmp_path, perturbed, dtype)
    model = nv.ViT.from_pretrained(str(tmp_path), dtype=dtype)  # through our HF reader
    assert model.config.rel_pos_resample == "bilinear" and model.config.layer_norm_eps == 1e-12
    x = random_batch(model.config, batch=2, size=size, seed=3, dtype=dtype)
    at = "" if size == (64, 64) else f" @ {size[0]}x{size[1]}"
    compare_traces(model.forward(x), _hf_reference(hf, x), dtype,
                   f"HF BeitForImageClassification{at} ({'perturbed' if perturbed else 'HF init'}, depth=4)",
                   model.config.depth)


# --- gradients against torch autograd --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(64, 64), (64, 96)], ids=["64x64", "64x96"])
def test_gradients_match_torch_autograd(size):
    """float64, perturbed weights: d (logit 3 of each image, summed) / d every parameter, by model.backward and
    by autograd through timm's model. At 64x96 the reference is a timm model for that size whose tables are our
    resized ones as leaves of the graph, each a linear function of the 64x64 table (resize_rel_pos_bias_table has
    no autograd path: it works on detached float32 copies), so autograd there is taken through our resampling's
    weights applied in torch. Limit 1e-10 of each gradient's scale: float64 throughout, as the forward pass."""
    from numpy_vit.resample import table_axis_weights
    tm, config = timm_beit(dtype=np.float64)
    model = nv.ViT(config, timm_state_to_params(tm), dtype=np.float64)
    x = random_batch(config, batch=2, size=size, seed=4, dtype=np.float64)
    grads = model.backward(model.forward(x), 3)
    reference = {}
    if size == (64, 64):
        logits = tm(torch.from_numpy(x))
        logits[:, 3].sum().backward()
        reference = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    else:
        torch.manual_seed(0)
        wide = timm.create_model("beit_base_patch16_224", pretrained=False, **{**SMALL, "img_size": size}).double()
        wide.eval()
        Wr = torch.from_numpy(table_axis_weights(7, 7, "geometric"))     # rows: 4 -> 4 patches (7 offsets)
        Wc = torch.from_numpy(table_axis_weights(7, 11, "geometric"))    # columns: 4 -> 6 patches
        state = {k: v for k, v in tm.state_dict().items() if "relative_position" not in k}
        wide.load_state_dict(state, strict=False)
        tables = {i: tm.blocks[i].attn.relative_position_bias_table.detach().clone().requires_grad_(True)
                  for i in range(config.depth)}
        for i, blk in enumerate(wide.blocks):
            offsets = tables[i][:-3].reshape(7, 7, -1)
            resized = torch.einsum("ig,gwh->iwh", Wr, offsets)
            resized = torch.einsum("jw,iwh->ijh", Wc, resized).reshape(-1, offsets.shape[-1])
            del blk.attn.relative_position_bias_table
            blk.attn.relative_position_bias_table = torch.cat([resized, tables[i][-3:]])
        logits = wide(torch.from_numpy(x))
        logits[:, 3].sum().backward()
        reference = {k: p.grad.numpy() for k, p in wide.named_parameters() if p.grad is not None}
        reference.update({f"blocks.{i}.attn.relative_position_bias_table": t.grad.numpy() for i, t in tables.items()})
    assert set(reference) == set(model.params)
    errors = {name: max_err(grads.params[name], ref) / max(1.0, float(np.abs(ref).max()))
              for name, ref in reference.items()}
    worst = max(errors, key=errors.get)
    GRADIENTS.append((f"timm beit_base_patch16_224 parameters @ {size[0]}x{size[1]} (perturbed, depth=4)", "float64",
                      (errors[worst], worst), None))
    assert errors[worst] <= 1e-10, (worst, errors[worst])
