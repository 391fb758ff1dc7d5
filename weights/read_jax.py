"""Google's JAX / Flax ViT ``.npz``: the paper's own checkpoints and the big_vision layout.

The original release (google-research/vision_transformer, ``models_vit.py``)
flattens the Flax parameter tree with ``/``: ``Transformer/encoderblock_N/
MultiHeadDotProductAttention_1/query/kernel`` and so on, sometimes under
``opt/target/`` (a Flax optimizer's copy). big_vision (``big_vision/models/vit.py``)
numbers the submodules of a block 0, 0, 1, 0 instead of 0, 1, 2, 3, puts the
position embedding at ``pos_embedding`` (patches only; the class token, when
there is one, is appended after it), prefixes everything with ``params/``, and
may stack the blocks into one ``Transformer/encoderblock/...`` with a leading
layer axis (``nn.scan``). timm's ``_load_weights`` reads the same files.

Flax keeps a Dense kernel as [in, out] (torch's Linear weight is [out, in]), a
convolution as [p, p, C, D] (torch: [D, C, p, p]), and attention projections
per head: query/key/value kernels [D, H, Dh], the output kernel [H, Dh, D]. The
head count is therefore stored in the file, unlike in torch checkpoints.
"""
from __future__ import annotations

import numpy as np

from numpy_vit.errors import CheckpointError

from .config_from_tensors import config_for_arch, infer_config
from .labels import imagenet_labels
from .mapping import apply_table, count_blocks, need_rank, rule


def conv_from_hwio(kernel):
    """[p, p, C, D] -> [D, C, p, p]."""
    return need_rank(kernel, 4, "[p, p, C, D]").transpose(3, 2, 0, 1)


def linear_from_kernel(kernel):
    """[in, out] -> [out, in]."""
    return need_rank(kernel, 2, "[in, out]").T


def qkv_from_heads(q, k, v):
    """Three [D, H, Dh] kernels -> timm's [3D, D] (rows q | k | v, each head's Dh rows together)."""
    return np.concatenate([need_rank(w, 3, "[D, H, Dh]").reshape(w.shape[0], -1).T for w in (q, k, v)])


def qkv_bias_from_heads(q, k, v):
    """Three [H, Dh] biases -> [3D]."""
    return np.concatenate([need_rank(b, 2, "[H, Dh]").reshape(-1) for b in (q, k, v)])


def out_from_heads(kernel):
    """[H, Dh, D] -> [D, H*Dh]: the output projection reads the heads' outputs side by side."""
    return need_rank(kernel, 3, "[H, Dh, D]").reshape(-1, kernel.shape[-1]).T


def pos_embed_from_jax(pos):
    """[1, N, D] (or [N, D]) -> [1, N, D]."""
    return pos[None] if pos.ndim == 2 else need_rank(pos, 3, "[1, N, D]")


def jax_table(big_vision: bool):
    """The rules of one layout: original (MHA_1, LayerNorm_2, MlpBlock_3) or big_vision (MHA_0, LayerNorm_1, MlpBlock_0)."""
    attn, norm2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
                       ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    b = "Transformer/encoderblock_{i}"
    t = "blocks.{i}"
    return [
        rule("cls", "cls_token"),                                                  # [1, 1, D]
        rule("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding", "pos_embed",
             pos_embed_from_jax),                                                  # [1, N_pos, D]
        rule("embedding/kernel", "patch_embed.proj.weight", conv_from_hwio),       # [p, p, C, D] -> [D, C, p, p]
        rule("embedding/bias", "patch_embed.proj.bias"),
        rule(f"{b}/LayerNorm_0/scale", f"{t}.norm1.weight"),
        rule(f"{b}/LayerNorm_0/bias", f"{t}.norm1.bias"),
        rule([f"{b}/{attn}/{n}/kernel" for n in ("query", "key", "value")], f"{t}.attn.qkv.weight", qkv_from_heads),
        rule([f"{b}/{attn}/{n}/bias" for n in ("query", "key", "value")], f"{t}.attn.qkv.bias", qkv_bias_from_heads),
        rule(f"{b}/{attn}/out/kernel", f"{t}.attn.proj.weight", out_from_heads),   # [H, Dh, D] -> [D, D]
        rule(f"{b}/{attn}/out/bias", f"{t}.attn.proj.bias"),
        rule(f"{b}/{norm2}/scale", f"{t}.norm2.weight"),
        rule(f"{b}/{norm2}/bias", f"{t}.norm2.bias"),
        rule(f"{b}/{mlp}/Dense_0/kernel", f"{t}.mlp.fc1.weight", linear_from_kernel),  # [D, M] -> [M, D]
        rule(f"{b}/{mlp}/Dense_0/bias", f"{t}.mlp.fc1.bias"),
        rule(f"{b}/{mlp}/Dense_1/kernel", f"{t}.mlp.fc2.weight", linear_from_kernel),  # [M, D] -> [D, M]
        rule(f"{b}/{mlp}/Dense_1/bias", f"{t}.mlp.fc2.bias"),
        rule("Transformer/encoder_norm/scale", "norm.weight"),
        rule("Transformer/encoder_norm/bias", "norm.bias"),
        rule("pre_logits/kernel", "pre_logits.fc.weight", linear_from_kernel),     # [D, R] -> [R, D]
        rule("pre_logits/bias", "pre_logits.fc.bias"),
        rule("head/kernel", "head.weight", linear_from_kernel),                    # [D or R, K] -> [K, D or R]
        rule("head/bias", "head.bias"),
    ]


PREFIXES = ("opt/target/", "params/img/", "params/")


def is_jax(keys) -> bool:
    return any(k.endswith("embedding/kernel") and k[:-len("embedding/kernel")] in ("", *PREFIXES) for k in keys)


def strip_prefix(raw: dict, where: str):
    """Drop the ``opt/target/`` / ``params/`` prefix; other ``opt/`` entries are optimizer state, left out."""
    prefix = next((p for p in PREFIXES if p + "embedding/kernel" in raw), "")
    if not prefix:
        return raw, prefix
    outside = sorted(k for k in raw if not k.startswith(prefix) and not k.startswith("opt/"))
    if outside:
        raise CheckpointError(f"{where}: keys outside the {prefix!r} tree: {', '.join(outside[:10])}")
    return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}, prefix


def unstack_blocks(raw: dict, where: str) -> dict:
    """``Transformer/encoderblock/X`` [L, ...] -> ``Transformer/encoderblock_{i}/X`` (big_vision's scanned layers)."""
    stacked = "Transformer/encoderblock/"
    keys = [k for k in raw if k.startswith(stacked)]
    if not keys:
        return raw
    depths = {raw[k].shape[0] if np.ndim(raw[k]) else None for k in keys}  # None: a scalar cannot be stacked
    if len(depths) != 1 or None in depths:
        raise CheckpointError(f"{where}: the stacked blocks disagree on the layer axis: "
                              + ", ".join(f"{k} {raw[k].shape}" for k in keys[:6]))
    (depth,) = depths
    out = {k: v for k, v in raw.items() if not k.startswith(stacked)}
    for k in keys:
        for i in range(depth):
            out[f"Transformer/encoderblock_{i}/{k[len(stacked):]}"] = raw[k][i]
    return out


# The original JAX code's numerics: flax.linen.gelu is the tanh approximation, LayerNorm eps 1e-6; its eval
# pipeline resizes straight to the model's size (no crop) with inputs in [-1, 1]; timm resamples the position
# embedding of these checkpoints bilinearly without antialiasing.
JAX_SOURCE = dict(gelu="tanh", layer_norm_eps=1e-6, pos_embed_resample="bilinear")
JAX_PREPROCESSING = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, interpolation="bilinear")


def read_jax(raw: dict, where: str, arch=None, name: str = ""):
    """(config, params, sources, layout) of a Google ViT ``.npz`` given as its ``{key: array}``."""
    raw, prefix = strip_prefix(raw, where)
    stacked = any(k.startswith("Transformer/encoderblock/") for k in raw)
    raw = unstack_blocks(raw, where)
    big_vision = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in raw or \
        "pos_embedding" in raw
    depth = count_blocks(raw, r"^Transformer/encoderblock_(\d+)/", where)
    params, sources = apply_table(raw, jax_table(big_vision), depth, where, ignore=(r"^opt/",))
    attn = "MultiHeadDotProductAttention_0" if big_vision else "MultiHeadDotProductAttention_1"
    query = raw.get(f"Transformer/encoderblock_0/{attn}/query/kernel")
    heads = int(query.shape[1]) if query is not None and query.ndim == 3 else None
    if arch is None:
        base = None
    elif isinstance(arch, str):
        base = config_for_arch(arch).replace(**JAX_SOURCE)
    else:  # an explicit ViTConfig is taken as meant
        base = config_for_arch(arch)
    if base is not None and heads is not None and base.num_heads != heads:
        raise CheckpointError(f"{where}: the kernels hold {heads} heads, arch={getattr(base, 'name', arch)!r} says "
                              f"{base.num_heads}")
    config = infer_config(params, where, base=base, num_heads=heads, name=name, **JAX_SOURCE, **JAX_PREPROCESSING)
    if config.num_classes == 1000 and not config.labels:
        config = config.replace(labels=imagenet_labels())
    layout = ("big_vision" if big_vision else "original") + (", stacked blocks" if stacked else "") + \
        (f", prefix {prefix!r}" if prefix else "")
    return config, params, sources, layout
