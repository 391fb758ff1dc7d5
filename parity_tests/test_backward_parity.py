"""numpy_vit's backward pass against torch autograd: the same weights in timm (and HF transformers) and in
numpy_vit, the gradient of the same target for every parameter and for every array the trace names.

How torch's gradients of the intermediates are read: forward hooks on the modules keep each named tensor and
call ``retain_grad()`` on it, so autograd fills its ``.grad`` during the one backward pass through the library's
own code. Names no module returns are reached without re-implementing any of the model:
- ``attn.scores``: the input of the attention's softmax. ``torch.Tensor.softmax`` (timm) or
  ``torch.nn.functional.softmax`` (HF) is wrapped for the forward pass to keep its input; the softmax is still
  torch's own.
- ``patches``: the patch embedding's convolution gets the image through ``fold(unfold(image))``, the identity
  for non-overlapping patches (every value copied once, so the forward values are unchanged), and the
  unfolded tensor [B, P, 3*p*p] is kept: autograd differentiates it through timm's convolution.
- ``blocks.{i}.attn.q`` / ``k`` / ``v``: the qkv Linear's output split as timm splits it; ``attn.z``: the output
  projection's input with the heads taken apart again; ``resid_mid``: the input of ``norm2``.
- ``pos_embed`` of a resampled model: the output of timm's ``resample_abs_pos_embed``, wrapped to keep it.
Every name of the trace is compared, and the hooks' forward values are compared with the trace's too (so a
hook on the wrong tensor fails there, before its gradient is compared).

Tolerances, per array, relative to its scale (the largest absolute value of torch's float64 gradient):
- float64: <= 1e-10, as the forward parity tests: the same formulas in another order of summation differ by
  ~1e-16 per operation, and a few hundred operations deep this stays below 1e-12.
- float32: the error of ours against torch's float64 gradient is compared with torch's own float32 error on
  the same array (torch float32 against torch float64, same weights and input): its root-mean-square at most
  twice torch's, its largest element at most MAX_FACTOR_F32 times torch's (floors and reasons beside the
  constants below). torch's own error measures how much float32 rounding this array's gradient picks up
  (peaky softmax rows and LayerNorms of small variance amplify it); a formula of ours that loses precision
  torch keeps shows as a ratio above 2.
"""
import copy

import numpy as np
import pytest

from conftest import GRADIENTS, max_err, random_batch, timm_state_to_params

import numpy_vit as nv

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
import torch.nn.functional as F  # noqa: E402
import timm.models.vision_transformer as timm_vit  # noqa: E402

F64_LIMIT = 1e-10
# float32, per array, two measures of the error of ours against torch's float64 gradient, each against the
# same measure of torch's own float32 error:
# - the root-mean-square error over the array <= twice torch's: the array's precision as a whole. Floor: half
#   a machine epsilon (2**-24 = 6e-8) of the scale. Rounding the exact values to float32 alone gives up to
#   0.29 epsilon (a uniform error over half an ulp, ulp <= epsilon x scale), so below the floor torch's own
#   error says nothing about the formula (its gradient of the logits is the target itself, exact). One
#   epsilon would be too loose: a bias gradient summed row after row in float32 (1.0e-7 of its scale, torch
#   4.4e-8 with a more accurate summation) passed under it.
# - the largest error <= MAX_FACTOR_F32 times torch's: a mistake confined to a few elements leaves the
#   root-mean-square unchanged but not the largest. The largest of an array's errors is one sample, so the
#   ratio of two equally accurate computations' largest errors spreads widely: over 1508 arrays (6 models x 5
#   inputs) ours / torch's was 0.8 at the median, 1.85 at the 99th percentile and 3.3 at most (a register
#   token's gradient, a slice of a 60x larger array whose error it inherits), while the root-mean-square
#   ratio's median was 0.84. Floor: 4 epsilons of the scale, a few roundings of the largest element.
FLOOR_RMS_F32 = 2.0 ** -24
FLOOR_MAX_F32 = 4 * 2.0 ** -23
MAX_FACTOR_F32 = 4
PEAK = 4.0  # the standard deviation of the attention scores the perturbed q, k weights give (see _peaky)


# --- the models --------------------------------------------------------------------------------------------

def _randomise(model, seed=0):
    """Every tensor random at a realistic size (timm zero-initialises the head, biases and some layer
    scales): biases ~0.1, LayerNorm gains 1 +- 0.1, layer scale 0.1 +- 0.05, weights 0.02, tokens and
    position embedding 0.2."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            elif name.endswith("gamma"):
                p.copy_(0.1 + 0.05 * noise)
            else:
                p.copy_(0.02 * noise.clamp(-2, 2) * (10 if "token" in name or "pos" in name else 1))
    return model


def _peaky(query, key, width, seed=1):
    """Redraw the query and key weights ([D, D] each) so that the scores q.k / sqrt(Dh) have a standard
    deviation of about PEAK: with LayerNormed inputs of unit size and weights of std s, each of q and k has
    entries of std s sqrt(D) and the scaled score of std D s^2, so s = sqrt(PEAK / D). Peaky rows (one key
    taking most of the probability) are where a softmax's gradient is hardest to get right in float32."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in (query, key):
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * (PEAK / width) ** 0.5)


def timm_pair(name, dynamic_img_size=False, **overrides):
    """(timm float32, timm float64, numpy_vit float32, numpy_vit float64): one set of float32 weights (the
    float64 copies hold the same values exactly), attention made peaky in every block."""
    config = nv.ViTConfig.preset(name, **overrides)
    tm = _randomise(timm.create_model(name, pretrained=False, dynamic_img_size=dynamic_img_size, **overrides)).eval()
    D = config.embed_dim
    for i, blk in enumerate(tm.blocks):
        qkv = blk.attn.qkv.weight
        with torch.no_grad():
            q, k = qkv[:D].clone(), qkv[D:2 * D].clone()
            _peaky(q, k, D, seed=10 + i)
            qkv[:D], qkv[D:2 * D] = q, k
    params = timm_state_to_params(tm)
    return (tm, copy.deepcopy(tm).double(), nv.ViT(config, params, dtype=np.float32),
            nv.ViT(config, params, dtype=np.float64))


# --- torch's gradients, read with hooks ----------------------------------------------------------------------

class Kept:
    """Named tensors of one forward pass whose gradients autograd keeps (``retain_grad``); ``to_trace`` turns
    a tensor (its value or its gradient) into the layout of the trace's array of that name."""

    def __init__(self):
        self.tensors = {}  # name -> (tensor, to_trace)
        self.handles = []
        self.block = None  # the block whose attention is running (for the softmax's input)

    def keep(self, name, tensor, to_trace=lambda a: a):
        tensor.retain_grad()
        self.tensors[name] = (tensor, to_trace)
        return tensor

    def output(self, module, name, to_trace=lambda a: a):
        def hook(module, args, out):
            self.keep(name, out, to_trace)
        self.handles.append(module.register_forward_hook(hook))

    def input(self, module, name, to_trace=lambda a: a):
        def hook(module, args):
            self.keep(name, args[0], to_trace)
        self.handles.append(module.register_forward_pre_hook(hook))

    def patches_of(self, conv, patch_size):
        """The conv's input image as fold(unfold(image)), keeping the unfolded patches [B, P, C*p*p]: unfold
        orders each column (channel, row, col) and the columns row by row over the grid, as numpy_vit does."""
        def hook(module, args):
            image = args[0]  # [B, C, H, W]
            patches = F.unfold(image, patch_size, stride=patch_size).transpose(1, 2)  # [B, P, C*p*p]
            self.keep("patches", patches)
            return (F.fold(patches.transpose(1, 2), image.shape[-2:], patch_size, stride=patch_size),)
        self.handles.append(conv.register_forward_pre_hook(hook))

    def running_block(self, module, index):
        self.handles.append(module.register_forward_pre_hook(lambda m, args: setattr(self, "block", index)))

    def softmax_input(self, scores):
        if self.block is not None:
            self.keep(f"blocks.{self.block}.attn.scores", scores)

    def arrays(self, attribute):
        """{trace name: value or gradient as a numpy array in the trace's layout}"""
        out = {}
        for name, (tensor, to_trace) in self.tensors.items():
            value = tensor.detach() if attribute == "value" else tensor.grad
            assert value is not None, f"autograd kept no gradient for {name}"
            out[name] = to_trace(value.numpy())
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def _heads(num_heads):
    """[B, N, H*Dh] -> [B, H, N, Dh], as the attention splits its heads."""
    def split(a):
        B, N, D = a.shape
        return a.reshape(B, N, num_heads, D // num_heads).transpose(0, 2, 1, 3)
    return split


def _qkv_part(num_heads, part):
    """timm's qkv output [B, N, 3D] (columns laid out (q|k|v, head, Dh)) -> q, k or v as [B, H, N, Dh]."""
    def take(a):
        B, N, D3 = a.shape
        return a.reshape(B, N, 3, num_heads, D3 // (3 * num_heads))[:, :, part].transpose(0, 2, 1, 3)
    return take


def _tokens(a):  # [B, gh, gw, D] (timm's dynamic-size patch embedding) or [B, P, D] -> [B, P, D]
    return a.reshape(a.shape[0], -1, a.shape[-1])


def timm_hooks(tm, kept):
    """Hooks that keep every intermediate the trace names, on a timm VisionTransformer (fused_attn off)."""
    H = tm.blocks[0].attn.num_heads
    kept.patches_of(tm.patch_embed.proj, tm.patch_embed.patch_size[0])
    kept.output(tm.patch_embed, "patch_embed", _tokens)
    for i, blk in enumerate(tm.blocks):
        assert not blk.attn.fused_attn, "the attention pattern exists only on timm's non-fused path"
        b = f"blocks.{i}."
        kept.input(blk, b + "resid_pre")
        kept.output(blk.norm1, b + "ln1")
        kept.running_block(blk.attn, i)
        for part, name in enumerate("qkv"):
            kept.output(blk.attn.qkv, b + "attn." + name, _qkv_part(H, part))
        kept.output(blk.attn.attn_drop, b + "attn.pattern")  # dropout's output in eval: the probabilities
        kept.input(blk.attn.proj, b + "attn.z", _heads(H))  # the heads side by side, [B, N, D]
        kept.output(blk.ls1, b + "attn_out")  # LayerScale, or Identity: the projection's output
        kept.input(blk.norm2, b + "resid_mid")
        kept.output(blk.norm2, b + "ln2")
        kept.output(blk.mlp.fc1, b + "mlp.pre")
        kept.output(blk.mlp.act, b + "mlp.post")
        kept.output(blk.ls2, b + "mlp_out")
        kept.output(blk, b + "resid_post")
    if not isinstance(tm.norm, torch.nn.Identity):  # fc_norm models normalise after pooling instead
        kept.output(tm.norm, "norm")
    kept.input(tm.head, "pooled")  # the head's input: fc_norm's output, or the class token


def _objective(output, target):
    """The scalar whose gradient both libraries take: the target's logits summed over the batch, or the
    output weighted by a cotangent array."""
    if isinstance(target, str):  # "top": each image's highest logit
        return output.gather(1, output.argmax(-1, keepdim=True)).sum()
    if isinstance(target, (list, tuple)):
        return output[torch.arange(len(target)), torch.tensor(target)].sum()
    if np.ndim(target) == 0:
        return output[:, int(target)].sum()
    return (output * torch.from_numpy(np.asarray(target)).to(output.dtype)).sum()


def torch_gradients(tm, x, target, hooks, num_classes, resampled=False):
    """(values, gradients, parameter gradients) of one forward and backward pass of timm's model on ``x``:
    the first two keyed by trace names, in the trace's layout."""
    kept = Kept()
    hooks(tm, kept)
    tm.zero_grad(set_to_none=True)
    image = torch.from_numpy(x).requires_grad_(True)
    kept.keep("input", image)
    if not resampled:
        kept.keep("pos_embed", tm.pos_embed, lambda a: a[0])  # the parameter itself: [1, N_pos, D]
    softmax = torch.Tensor.softmax

    def kept_softmax(scores, *args, **kwargs):
        kept.softmax_input(scores)
        return softmax(scores, *args, **kwargs)

    resample = timm_vit.resample_abs_pos_embed

    def kept_resample(posemb, *args, **kwargs):
        if posemb.dtype == torch.float64:
            # timm casts to float32 to interpolate (``posemb.float()``); a float64 reference must not round
            # there, so the cast is skipped for this call (the interpolation itself is torch's, in float64)
            float_ = torch.Tensor.float
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(torch.Tensor, "float", lambda t: t if t.dtype == torch.float64 else float_(t))
                out = resample(posemb, *args, **kwargs)
        else:
            out = resample(posemb, *args, **kwargs)
        return kept.keep("pos_embed", out, lambda a: a[0])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "softmax", kept_softmax)
        patch.setattr(timm_vit, "resample_abs_pos_embed", kept_resample)
        output = tm(image)
    kept.keep("logits" if num_classes else "pooled", output)
    _objective(output, target).backward()
    kept.remove()
    params = {name: p.grad.numpy() for name, p in tm.named_parameters()}
    return kept.arrays("value"), kept.arrays("grad"), params


# --- the comparison ------------------------------------------------------------------------------------------

def _errors(a, ref, scale):
    """(largest, root-mean-square) error of ``a`` against ``ref``, relative to ``scale``."""
    e = np.abs(np.asarray(a, np.float64) - ref) / (scale if scale > 0 else 1.0)
    return float(e.max()), float(np.sqrt(np.mean(e * e)))


def compare(label, ours32, ours64, torch32, torch64):
    """Asserts every array's limits (float64; float32 against torch's own float32 error) and records the worst
    errors for the parity table. Each argument: {name: array} (intermediates and "param:" names)."""
    assert set(ours64) == set(torch64), (f"{label}: names only in ours {sorted(set(ours64) - set(torch64))}, "
                                         f"only in torch {sorted(set(torch64) - set(ours64))}")
    failures = []
    worst64, worst32, worst_rms_ratio, worst_max_ratio = (0.0, ""), (0.0, ""), (0.0, ""), (0.0, "")
    for name, ref in torch64.items():
        assert ours64[name].shape == ref.shape, f"{label}: {name} shape {ours64[name].shape} != torch {ref.shape}"
        assert ours32[name].dtype == np.float32 and ours64[name].dtype == np.float64, (label, name)
        scale = float(np.max(np.abs(ref)))
        err64, _ = _errors(ours64[name], ref, scale)
        max32, rms32 = _errors(ours32[name], ref, scale)
        torch_max, torch_rms = _errors(torch32[name], ref, scale)
        worst64 = max(worst64, (err64, name))
        worst32 = max(worst32, (max32, name))
        worst_rms_ratio = max(worst_rms_ratio, (rms32 / max(torch_rms, FLOOR_RMS_F32), name))
        worst_max_ratio = max(worst_max_ratio, (max32 / max(torch_max, FLOOR_MAX_F32), name))
        if not err64 <= F64_LIMIT:
            failures.append(f"float64 {name}: {err64:.3g} of its scale {scale:.3g} > {F64_LIMIT:g}")
        if not rms32 <= max(2 * torch_rms, FLOOR_RMS_F32):
            failures.append(f"float32 {name}: root-mean-square error {rms32:.3g} of its scale > twice torch's own "
                            f"{torch_rms:.3g}")
        if not max32 <= max(MAX_FACTOR_F32 * torch_max, FLOOR_MAX_F32):
            failures.append(f"float32 {name}: largest error {max32:.3g} of its scale > {MAX_FACTOR_F32} times "
                            f"torch's own {torch_max:.3g}")
    GRADIENTS.append((label, "float64", worst64, None))
    GRADIENTS.append((label, "float32", worst32, (worst_rms_ratio, worst_max_ratio)))
    assert not failures, f"{label}: " + "; ".join(failures[:12]) + (f" (+{len(failures) - 12})" if len(failures) > 12 else "")


def check_values(label, trace, values, dtype):
    """The hooked tensors hold the trace's arrays (forward values, float64): a hook on the wrong tensor fails
    here. Same limit as the forward parity tests' float64 (1e-10 of the array's scale)."""
    assert dtype == np.float64
    for name, value in values.items():
        ref = trace[name]
        assert value.shape == ref.shape, f"{label}: hooked {name} has shape {value.shape}, trace {ref.shape}"
        assert max_err(value, ref) <= 1e-10 * max(1.0, float(np.max(np.abs(ref)))), f"{label}: hooked {name}"


def ours(model, x, target):
    """(trace, {trace name or "param:" name: gradient}) of numpy_vit."""
    trace = model.forward(x)
    grads = model.backward(trace, target)
    out = {name: np.asarray(grads[name]) for name in trace}
    out.update({f"param:{k}": np.asarray(v) for k, v in grads.params.items()})
    return trace, out


def _with_params(grads, params):
    return {**grads, **{f"param:{k}": v for k, v in params.items()}}


def assert_peaky(label, trace):
    """The perturbation did what it is for: in every block, the most probable key of a median query row
    holds at least half of the row's probability."""
    for i in range(trace.depth):
        top = np.median(trace[f"blocks.{i}.attn.pattern"].max(-1))
        assert top >= 0.5, f"{label}: block {i}'s attention is not peaky (median row maximum {top:.2f})"


# --- the families --------------------------------------------------------------------------------------------

SMALL = dict(embed_dim=48, num_heads=4, img_size=64)  # 16 patches of 16 px, Dh = 12
FAMILIES = {
    # label: (preset, overrides, input size (None: the model's), target)
    "plain ViT (class token, erf GELU)": ("vit_tiny_patch16_224", dict(SMALL, depth=3, num_classes=10), None, [3, 7]),
    "DeiT distilled": ("deit_tiny_distilled_patch16_224", dict(SMALL, depth=2, num_classes=10), None, "top"),
    "DINOv2 registers, no_embed_class, layer scale": (
        "vit_small_patch14_reg4_dinov2", dict(embed_dim=64, num_heads=4, img_size=56, depth=3, num_classes=0),
        None, "cotangent"),
    "avg pool + fc_norm": ("vit_tiny_patch16_224", dict(SMALL, depth=2, num_classes=10, global_pool="avg"),
                           None, 4),
    "resampled pos_embed, 64x48 on 64x64": ("vit_tiny_patch16_224", dict(SMALL, depth=2, num_classes=10),
                                             (64, 48), "cotangent"),
    "ViT-S width (384, 6 heads), 2 blocks, 96 px": ("vit_small_patch16_224", dict(depth=2, img_size=96,
                                                                                  num_classes=10), None, "cotangent"),
}


def _target(kind, model, batch):
    if kind != "cotangent":
        return kind
    width = model.config.num_classes or model.config.embed_dim  # num_classes=0: the pooled features' cotangent
    return np.random.default_rng(7).standard_normal((batch, width))


@pytest.mark.parametrize("label", list(FAMILIES))
def test_timm_gradients_match(label):
    name, overrides, size, target_kind = FAMILIES[label]
    resampled = size is not None
    tm32, tm64, ours32, ours64 = timm_pair(name, dynamic_img_size=resampled, **overrides)
    x32 = random_batch(ours32.config, batch=2, size=size, seed=3)  # float32 values, exactly float64 too
    x64 = x32.astype(np.float64)
    target = _target(target_kind, ours32, 2)
    trace64, g64 = ours(ours64, x64, target)
    trace32, g32 = ours(ours32, x32, target)
    if isinstance(target, str):  # both libraries pick the same class (and torch 32 and 64 below pick torch's argmax)
        assert (trace32.logits.argmax(-1) == trace64.logits.argmax(-1)).all()
    assert_peaky(label, trace64)
    runs = {}
    for dtype, tm, x in ((np.float32, tm32, x32), (np.float64, tm64, x64)):
        values, grads, params = torch_gradients(tm, x, target, timm_hooks, ours32.config.num_classes,
                                                resampled=resampled)
        runs[dtype] = _with_params(grads, params)
        if dtype == np.float64:
            check_values(label, trace64, values, dtype)
    compare(f"timm {label}", g32, g64, runs[np.float32], runs[np.float64])


# --- HF transformers ViTForImageClassification ---------------------------------------------------------------

def hf_hooks(hf, kept):
    """Hooks that keep every intermediate the trace names, on HF's ViTForImageClassification (transformers 5
    module names; eager attention)."""
    vit = hf.vit
    H = hf.config.num_attention_heads
    kept.patches_of(vit.embeddings.patch_embeddings.projection, hf.config.patch_size)
    kept.output(vit.embeddings.patch_embeddings, "patch_embed")
    for i, layer in enumerate(vit.layers):
        b = f"blocks.{i}."
        kept.input(layer, b + "resid_pre")
        kept.output(layer.layernorm_before, b + "ln1")
        kept.running_block(layer.attention, i)
        for proj, name in ((layer.attention.q_proj, "q"), (layer.attention.k_proj, "k"), (layer.attention.v_proj, "v")):
            kept.output(proj, b + "attn." + name, _heads(H))
        kept.input(layer.attention.o_proj, b + "attn.z", _heads(H))
        kept.output(layer.attention.o_proj, b + "attn_out")
        kept.input(layer.layernorm_after, b + "resid_mid")
        kept.output(layer.layernorm_after, b + "ln2")
        kept.output(layer.mlp.fc1, b + "mlp.pre")
        kept.output(layer.mlp.activation_fn, b + "mlp.post")
        kept.output(layer.mlp.fc2, b + "mlp_out")
        kept.output(layer, b + "resid_post")
    kept.output(vit.layernorm, "norm")
    kept.input(hf.classifier, "pooled")


def hf_gradients(hf, x, target):
    """As torch_gradients, for HF: the softmax's input is the scores and its output the pattern (HF's
    dropout is a function, not a module). The softmax runs in the input's dtype: HF asks for float32 whatever
    the model's dtype, which would round a float64 reference (see test_hf_parity.py)."""
    kept = Kept()
    hf_hooks(hf, kept)
    hf.zero_grad(set_to_none=True)
    image = torch.from_numpy(x).requires_grad_(True)
    kept.keep("input", image)
    kept.keep("pos_embed", hf.vit.embeddings.position_embeddings, lambda a: a[0])
    softmax = F.softmax

    def kept_softmax(scores, dim=None, _stacklevel=3, dtype=None):
        kept.softmax_input(scores)
        probabilities = softmax(scores, dim=dim)  # in the scores' dtype
        if kept.block is not None:
            kept.keep(f"blocks.{kept.block}.attn.pattern", probabilities)
        return probabilities

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "softmax", kept_softmax)
        output = hf(pixel_values=image).logits
    kept.keep("logits", output)
    _objective(output, target).backward()
    kept.remove()
    return kept.arrays("value"), kept.arrays("grad"), hf_to_timm_names(hf)


def hf_to_timm_names(hf):
    """HF's parameter gradients under timm's names, by the rules of our HF reader (HF5_TABLE: q, k, v stacked
    into one qkv). The reader's own apply_table stores float32 weights, so the rules are applied here, in the
    gradients' dtype; every HF parameter must be read by a rule."""
    from numpy_vit.weights.read_hf import HF5_TABLE

    raw = {name.removeprefix("vit."): p.grad.numpy() for name, p in hf.named_parameters()}
    out, used = {}, set()
    for r in (e for table_rule in HF5_TABLE for e in table_rule.expand(hf.config.num_hidden_layers)):
        if all(s in raw for s in r.sources):
            out[r.target] = r.transform(*(raw[s] for s in r.sources))
            used.update(r.sources)
    assert used == set(raw), f"HF parameters no rule reads: {sorted(set(raw) - used)}"
    return out


def test_hf_vit_gradients_match(tmp_path):
    """HF's ViTForImageClassification (LayerNorm eps 1e-12, separate q, k, v Linears) through our HF reader:
    the parameters' gradients go through the reader's own name table (q, k, v stacked into timm's qkv).
    numpy_vit's HF reader knows HF's 'vit' models only (weights/read_hf.py), so Dinov2 is not compared."""
    transformers = pytest.importorskip("transformers")
    from test_hf_parity import _hf_model

    hf = _hf_model(tmp_path, np.float32, image_size=64, hidden=48, layers=3, heads=4)
    for i, layer in enumerate(hf.vit.layers):
        _peaky(layer.attention.q_proj.weight, layer.attention.k_proj.weight, 48, seed=20 + i)
    hf.save_pretrained(tmp_path)
    assert isinstance(hf, transformers.ViTForImageClassification)
    ours32 = nv.ViT.from_pretrained(str(tmp_path), dtype=np.float32)
    ours64 = nv.ViT.from_pretrained(str(tmp_path), dtype=np.float64)
    x32 = random_batch(ours32.config, batch=2, seed=4)
    x64 = x32.astype(np.float64)
    target = [1, 8]
    trace64, g64 = ours(ours64, x64, target)
    _, g32 = ours(ours32, x32, target)
    assert_peaky("HF ViT", trace64)
    runs = {}
    for dtype, model, x in ((np.float32, hf, x32), (np.float64, copy.deepcopy(hf).double(), x64)):
        values, grads, params = hf_gradients(model, x, target)
        runs[dtype] = _with_params(grads, params)
        if dtype == np.float64:
            check_values("HF ViT", trace64, values, dtype)
    compare("HF ViTForImageClassification", g32, g64, runs[np.float32], runs[np.float64])
