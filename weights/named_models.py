"""A ViT from a name, as every command and the demo name models: ``load_model("default")``.

    default        the shipped model, weights/default.npz (ten synthetic shapes, SHAPE_CLASSES)
    random         untrained, with ``arch``'s architecture (else ``like``'s, else the default's)
    random:PRESET  untrained, of a preset, e.g. random:vit_small_patch16_224
    anything else  a checkpoint file, a timm / HF folder or a hub name OWNER/NAME: ``ViT.from_pretrained``

The one module of numpy_vit.weights that builds a ViT (numpy_vit.model) rather than (config, params); the
figures (numpy_vit.viz) and the command line (numpy_vit.cli) load their models through it.
"""
from __future__ import annotations

import os
import sys

from numpy_vit.config import ViTConfig
from numpy_vit.errors import ArgumentError
from numpy_vit.model import ViT
from numpy_vit.resample import resample_rel_pos_table

from . import loader
from .config_from_tensors import config_for_arch
from .labels import SHAPE_CLASSES


def fallback_config() -> ViTConfig:
    """The architecture of the shipped default model, untrained: what runs while none is shipped."""
    return ViTConfig.preset("vit_tiny_patch16_224", embed_dim=128, num_heads=8, num_classes=len(SHAPE_CLASSES),
                            labels=SHAPE_CLASSES, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                            crop_pct=1.0).replace(name="untrained_patch16_224")


def default_model_exists() -> bool:
    return os.path.isfile(loader.DEFAULT_PATH)


def is_default(name) -> bool:
    return name is None or name == "default"


def is_random(name) -> bool:
    return name is not None and (name == "random" or name.startswith("random:"))


def load_model(name=None, like=None, warn=None, arch=None, img_size=None) -> ViT:
    """A ViT from a ``--model`` value (the module docstring): None or ``"default"`` = the shipped default model (a
    random one, with a warning, while it is missing); ``"random"`` = randomly initialised with ``arch``'s,
    ``like``'s or the default's architecture; ``"random:PRESET"``; anything else = ``ViT.from_pretrained(name,
    arch)``. ``img_size`` (H, W): the model for inputs of that size (``at_img_size``)."""
    warn = warn or (lambda message: print(f"numpy-vit: warning: {message}", file=sys.stderr))
    if is_default(name):
        if default_model_exists():
            model = ViT.from_pretrained(None, arch=arch)
        else:
            warn("there is no trained default model yet (weights/default.npz is missing), so this uses a randomly "
                 "initialised ViT: its figures show an untrained model")
            model = ViT(fallback_config(), seed=0)
    elif is_random(name):
        model = ViT(random_config(name.partition(":")[2], arch, like), seed=0)
    else:
        model = ViT.from_pretrained(name, arch=arch)
    return at_img_size(model, img_size)


def random_config(preset, arch, like) -> ViTConfig:
    """The architecture of ``random[:PRESET]``: the preset, else ``arch``, else ``like``'s, else the default's."""
    if preset and arch:
        raise ArgumentError(f"--model random:{preset} and --arch {arch} both name an architecture; give one "
                            f"(--model random --arch {arch}, or --model random:{preset})")
    if preset:
        return ViTConfig.preset(preset)
    if arch:
        return config_for_arch(arch)
    if like is not None:
        return like.config
    return ViT.from_pretrained(None).config if default_model_exists() else fallback_config()


def at_img_size(model: ViT, img_size) -> ViT:
    """``model`` for inputs of ``img_size`` (H, W): the same weights, the position embedding resampled once to
    the new patch grid by ``model.pos_embed_for``, as ``model.run(image, img_size=...)`` does on each run."""
    if img_size is None or tuple(img_size) == model.config.img_size:
        return model
    height, width = img_size
    patch = model.config.patch_size
    if height % patch or width % patch:
        def spelled(h, w):
            return f"{h}" if h == w else f"{h},{w}"
        smaller = spelled(max(patch, height // patch * patch), max(patch, width // patch * patch))
        larger = spelled(-(-height // patch) * patch, -(-width // patch) * patch)
        raise ArgumentError(f"--img-size {spelled(height, width)} is not a multiple of this model's {patch}-pixel "
                            f"patches; use e.g. --img-size {smaller} or --img-size {larger}")
    learned_at = model.config.pos_embed_grid or model.config.grid_size   # what the figures say it was resampled from
    config = model.config.replace(img_size=(height, width))
    config = config.replace(pos_embed_grid=None if config.grid_size == learned_at else learned_at)
    params = dict(model.params)
    if "pos_embed" in params:
        params["pos_embed"] = model.pos_embed_for(config.grid_size)[None]  # [1, N_pos, D]
    for name in params:  # BEiT's relative position bias tables, resampled as model.rel_pos_bias_for does
        if name.endswith("relative_position_bias_table"):
            params[name] = resample_rel_pos_table(params[name], model.config.grid_size, config.grid_size,
                                                  model.config.rel_pos_resample)  # [T_new, H]
    return ViT(config, params, dtype=model.dtype)


def describe_model(model: ViT) -> str:
    """One line: name, depth, heads, width, patch and input size, parameter count."""
    c = model.config
    return (f"{c.name or 'unnamed'} ({c.depth} layers, {c.num_heads} heads, width {c.embed_dim}, "
            f"{c.patch_size}px patches, {c.img_size[0]}x{c.img_size[1]} input, {model.num_params / 1e6:.2f}M params)")
