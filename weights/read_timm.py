"""timm state dicts (.safetensors, .pth, .bin, a hub folder with config.json) and DINO checkpoints.

A timm ``VisionTransformer.state_dict()`` already uses our names, so its table
maps every key to itself; what the reader adds is unwrapping (``model`` /
``state_dict`` entries, a DDP ``module.`` prefix), a shape check of every key,
and the config. DINO (Caron et al. 2021, facebookresearch/dino ``main_dino.py``)
saves ``{"student": ..., "teacher": ..., "optimizer": ..., "args": ...}``, the
networks wrapped as ``backbone`` + ``head`` (the projection head used only for
self-distillation) and the student in DDP (``module.``); its backbone is a
timm-layout ViT without classifier (``vision_transformer.py`` there).
"""
from __future__ import annotations

import numpy as np

from numpy_vit.errors import CheckpointError
from numpy_vit.layers import relative_position_index

from .config_from_tensors import config_for_arch, infer_config
from .labels import imagenet_labels
from .mapping import apply_table, count_blocks, rule

_PER_BLOCK = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
              "mlp.fc2.bias", "ls2.gamma",
              # EVA-02 (timm/models/eva.py) and BEiT (timm/models/beit.py): q and v biases beside a bias-free qkv;
              # EVA-02: or q, k, v projections apart, SwiGLU's gate and value projections and its sub-LayerNorm;
              # BEiT: a relative position bias table, layer scale gamma_1 / gamma_2
              "attn.q_bias", "attn.v_bias", "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight",
              "attn.v_proj.weight", "attn.v_proj.bias", "mlp.fc1_g.weight", "mlp.fc1_g.bias", "mlp.fc1_x.weight",
              "mlp.fc1_x.bias", "mlp.norm.weight", "mlp.norm.bias",
              "attn.relative_position_bias_table", "gamma_1", "gamma_2"]
TIMM_KEYS = (["cls_token", "dist_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
              "norm_pre.weight", "norm_pre.bias"]
             + ["blocks.{i}." + k for k in _PER_BLOCK]
             + ["norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias", "pre_logits.fc.weight",
                "pre_logits.fc.bias", "head.weight", "head.bias", "head_dist.weight", "head_dist.bias",
                "rel_pos_bias.relative_position_bias_table"]  # BEiT's shared table
             + ["attn_pool." + k for k in ("latent", "q.weight", "q.bias", "kv.weight", "kv.bias", "proj.weight",
                                           "proj.bias", "norm.weight", "norm.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                                           "mlp.fc2.weight", "mlp.fc2.bias")])  # SigLIP's attention pooling

TIMM_TABLE = [rule(key, key) for key in TIMM_KEYS]  # timm's names are ours
BLOCK_INDEX = r"^blocks\.(\d+)\."


def unwrap_state_dict(obj, where: str):
    """The tensor dict inside a torch checkpoint: ``model`` / ``state_dict`` entries, a ``module.`` prefix removed."""
    from numpy_vit.errors import CheckpointError
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a dict of tensors, found a {type(obj).__name__}")
    for key in ("state_dict", "model", "model_ema", "state_dict_ema"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def is_dino(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in ("teacher", "student"))


# EVA-02's rotary tables (``rope.*``; older checkpoints keep them as buffers) are a function of the config and the
# grid, recomputed for every input (numpy_vit.layers.rope_tables): ignored here, as timm's checkpoint_filter_fn does
TIMM_IGNORED = (r"^rope\.", r"^blocks\.\d+\.attn\.k_bias$")  # k_bias: a constant zero buffer, never a weight
# BEiT's relative_position_index: a buffer (rebuilt from the grid, not a parameter) that some files hold
REL_POS_INDEX = r"(^|\.)relative_position_index$"


def timm_params(state_dict: dict, where: str):
    """(params, sources) from a timm state dict, every key accounted for (a BEiT index buffer is checked later,
    ``check_rel_pos_index``, once the grid is known)."""
    depth = count_blocks(state_dict, BLOCK_INDEX, where)
    return apply_table(state_dict, TIMM_TABLE, depth, where, ignore=TIMM_IGNORED + (REL_POS_INDEX,))


def check_rel_pos_index(state_dict: dict, config, where: str):
    """A BEiT file may hold each table's ``relative_position_index`` (older timm and BEiT's own code saved it).
    numpy_vit rebuilds it from the grid (``numpy_vit.layers.relative_position_index``); one that differs would
    mean the file's tables are laid out otherwise, so it is refused, naming the key."""
    import re
    expected = None
    for key, value in state_dict.items():
        if not re.search(REL_POS_INDEX, key):
            continue
        if not config.rel_pos_bias:
            raise CheckpointError(f"{where}: {key} belongs to a relative position bias, which this model has not")
        if expected is None:
            expected = relative_position_index(config.grid_size)  # [N, N]
        found = np.asarray(value)
        if found.shape != expected.shape or not np.array_equal(found, expected):
            raise CheckpointError(f"{where}: {key} (shape {found.shape}) is not the relative position index of a "
                                  f"{config.grid_size[0]}x{config.grid_size[1]} grid with a class token (shape "
                                  f"{expected.shape}) that numpy_vit rebuilds; the tables are laid out otherwise")


def with_imagenet_labels(config):
    """Attach the ImageNet-1k names to a 1000-class classifier that has none."""
    if config.num_classes == 1000 and not config.labels:
        return config.replace(labels=imagenet_labels())
    return config


def read_timm_state_dict(state_dict: dict, where: str, arch=None, base=None):
    """(config, params, sources) of a timm state dict; the config from ``base`` (timm config.json) or ``arch``."""
    params, sources = timm_params(state_dict, where)
    if base is None and arch is not None:
        base = config_for_arch(arch)
    config = infer_config(params, where, base=base)
    check_rel_pos_index(state_dict, config, where)
    return with_imagenet_labels(config), params, sources


def dino_backbone(obj: dict, where: str, which: str = "teacher") -> dict:
    """The backbone's state dict inside a DINO checkpoint (the teacher by default, as DINO evaluates it)."""
    from numpy_vit.errors import CheckpointError
    if which not in obj or not isinstance(obj[which], dict):
        raise CheckpointError(f"{where}: a DINO checkpoint without a {which!r} network (it has {sorted(obj)})")
    net = obj[which]
    net = {k[len("module."):] if k.startswith("module.") else k: v for k, v in net.items()}
    stray = sorted(k for k in net if not k.startswith(("backbone.", "head.")))
    if stray:
        raise CheckpointError(f"{where}: DINO {which} keys outside 'backbone.' and 'head.': {', '.join(stray[:10])}")
    # head.* is DINO's projection head (an MLP onto 65536 prototypes), used only for training.
    return {k[len("backbone."):]: v for k, v in net.items() if k.startswith("backbone.")}


def read_dino(obj: dict, where: str, arch=None):
    """(config, params, sources) of a DINO training checkpoint's teacher backbone."""
    backbone = dino_backbone(obj, where)
    params, sources = timm_params(backbone, where)
    base = config_for_arch(arch) if arch is not None else None
    return infer_config(params, where, base=base, name="dino"), params, sources
