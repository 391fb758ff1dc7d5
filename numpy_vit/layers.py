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


def attention(x, qkv, proj, *, num_heads, record=_no_record):  # [B, N, D] -> [B, N, D]
    """Multi-head self-attention (Vaswani et al. 2017, eq. 1): softmax(q k^T / sqrt(Dh)) v, per head.

    ``qkv`` holds q, k and v stacked along the output axis ([3D, D], rows laid out (q|k|v, head, Dh)) as
    timm stores them. The query is scaled before the product, as timm does, so float32 rounding matches.
    """
    B, N, D = x.shape
    Dh = D // num_heads
    qkv_out = linear(x, **qkv).reshape(B, N, 3, num_heads, Dh)  # [B, N, 3D] -> [B, N, 3, H, Dh]
    q, k, v = qkv_out.transpose(2, 0, 3, 1, 4)  # each [B, H, N, Dh]
    record("q", q)
    record("k", k)
    record("v", v)
    scores = (q * x.dtype.type(Dh ** -0.5)) @ k.swapaxes(-1, -2)  # [B, H, N, Dh] @ [B, H, Dh, N] -> [B, H, N, N]
    record("scores", scores)
    pattern = softmax(scores)  # [B, H, N, N], each row a distribution over the N keys
    record("pattern", pattern)
    z = pattern @ v  # [B, H, N, N] @ [B, H, N, Dh] -> [B, H, N, Dh]
    record("z", z)
    return linear(merge_heads(z), **proj)  # [B, H, N, Dh] -> [B, N, D]


def attention_backward(dy, x, q, k, v, pattern, z, qkv, proj, *, num_heads,
                       record=_no_record):  # dy, x [B, N, D] -> dx [B, N, D], {qkv, proj}
    """``attention`` in reverse, from its recorded q, k, v, pattern and z (Z = P V, P = softmax(S),
    S = scale Q K^T, scale = Dh^-1/2):
        dV = P^T dZ,   dP = dZ V^T,   dS = d softmax(dP),   dQ = scale * dS K,   dK = scale * dS^T Q,
    then dQ, dK, dV side by side as the qkv projection's output gradient."""
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
    record("q", dq)
    record("k", dk)
    record("v", dv)
    dx, qkv_grads = linear_backward(d_qkv.reshape(B, N, 3 * H * Dh), x, **qkv)  # [B, N, 3D] -> [B, N, D]
    return dx, {"qkv": qkv_grads, "proj": proj_grads}


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


def block(x, norm1, attn, norm2, mlp, ls1=None, ls2=None, *, num_heads, eps, gelu_approximate="erf",
          record=_no_record):  # [B, N, D] -> [B, N, D]
    """One pre-norm transformer block (ViT eqs. 2-3): x + attn(LN(x)), then x + mlp(LN(x)); optional layer
    scale (CaiT) multiplies each branch by a learned per-channel gamma."""
    record("resid_pre", x)
    h = layer_norm(x, **norm1, eps=eps)
    record("ln1", h)
    h = attention(h, **attn, num_heads=num_heads, record=lambda name, a: record("attn." + name, a))
    if ls1 is not None:
        h = h * ls1["gamma"]
    record("attn_out", h)
    x = x + h
    record("resid_mid", x)
    h = layer_norm(x, **norm2, eps=eps)
    record("ln2", h)
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


def block_backward(dy, saved, norm1, attn, norm2, mlp, ls1=None, ls2=None, *, num_heads, eps,
                   gelu_approximate="erf", record=_no_record):  # dy [B, N, D] -> dx [B, N, D], {weights' grads}
    """``block`` in reverse: the MLP branch, then the attention branch. ``saved``: the block's recorded arrays
    by name (``BLOCK_SAVED``). Each residual add x + h hands its gradient unchanged to both x and h, so the
    gradient leaving the block is dy plus what flows back through each branch."""
    grads = {}
    record("resid_post", dy)
    record("mlp_out", dy)  # x + h: the branch's output gets the residual stream's gradient
    dh = dy
    if ls2 is not None:  # the trace keeps the branch after its layer scale: recompute it before
        dh, grads["ls2"] = layer_scale_backward(dy, linear(saved["mlp.post"], **mlp["fc2"]), **ls2)
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
    dh, grads["attn"] = attention_backward(dh, saved["ln1"], saved["attn.q"], saved["attn.k"], saved["attn.v"],
                                           saved["attn.pattern"], saved["attn.z"], **attn, num_heads=num_heads,
                                           record=lambda name, a: record("attn." + name, a))  # [B, N, D]
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


# --- CLIP: quick GELU (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision") ---
# OpenAI's CLIP towers use x * sigmoid(1.702 x) in their MLPs (openai/CLIP model.py ``QuickGELU``), a cheaper
# stand-in for GELU (Hendrycks & Gimpel 2016, section 2: "x sigma(1.702 x)"); the weights trained with it need
# it, so timm names those models *_clip_quickgelu_* and HF's CLIPVisionConfig says hidden_act="quick_gelu".
# CLIP's other piece, the LayerNorm after the embedding (``norm_pre``), is ``layer_norm``: ViT.forward applies it.

QUICK_GELU_SLOPE = 1.702


def sigmoid(x):
    """1 / (1 + exp(-x)), computed from exp(-|x|) <= 1 so that it never overflows and keeps full relative
    precision on both tails: for x >= 0 it is 1 / (1 + e), for x < 0 it is e / (1 + e), with e = exp(-|x|)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def quick_gelu(x):  # [...] -> [...]
    """Quick GELU (Hendrycks & Gimpel 2016, sec. 2; OpenAI CLIP): x * sigmoid(1.702 x)."""
    return x * sigmoid(x * x.dtype.type(QUICK_GELU_SLOPE))


def quick_gelu_backward(dy, x):  # dy, x [...] -> dx [...]
    """d/dx [x s(a x)] = s(a x) + a x s(a x) (1 - s(a x)), with s the sigmoid and a = 1.702 (s' = s (1 - s))."""
    a = x.dtype.type(QUICK_GELU_SLOPE)
    s = sigmoid(a * x)
    return dy * (s + a * x * s * (1 - s))
