"""HF transformers BEiT folders (``BeitForImageClassification``, ``BeitModel``): config.json + weights.

Key names follow ``transformers/models/beit/modeling_beit.py`` as saved on disk
(``beit.encoder.layer.N.attention.attention.query``; transformers 5 renames them to
``beit.layers.N.attention.q_proj`` in memory and back when saving, so both are read). BEiT's attention has a
query and a value bias but no key bias (timm: ``attn.q_bias`` / ``attn.v_bias``); ``lambda_1`` / ``lambda_2``
are timm's layer scales ``gamma_1`` / ``gamma_2``; each layer's ``relative_position_bias_table`` (or the
encoder's shared one) is timm's table, rows laid out alike; ``pooler.layernorm`` is the LayerNorm after mean
pooling (timm ``fc_norm``), ``layernorm`` the final one of a class-token model (``use_mean_pooling`` false).
"""
from __future__ import annotations

from numpy_vit.config import INCEPTION_MEAN, INCEPTION_STD, ViTConfig
from numpy_vit.errors import CheckpointError

from .config_from_tensors import infer_config
from .mapping import apply_table, count_blocks, rule
from .hf_fields import class_names, config_from_fields, square_patch
from .read_hf import _GELU, _pair, _positive, stack_qkv


def _layer_rules(block: str, names: dict):
    """Rules of one encoder layer; ``names`` gives the HF module path of each timm module or parameter."""
    t = "blocks.{i}."
    rules = [rule([f"{block}.{names[m]}.weight" for m in ("q", "k", "v")], t + "attn.qkv.weight", stack_qkv),
             rule(f"{block}.{names['q']}.bias", t + "attn.q_bias"),       # [D]; the key has no bias
             rule(f"{block}.{names['v']}.bias", t + "attn.v_bias"),       # [D]
             rule(f"{block}.{names['table']}", t + "attn.relative_position_bias_table"),  # [T, H]
             rule(f"{block}.lambda_1", t + "gamma_1"), rule(f"{block}.lambda_2", t + "gamma_2")]
    for hf, ours in (("norm1", "norm1"), ("proj", "attn.proj"), ("norm2", "norm2"), ("fc1", "mlp.fc1"),
                     ("fc2", "mlp.fc2")):
        rules += [rule(f"{block}.{names[hf]}.{part}", f"{t}{ours}.{part}") for part in ("weight", "bias")]
    return rules


_EMBEDDINGS = [
    rule("embeddings.cls_token", "cls_token"),                                   # [1, 1, D]
    rule("embeddings.position_embeddings", "pos_embed"),                         # [1, 1 + P, D], where present
    rule("embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),  # [D, C, p, p]
    rule("embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"),
]
_TOP = [rule(f"{hf}.{part}", f"{ours}.{part}") for part in ("weight", "bias")
        for hf, ours in (("layernorm", "norm"), ("pooler.layernorm", "fc_norm"), ("classifier", "head"))]

# transformers <= 4 / every file on the hub / what transformers 5 saves
BEIT_TABLE = _EMBEDDINGS + [rule("encoder.relative_position_bias.relative_position_bias_table",
                                 "rel_pos_bias.relative_position_bias_table")] + _layer_rules(
    "encoder.layer.{i}", dict(
        q="attention.attention.query", k="attention.attention.key", v="attention.attention.value",
        table="attention.attention.relative_position_bias.relative_position_bias_table",
        norm1="layernorm_before", proj="attention.output.dense", norm2="layernorm_after",
        fc1="intermediate.dense", fc2="output.dense")) + _TOP
# transformers 5, a state_dict() saved without save_pretrained()
BEIT5_TABLE = _EMBEDDINGS + [rule("shared_position_bias.relative_position_bias_table",
                                  "rel_pos_bias.relative_position_bias_table")] + _layer_rules(
    "layers.{i}", dict(
        q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
        table="relative_position_bias.relative_position_bias_table", norm1="layernorm_before",
        proj="attention.o_proj", norm2="layernorm_after", fc1="mlp.fc1", fc2="mlp.fc2")) + _TOP

# the masked-image-modelling token of pre-training, and index buffers (rebuilt from the grid)
BEIT_IGNORED = (r"^embeddings\.mask_token$", r"relative_position_index$")


def config_from_hf_beit(cfg: dict, where: str, preprocessor: dict | None = None, name: str = "") -> ViTConfig:
    """A ViTConfig from HF's BEiT ``config.json`` (and ``preprocessor_config.json`` when present).

    As for HF's ViT: LayerNorm eps 1e-12 unless the file says otherwise, inputs resized straight to
    ``image_size`` (bilinear, no crop) and normalised with mean = std = 0.5 (microsoft/beit-*), a position
    embedding (where there is one) resampled with plain bicubic; the relative position bias table with
    bilinear interpolation (``BeitRelativePositionBias``), which is what HF does at another image size.
    """
    act = cfg.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _GELU:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (known: {', '.join(_GELU)})")
    patch = square_patch(cfg, 16, where)
    hidden = _positive(cfg, "hidden_size", 768, where)
    labels = class_names(cfg, where)
    layer_scale = cfg.get("layer_scale_init_value", 0.1)
    if isinstance(layer_scale, bool) or not isinstance(layer_scale, (int, float)):
        raise CheckpointError(f"{where}: layer_scale_init_value must be a number, got {layer_scale!r}")
    shared, per_layer = bool(cfg.get("use_shared_relative_position_bias")), bool(cfg.get("use_relative_position_bias"))
    if shared and per_layer:
        raise CheckpointError(f"{where}: use_relative_position_bias and use_shared_relative_position_bias are both "
                              f"set; numpy_vit models one relative position bias per block or one shared, not both")
    fields = dict(
        embed_dim=hidden, depth=_positive(cfg, "num_hidden_layers", 12, where),
        num_heads=_positive(cfg, "num_attention_heads", 12, where),
        mlp_ratio=_positive(cfg, "intermediate_size", 4 * hidden, where) / hidden,
        layer_norm_eps=_positive(cfg, "layer_norm_eps", 1e-12, where, kind=float), gelu=_GELU[act],
        img_size=_pair(cfg.get("image_size", 224), "image_size", where), patch_size=patch,
        in_chans=_positive(cfg, "num_channels", 3, where), block_names="beit",
        abs_pos_embed=bool(cfg.get("use_absolute_position_embeddings", False)),
        rel_pos_bias="shared" if shared else "layer" if per_layer else "", rel_pos_resample="bilinear",
        init_values=float(layer_scale) if layer_scale > 0 else None,
        global_pool="avg" if cfg.get("use_mean_pooling", True) else "token", pos_embed_resample="bicubic_hf",
        mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0, interpolation="bilinear",
        num_classes=len(labels), labels=labels, name=name,
    )
    return config_from_fields(fields, preprocessor, where)


def hf_beit_params(raw: dict, where: str):
    """(params, sources) from an HF BEiT state dict, with or without the ``beit.`` prefix and classifier."""
    raw = {k[len("beit."):] if k.startswith("beit.") else k: v for k, v in raw.items()}
    if any(k.startswith("layers.") for k in raw):
        return apply_table(raw, BEIT5_TABLE, count_blocks(raw, r"^layers\.(\d+)\.", where), where, BEIT_IGNORED)
    return apply_table(raw, BEIT_TABLE, count_blocks(raw, r"^encoder\.layer\.(\d+)\.", where), where, BEIT_IGNORED)


def read_hf_beit(raw: dict, cfg: dict, where: str, preprocessor=None, name=""):
    """(config, params, sources) of an HF BEiT: the config from config.json, checked against the shapes."""
    params, sources = hf_beit_params(raw, where)
    base = config_from_hf_beit(cfg, where, preprocessor, name=name)
    config = infer_config(params, where, base=base)
    if config.num_classes != base.num_classes:  # id2label describes another head (or HF's 2 default labels)
        config = config.replace(labels=())
    return config, params, sources
