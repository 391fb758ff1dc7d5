"""HF transformers SigLIP folders: ``SiglipVisionModel``, or a whole ``SiglipModel`` (image and text towers, as
``google/siglip-base-patch16-224`` is stored on the hub), whose image tower is read and text tower left out.

Key names follow ``transformers/models/siglip/modeling_siglip.py`` as saved on disk, under ``vision_model.``:
the patch embedding ``embeddings.patch_embedding`` (a conv with bias), the position embedding as an
``nn.Embedding`` (``embeddings.position_embedding.weight``, [P, D]: no class token), the blocks
``encoder.layers.N`` (``layer_norm1``, ``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp.fc1`` / ``fc2``),
the final ``post_layernorm`` and the attention-pooling head ``head``: ``probe`` (the latent query), a
``torch.nn.MultiheadAttention`` (``in_proj_weight`` [3D, D], rows q | k | v, and ``out_proj``), ``layernorm`` and
``mlp``. timm's ``attn_pool`` keeps the query projection apart (``q``) and k, v stacked (``kv``, rows k | v).
"""
from __future__ import annotations

from numpy_vit.config import INCEPTION_MEAN, INCEPTION_STD, ViTConfig
from numpy_vit.errors import CheckpointError

from .config_from_tensors import config_for_arch, infer_config
from .hf_fields import config_from_fields, square_patch
from .mapping import apply_table, count_blocks, need_rank, rule
from .read_hf import _GELU, _layer_rules, _pair, _positive

PREFIX = "vision_model."


def add_batch_axis(position_embedding):  # [P, D] -> [1, P, D]
    """HF keeps the position embedding as an Embedding's table [P, D]; timm as a parameter [1, P, D]."""
    return need_rank(position_embedding, 2, "[P, D]")[None]


def _thirds(in_proj):
    if in_proj.ndim not in (1, 2):
        raise ValueError(f"expected an in_proj of rank 1 or 2, got shape {in_proj.shape}")
    if in_proj.shape[0] % 3:
        raise ValueError(f"an in_proj of {in_proj.shape[0]} rows cannot hold q, k and v (3 x D rows)")
    return in_proj.shape[0] // 3


def query_rows(in_proj):  # [3D, D] -> [D, D] (or [3D] -> [D])
    """nn.MultiheadAttention stacks q, k, v in ``in_proj`` (rows q | k | v): the query's third."""
    return in_proj[:_thirds(in_proj)]


def key_value_rows(in_proj):  # [3D, D] -> [2D, D] (or [3D] -> [2D])
    """The key's and value's thirds of ``in_proj``, stacked k | v as timm's ``attn_pool.kv``."""
    return in_proj[_thirds(in_proj):]


SIGLIP_HF_TABLE = [
    rule("embeddings.patch_embedding.weight", "patch_embed.proj.weight"),            # [D, C, p, p]
    rule("embeddings.patch_embedding.bias", "patch_embed.proj.bias"),
    rule("embeddings.position_embedding.weight", "pos_embed", add_batch_axis),       # [P, D] -> [1, P, D]
] + _layer_rules("encoder.layers.{i}", dict(
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", norm1="layer_norm1",
    proj="self_attn.out_proj", norm2="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2",
)) + [rule(f"post_layernorm.{part}", f"norm.{part}") for part in ("weight", "bias")] + [
    rule("head.probe", "attn_pool.latent"),                                          # [1, 1, D]
    rule("head.attention.in_proj_weight", "attn_pool.q.weight", query_rows),          # [3D, D] -> [D, D]
    rule("head.attention.in_proj_bias", "attn_pool.q.bias", query_rows),
    rule("head.attention.in_proj_weight", "attn_pool.kv.weight", key_value_rows),     # [3D, D] -> [2D, D]
    rule("head.attention.in_proj_bias", "attn_pool.kv.bias", key_value_rows),
] + [rule(f"head.{hf}.{part}", f"attn_pool.{ours}.{part}") for part in ("weight", "bias")
     for hf, ours in (("attention.out_proj", "proj"), ("layernorm", "norm"), ("mlp.fc1", "mlp.fc1"),
                      ("mlp.fc2", "mlp.fc2"))]

# a whole SiglipModel also holds the text tower and the sigmoid loss's temperature and bias
SIGLIP_HF_IGNORED = (r"^text_model\.", r"^logit_scale$", r"^logit_bias$", r"position_ids$")


def looks_like_hf_siglip(keys) -> bool:
    return any(k.startswith((PREFIX + "embeddings.patch_embedding.", "embeddings.patch_embedding.")) for k in keys)


def vision_config_json(cfg: dict, where: str) -> dict:
    """The image tower's fields of a SigLIP config.json: ``vision_config`` of a SiglipModel, or the file itself."""
    if cfg.get("model_type") == "siglip":
        vision = cfg.get("vision_config") or {}
        if not isinstance(vision, dict):
            raise CheckpointError(f"{where}: vision_config must be a JSON object, got {vision!r:.80}")
        return vision
    if cfg.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise CheckpointError(f"{where}: SigLIP weights, but config.json says model_type {cfg['model_type']!r}; "
                              f"this reader knows 'siglip' (SiglipModel) and 'siglip_vision_model' (SiglipVisionModel)")
    return cfg


def config_from_hf_siglip(cfg: dict, where: str, preprocessor: dict | None = None, name: str = "") -> ViTConfig:
    """A ViTConfig from a SigLIP config.json (and preprocessor_config.json), with SiglipVisionConfig's defaults:
    width 768, 12 blocks of 12 heads, M = 3072, 224 px in 16 px patches, LayerNorm eps 1e-6, tanh GELU
    (``gelu_pytorch_tanh``), the attention-pooling head (``vision_use_head``); inputs normalised with
    mean = std = 0.5 and resized (bicubic, no crop) straight to ``image_size``."""
    vision = vision_config_json(cfg, where)
    act = vision.get("hidden_act", "gelu_pytorch_tanh")
    if not isinstance(act, str) or act not in _GELU:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (known: {', '.join(_GELU)})")
    patch = square_patch(vision, 16, where)
    hidden = _positive(vision, "hidden_size", 768, where)
    use_head = vision.get("vision_use_head", True)
    if not isinstance(use_head, bool):
        raise CheckpointError(f"{where}: vision_use_head must be true or false, got {use_head!r}")
    fields = dict(
        embed_dim=hidden, depth=_positive(vision, "num_hidden_layers", 12, where),
        num_heads=_positive(vision, "num_attention_heads", 12, where),
        mlp_ratio=_positive(vision, "intermediate_size", 3072, where) / hidden,
        layer_norm_eps=_positive(vision, "layer_norm_eps", 1e-6, where, kind=float), gelu=_GELU[act],
        img_size=_pair(vision.get("image_size", 224), "image_size", where), patch_size=patch,
        in_chans=_positive(vision, "num_channels", 3, where), class_token=False,
        global_pool="map" if use_head else "", num_classes=0, pos_embed_resample="bicubic_hf",
        mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0, interpolation="bicubic", name=name,
    )
    return config_from_fields(fields, preprocessor, where)


def hf_siglip_params(raw: dict, where: str):
    """(params, sources) from a SiglipVisionModel or SiglipModel state dict (the text tower left out)."""
    raw = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in raw.items()}
    depth = count_blocks(raw, r"^encoder\.layers\.(\d+)\.", where)
    return apply_table(raw, SIGLIP_HF_TABLE, depth, where, SIGLIP_HF_IGNORED)


def read_hf_siglip(raw: dict, cfg: dict, where: str, preprocessor=None, name="", arch=None):
    """(config, params, sources) of an HF SigLIP image tower: the config from config.json, checked against the
    shapes; ``arch`` (a timm SigLIP name) may only confirm the number of heads."""
    params, sources = hf_siglip_params(raw, where)
    base = config_from_hf_siglip(cfg, where, preprocessor, name=name)
    if arch is not None and config_for_arch(arch).num_heads != base.num_heads:
        raise CheckpointError(f"{where}: config.json says {base.num_heads} heads, arch={arch!r} says "
                              f"{config_for_arch(arch).num_heads}")
    return infer_config(params, where, base=base), params, sources
