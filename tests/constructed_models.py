"""ViTs whose weights are written by hand so that their attention is known: a sink head, an object the later
layers read, registers, a high-norm patch. No download, no training; timm's parameter names throughout, so the
same dict loads into timm's VisionTransformer.

The residual stream carries three hand-made features, and every attention and MLP output is zeroed, so each
layer sees the embedded input unchanged (only the attention *patterns* are of interest here):

    dim 0  brightness: the patch's mean normalised pixel, +1 white ... -1 black (patch_embed reads it)
    dim 1  the sink marker, only in the position embedding of the sink patch
    dim 2  the register marker, only in register reg0
    dims 3..  small fixed noise, so that a LayerNorm over D has something besides the features

A head reads a feature f by a constant query (q bias gain on its first channel) and a key that copies f
(k weight row = e_f): score_ij = gain * LN(x_j)[f] / sqrt(Dh), the same for every query i.
"""
from __future__ import annotations

import numpy as np

from numpy_vit import ViT, ViTConfig
from numpy_vit.model import init_params

BRIGHT, SINK_MARK, REG_MARK = 0, 1, 2
SINK_GAIN = 20.0       # LN(x_s)[1] ~ 5 at the sink patch and ~0 elsewhere: scores differ by ~25, softmax ~ 1
OBJECT_GAIN = 4.0      # LN(x)[0] ~ +-7 for white / black patches: the object's patches win by ~14


def _read_feature(params, layer, head, config, feature, gain):
    """Make one head's every query read ``feature``: q bias on its first channel, k weight row = e_feature."""
    d, dh = config.embed_dim, config.head_dim
    qkv_w, qkv_b = params[f"blocks.{layer}.attn.qkv.weight"], params[f"blocks.{layer}.attn.qkv.bias"]
    qkv_w[head * dh:(head + 1) * dh] = 0.0                                  # q rows of this head
    qkv_w[d + head * dh:d + (head + 1) * dh] = 0.0                          # k rows of this head
    qkv_b[head * dh:(head + 1) * dh] = 0.0
    qkv_b[d + head * dh:d + (head + 1) * dh] = 0.0
    qkv_b[head * dh] = gain
    qkv_w[d + head * dh, feature] = 1.0


def _uniform(params, layer, head, config):
    """A head with q = k = 0: every query attends to every key alike."""
    _read_feature(params, layer, head, config, BRIGHT, 0.0)


def constructed_vit(grid=(14, 14), patch=16, width=64, depth=4, heads=4, sink=(11, 2), high_norm=None,
                    registers=0, register_sink_layer=None, name="vit_tiny_patch16_224"):
    """A ViT whose layer-0 head 0 sends every query to the patch ``sink`` (row, col), whose other layer-0 heads
    attend uniformly, and whose later layers' heads all read the bright patches (the object of
    :func:`object_image`). ``high_norm``: a patch given a 10x larger residual norm (Darcet et al.'s artifact).
    ``registers``: that many register tokens; ``register_sink_layer``: a layer whose head 1 reads reg0."""
    config = ViTConfig(img_size=(grid[0] * patch, grid[1] * patch), patch_size=patch, embed_dim=width, depth=depth,
                       num_heads=heads, num_classes=0, num_reg_tokens=registers, no_embed_class=registers > 0,
                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, name=name)
    params = {k: np.array(v, dtype=np.float32) for k, v in init_params(config, seed=0).items()}
    rng = np.random.default_rng(0)
    t = 0 if config.no_embed_class else config.num_prefix_tokens
    pos = 0.05 * rng.standard_normal(params["pos_embed"].shape).astype(np.float32)   # [1, N_pos, D]
    pos[..., :3] = 0.0
    sink_row = t + sink[0] * grid[1] + sink[1]
    pos[0, sink_row, SINK_MARK] = 1.0
    if high_norm is not None:
        pos[0, t + high_norm[0] * grid[1] + high_norm[1], 3:] += 10.0 * rng.standard_normal(width - 3)
    params["pos_embed"] = pos
    params["cls_token"] = 0.05 * rng.standard_normal((1, 1, width)).astype(np.float32)
    params["cls_token"][..., :3] = 0.0
    if registers:
        reg = 0.05 * rng.standard_normal((1, registers, width)).astype(np.float32)
        reg[..., :3] = 0.0
        reg[0, 0, REG_MARK] = 1.0
        params["reg_token"] = reg
    proj = params["patch_embed.proj.weight"]                                # [D, 3, p, p]
    proj[:] = 0.0
    proj[BRIGHT] = 1.0 / (3 * patch * patch)                                # the mean normalised pixel
    params["patch_embed.proj.bias"][:] = 0.0
    for layer in range(depth):
        b = f"blocks.{layer}."
        params[b + "norm1.weight"][:] = 1.0
        params[b + "norm1.bias"][:] = 0.0
        for head in range(heads):
            if layer == 0:
                _read_feature(params, 0, head, config, SINK_MARK, SINK_GAIN) if head == 0 else \
                    _uniform(params, 0, head, config)
            elif layer == register_sink_layer and head == 1:
                _read_feature(params, layer, head, config, REG_MARK, SINK_GAIN)
            else:
                _read_feature(params, layer, head, config, BRIGHT, OBJECT_GAIN)
        for key in ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            params[b + key][:] = 0.0                                        # the stream passes unchanged
    return ViT(config, params)


def object_image(grid=(14, 14), patch=16, rows=(2, 8), cols=(7, 13)):
    """A black image with a white square over patches rows[0]..rows[1]-1 x cols[0]..cols[1]-1: HxWx3 uint8."""
    image = np.zeros((grid[0] * patch, grid[1] * patch, 3), np.uint8)
    image[rows[0] * patch:rows[1] * patch, cols[0] * patch:cols[1] * patch] = 255
    return image
