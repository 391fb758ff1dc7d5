"""One entry point for every checkpoint: ``load_any(path_or_name, arch=None) -> (config, params)``.

The format is read from the file itself (first bytes, then key names), never
from its extension alone:

============================  =================================================
what                          how it is recognised
============================  =================================================
numpy-vit ``.npz``            a zip of ``.npy`` with a ``__config__`` entry
Google JAX / big_vision npz   ``.npz`` with ``[prefix/]embedding/kernel``
timm state dict               ``patch_embed.proj.weight`` in .safetensors / torch pickle / .npz
HF transformers               ``[vit.]embeddings.patch_embeddings...`` (+ its config.json)
DINO training checkpoint      torch pickle holding ``teacher`` / ``student``
a folder                      ``config.json`` (timm's ``architecture`` or HF's ``model_type``) + weights
a hub name                    ``owner/name`` that is no local path (see ``weights.hub``)
============================  =================================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from numpy_vit.config import ViTConfig, check_params, count_params
from numpy_vit.errors import CheckpointError

from . import hub
from .config_from_tensors import config_for_arch, config_from_timm_json
from .files import read_safetensors, read_torch, sniff, torch_to_safetensors_hint
from .labels import labels_from_synsets
from .native import is_native, open_npz, read_native
from .read_hf import is_hf_config, looks_like_hf, read_hf, read_json, read_preprocessor
from .read_hf_beit import read_hf_beit
from .read_jax import is_jax, read_jax
from .read_siglip import looks_like_hf_siglip, read_hf_siglip
from .read_timm import is_dino, read_dino, read_timm_state_dict, unwrap_state_dict, with_imagenet_labels

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.npz")
ACCEPTED = ("a numpy-vit .npz, a Google JAX / big_vision .npz, a timm state dict (.safetensors, or .pth / .bin "
            "with torch), a DINO .pth, a timm or HF transformers folder with config.json, or a hub name 'owner/name'")


@dataclass
class Checkpoint:
    """What a reader found: the model, and how it was read (for ``convert``'s report)."""
    config: ViTConfig
    params: dict
    format: str              # e.g. "HF transformers folder (config.json + model.safetensors)"
    path: str
    tensors_read: int        # tensors in the source file (before stacking q, k, v, dropping optimizer state, ...)
    notes: list = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return count_params(self.params)


def _check_arch_matches(config: ViTConfig, arch, where: str):
    given = config_for_arch(arch)
    clash = [f"{k} {getattr(given, k)} vs {getattr(config, k)}" for k in ("embed_dim", "depth", "num_heads",
                                                                          "patch_size") if getattr(given, k) !=
             getattr(config, k)]
    if clash:
        raise CheckpointError(f"{where}: the file stores its own config, which is not arch={arch!r} "
                              f"(arch vs file: {', '.join(clash)})")


def _named(config: ViTConfig, name: str) -> ViTConfig:
    return config if config.name or not name else config.replace(name=name)


def _from_state_dict(raw: dict, where: str, arch, folder_cfg: dict | None, name: str, container: str):
    """Dispatch a flat ``{key: array}`` on its key names (timm or HF)."""
    # SiglipVisionModel, or a whole SiglipModel whose image tower is read: HF CLIP's key layout without CLIP's class
    # embedding (SigLIP has no class token), so it is told apart before the CLIP reader below would take it
    if looks_like_hf_siglip(raw) and not any(k.endswith("embeddings.class_embedding") for k in raw):
        if folder_cfg is None or not is_hf_config(folder_cfg):
            raise CheckpointError(f"{where}: HF transformers SigLIP weights; their config.json (which holds the number "
                                  f"of heads and the GELU) must sit next to them: pass the folder")
        config, params, sources = read_hf_siglip(raw, folder_cfg, where, read_preprocessor(os.path.dirname(where)),
                                                 name=name, arch=arch)
        check_params(config, params, where, sources)
        return config, params, sources, f"HF transformers SigLIP {container}"
    if looks_like_hf(raw):
        if folder_cfg is None or not is_hf_config(folder_cfg):
            raise CheckpointError(f"{where}: HF transformers weights; their config.json (which holds the number of "
                                  f"heads, the LayerNorm eps and the labels) must sit next to them: pass the folder")
        if folder_cfg.get("model_type") == "beit":  # BeitForImageClassification, BeitModel
            config, params, sources = read_hf_beit(raw, folder_cfg, where, read_preprocessor(os.path.dirname(where)),
                                                   name=name)
        else:
            config, params, sources = read_hf(raw, folder_cfg, where, read_preprocessor(os.path.dirname(where)),
                                              name=name, arch=arch)
        check_params(config, params, where, sources)
        return config, params, sources, f"HF transformers {container}"
    if any(k.endswith("patch_embed.proj.weight") for k in raw):
        base = None
        if folder_cfg is not None and "architecture" in folder_cfg:
            base = config_from_timm_json(folder_cfg, where, arch)
        config, params, sources = read_timm_state_dict(raw, where, arch=arch, base=base)
        pretrained = (folder_cfg or {}).get("pretrained_cfg")
        labels = (folder_cfg or {}).get("label_names") or (
            pretrained.get("label_names") if isinstance(pretrained, dict) else None)
        if isinstance(labels, list) and len(labels) == config.num_classes:
            config = config.replace(labels=labels_from_synsets(labels))
        check_params(config, params, where, sources)
        return with_imagenet_labels(config), params, sources, f"timm state dict {container}"
    shown = ", ".join(sorted(raw)[:8])
    raise CheckpointError(f"{where}: tensors named like none of the known layouts (first keys: {shown}); "
                          f"accepted: {ACCEPTED}")


def _weights_file(folder: str) -> str:
    for name in hub.WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    if os.path.isfile(os.path.join(folder, "model.safetensors.index.json")):
        raise CheckpointError(f"{folder}: sharded weights (model.safetensors.index.json) are not supported")
    raise CheckpointError(f"{folder}: a folder needs {' or '.join(hub.WEIGHT_FILES)}; it holds "
                          f"{', '.join(sorted(os.listdir(folder))[:12]) or 'nothing'}")


def _read_tensors(path: str, kind: str):
    """(the file's object, a word for the container) of a .safetensors or torch file."""
    if kind == "safetensors":
        return read_safetensors(path), ".safetensors"
    return read_torch(path), "torch pickle"


def read_folder(folder: str, arch=None, name: str = "") -> Checkpoint:
    """A timm or HF folder: ``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``."""
    weights = _weights_file(folder)
    cfg_path = os.path.join(folder, "config.json")
    cfg = read_json(cfg_path) if os.path.isfile(cfg_path) else None
    kind = sniff(weights)
    if kind not in ("safetensors", "torch"):
        raise CheckpointError(f"{weights}: expected .safetensors or a torch pickle, found {kind}")
    if kind == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise CheckpointError(f"{folder} holds only {os.path.basename(weights)}, a torch pickle, and torch is not "
                                  f"installed: install torch, or get model.safetensors for it (read without torch), "
                                  f"or " + torch_to_safetensors_hint(weights)) from None
    raw, _ = _read_tensors(weights, kind)
    if kind == "torch":
        raw = unwrap_state_dict(raw, weights)
    container = f"folder (config.json + {os.path.basename(weights)})" if cfg else f"({os.path.basename(weights)})"
    name = name or os.path.basename(os.path.normpath(folder))
    config, params, sources, fmt = _from_state_dict(raw, weights, arch, cfg, name, container)
    return Checkpoint(_named(config, name), params, fmt, folder, len(raw))


def read_file(path: str, arch=None) -> Checkpoint:
    kind = sniff(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    if kind == "dir":
        return read_folder(path, arch)
    if kind == "json":
        return read_folder(os.path.dirname(os.path.abspath(path)), arch)
    if kind == "npz":
        arrays = open_npz(path)
        if is_native(arrays):
            config, params = read_native(arrays, path)
            if arch is not None:
                _check_arch_matches(config, arch, path)
            return Checkpoint(config, params, "numpy-vit .npz", path, len(params))
        if is_jax(arrays):
            config, params, sources, layout = read_jax(arrays, path, arch=arch, name=stem)
            check_params(config, params, path, sources)
            return Checkpoint(config, params, f"Google JAX .npz ({layout})", path, len(arrays))
        config, params, _, fmt = _from_state_dict(arrays, path, arch, None, stem, "(.npz)")
        return Checkpoint(_named(config, stem), params, fmt, path, len(arrays))
    if kind in ("safetensors", "torch"):
        raw, container = _read_tensors(path, kind)
        folder = os.path.dirname(os.path.abspath(path))
        cfg_path = os.path.join(folder, "config.json")
        cfg = read_json(cfg_path) if os.path.isfile(cfg_path) else None
        if kind == "torch" and is_dino(raw):
            config, params, sources = read_dino(raw, path, arch=arch)
            check_params(config, params, path, sources)
            return Checkpoint(config, params, "DINO training checkpoint (teacher backbone)", path,
                              len(raw["teacher"]))
        if kind == "torch":
            raw = unwrap_state_dict(raw, path)
        config, params, _, fmt = _from_state_dict(raw, path, arch, cfg, stem, f"({container})")
        return Checkpoint(_named(config, stem), params, fmt, path, len(raw))
    raise CheckpointError(f"{path}: unknown format (neither zip, safetensors, torch pickle nor JSON); "
                          f"accepted: {ACCEPTED}")


def read_checkpoint(path_or_name=None, arch=None) -> Checkpoint:
    """Read any supported checkpoint (see the module docstring); None is the shipped default model."""
    if path_or_name is None:
        if not os.path.isfile(DEFAULT_PATH):
            raise CheckpointError(f"there is no shipped default model yet: {DEFAULT_PATH} does not exist (it is "
                                  f"written by training/train.py); pass a checkpoint path or a hub name instead")
        path_or_name = DEFAULT_PATH
    try:
        path = os.fspath(path_or_name)
    except TypeError:
        raise CheckpointError(f"a checkpoint is given by a path or a hub name, got {type(path_or_name).__name__} "
                              f"{str(path_or_name)[:60]}") from None
    if not os.path.exists(path):
        name = hub.parse_name(path)
        if name is None:
            raise CheckpointError(f"{path}: no such file or folder, and not a hub name 'owner/name'; accepted: "
                                  f"{ACCEPTED}")
        owner = str(path).split("/")[0]
        if os.path.isdir(owner) and not str(path).startswith(("hf-hub:", "hf_hub:")):
            raise CheckpointError(f"{path}: no such file or folder. The folder {owner!r} exists here, so this is read "
                                  f"as a local path, not downloaded; write 'hf-hub:{path}' to mean the hub")
        checkpoint = read_folder(hub.fetch(path), arch, name=name.repo_id)
        checkpoint.path = path
    else:
        checkpoint = read_file(path, arch)
    check_params(checkpoint.config, checkpoint.params, where=path)
    return checkpoint


def load_any(path_or_name=None, arch=None):
    """``(ViTConfig, {timm name: float32 array})`` from any supported checkpoint.

    ``path_or_name``: a file, a folder, a hub name such as ``"google/vit-base-patch16-224"``, or None for
    the shipped default model. ``arch``: a preset / timm architecture name or a ViTConfig, needed only when
    the file does not say how many attention heads the model has (bare timm and DINO state dicts).
    """
    checkpoint = read_checkpoint(path_or_name, arch)
    return checkpoint.config, checkpoint.params
