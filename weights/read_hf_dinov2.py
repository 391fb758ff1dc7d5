"""HF transformers DINOv2 folders: ``Dinov2Model`` and ``Dinov2WithRegistersModel`` (Oquab et al. 2023; Darcet et
al. 2023), the backbones of ``facebook/dinov2-small`` ... and ``facebook/dinov2-with-registers-small`` ...

Key names follow ``transformers/models/dinov2/modeling_dinov2.py``: timm's ViT with the HF ViT's attention names
(``encoder.layer.N.attention.attention.{query,key,value}``, ``attention.output.dense``), ``norm1`` / ``norm2``,
``mlp.fc1`` / ``fc2`` and layer scale as ``layer_scale1.lambda1`` (timm's ``ls1.gamma``); ``layernorm`` is the
final norm, and the pooled output is its class token. With registers, HF keeps the class token's position in
the table and inserts the registers after it without one: read here as a table with a position row for every
prefix token (no_embed_class=False), the registers' rows zero. (timm's own conversion instead adds the class
token's position to the class token and drops it from the table; one float32 rounding of that sum would keep a
float64 run from agreeing with HF to 1e-10, so the stored values are kept as they are.) HF resamples the table
with plain bicubic, except the register model, which uses antialias (as timm does).
"""
from __future__ import annotations

import numpy as np

from numpy_vit.config import IMAGENET_MEAN, IMAGENET_STD, ViTConfig
from numpy_vit.errors import CheckpointError

from .config_from_tensors import infer_config
from .hf_fields import _pair, _positive, config_from_fields, square_patch
from .mapping import apply_table, count_blocks, need_rank, rule

DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
_ACT = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def _stack_qkv(q, k, v):  # [D, D] (or [D]) x 3 -> [3D, D] (or [3D]), rows q | k | v as timm stores them
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"query, key and value differ in shape: {q.shape}, {k.shape}, {v.shape}")
    return np.concatenate([q, k, v], axis=0)


def _positions_with_registers(pos, registers):  # [1, 1 + P, D], [1, R, D] -> [1, 1 + R + P, D]
    """HF's table with a zero row for each register after the class token's: in timm's layout (a position row
    for every prefix token) this adds nothing to the registers, as HF does, and keeps every value as stored."""
    pos, registers = need_rank(pos, 3, "[1, N, D]"), need_rank(registers, 3, "[1, R, D]")
    return np.concatenate([pos[:, :1], np.zeros_like(registers), pos[:, 1:]], axis=1)


_LAYER = "encoder.layer.{i}."
_BLOCKS = [
    *[rule([_LAYER + f"attention.attention.{p}.{part}" for p in ("query", "key", "value")],
           f"blocks.{{i}}.attn.qkv.{part}", _stack_qkv) for part in ("weight", "bias")],
    *[rule(_LAYER + f"{hf}.{part}", f"blocks.{{i}}.{ours}.{part}") for part in ("weight", "bias")
      for hf, ours in (("attention.output.dense", "attn.proj"), ("norm1", "norm1"), ("norm2", "norm2"),
                       ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))],
    rule(_LAYER + "layer_scale1.lambda1", "blocks.{i}.ls1.gamma"),
    rule(_LAYER + "layer_scale2.lambda1", "blocks.{i}.ls2.gamma"),
    rule("embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),
    rule("embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"),
    rule("layernorm.weight", "norm.weight"),
    rule("layernorm.bias", "norm.bias"),
]
DINOV2_TABLE = [rule("embeddings.cls_token", "cls_token"), rule("embeddings.position_embeddings", "pos_embed")] + _BLOCKS
DINOV2_REGISTERS_TABLE = [
    rule("embeddings.cls_token", "cls_token"),
    rule(["embeddings.position_embeddings", "embeddings.register_tokens"], "pos_embed", _positions_with_registers),
    rule("embeddings.register_tokens", "reg_token"),
] + _BLOCKS
DINOV2_IGNORED = (r"^embeddings\.mask_token$",)  # only used by masked-image pre-training


def config_from_hf_dinov2(cfg: dict, where: str, preprocessor: dict | None = None, name: str = "") -> ViTConfig:
    """A ViTConfig from an HF DINOv2 config.json: layer scale, no head (the pooled class token is the output),
    HF's plain bicubic position resampling, BitImageProcessor's ImageNet mean / std, resize 256 + crop 224."""
    if cfg.get("use_swiglu_ffn"):
        raise CheckpointError(f"{where}: use_swiglu_ffn=True (DINOv2 giant) uses a SwiGLU MLP, which this reader does "
                              f"not model")
    act = cfg.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _ACT:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (known: {', '.join(_ACT)})")
    patch = square_patch(cfg, 14, where)
    hidden = _positive(cfg, "hidden_size", 768, where)
    registers = cfg.get("model_type") == "dinov2_with_registers"
    fields = dict(embed_dim=hidden, depth=_positive(cfg, "num_hidden_layers", 12, where),
                  num_heads=_positive(cfg, "num_attention_heads", 12, where),
                  mlp_ratio=_positive(cfg, "mlp_ratio", 4, where, kind=float),
                  layer_norm_eps=_positive(cfg, "layer_norm_eps", 1e-6, where, kind=float), gelu=_ACT[act],
                  img_size=_pair(cfg.get("image_size", 518), "image_size", where), patch_size=patch,
                  in_chans=_positive(cfg, "num_channels", 3, where), qkv_bias=cfg.get("qkv_bias", True),
                  init_values=_positive(cfg, "layerscale_value", 1.0, where, kind=float),
                  num_reg_tokens=_positive(cfg, "num_register_tokens", 4, where) if registers else 0,
                  pos_embed_resample="bicubic_antialias" if registers else "bicubic_hf", mean=IMAGENET_MEAN,
                  std=IMAGENET_STD,
                  crop_pct=224 / 256, interpolation="bicubic", num_classes=0, name=name)
    return config_from_fields(fields, preprocessor, where)


def read_hf_dinov2(raw: dict, cfg: dict, where: str, preprocessor=None, name=""):
    """(config, params, sources) of an HF DINOv2 backbone, with or without registers."""
    raw = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in raw.items()}
    table = DINOV2_REGISTERS_TABLE if "embeddings.register_tokens" in raw else DINOV2_TABLE
    depth = count_blocks(raw, r"^encoder\.layer\.(\d+)\.", where)
    params, sources = apply_table(raw, table, depth, where, DINOV2_IGNORED)
    base = config_from_hf_dinov2(cfg, where, preprocessor, name=name)
    return infer_config(params, where, base=base), params, sources
