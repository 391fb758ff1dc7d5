"""HF transformers CLIP image towers: ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` folders, and the
image tower of a whole ``CLIPModel`` (``openai/clip-vit-base-patch32``: its text tower is left unread).

Key names follow ``transformers/models/clip/modeling_clip.py``: ``vision_model.embeddings.class_embedding`` [D]
(timm's ``cls_token`` [1, 1, D]), ``position_embedding.weight`` [N, D] (an nn.Embedding), a patch convolution
without bias, ``pre_layrnorm`` (timm's ``norm_pre``, spelled so in HF), ``encoder.layers.N.self_attn.{q,k,v}_proj``,
``out_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``, ``post_layernorm`` (timm's final ``norm``: HF applies it to the
class token alone, which is all the head reads) and ``visual_projection`` [E, D] without bias: CLIP's projection
into the joint image-text space, which timm keeps as the head with a zero bias (as timm's OpenAI conversion
does), so the model's logits are HF's ``image_embeds``.
"""
from __future__ import annotations

import numpy as np

from numpy_vit.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ViTConfig
from numpy_vit.errors import CheckpointError

from .config_from_tensors import infer_config
from .hf_fields import _pair, _positive, config_from_fields, square_patch
from .mapping import apply_table, count_blocks, need_rank, rule

CLIP_MODEL_TYPES = ("clip_vision_model", "clip")
_ACT = {"quick_gelu": "quick", "gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
# CLIPVisionConfig's defaults (ViT-B/32): config.json leaves out the fields that have them
_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _as_token(a):  # [D] -> [1, 1, D]
    return need_rank(a, 1, "[D]")[None, None]


def _as_pos_embed(a):  # [N, D] -> [1, N, D]
    return need_rank(a, 2, "[N, D]")[None]


def _zero_bias(weight):  # [E, D] -> [E]
    return np.zeros(need_rank(weight, 2, "[E, D]").shape[0], weight.dtype)


def _stack_qkv(q, k, v):  # [D, D] (or [D]) x 3 -> [3D, D] (or [3D]), rows q | k | v as timm stores them
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"q_proj, k_proj and v_proj differ in shape: {q.shape}, {k.shape}, {v.shape}")
    return np.concatenate([q, k, v], axis=0)


_LAYER = "vision_model.encoder.layers.{i}."
CLIP_TABLE = [
    rule("vision_model.embeddings.class_embedding", "cls_token", _as_token),
    rule("vision_model.embeddings.position_embedding.weight", "pos_embed", _as_pos_embed),
    rule("vision_model.embeddings.patch_embedding.weight", "patch_embed.proj.weight"),
    rule("vision_model.pre_layrnorm.weight", "norm_pre.weight"),
    rule("vision_model.pre_layrnorm.bias", "norm_pre.bias"),
    *[rule([_LAYER + f"self_attn.{p}_proj.{part}" for p in "qkv"], f"blocks.{{i}}.attn.qkv.{part}", _stack_qkv)
      for part in ("weight", "bias")],
    *[rule(_LAYER + f"{hf}.{part}", f"blocks.{{i}}.{ours}.{part}") for part in ("weight", "bias")
      for hf, ours in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                       ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))],
    rule("vision_model.post_layernorm.weight", "norm.weight"),
    rule("vision_model.post_layernorm.bias", "norm.bias"),
    rule("visual_projection.weight", "head.weight"),
    rule("visual_projection.weight", "head.bias", _zero_bias),
]
# a whole CLIPModel also holds the text tower and the temperature: not part of the image model
CLIP_IGNORED = (r"^text_model\.", r"^text_projection\.", r"^logit_scale$", r"position_ids$")


def looks_like_clip(keys) -> bool:
    return any(k.startswith(("vision_model.embeddings.", "embeddings.class_embedding")) for k in keys)


def with_vision_model_prefix(raw: dict) -> dict:
    """transformers 5 saves a CLIPVisionModel's tower without the ``vision_model.`` prefix that every CLIP file on
    the hub has (and a CLIPModel keeps): put it back, so that one table reads both."""
    if any(k.startswith("vision_model.") for k in raw):
        return raw
    return {k if k.startswith("visual_projection.") else "vision_model." + k: v for k, v in raw.items()}


def vision_config(cfg: dict, where: str) -> dict:
    """The image tower's fields: config.json itself (CLIPVisionModel) or its ``vision_config`` (CLIPModel)."""
    if cfg.get("model_type") == "clip":
        vision = cfg.get("vision_config") or {}
        if not isinstance(vision, dict):
            raise CheckpointError(f"{where}: vision_config must be a JSON object, got {vision!r:.80}")
        return {**_DEFAULTS, **vision, "projection_dim": cfg.get("projection_dim", vision.get("projection_dim"))}
    return {**_DEFAULTS, **cfg}


def config_from_hf_clip(cfg: dict, where: str, preprocessor: dict | None = None, name: str = "") -> ViTConfig:
    """A ViTConfig from an HF CLIP config.json: norm_pre, the class token read by the head, HF's plain bicubic
    position resampling, and CLIPImageProcessor's preprocessing (bicubic resize of the short side, centre crop,
    OpenAI's mean / std) unless preprocessor_config.json says otherwise."""
    vision = vision_config(cfg, where)
    act = vision.get("hidden_act")
    if not isinstance(act, str) or act not in _ACT:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (known: {', '.join(_ACT)})")
    patch = square_patch(vision, None, where)
    hidden = _positive(vision, "hidden_size", None, where)
    fields = dict(embed_dim=hidden, depth=_positive(vision, "num_hidden_layers", None, where),
                  num_heads=_positive(vision, "num_attention_heads", None, where),
                  mlp_ratio=_positive(vision, "intermediate_size", None, where) / hidden,
                  layer_norm_eps=_positive(vision, "layer_norm_eps", None, where, kind=float), gelu=_ACT[act],
                  img_size=_pair(vision.get("image_size"), "image_size", where), patch_size=patch,
                  in_chans=_positive(vision, "num_channels", None, where), norm_pre=True,
                  pos_embed_resample="bicubic_hf", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, crop_pct=1.0,
                  interpolation="bicubic", num_classes=0, name=name)
    return config_from_fields(fields, preprocessor, where)


def read_hf_clip(raw: dict, cfg: dict, where: str, preprocessor=None, name=""):
    """(config, params, sources) of an HF CLIP image tower; num_classes is the projection's width, or 0 for a
    CLIPVisionModel (no projection: the model ends with the pooled, post-LayerNorm class token)."""
    raw = with_vision_model_prefix(raw)
    depth = count_blocks(raw, r"^vision_model\.encoder\.layers\.(\d+)\.", where)
    params, sources = apply_table(raw, CLIP_TABLE, depth, where, CLIP_IGNORED)
    base = config_from_hf_clip(cfg, where, preprocessor, name=name)
    return infer_config(params, where, base=base), params, sources
