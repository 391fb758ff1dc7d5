"""The Vision Transformer's math as small pure functions of NumPy arrays: the reference the model runs.

Shapes: B batch, N tokens (prefix tokens + patches), P patches, D width, H heads, Dh head width (D // H),
M MLP width, C channels, p patch side, gh x gw the patch grid.

Weights follow torch's layout (``weight`` is [out, in]) so that a timm or HF state dict can be wired in with
``**`` and no transposes. Every function computes in the dtype of its input (float32 by default, float64 on
request) and never upcasts, with one exception in the backward (``sum_over_rows``).

``record`` is an optional callback ``record(name, array)``: the trace uses it to keep the intermediates the
forward pass computes anyway (lucidrains/vit-pytorch makes the softmax its own step for the same reason).

Beside each forward function ``f`` sits ``f_backward``: the chain rule written out, no autodiff engine. It
takes the upstream gradient ``dy`` (d target / d output, the shape of the output) first, then the arrays the
forward saw (its input, from the trace) and the same weights, and returns the gradient of its input and, for a
layer with weights, a dict of their gradients keyed like the weights (so they nest like ``ViT.param_tree``),
each summed over every leading axis (batch and tokens). ``record`` files the gradient of each recorded
intermediate under the forward's name, so a model's gradients read like its trace.

numpy_vit/fast.py computes the same functions faster (threads, in-place buffers, work sized to the CPU's
cache); each of its functions names the one here that it accelerates, and is tested against it.
"""
import math

import numpy as np

from .erf import erfc


def _no_record(name, array):
    pass


def linear(x, weight, bias=None):  # [..., in] -> [..., out]
    """``x @ weight.T + bias``: all leading axes as the rows of one matrix multiply (one BLAS call)."""
    y = x.reshape(-1, x.shape[-1]) @ weight.T  # [R, in] @ [in, out] -> [R, out], R = the leading axes' size
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])  # [R, out] -> [..., out]


def sum_over_rows(a, axis=0):  # [R, ...] -> [...]
    """A weight's gradient summed over the rows (tokens, images) that share the weight, accumulated in float64
    and returned in ``a``'s dtype. Why: NumPy sums along a leading axis one row after another, so a float32 sum of
    thousands of rows (1,576 tokens at batch 8) loses digits that torch's blocked reductions keep (its bias
    gradients land 2x closer to the float64 value; parity_tests/test_backward_parity.py)."""
    return a.sum(axis=axis, dtype=np.float64).astype(a.dtype, copy=False)


def linear_backward(dy, x, weight, bias=None):  # dy [..., out], x [..., in] -> dx [..., in], {weight, bias}
    """y = x W^T + b  =>  dx = dy W,  dW = dy^T x,  db = sum of dy over the rows: one BLAS call per product."""
    dy_rows = dy.reshape(-1, dy.shape[-1])  # [..., out] -> [R, out]
    dx = dy_rows @ weight  # [R, out] @ [out, in] -> [R, in]
    grads = {"weight": dy_rows.T @ x.reshape(-1, x.shape[-1])}  # [out, R] @ [R, in] -> [out, in]
    if bias is not None:
        grads["bias"] = sum_over_rows(dy_rows)  # [R, out] -> [out]
    return dx.reshape(x.shape), grads  # [R, in] -> [..., in]


def layer_norm(x, weight, bias, *, eps):  # [..., D] -> [..., D]
    """Ba et al. 2016: normalise each token to zero mean and unit variance (biased), then scale and shift."""
    centred = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(centred * centred, axis=-1, keepdims=True)  # [..., 1]
    return centred / np.sqrt(var + eps) * weight + bias


def layer_norm_backward(dy, x, weight, bias, *, eps):  # dy, x [..., D] -> dx [..., D], {weight, bias}
    """y = x_hat w + b with x_hat = (x - mean) / sigma. With g = dy w, the three terms of
    d layer norm: dx = (g - mean(g) - x_hat mean(g x_hat)) / sigma
    (the direct path, minus what flows through the mean, minus what flows through the variance).
    The mean and sigma are recomputed from x (two cheap passes) rather than kept by the forward; ``bias`` is
    taken so that a LayerNorm's weights wire in with ``**`` as in the forward, and does not enter dx."""
    centred = x - x.mean(axis=-1, keepdims=True)  # [..., D]
    inv_sigma = 1 / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)  # [..., 1]
    x_hat = centred * inv_sigma  # [..., D]
    g = dy * weight  # [..., D]
    dx = (g - g.mean(axis=-1, keepdims=True) - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True)) * inv_sigma
    leading = tuple(range(dy.ndim - 1))  # every axis but D: the weights are shared by all of them
    return dx, {"weight": sum_over_rows(dy * x_hat, leading), "bias": sum_over_rows(dy, leading)}  # [D], [D]


def gelu(x, approximate="erf"):
    """Hendrycks & Gimpel 2016: x Phi(x), Phi the standard normal CDF. "erf" is exact (timm, HF); "tanh" is
    the Flax approximation. Phi(x) = erfc(-x / sqrt 2) / 2 keeps full relative precision for large negative
    x, where 1 + erf(x) would cancel. "quick": OpenAI CLIP's sigmoid approximation (``quick_gelu`` below)."""
    if approximate == "quick":
        return quick_gelu(x)
    if approximate == "tanh":
        c = x.dtype.type(math.sqrt(2.0 / math.pi))
        return 0.5 * x * (1.0 + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))
    return 0.5 * x * erfc(-x / x.dtype.type(math.sqrt(2.0)))


def gelu_backward(dy, x, y, approximate="erf"):  # dy, x, y [...] -> dx [...]
    """From the forward's input x and output y = gelu(x) (the trace's mlp.pre and mlp.post):
    d erf-GELU: d/dx [x Phi(x)] = Phi(x) + x phi(x), with phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the normal
    density and Phi(x) = y / x, read off the forward's output instead of a second erfc (about 30 passes over
    the array); at |x| below the smallest normal number, where y / x would lose digits, Phi(x) = 1/2.
    d tanh-GELU: with t = tanh(c (x + a x^3)), d/dx [x (1 + t) / 2] = (1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2
    (t recomputed: reading 1 - t^2 off y would cancel for large |x|)."""
    f = x.dtype.type
    if approximate == "quick":
        return quick_gelu_backward(dy, x)
    if approximate == "tanh":
        c, a = f(math.sqrt(2.0 / math.pi)), f(0.044715)
        t = np.tanh(c * (x + a * x * x * x))
        return dy * (f(0.5) * (1 + t) + f(0.5) * x * (1 - t * t) * c * (1 + f(3) * a * x * x))
    cdf = np.divide(y, x, out=np.full_like(x, 0.5), where=np.abs(x) >= np.finfo(x.dtype).tiny)  # Phi(x)
    slope = np.exp(f(-0.5) * x * x)  # phi(x) sqrt(2 pi)
    slope *= x * f(1 / math.sqrt(2 * math.pi))  # x phi(x)
    slope += cdf  # gelu'(x) = Phi(x) + x phi(x)
    return dy * slope


def softmax(x, axis=-1):
    """exp(x - max) / sum: subtracting the maximum changes nothing mathematically and prevents overflow."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dP, P):  # dP, P [..., N] -> dS [..., N]
    """P = softmax(S) has the Jacobian diag(P) - P P^T per row, so
    d softmax: dS = P * (dP - sum(dP * P, -1)). ``P`` is the forward's output (the trace's pattern)."""
    return P * (dP - np.sum(dP * P, axis=-1, keepdims=True))


# --- the transformer's pieces -----------------------------------------------------------------

def patchify(images, patch_size):  # [B, C, H, W] -> [B, P, C*p*p]
    """Cut the image into non-overlapping p x p patches, row by row, each flattened in (channel, row, col)
    order: the order of a conv weight [D, C, p, p], so the patch embedding is one matrix multiply."""
    B, C, H, W = images.shape
    p = patch_size
    gh, gw = H // p, W // p
    x = images.reshape(B, C, gh, p, gw, p)  # [B, C, gh, p, gw, p]
    x = x.transpose(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
    return x.reshape(B, gh * gw, C * p * p)  # [B, P, C*p*p]


def patchify_backward(d_patches, image_shape, patch_size):  # [B, P, C*p*p] -> [B, C, H, W]
    """patchify only moves pixels, each to exactly one place, so its backward is the inverse reshape:
    every pixel's gradient is the gradient of the patch entry it became."""
    B, C, H, W = image_shape
    p = patch_size
    gh, gw = H // p, W // p
    d = d_patches.reshape(B, gh, gw, C, p, p)  # [B, P, C*p*p] -> [B, gh, gw, C, p, p]
    d = d.transpose(0, 3, 1, 4, 2, 5)  # [B, C, gh, p, gw, p]
    return d.reshape(B, C, H, W)  # [B, C, H, W]


def merge_heads(z):  # [B, H, N, Dh] -> [B, N, D]
    """The heads side by side, as ``attention`` feeds them to its output projection."""
    B, H, N, Dh = z.shape
    return z.transpose(0, 2, 1, 3).reshape(B, N, H * Dh)  # [B, H, N, Dh] -> [B, N, H, Dh] -> [B, N, D]


def attention(x, qkv, proj, *, num_heads, rope=None, bias=None, record=_no_record):  # [B, N, D] -> [B, N, D]
    """Multi-head self-attention (Vaswani et al. 2017, eq. 1): softmax(q k^T / sqrt(Dh)) v, per head.

    ``qkv`` holds q, k and v stacked along the output axis ([3D, D], rows laid out (q|k|v, head, Dh)) as
    timm stores them. The query is scaled before the product, as timm does, so float32 rounding matches.
    ``rope``: None, or {"sin", "cos"} [P, Dh] of ``rope_tables``: q and k of the patches turned by their
    position before the product (EVA-02), recorded as ``q_rot`` and ``k_rot`` beside ``q`` and ``k``.
    ``bias``: None, or an [H, N, N] array added to every image's scores before the softmax (BEiT's relative
    position bias, ``relative_position_bias``; Liu et al. 2021, Swin, eq. 4: softmax(q k^T / sqrt(Dh) + B) v);
    recorded as ``bias``, and the recorded ``scores`` are then the softmax's input, the bias included.
    """
    B, N, D = x.shape
    Dh = D // num_heads
    qkv_out = linear(x, **qkv).reshape(B, N, 3, num_heads, Dh)  # [B, N, 3D] -> [B, N, 3, H, Dh]
    q, k, v = qkv_out.transpose(2, 0, 3, 1, 4)  # each [B, H, N, Dh]
    record("q", q)
    record("k", k)
    record("v", v)
    if rope is not None:
        q, k = apply_rope(q, **rope), apply_rope(k, **rope)  # [B, H, N, Dh] each
        record("q_rot", q)
        record("k_rot", k)
    scores = (q * x.dtype.type(Dh ** -0.5)) @ k.swapaxes(-1, -2)  # [B, H, N, Dh] @ [B, H, Dh, N] -> [B, H, N, N]
    if bias is not None:
        record("bias", bias)
        scores += bias  # [B, H, N, N] + [H, N, N]: the same bias for every image
    record("scores", scores)
    pattern = softmax(scores)  # [B, H, N, N], each row a distribution over the N keys
    record("pattern", pattern)
    z = pattern @ v  # [B, H, N, N] @ [B, H, N, Dh] -> [B, H, N, Dh]
    record("z", z)
    return linear(merge_heads(z), **proj)  # [B, H, N, Dh] -> [B, N, D]


def attention_backward(dy, x, q, k, v, pattern, z, qkv, proj, *, num_heads, rope=None, bias=None,
                       record=_no_record):  # dy, x [B, N, D] -> dx [B, N, D], {qkv, proj[, bias]}
    """``attention`` in reverse, from its recorded q, k, v, pattern and z (Z = P V, P = softmax(S),
    S = scale Q K^T (+ bias), scale = Dh^-1/2):
        dV = P^T dZ,   dP = dZ V^T,   dS = d softmax(dP),   dQ = scale * dS K,   dK = scale * dS^T Q,
    then dQ, dK, dV side by side as the qkv projection's output gradient. With ``rope``, ``q`` and ``k`` are
    the rotated ones (the trace's q_rot, k_rot) and dQ, dK are turned back (``apply_rope_backward``). With a
    ``bias`` (the same for every image) added to S, its gradient is dS summed over the batch, returned as
    ``bias`` [H, N, N]."""
    B, H, N, Dh = q.shape
    scale = x.dtype.type(Dh ** -0.5)
    dz, proj_grads = linear_backward(dy, merge_heads(z), **proj)  # [B, N, D]
    dz = dz.reshape(B, N, H, Dh).transpose(0, 2, 1, 3)  # [B, N, D] -> [B, H, N, Dh]
    record("z", dz)
    d_pattern = dz @ v.swapaxes(-1, -2)  # dP = dZ V^T: [B, H, N, Dh] @ [B, H, Dh, N] -> [B, H, N, N]
    record("pattern", d_pattern)
    d_scores = softmax_backward(d_pattern, pattern)  # [B, H, N, N]
    record("scores", d_scores)
    d_qkv = np.empty((B, N, 3, H, Dh), x.dtype)  # the qkv projection's output gradient, laid out as its output
    dq, dk, dv = d_qkv.transpose(2, 0, 3, 1, 4)  # each a [B, H, N, Dh] view into d_qkv
    np.matmul(d_scores, k, out=dq)  # dS K: [B, H, N, N] @ [B, H, N, Dh] -> [B, H, N, Dh]
    dq *= scale  # dQ = scale * dS K
    np.matmul(d_scores.swapaxes(-1, -2), q, out=dk)  # dS^T Q: [B, H, N, N] @ [B, H, N, Dh] -> [B, H, N, Dh]
    dk *= scale  # dK = scale * dS^T Q
    np.matmul(pattern.swapaxes(-1, -2), dz, out=dv)  # dV = P^T dZ: [B, H, N, N] @ [B, H, N, Dh] -> [B, H, N, Dh]
    if rope is not None:
        record("q_rot", dq.copy())
        record("k_rot", dk.copy())
        dq[...] = apply_rope_backward(dq, **rope)  # [B, H, N, Dh], in place in d_qkv
        dk[...] = apply_rope_backward(dk, **rope)
    record("q", dq)
    record("k", dk)
    record("v", dv)
    dx, qkv_grads = linear_backward(d_qkv.reshape(B, N, 3 * H * Dh), x, **qkv)  # [B, N, 3D] -> [B, N, D]
    grads = {"qkv": qkv_grads, "proj": proj_grads}
    if bias is not None:
        grads["bias"] = sum_over_rows(d_scores)  # [B, H, N, N] -> [H, N, N]
    return dx, grads


def mlp_block(x, fc1, fc2, *, gelu_approximate="erf", record=_no_record):  # [B, N, D] -> [B, N, D]
    h = linear(x, **fc1)  # [B, N, M]
    record("pre", h)
    h = gelu(h, gelu_approximate)
    record("post", h)
    return linear(h, **fc2)  # [B, N, D]


def mlp_block_backward(dy, x, pre, post, fc1, fc2, *, gelu_approximate="erf",
                       record=_no_record):  # dy, x [B, N, D] -> dx [B, N, D], {fc1, fc2}
    """``mlp_block`` in reverse from its input x and its recorded ``pre`` (fc1's output) and ``post`` (GELU's)."""
    d_post, fc2_grads = linear_backward(dy, post, **fc2)  # [B, N, D] -> [B, N, M]
    record("post", d_post)
    d_pre = gelu_backward(d_post, pre, post, gelu_approximate)  # [B, N, M]
    record("pre", d_pre)
    dx, fc1_grads = linear_backward(d_pre, x, **fc1)  # [B, N, M] -> [B, N, D]
    return dx, {"fc1": fc1_grads, "fc2": fc2_grads}


def layer_scale_backward(dy, h, gamma):  # dy, h [..., D] -> dh [..., D], {gamma}
    """y = h * gamma (per channel)  =>  dh = dy * gamma,  d gamma = sum of dy * h over every leading axis."""
    return dy * gamma, {"gamma": sum_over_rows(dy * h, tuple(range(dy.ndim - 1)))}  # [..., D], [D]


def block(x, norm1, attn, norm2, mlp, ls1=None, ls2=None, attn_bias=None, *, num_heads, eps, gelu_approximate="erf",
          rope=None, swiglu=False, record=_no_record):  # [B, N, D] -> [B, N, D]
    """One pre-norm transformer block (ViT eqs. 2-3): x + attn(LN(x)), then x + mlp(LN(x)); optional layer
    scale (CaiT) multiplies each branch by a learned per-channel gamma; ``attn_bias`` [H, N, N] is added to the
    attention scores (BEiT's relative position bias). EVA-02: ``rope`` (the tables of ``rope_tables``) turns
    q and k; ``swiglu`` makes the MLP ``swiglu_mlp``."""
    record("resid_pre", x)
    h = layer_norm(x, **norm1, eps=eps)
    record("ln1", h)
    h = attention(h, **attn, num_heads=num_heads, rope=rope, bias=attn_bias,
                  record=lambda name, a: record("attn." + name, a))
    if ls1 is not None:
        h = h * ls1["gamma"]
    record("attn_out", h)
    x = x + h
    record("resid_mid", x)
    h = layer_norm(x, **norm2, eps=eps)
    record("ln2", h)
    if swiglu:
        h = swiglu_mlp(h, **mlp, eps=eps, record=lambda name, a: record("mlp." + name, a))
    else:
        h = mlp_block(h, **mlp, gelu_approximate=gelu_approximate, record=lambda name, a: record("mlp." + name, a))
    if ls2 is not None:
        h = h * ls2["gamma"]
    record("mlp_out", h)
    x = x + h
    record("resid_post", x)
    return x


# what ``block_backward`` reads of a block's recorded arrays (the trace's blocks.{i}.<name>)
BLOCK_SAVED = ("resid_pre", "ln1", "attn.q", "attn.k", "attn.v", "attn.pattern", "attn.z", "resid_mid", "ln2",
               "mlp.pre", "mlp.post")


def block_saved(rope=False, swiglu=False):
    """``BLOCK_SAVED`` for a block with EVA-02's pieces: the rotated q and k in place of q and k, the SwiGLU's
    gate, value and product in place of the GELU's input and output."""
    names = [n for n in BLOCK_SAVED if not ((rope and n in ("attn.q", "attn.k"))
                                            or (swiglu and n in ("mlp.pre", "mlp.post")))]
    names += ["attn.q_rot", "attn.k_rot"] if rope else []
    names += ["mlp.gate", "mlp.value", "mlp.post"] if swiglu else []
    return tuple(names)


def block_backward(dy, saved, norm1, attn, norm2, mlp, ls1=None, ls2=None, attn_bias=None, *, num_heads, eps,
                   gelu_approximate="erf", rope=None, swiglu=False,
                   record=_no_record):  # dy [B, N, D] -> dx [B, N, D], {weights' grads}
    """``block`` in reverse: the MLP branch, then the attention branch. ``saved``: the block's recorded arrays
    by name (``block_saved``). Each residual add x + h hands its gradient unchanged to both x and h, so the
    gradient leaving the block is dy plus what flows back through each branch. With an ``attn_bias``, its
    gradient (summed over the batch) is returned as ``attn_bias``."""
    grads = {}
    record("resid_post", dy)
    record("mlp_out", dy)  # x + h: the branch's output gets the residual stream's gradient
    dh = dy
    if ls2 is not None:  # the trace keeps the branch after its layer scale: recompute it before
        fc2_input = saved["mlp.post"]
        if swiglu and mlp.get("norm") is not None:
            fc2_input = layer_norm(fc2_input, **mlp["norm"], eps=eps)
        dh, grads["ls2"] = layer_scale_backward(dy, linear(fc2_input, **mlp["fc2"]), **ls2)
    if swiglu:
        dh, grads["mlp"] = swiglu_mlp_backward(dh, saved["ln2"], saved["mlp.gate"], saved["mlp.value"],
                                               saved["mlp.post"], **mlp, eps=eps,
                                               record=lambda name, a: record("mlp." + name, a))  # [B, N, D]
    else:
        dh, grads["mlp"] = mlp_block_backward(dh, saved["ln2"], saved["mlp.pre"], saved["mlp.post"], **mlp,
                                              gelu_approximate=gelu_approximate,
                                              record=lambda name, a: record("mlp." + name, a))  # [B, N, D]
    record("ln2", dh)
    dh, grads["norm2"] = layer_norm_backward(dh, saved["resid_mid"], **norm2, eps=eps)  # [B, N, D]
    dh += dy  # d resid_mid: the MLP branch plus the residual path
    d_mid = dh
    record("resid_mid", d_mid)
    record("attn_out", d_mid)
    if ls1 is not None:
        dh, grads["ls1"] = layer_scale_backward(d_mid, linear(merge_heads(saved["attn.z"]), **attn["proj"]), **ls1)
    q, k = (saved["attn.q_rot"], saved["attn.k_rot"]) if rope is not None else (saved["attn.q"], saved["attn.k"])
    dh, grads["attn"] = attention_backward(dh, saved["ln1"], q, k, saved["attn.v"], saved["attn.pattern"],
                                           saved["attn.z"], **attn, num_heads=num_heads, rope=rope, bias=attn_bias,
                                           record=lambda name, a: record("attn." + name, a))  # [B, N, D]
    if attn_bias is not None:
        grads["attn_bias"] = grads["attn"].pop("bias")  # [H, N, N]
    record("ln1", dh)
    dx, grads["norm1"] = layer_norm_backward(dh, saved["resid_pre"], **norm1, eps=eps)  # [B, N, D]
    dx += d_mid  # d resid_pre: the attention branch plus the residual path
    record("resid_pre", dx)
    return dx, grads


def encoder(x, blocks, *, record=_no_record, **options):  # [B, N, D] -> [B, N, D]
    """The Transformer encoder (ViT eqs. 2-3): ``block`` after ``block``, block i recording its arrays as
    ``i.name`` (the trace's ``blocks.3.attn.pattern``). ``blocks``: each block's weights; ``options``: num_heads,
    eps, gelu_approximate, as for ``block``."""
    for i, weights in enumerate(blocks):
        x = block(x, **weights, **options, record=lambda name, a, i=i: record(f"{i}.{name}", a))
    return x


def encoder_backward(dy, saved, blocks, *, record=_no_record, **options):  # dy [B, N, D] -> dx [B, N, D], [grads]
    """``encoder`` in reverse: ``block_backward`` from the last block to the first. ``saved[i]``: block i's
    recorded arrays by name; returns the input's gradient and a list of each block's weight gradients."""
    grads = [None] * len(blocks)
    for i in reversed(range(len(blocks))):
        dy, grads[i] = block_backward(dy, saved[i], **blocks[i], **options,
                                      record=lambda name, a, i=i: record(f"{i}.{name}", a))
    return dy, grads


# --- the two ends of the model in reverse (their forward is ViT.forward: eq. 1, the embedding; eq. 4, the head)

def tanh_backward(dy, y):  # dy, y [...] -> dx [...]
    """y = tanh(x)  =>  dx = dy (1 - y^2), from the output y (the pre_logits layer's nonlinearity)."""
    return dy * (1 - y * y)


def pool(x, global_pool, num_prefix):  # [B, N, D] -> [B, D]
    """The image's summary for the head: the class token ("token"), or the mean over the patch tokens only
    ("avg"), the prefix tokens left out."""
    if global_pool == "token":
        return x[:, 0]  # [B, D]
    return x[:, num_prefix:].mean(axis=1)  # [B, P, D] -> [B, D]


def pool_backward(d_pooled, num_tokens, global_pool, num_prefix):  # [B, D] -> [B, N, D]
    """Token pooling reads x[:, 0]: its gradient goes to the class token's row alone. Average pooling is the
    mean over the P = N - prefix patch tokens: each patch row gets d_pooled / P, the prefix rows nothing."""
    B, D = d_pooled.shape
    dx = np.zeros((B, num_tokens, D), d_pooled.dtype)  # [B, N, D]
    if global_pool == "token":
        dx[:, 0] = d_pooled
    else:
        dx[:, num_prefix:] = d_pooled[:, None] / d_pooled.dtype.type(num_tokens - num_prefix)  # [B, 1, D] -> [B, P, D]
    return dx


def embed_backward(dx, num_prefix, no_embed_class):  # dx [B, N, D] -> [prefix, D], [B, P, D], [N_pos, D]
    """z_0 = [prefix; tokens] + pos (``no_embed_class``: [prefix; tokens + pos]) in reverse: the concatenation
    hands each part its rows of dx, and the add hands dx unchanged to both of its terms. The prefix tokens and
    the position embedding are the same for every image, so their gradients are summed over the batch."""
    d_prefix = sum_over_rows(dx[:, :num_prefix])  # [B, prefix, D] -> [prefix, D]
    d_tokens = dx[:, num_prefix:]  # [B, P, D]
    d_pos = sum_over_rows(d_tokens if no_embed_class else dx)  # [B, N_pos, D] -> [N_pos, D]
    return d_prefix, d_tokens, d_pos


# --- EVA-02: 2-D rotary position embedding and the SwiGLU MLP (Fang et al. 2023, arXiv 2303.11331) ---
# Shapes as above; G = Dh / 4 the frequencies per axis (each rotates one pair of channels).

def rope_frequencies(head_dim, temperature=10000.0):  # -> [G]
    """The G = Dh / 4 rotation frequencies of one axis, theta_j = temperature^(-j / G), j = 0 .. G-1 (Su et al.
    2021, RoFormer eq. 15, with the exponent over G = Dh / 4 as timm's ``freq_bands(Dh // 4, step=1)``): half
    of a head's Dh / 2 channel pairs turn with the row, half with the column, G frequencies each."""
    G = head_dim // 4
    return 1.0 / temperature ** (np.arange(G, dtype=np.float64) / G)  # [G], float64 whatever the model's dtype


def rope_tables(grid, head_dim, ref_grid=None, dtype=np.float32):  # -> sin, cos [P, Dh]
    """The sines and cosines that rotate each patch's q and k by its position (RoFormer eq. 34 in 2-D, as EVA-02
    and timm's ``RotaryEmbeddingCat`` lay it out). Patch (r, c) of the gh x gw grid sits at y = r, x = c,
    rescaled to ``ref_grid`` (the training grid: y = r * ref_h / gh) so that another grid
    covers the same span of angles. Channel pair j of a head (channels 2j, 2j+1) turns by
        y * theta_j          for j < G          (the first half of the head: the row)
        x * theta_(j - G)    for G <= j < 2G    (the second half: the column).
    Computed in float64, returned in ``dtype``; each angle is written twice, once per channel of its pair."""
    gh, gw = grid
    ref_h, ref_w = grid if ref_grid is None else ref_grid
    y = np.arange(gh, dtype=np.float64) / gh * ref_h  # [gh] row positions
    x = np.arange(gw, dtype=np.float64) / gw * ref_w  # [gw] column positions
    theta = rope_frequencies(head_dim)  # [G]
    y_angles = np.broadcast_to((y[:, None] * theta)[:, None, :], (gh, gw, theta.size))  # [gh, gw, G]
    x_angles = np.broadcast_to((x[:, None] * theta)[None, :, :], (gh, gw, theta.size))  # [gh, gw, G]
    angles = np.concatenate([y_angles, x_angles], axis=-1).reshape(gh * gw, -1)  # [P, 2G = Dh / 2], row-major patches
    angles = np.repeat(angles, 2, axis=-1)  # [P, Dh]: each pair's angle on both its channels
    return np.sin(angles).astype(dtype), np.cos(angles).astype(dtype)


def rotate_pairs(x):  # [..., Dh] -> [..., Dh]
    """Each channel pair (a, b) -> (-b, a): a quarter turn, the matrix [[0, -1], [1, 0]] on every pair."""
    turned = np.empty_like(x)
    turned[..., 0::2] = -x[..., 1::2]
    turned[..., 1::2] = x[..., 0::2]
    return turned


def apply_rope(x, sin, cos):  # x [B, H, N, Dh], sin / cos [P, Dh] -> [B, H, N, Dh]
    """RoFormer eq. 34: each channel pair of the last P tokens (the patches) turned by its angle,
    (a, b) -> (a cos - b sin, a sin + b cos); the N - P prefix tokens in front (the class token) have no
    position and stay as they are (timm rotates ``q[:, :, num_prefix_tokens:]``)."""
    P = sin.shape[0]
    out = x.copy()
    patches = x[..., -P:, :]  # [B, H, P, Dh]
    out[..., -P:, :] = patches * cos + rotate_pairs(patches) * sin
    return out


def apply_rope_backward(dy, sin, cos):  # dy [B, H, N, Dh] -> dx [B, H, N, Dh]
    """A rotation's inverse is its transpose, the turn by the opposite angle: dx = dy cos - turn(dy) sin on the
    patches (the quarter turn's transpose is minus itself); the prefix tokens' gradient passes unchanged."""
    P = sin.shape[0]
    dx = dy.copy()
    patches = dy[..., -P:, :]  # [B, H, P, Dh]
    dx[..., -P:, :] = patches * cos - rotate_pairs(patches) * sin
    return dx


def sigmoid(x):
    """1 / (1 + exp(-x)), written so that neither branch overflows: exp of a non-positive number only."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def silu(x):
    """Sigmoid linear unit x * sigmoid(x) (Elfwing et al. 2018; Swish with beta = 1, Ramachandran et al. 2017)."""
    return x * sigmoid(x)


def swiglu_mlp(x, fc2, fc1=None, fc1_g=None, fc1_x=None, norm=None, *, eps=1e-6,
               record=_no_record):  # [B, N, D] -> [B, N, D]
    """Shazeer 2020, "GLU Variants Improve Transformer", eq. 6: FFN_SwiGLU(x) = (SiLU(x W_g) * x W_x) W_2, the
    gate's SiLU multiplying the value channel by channel; EVA-02 (Fang et al. 2023) normalises the hidden layer
    before W_2 (its sub-LN, ``norm``: base / large). Weights as timm stores them: ``fc1_g`` and ``fc1_x`` apart,
    or packed in one ``fc1`` [2M, D], gate rows first (timm's SwiGLUPacked, ``gate_last=False``)."""
    if fc1 is not None:
        both = linear(x, **fc1)  # [B, N, 2M]
        M = both.shape[-1] // 2
        gate, value = both[..., :M], both[..., M:]  # [B, N, M] each
    else:
        gate, value = linear(x, **fc1_g), linear(x, **fc1_x)  # [B, N, M] each
    record("gate", gate)
    record("value", value)
    h = silu(gate) * value  # [B, N, M]
    record("post", h)
    if norm is not None:
        h = layer_norm(h, **norm, eps=eps)
        record("norm", h)
    return linear(h, **fc2)  # [B, N, D]


def swiglu_mlp_backward(dy, x, gate, value, post, fc2, fc1=None, fc1_g=None, fc1_x=None, norm=None, *, eps=1e-6,
                        record=_no_record):  # dy, x [B, N, D] -> dx [B, N, D], {weights}
    """``swiglu_mlp`` in reverse from its input and its recorded gate, value and post (SiLU(gate) * value):
    h = SiLU(g) v  =>  dv = dh SiLU(g),  dg = dh v SiLU'(g),  SiLU'(g) = s (1 + g (1 - s)), s = sigmoid(g)."""
    grads = {}
    fc2_input = post if norm is None else layer_norm(post, **norm, eps=eps)  # [B, N, M]
    dh, grads["fc2"] = linear_backward(dy, fc2_input, **fc2)  # [B, N, D] -> [B, N, M]
    if norm is not None:
        record("norm", dh)
        dh, grads["norm"] = layer_norm_backward(dh, post, **norm, eps=eps)  # [B, N, M]
    record("post", dh)
    s = sigmoid(gate)
    d_value = dh * gate * s  # dh SiLU(g)
    d_gate = dh * value * s * (1 + gate * (1 - s))  # dh v SiLU'(g)
    record("gate", d_gate)
    record("value", d_value)
    if fc1 is not None:
        dx, grads["fc1"] = linear_backward(np.concatenate([d_gate, d_value], axis=-1), x, **fc1)  # [B, N, 2M] -> [B, N, D]
    else:
        dx, grads["fc1_g"] = linear_backward(d_gate, x, **fc1_g)  # [B, N, M] -> [B, N, D]
        dx_value, grads["fc1_x"] = linear_backward(d_value, x, **fc1_x)
        dx += dx_value
    return dx, grads


def eva_qkv(proj, qkv=None, q_bias=None, v_bias=None, q_proj=None, k_proj=None, v_proj=None):  # -> {qkv, proj}
    """EVA's attention weights as ``attention`` takes them: one qkv projection [3D, D] whose bias is
    [q_bias; 0; v_bias] (the key has none: a bias on k adds the same amount to every score of a query, which
    the softmax cancels), as timm's ``cat(q_bias, k_bias, v_bias)``. Stored fused (``qkv`` + ``q_bias``,
    ``v_bias``: tiny / small) or apart (``q_proj``, ``k_proj``, ``v_proj``: base / large), stacked here."""
    if qkv is None:
        qkv = {"weight": np.concatenate([q_proj["weight"], k_proj["weight"], v_proj["weight"]])}  # [3D, D]
        q_bias, v_bias = q_proj["bias"], v_proj["bias"]
    bias = np.concatenate([q_bias, np.zeros_like(q_bias), v_bias])  # [3D]
    return {"qkv": {"weight": qkv["weight"], "bias": bias}, "proj": proj}


def eva_qkv_backward(grads, separate):  # {qkv, proj} gradients -> keyed like EVA's stored weights
    """``eva_qkv`` in reverse: the fused projection's gradients cut back into the stored pieces (the key's
    bias gradient, of a constant zero, is dropped)."""
    weight, bias = grads["qkv"]["weight"], grads["qkv"]["bias"]
    dq_w, dk_w, dv_w = np.split(weight, 3)  # [D, D] each
    dq_b, _, dv_b = np.split(bias, 3)  # [D] each
    if separate:
        return {"q_proj": {"weight": dq_w, "bias": dq_b}, "k_proj": {"weight": dk_w},
                "v_proj": {"weight": dv_w, "bias": dv_b}, "proj": grads["proj"]}
    return {"qkv": {"weight": weight}, "q_bias": dq_b, "v_bias": dv_b, "proj": grads["proj"]}


# --- SigLIP: attention pooling by a learned latent query (Zhai et al. 2023; Lee et al. 2019's PMA) ---

def attention_pool(x, latent, q, kv, proj, norm, mlp, *, num_heads, eps, gelu_approximate="erf",
                   record=_no_record):  # [B, N, D] -> [B, D]
    """Multi-head attention pooling ("MAP"), the image summary of SigLIP's image tower (Zhai et al. 2023,
    "Sigmoid Loss for Language Image Pre-Training"; the head of Zhai et al. 2022, "Scaling Vision
    Transformers"; timm's AttentionPoolLatent, big_vision's MAPHead). It is the Set Transformer's pooling by
    multi-head attention (Lee et al. 2019, eqs. 7-8 and 11) with pre-norm: a learned latent query S of L tokens
    (L = 1 here) attends over the N tokens x, then an MLP with a residual:
        h = MultiHead(S W_q, x W_k, x W_v) W_o,    out = h + MLP(LN(h)),    pooled = out[:, 0]
    The attention is ``attention``'s softmax(q k^T / sqrt(Dh)) v with the queries taken from the latent instead of
    the tokens, so each head's pattern is [L, N]: how much each token contributes to the summary.

    ``kv`` holds k and v stacked along the output axis ([2D, D], rows laid out (k|v, head, Dh)) as timm stores
    them. L = latent length; trace names (prefix ``attn_pool.``): q, k, v, scores, pattern [B, H, L, N], z,
    attn_out, ln, mlp.pre, mlp.post, out.
    """
    B, N, D = x.shape
    L = latent.shape[1]
    Dh = D // num_heads
    query = linear(latent[0], **q).reshape(L, num_heads, Dh).transpose(1, 0, 2)  # [L, D] -> [H, L, Dh]
    query = np.repeat(query[None], B, axis=0)  # the same query for every image: [H, L, Dh] -> [B, H, L, Dh]
    kv_out = linear(x, **kv).reshape(B, N, 2, num_heads, Dh)  # [B, N, 2D] -> [B, N, 2, H, Dh]
    k, v = kv_out.transpose(2, 0, 3, 1, 4)  # each [B, H, N, Dh]
    record("q", query)
    record("k", k)
    record("v", v)
    scores = (query * x.dtype.type(Dh ** -0.5)) @ k.swapaxes(-1, -2)  # [B, H, L, Dh] @ [B, H, Dh, N] -> [B, H, L, N]
    record("scores", scores)
    pattern = softmax(scores)  # [B, H, L, N], each latent's row a distribution over the N tokens
    record("pattern", pattern)
    z = pattern @ v  # [B, H, L, N] @ [B, H, N, Dh] -> [B, H, L, Dh]
    record("z", z)
    h = linear(merge_heads(z), **proj)  # [B, H, L, Dh] -> [B, L, D]
    record("attn_out", h)
    normed = layer_norm(h, **norm, eps=eps)  # [B, L, D]
    record("ln", normed)
    out = h + mlp_block(normed, **mlp, gelu_approximate=gelu_approximate,
                        record=lambda name, a: record("mlp." + name, a))  # [B, L, D]
    record("out", out)
    return out[:, 0]  # [B, L, D] -> [B, D]: the first latent's output (timm's pool_type "token")


# what ``attention_pool_backward`` reads of the pool's recorded arrays (the trace's attn_pool.<name>)
ATTENTION_POOL_SAVED = ("q", "k", "v", "pattern", "z", "attn_out", "ln", "mlp.pre", "mlp.post")


def attention_pool_backward(d_pooled, x, saved, latent, q, kv, proj, norm, mlp, *, num_heads, eps,
                            gelu_approximate="erf", record=_no_record):  # [B, D], x [B, N, D] -> dx [B, N, D], {grads}
    """``attention_pool`` in reverse, from its input x and its recorded arrays ``saved`` (ATTENTION_POOL_SAVED):
    pooled = out[:, 0] hands d_pooled to the first latent's row; out = h + MLP(LN(h)) sends it to h both directly
    and through the MLP; then the attention as in ``attention_backward``, with Q = S W_q from the latent:
        dV = P^T dZ,   dP = dZ V^T,   dS = d softmax(dP),   dQ = scale * dS K,   dK = scale * dS^T Q.
    The latent and W_q are shared by every image, so their gradients are summed over the batch."""
    B, H, L, Dh = saved["q"].shape
    scale = x.dtype.type(Dh ** -0.5)
    d_out = np.zeros((B, L, H * Dh), d_pooled.dtype)  # [B, L, D]
    d_out[:, 0] = d_pooled
    record("out", d_out)
    d_normed, mlp_grads = mlp_block_backward(d_out, saved["ln"], saved["mlp.pre"], saved["mlp.post"], **mlp,
                                             gelu_approximate=gelu_approximate,
                                             record=lambda name, a: record("mlp." + name, a))  # [B, L, D]
    record("ln", d_normed)
    d_h, norm_grads = layer_norm_backward(d_normed, saved["attn_out"], **norm, eps=eps)  # [B, L, D]
    d_h += d_out  # the residual path of out = h + MLP(LN(h))
    record("attn_out", d_h)
    dz, proj_grads = linear_backward(d_h, merge_heads(saved["z"]), **proj)  # [B, L, D]
    dz = dz.reshape(B, L, H, Dh).transpose(0, 2, 1, 3)  # [B, L, D] -> [B, H, L, Dh]
    record("z", dz)
    d_pattern = dz @ saved["v"].swapaxes(-1, -2)  # dP = dZ V^T: [B, H, L, Dh] @ [B, H, Dh, N] -> [B, H, L, N]
    record("pattern", d_pattern)
    d_scores = softmax_backward(d_pattern, saved["pattern"])  # [B, H, L, N]
    record("scores", d_scores)
    dq = scale * (d_scores @ saved["k"])  # dQ = scale dS K: [B, H, L, N] @ [B, H, N, Dh] -> [B, H, L, Dh]
    dk = scale * (d_scores.swapaxes(-1, -2) @ saved["q"])  # dK = scale dS^T Q: [B, H, N, L] @ [B, H, L, Dh] -> [B, H, N, Dh]
    dv = saved["pattern"].swapaxes(-1, -2) @ dz  # dV = P^T dZ: [B, H, N, L] @ [B, H, L, Dh] -> [B, H, N, Dh]
    record("q", dq)
    record("k", dk)
    record("v", dv)
    d_kv = np.stack([dk, dv], axis=2).transpose(0, 3, 2, 1, 4)  # [B, H, 2, N, Dh] -> [B, N, 2, H, Dh], as kv's output
    dx, kv_grads = linear_backward(d_kv.reshape(B, -1, 2 * H * Dh), x, **kv)  # [B, N, 2D] -> [B, N, D]
    d_query = merge_heads(dq)  # [B, H, L, Dh] -> [B, L, D]
    latents = np.broadcast_to(latent, (B, L, H * Dh))  # the query projection's input, the same for every image
    d_latents, q_grads = linear_backward(d_query, latents, **q)  # [B, L, D] -> [B, L, D]
    return dx, {"latent": sum_over_rows(d_latents)[None], "q": q_grads, "kv": kv_grads, "proj": proj_grads,
                "norm": norm_grads, "mlp": mlp_grads}


# --- BEiT: relative position bias (Bao et al. 2022, BEiT, Sec. 2.2) -----------------------------------
# BEiT gives each block a learned table of attention biases, one entry per head for every (dy, dx) offset
# between two patches (Swin, Liu et al. 2021, eq. 4: softmax(q k^T / sqrt(Dh) + B) v), plus three entries for
# the class token, which has no place on the grid. ``relative_position_index`` says which entry each
# (query, key) pair reads; ``relative_position_bias`` gathers them into the [H, N, N] array ``attention`` adds
# to its scores. T = (2 gh - 1)(2 gw - 1) + 3 rows of the table.

def relative_position_index(grid):  # (gh, gw) -> [N, N] ints, N = 1 + gh * gw
    """Which row of the bias table each (query, key) pair reads, for a patch grid (gh, gw) behind one class token
    (timm ``gen_relative_position_index``, BEiT's unilm code).

    Patches i and j at (row, col) positions (yi, xi) and (yj, xj) differ by dy = yi - yj in [-(gh-1), gh-1] and
    dx = xi - xj in [-(gw-1), gw-1]: shifted to start at 0, (dy + gh - 1) (2 gw - 1) + (dx + gw - 1) numbers
    the (2 gh - 1)(2 gw - 1) offsets row by row, so two pairs with the same offset share a bias. The class
    token has no (dy, dx): its row of queries reads entry T - 3 (class to patch), its column of keys T - 2
    (patch to class), and the class token attending to itself T - 1.
    """
    gh, gw = grid
    num_offsets = (2 * gh - 1) * (2 * gw - 1)
    rows, cols = np.divmod(np.arange(gh * gw), gw)  # [P] each patch's grid position, row by row
    dy = rows[:, None] - rows[None, :] + (gh - 1)  # [P, P] the row offset query - key, shifted to 0 .. 2 gh - 2
    dx = cols[:, None] - cols[None, :] + (gw - 1)  # [P, P] the column offset, 0 .. 2 gw - 2
    index = np.empty((gh * gw + 1, gh * gw + 1), np.int64)  # [N, N], token 0 is the class token
    index[1:, 1:] = dy * (2 * gw - 1) + dx
    index[0, :] = num_offsets  # class token to every key
    index[:, 0] = num_offsets + 1  # every query to the class token
    index[0, 0] = num_offsets + 2  # class token to itself
    return index


def relative_position_bias(table, index):  # table [T, H], index [N, N] -> [H, N, N]
    """The bias ``attention`` adds to each head's scores: entry index[i, j] of the table for query i, key j."""
    return table[index].transpose(2, 0, 1)  # [N, N, H] -> [H, N, N]


def relative_position_bias_backward(d_bias, index, num_rows):  # d_bias [H, N, N] -> d_table [T, H]
    """``relative_position_bias`` in reverse: a gather reads each table entry at every pair that shares its
    offset, so the entry's gradient is the sum of their gradients, a scatter-add (np.add.at, which adds
    repeated indices instead of keeping only the last one, as ``d_table[index] += ...`` would)."""
    H = d_bias.shape[0]
    d_table = np.zeros((num_rows, H), np.float64)  # summed in float64: an entry gathers up to N of them
    np.add.at(d_table, index.reshape(-1), d_bias.reshape(H, -1).T)  # [N*N] rows of [N*N, H] into [T, H]
    return d_table.astype(d_bias.dtype)


# --- CLIP: quick GELU (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision") ---
# OpenAI's CLIP towers use x * sigmoid(1.702 x) in their MLPs (openai/CLIP model.py ``QuickGELU``), a cheaper
# stand-in for GELU (Hendrycks & Gimpel 2016, section 2: "x sigma(1.702 x)"); the weights trained with it need
# it, so timm names those models *_clip_quickgelu_* and HF's CLIPVisionConfig says hidden_act="quick_gelu".
# CLIP's other piece, the LayerNorm after the embedding (``norm_pre``), is ``layer_norm``: ViT.forward applies it.

QUICK_GELU_SLOPE = 1.702  # ``sigmoid``: with EVA-02's SiLU above


def quick_gelu(x):  # [...] -> [...]
    """Quick GELU (Hendrycks & Gimpel 2016, sec. 2; OpenAI CLIP): x * sigmoid(1.702 x)."""
    return x * sigmoid(x * x.dtype.type(QUICK_GELU_SLOPE))


def quick_gelu_backward(dy, x):  # dy, x [...] -> dx [...]
    """d/dx [x s(a x)] = s(a x) + a x s(a x) (1 - s(a x)), with s the sigmoid and a = 1.702 (s' = s (1 - s))."""
    a = x.dtype.type(QUICK_GELU_SLOPE)
    s = sigmoid(a * x)
    return dy * (s + a * x * s * (1 - s))
