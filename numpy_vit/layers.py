"""The Vision Transformer's math as small pure functions of NumPy arrays: the reference the model runs.

Shapes: B batch, N tokens (prefix tokens + patches), P patches, D width, H heads, Dh head width (D // H),
M MLP width, C channels, p patch side, gh x gw the patch grid.

Weights follow torch's layout (``weight`` is [out, in]) so that a timm or HF state dict can be wired in with
``**`` and no transposes. Every function computes in the dtype of its input (float32 by default, float64 on
request) and never upcasts.

``record`` is an optional callback ``record(name, array)``: the trace uses it to keep the intermediates the
forward pass computes anyway (lucidrains/vit-pytorch makes the softmax its own step for the same reason).

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


def layer_norm(x, weight, bias, *, eps):  # [..., D] -> [..., D]
    """Ba et al. 2016: normalise each token to zero mean and unit variance (biased), then scale and shift."""
    centred = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(centred * centred, axis=-1, keepdims=True)  # [..., 1]
    return centred / np.sqrt(var + eps) * weight + bias


def gelu(x, approximate="erf"):
    """Hendrycks & Gimpel 2016: x Phi(x), Phi the standard normal CDF. "erf" is exact (timm, HF); "tanh" is
    the Flax approximation. Phi(x) = erfc(-x / sqrt 2) / 2 keeps full relative precision for large negative
    x, where 1 + erf(x) would cancel."""
    if approximate == "tanh":
        c = x.dtype.type(math.sqrt(2.0 / math.pi))
        return 0.5 * x * (1.0 + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))
    return 0.5 * x * erfc(-x / x.dtype.type(math.sqrt(2.0)))


def softmax(x, axis=-1):
    """exp(x - max) / sum: subtracting the maximum changes nothing mathematically and prevents overflow."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


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
    z = z.transpose(0, 2, 1, 3).reshape(B, N, D)  # [B, H, N, Dh] -> [B, N, H, Dh] -> [B, N, D]: heads side by side
    return linear(z, **proj)  # [B, N, D]


def mlp_block(x, fc1, fc2, *, gelu_approximate="erf", record=_no_record):  # [B, N, D] -> [B, N, D]
    h = linear(x, **fc1)  # [B, N, M]
    record("pre", h)
    h = gelu(h, gelu_approximate)
    record("post", h)
    return linear(h, **fc2)  # [B, N, D]


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


def encoder(x, blocks, *, record=_no_record, **options):  # [B, N, D] -> [B, N, D]
    """The Transformer encoder (ViT eqs. 2-3): ``block`` after ``block``, block i recording its arrays as
    ``i.name`` (the trace's ``blocks.3.attn.pattern``). ``blocks``: each block's weights; ``options``: num_heads,
    eps, gelu_approximate, as for ``block``."""
    for i, weights in enumerate(blocks):
        x = block(x, **weights, **options, record=lambda name, a, i=i: record(f"{i}.{name}", a))
    return x
