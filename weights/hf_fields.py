"""Fields of an HF transformers config.json read with checks: config.json is user input, so a wrong type is an
error naming the field, never a bare TypeError deep inside. Shared by the HF readers (ViT, CLIP, DINOv2)."""
from __future__ import annotations

import math

from numpy_vit.config import ViTConfig
from numpy_vit.errors import CheckpointError, ConfigError


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value, name, where):
    if _is_int(value):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
        return tuple(value)
    raise CheckpointError(f"{where}: {name}={value!r} is neither an int nor a pair of ints")


def _positive(cfg: dict, key: str, default, where: str, kind=int):
    """``cfg[key]`` (or ``default``) as a positive int (or, with ``kind=float``, a finite number), else an error
    naming the field: config.json is user input and ``int("vit")`` deep inside would say nothing useful."""
    value = cfg.get(key, default)
    ok = _is_int(value) or (kind is float and isinstance(value, float) and math.isfinite(value))
    if not ok or value <= 0:
        raise CheckpointError(f"{where}: config.json field {key!r} must be a positive "
                              f"{'number' if kind is float else 'integer'}, got {value!r}")
    return kind(value)


PIL_FILTERS = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # preprocessor_config.json's "resample": PIL's numbers


def config_from_fields(fields: dict, preprocessor: dict | None, where: str) -> ViTConfig:
    """The ViTConfig of an HF folder: ``fields`` read from its config.json, then its preprocessor_config.json's
    mean, std and resize filter over them where it has them; a value ViTConfig refuses names the file."""
    fields = dict(fields)
    if preprocessor:
        fields["mean"] = preprocessor.get("image_mean", fields["mean"])  # ViTConfig checks they are numbers
        fields["std"] = preprocessor.get("image_std", fields["std"])
        resample = preprocessor.get("resample")
        fields["interpolation"] = PIL_FILTERS.get(resample if _is_int(resample) else None, fields["interpolation"])
    try:
        return ViTConfig(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{where}: config.json gives a config numpy_vit cannot build: {e}") from None


def square_patch(cfg: dict, default, where: str) -> int:
    """config.json's patch_size (an int, or a [h, w] pair that must be square)."""
    patch = _pair(cfg.get("patch_size", default), "patch_size", where)
    if isinstance(patch, tuple):
        if patch[0] != patch[1]:
            raise CheckpointError(f"{where}: patch_size {patch} is not square; numpy_vit needs square patches")
        patch = patch[0]
    return patch


def class_names(cfg: dict, where: str) -> tuple:
    """config.json's id2label as class names in index order (empty without one)."""
    id2label = cfg.get("id2label") or {}
    if not isinstance(id2label, dict):
        raise CheckpointError(f"{where}: id2label must map class indices to names, got {id2label!r:.80}")
    try:
        return tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: id2label keys must be class indices, got {list(id2label)[:5]}") from None
