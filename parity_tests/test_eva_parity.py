"""numpy_vit against timm's EVA-02 (timm/models/eva.py; there is no HF transformers EVA-02): random and perturbed
weights, float32 and float64, every block's attention pattern and residual stream, the rotated q and k of every
block against timm's, and the output; a new grid (timm's dynamic_img_size: the RoPE rebuilt for the grid, the
position embedding resampled). Limits: conftest.py's (float32 attention <= 1e-5, residual <= 1e-4 x scale,
logits <= 1e-4; float64 everything <= 1e-10).

timm's RoPE frequencies in float64: timm computes its rotation frequencies in float32 (``freq_bands``:
``arange(...).to(torch.float32)``) even for a model cast to float64, so its float64 model turns q and k by
angles rounded to float32 (relative error ~6e-8), which would show as 1e-7 differences. The float64 runs give
timm's own table builder (``RotaryEmbeddingCat._build_embed_cat``) the frequencies in float64; its position grid
stays float32, exact for the grids used here (positions i * ref / g with ref / g a power of two).
"""
import numpy as np
import pytest

from conftest import TOL, compare_traces, max_err, random_batch, scale_of, timm_state_to_params

import numpy_vit as nv
from numpy_vit import layers

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
import timm.models.eva as timm_eva  # noqa: E402

PEAK = 4.0  # the standard deviation of the scores that the perturbed q, k weights give (as test_backward_parity)


def _randomise(model, seed=0):
    """Every tensor random at a realistic size (timm zero-initialises the head and the q / v biases): biases
    ~0.1, LayerNorm gains 1 +- 0.1, weights 0.02, class token and position embedding 0.2."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            else:
                p.copy_(0.02 * noise.clamp(-2, 2) * (10 if "token" in name or "pos" in name else 1))
    return model


def _perturb(model, seed=1):
    """Redraw every block's query and key weights so that the scores have a standard deviation of about PEAK
    (std sqrt(PEAK / D): see test_backward_parity._peaky): peaky rows, where a rotation's rounding is amplified
    most by the softmax."""
    g = torch.Generator().manual_seed(seed)
    D = model.embed_dim
    with torch.no_grad():
        for blk in model.blocks:
            a = blk.attn
            for w in ((a.qkv.weight[:D], a.qkv.weight[D:2 * D]) if a.qkv is not None
                      else (a.q_proj.weight, a.k_proj.weight)):
                w.copy_(torch.randn(w.shape, generator=g) * (PEAK / D) ** 0.5)
    return model


def _float64_rope(tm):
    """timm's RoPE in float64 (module docstring): its table builder, fed float64 frequencies."""
    rope = tm.rope
    bands = torch.from_numpy(layers.rope_frequencies(rope.dim))
    rope.bands = bands
    if rope.pos_embed is not None:  # the cached table of a fixed grid
        rope.pos_embed = rope._build_embed_cat(rope.feat_shape, bands, dtype=torch.float64)
    else:  # dynamic_img_size: built per grid, float32 unless asked
        build = rope.get_embed
        rope.get_embed = lambda shape=None, dtype=None: build(shape, dtype=torch.float64)


def eva_pair(name, dtype, perturbed=False, dynamic_img_size=False, **overrides):
    """(timm model, numpy_vit model) holding the same random weights; ``overrides`` go to both."""
    config = nv.ViTConfig.preset(name, **overrides)
    tm = _randomise(timm.create_model(name, pretrained=False, dynamic_img_size=dynamic_img_size, **overrides))
    if perturbed:
        _perturb(tm)
    tm = tm.eval()
    if dtype == np.float64:
        tm = tm.double()
        _float64_rope(tm)
    return tm, nv.ViT(config, timm_state_to_params(tm), dtype=dtype)


class EvaRecorder:
    """timm EVA's block inputs / outputs and attention patterns (forward hooks), and the rotated q and k of every
    block (timm's ``apply_rot_embed_cat`` wrapped: each attention calls it for q, then for k, on the patches)."""

    def __init__(self, model, monkeypatch):
        self.arrays, self.rotated = {}, []
        for i, blk in enumerate(model.blocks):
            blk.register_forward_pre_hook(self._keep(f"blocks.{i}.resid_pre", lambda args, out: args[0]))
            blk.register_forward_hook(self._keep(f"blocks.{i}.resid_post", lambda args, out: out))
            blk.attn.attn_drop.register_forward_hook(self._keep(f"blocks.{i}.attn.pattern", lambda args, out: out))
        rotate = timm_eva.apply_rot_embed_cat

        def kept(x, emb, half=False):
            out = rotate(x, emb, half=half)
            self.rotated.append(out.detach().numpy())
            return out

        monkeypatch.setattr(timm_eva, "apply_rot_embed_cat", kept)

    def _keep(self, name, pick):
        def hook(module, args, out=None):
            self.arrays[name] = pick(args, out).detach().numpy()
        return hook


def run_both(tm, model, x, monkeypatch):
    rec = EvaRecorder(tm, monkeypatch)
    with torch.no_grad():
        feats = tm.forward_features(torch.from_numpy(x))
        out = tm.forward_head(feats, pre_logits=model.config.num_classes == 0)
    trace = model.forward(x)
    reference = dict(rec.arrays)
    reference["logits" if model.config.num_classes else "pooled"] = out.numpy()
    return trace, reference, rec.rotated


def compare_rotated(trace, rotated, dtype, depth, label):
    """Our q_rot / k_rot against timm's rotated patches (the prefix rows: q and k themselves); the limit of a
    residual-stream array, relative to the array's scale. Returns the worst error."""
    assert len(rotated) == 2 * depth, f"{label}: timm rotated {len(rotated)} arrays, expected q and k of {depth} blocks"
    worst = 0.0
    for i in range(depth):
        for which, ref in zip(("q", "k"), rotated[2 * i:2 * i + 2]):
            ours = trace[f"blocks.{i}.attn.{which}_rot"]
            P = ref.shape[2]
            np.testing.assert_array_equal(ours[:, :, :-P], trace[f"blocks.{i}.attn.{which}"][:, :, :-P])
            err = max_err(ours[:, :, -P:], ref) / scale_of(ref)
            assert err <= TOL[dtype]["resid"], f"{label}: blocks.{i}.attn.{which}_rot {err:.3g}"
            worst = max(worst, err)
    return worst


def compare(name, dtype, monkeypatch, perturbed=False, size=None, dynamic_img_size=False, **overrides):
    tm, model = eva_pair(name, dtype, perturbed=perturbed, dynamic_img_size=dynamic_img_size, **overrides)
    x = random_batch(model.config, batch=2, size=size, seed=3, dtype=dtype)
    trace, reference, rotated = run_both(tm, model, x, monkeypatch)
    details = ", ".join([f"{k}={v}" for k, v in overrides.items()] + (["perturbed"] if perturbed else []))
    at = f" @ {size[0]}x{size[1]}" if size else ""
    label = f"timm {name}{at}" + (f" ({details})" if details else "")
    worst = compare_traces(trace, reference, dtype, label, model.config.depth)
    rot = compare_rotated(trace, rotated, dtype, model.config.depth, label)
    print(f"{label} {np.dtype(dtype).name}: q_rot / k_rot {rot:.2e} (abs / scale)")
    return trace, worst


# (name, dtype, overrides): each preset's own layout; the float64 runs are shorter (they check the formulas,
# which two blocks show as well as twelve). The 336 px model runs in float32 only: its positions i * 16 / 24 are
# rounded by timm's float32 grid (module docstring); float64 checks the scaled RoPE on an 8 x 8 grid (112 px).
# The perturbed float32 patterns come within 1e-5 by less than the others (up to 7.5e-6): peaky scores (std 4)
# amplify the products' float32 rounding; plain ViT-B under the same perturbation (test_backward_parity's
# weights) shows 5e-6 at 224 px, and timm's RoPE table rebuilt from float64 angles moves EVA-02 base's by 1%.
CASES = [
    ("eva02_tiny_patch14_224", np.float32, dict(depth=3)),        # fused qkv + q / v biases, packed SwiGLU
    ("eva02_tiny_patch14_224", np.float64, dict(depth=2)),
    ("eva02_base_patch14_224", np.float32, dict(depth=2, img_size=112)),  # q, k, v apart, SwiGLU with the sub-LN
    ("eva02_base_patch14_224", np.float64, dict(depth=2, img_size=112)),
    ("eva02_small_patch14_336.mim_in22k_ft_in1k", np.float32, dict(depth=2)),  # a 24 x 24 grid's RoPE scaled to 16
    ("eva02_small_patch14_224", np.float64, dict(depth=2, img_size=112)),       # an 8 x 8 grid's, scaled to 16
]


@pytest.mark.parametrize("perturbed", [False, True], ids=["random", "perturbed"])
@pytest.mark.parametrize("name,dtype,overrides", CASES,
                         ids=[f"{n}-{np.dtype(d).name}" for n, d, _ in CASES])
def test_eva02_matches_timm(name, dtype, overrides, perturbed, monkeypatch):
    trace, _ = compare(name, dtype, monkeypatch, perturbed=perturbed, **overrides)
    np.testing.assert_allclose(trace["blocks.0.attn.pattern"].sum(-1), 1.0, atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_eva02_at_a_new_grid_matches_timm_dynamic_img_size(dtype, monkeypatch):
    """224 x 112 px on a 224 px model: timm's dynamic_img_size rebuilds the RoPE for the 16 x 8 grid (column
    positions i * 16 / 8) and resamples the position embedding (bicubic, antialias). float64: timm resamples the
    position embedding in float32 (``posemb.float()``), so the float64 run resamples an all-zero embedding
    (exact in any dtype) to check the RoPE at the new grid to 1e-10; float32 runs the random embedding."""
    overrides = dict(depth=2)
    tm, model = eva_pair("eva02_tiny_patch14_224", dtype, dynamic_img_size=True, **overrides)
    if dtype == np.float64:
        with torch.no_grad():
            tm.pos_embed.zero_()
        model = nv.ViT(model.config, timm_state_to_params(tm), dtype=dtype)
    x = random_batch(model.config, batch=2, size=(224, 112), seed=4, dtype=dtype)
    trace, reference, rotated = run_both(tm, model, x, monkeypatch)
    assert trace.grid == (16, 8)
    label = "timm eva02_tiny_patch14_224 @ 224x112 (depth=2" + (", zero pos_embed)" if dtype == np.float64 else ")")
    compare_traces(trace, reference, dtype, label, 2)
    rot = compare_rotated(trace, rotated, dtype, 2, label)
    print(f"{label} {np.dtype(dtype).name}: q_rot / k_rot {rot:.2e} (abs / scale)")


@pytest.mark.parametrize("grid,ref", [((16, 16), (16, 16)), ((24, 24), (16, 16)), ((16, 8), (16, 16)),
                                      ((7, 5), None), ((32, 32), (16, 16))])
def test_rope_tables_match_timms_rotary_embedding(grid, ref):
    """``layers.rope_tables`` against timm's RotaryEmbeddingCat (EVA-02's settings: index grid, temperature
    1e4, interleaved pairs). float32: timm rounds the frequencies and positions to float32 before the product and
    the sine, so angles up to ~24 rad differ by a few float32 ulp of the angle (2e-6 absolute); float64: timm's
    builder with float64 frequencies, at grids whose positions are exact in float32."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat

    head_dim = 32
    rope = RotaryEmbeddingCat(head_dim, in_pixels=False, feat_shape=list(grid), ref_feat_shape=ref)
    sin_ref, cos_ref = rope.get_embed().chunk(2, -1)
    sin, cos = layers.rope_tables(grid, head_dim, ref, np.float32)
    angles = max(grid) if ref is None else max(ref)
    assert max_err(sin, sin_ref.numpy()) <= 8 * angles * 2.0 ** -24 and max_err(cos, cos_ref.numpy()) <= 8 * angles * 2.0 ** -24
    exact = ref is None or all(r / g in (0.5, 1.0, 2.0) for r, g in zip(ref, grid))
    if exact:
        bands = torch.from_numpy(layers.rope_frequencies(head_dim))
        sin64_ref, cos64_ref = rope._build_embed_cat(list(grid), bands, dtype=torch.float64).chunk(2, -1)
        sin64, cos64 = layers.rope_tables(grid, head_dim, ref, np.float64)
        assert max_err(sin64, sin64_ref.numpy()) <= 1e-12 and max_err(cos64, cos64_ref.numpy()) <= 1e-12


def test_eva02_backward_matches_torch_autograd():
    """``model.backward`` of EVA-02 (RoPE, SwiGLU, q / v biases; tiny: fused, base: apart with sub-LN) against
    torch autograd in float64 (56 px: a 4 x 4 grid, RoPE positions i * 16 / 4; width 96, 2 heads): every parameter's gradient and the input's, relative to the gradient's scale
    <= 1e-10 (the two sum the same products in another order)."""
    for name in ("eva02_tiny_patch14_224", "eva02_base_patch14_224"):
        tm, model = eva_pair(name, np.float64, perturbed=True, depth=2, num_classes=7, img_size=56, embed_dim=96,
                             num_heads=2)
        x = random_batch(model.config, batch=2, seed=5, dtype=np.float64)
        xt = torch.from_numpy(x).requires_grad_(True)
        logits = tm(xt)
        cotangent = np.random.default_rng(6).standard_normal(logits.shape)
        (logits * torch.from_numpy(cotangent)).sum().backward()
        grads = model.backward(model.forward(x), cotangent)
        torch_grads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
        assert set(torch_grads) == set(grads.params), set(torch_grads) ^ set(grads.params)
        worst = max((max_err(grads.params[k], g) / scale_of(g), k) for k, g in torch_grads.items())
        assert worst[0] <= 1e-10, (name, worst)
        assert max_err(grads["input"], xt.grad.numpy()) / scale_of(xt.grad.numpy()) <= 1e-10
        print(f"{name} (depth=2, width 96, perturbed) float64 gradients: worst {worst[0]:.2e} ({worst[1]})")


def test_every_timm_eva02_name_maps_to_its_config():
    """Every EVA-02 classifier timm lists (with its pretrained tags): our parameters are named and shaped as
    timm's state dict, and the head, input size and crop are those of its pretrained config."""
    names = [n for n in timm.list_models("eva02_*", pretrained=True) if "clip" not in n]
    assert len(names) >= 16  # timm 1.0: tiny, small at 224 / 336; base, large at 224 / 448; their tags
    for name in names:
        config = nv.ViTConfig.preset(name)
        pretrained = timm.models.get_pretrained_cfg(name)
        assert config.num_classes == pretrained.num_classes, name
        assert config.img_size == tuple(pretrained.input_size[1:]) and config.crop_pct == pretrained.crop_pct, name
        assert np.allclose(config.mean, pretrained.mean) and np.allclose(config.std, pretrained.std), name
    for name in ("eva02_tiny_patch14_336", "eva02_base_patch14_448", "eva02_large_patch14_224"):
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = timm.create_model(name, pretrained=False)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert nv.config.param_shapes(nv.ViTConfig.preset(name)) == expected, name
