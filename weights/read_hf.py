"""HF transformers ViT folders: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``).

Key names follow ``transformers/models/vit/modeling_vit.py`` as saved on disk
(``encoder.layer.N.attention.attention.query``; transformers 5 renames them to
``layers.N.attention.q_proj`` in memory and back when saving, so both are read).
``ViTForImageClassification`` prefixes the encoder with ``vit.`` and adds
``classifier``; a bare ``ViTModel`` has neither, but has ``pooler.dense`` (a
Dense + tanh on the class token: the JAX ViT's pre-logits layer, which HF's
``convert_vit_timm_to_pytorch.py`` maps there). Query, key and value are three
Linear layers; timm stacks them into one ``qkv`` (rows q | k | v).
"""
from __future__ import annotations

import json
import os

import numpy as np

from numpy_vit.config import INCEPTION_MEAN, INCEPTION_STD, ViTConfig
from numpy_vit.errors import CheckpointError

from .config_from_tensors import infer_config
from .hf_fields import _is_int, _pair, _positive, class_names, config_from_fields, square_patch  # noqa: F401 (the fields of every HF config.json reader)
from .mapping import apply_table, count_blocks, rule
from .read_hf_clip import CLIP_MODEL_TYPES, looks_like_clip, read_hf_clip
from .read_hf_dinov2 import DINOV2_MODEL_TYPES, read_hf_dinov2


def stack_qkv(q, k, v):
    """Three [D, D] (or [D]) projections -> timm's one [3D, D] (or [3D]), rows q | k | v."""
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"query, key and value differ in shape: {q.shape}, {k.shape}, {v.shape}")
    return np.concatenate([q, k, v], axis=0)                       # [D, D] x 3 -> [3D, D]


def _layer_rules(block: str, names: dict):
    """Rules of one encoder layer; ``names`` gives the HF module path of each timm module."""
    rules = []
    for part in ("weight", "bias"):
        rules.append(rule([f"{block}.{names[m]}.{part}" for m in ("q", "k", "v")], f"blocks.{{i}}.attn.qkv.{part}",
                          stack_qkv))
        for hf, ours in (("norm1", "norm1"), ("proj", "attn.proj"), ("norm2", "norm2"), ("fc1", "mlp.fc1"),
                         ("fc2", "mlp.fc2")):
            rules.append(rule(f"{block}.{names[hf]}.{part}", f"blocks.{{i}}.{ours}.{part}"))
    return rules


_EMBEDDINGS = [
    rule("embeddings.cls_token", "cls_token"),                                   # [1, 1, D]
    rule("embeddings.position_embeddings", "pos_embed"),                         # [1, 1 + P, D]
    rule("embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),  # [D, C, p, p]
    rule("embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"),
]
_TOP = [rule(f"{hf}.{part}", f"{ours}.{part}") for part in ("weight", "bias")
        for hf, ours in (("layernorm", "norm"), ("pooler.dense", "pre_logits.fc"), ("classifier", "head"))]

# transformers <= 4 / every file on the hub
HF_TABLE = _EMBEDDINGS + _layer_rules("encoder.layer.{i}", dict(
    q="attention.attention.query", k="attention.attention.key", v="attention.attention.value",
    norm1="layernorm_before", proj="attention.output.dense", norm2="layernorm_after",
    fc1="intermediate.dense", fc2="output.dense")) + _TOP
# transformers 5, a state_dict() saved without save_pretrained()
HF5_TABLE = _EMBEDDINGS + _layer_rules("layers.{i}", dict(
    q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", norm1="layernorm_before",
    proj="attention.o_proj", norm2="layernorm_after", fc1="mlp.fc1", fc2="mlp.fc2")) + _TOP

HF_IGNORED = (r"^embeddings\.mask_token$",)  # only used by masked-image-modelling pre-training

_GELU = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def is_hf_config(cfg: dict) -> bool:
    return "model_type" in cfg or "hidden_size" in cfg


def config_from_hf(cfg: dict, where: str, preprocessor: dict | None = None, name: str = "") -> ViTConfig:
    """A ViTConfig from HF's ViT ``config.json`` (and ``preprocessor_config.json`` when present).

    HF's defaults differ from timm's: LayerNorm eps 1e-12, inputs normalised with
    mean = std = 0.5 and resized (bilinear, no crop) straight to ``image_size``,
    and ``interpolate_pos_encoding`` resamples with torch's plain bicubic.
    """
    if cfg.get("model_type", "vit") != "vit":
        raise CheckpointError(f"{where}: model_type {cfg['model_type']!r} is not supported; the HF readers know "
                              f"'vit' (ViTModel, ViTForImageClassification), {', '.join(map(repr, CLIP_MODEL_TYPES))} "
                              f"(CLIPVisionModel[WithProjection], CLIPModel's image tower) and "
                              f"{', '.join(map(repr, DINOV2_MODEL_TYPES))} (Dinov2Model, Dinov2WithRegistersModel)")
    act = cfg.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _GELU:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (known: {', '.join(_GELU)})")
    if cfg.get("pooler_act", "tanh") != "tanh":
        raise CheckpointError(f"{where}: pooler_act {cfg['pooler_act']!r} is not supported (only 'tanh')")
    patch = square_patch(cfg, 16, where)
    hidden = _positive(cfg, "hidden_size", 768, where)
    labels = class_names(cfg, where)
    fields = dict(
        embed_dim=hidden, depth=_positive(cfg, "num_hidden_layers", 12, where),
        num_heads=_positive(cfg, "num_attention_heads", 12, where),
        mlp_ratio=_positive(cfg, "intermediate_size", 4 * hidden, where) / hidden, qkv_bias=cfg.get("qkv_bias", True),
        layer_norm_eps=_positive(cfg, "layer_norm_eps", 1e-12, where, kind=float), gelu=_GELU[act],
        img_size=_pair(cfg.get("image_size", 224), "image_size", where), patch_size=patch,
        in_chans=_positive(cfg, "num_channels", 3, where), pos_embed_resample="bicubic_hf",
        mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0, interpolation="bilinear",
        num_classes=len(labels), labels=labels, name=name,
    )
    return config_from_fields(fields, preprocessor, where)


def hf_params(raw: dict, where: str):
    """(params, sources) from an HF ViT state dict, with or without the ``vit.`` prefix and classifier."""
    raw = {k[len("vit."):] if k.startswith("vit.") else k: v for k, v in raw.items()}
    if any(k.startswith("layers.") for k in raw):
        return apply_table(raw, HF5_TABLE, count_blocks(raw, r"^layers\.(\d+)\.", where), where, HF_IGNORED)
    return apply_table(raw, HF_TABLE, count_blocks(raw, r"^encoder\.layer\.(\d+)\.", where), where, HF_IGNORED)


def looks_like_hf(keys) -> bool:
    return any(k.startswith(("vit.embeddings.", "beit.embeddings.", "embeddings.patch_embeddings.",
                              "dinov2.embeddings.")) for k in keys) or looks_like_clip(keys)


def read_hf(raw: dict, cfg: dict, where: str, preprocessor=None, name="", arch=None):
    """(config, params, sources) of an HF ViT, CLIP image tower or DINOv2 (by config.json's model_type): the
    config from config.json, checked against the shapes."""
    model_type = cfg.get("model_type", "vit")
    if model_type in CLIP_MODEL_TYPES:
        config, params, sources = read_hf_clip(raw, cfg, where, preprocessor, name=name)
    elif model_type in DINOV2_MODEL_TYPES:
        config, params, sources = read_hf_dinov2(raw, cfg, where, preprocessor, name=name)
    else:
        config, params, sources = _read_hf_vit(raw, cfg, where, preprocessor, name=name)
    if arch is not None:
        from .config_from_tensors import config_for_arch
        given = config_for_arch(arch)
        if given.num_heads != config.num_heads:
            raise CheckpointError(f"{where}: config.json says {config.num_heads} heads, arch={arch!r} says "
                                  f"{given.num_heads}")
    return config, params, sources


def _read_hf_vit(raw: dict, cfg: dict, where: str, preprocessor=None, name=""):
    """(config, params, sources) of an HF ViTModel / ViTForImageClassification."""
    params, sources = hf_params(raw, where)
    base = config_from_hf(cfg, where, preprocessor, name=name)
    config = infer_config(params, where, base=base)
    if config.num_classes != base.num_classes:  # id2label describes another head (or HF's 2 default labels)
        config = config.replace(labels=())
    return config, params, sources


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def read_preprocessor(folder: str):
    path = os.path.join(folder, "preprocessor_config.json")
    return read_json(path) if os.path.isfile(path) else None
