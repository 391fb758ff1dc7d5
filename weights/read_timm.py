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

from .config_from_tensors import config_for_arch, infer_config
from .labels import imagenet_labels
from .mapping import apply_table, count_blocks, rule

_PER_BLOCK = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
              "mlp.fc2.bias", "ls2.gamma"]
TIMM_KEYS = (["cls_token", "dist_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
              "norm_pre.weight", "norm_pre.bias"]
             + ["blocks.{i}." + k for k in _PER_BLOCK]
             + ["norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias", "pre_logits.fc.weight",
                "pre_logits.fc.bias", "head.weight", "head.bias", "head_dist.weight", "head_dist.bias"])

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


def timm_params(state_dict: dict, where: str):
    """(params, sources) from a timm state dict, every key accounted for."""
    depth = count_blocks(state_dict, BLOCK_INDEX, where)
    return apply_table(state_dict, TIMM_TABLE, depth, where)


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
