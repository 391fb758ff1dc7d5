"""Fields of an HF transformers config.json read with checks: config.json is user input, so a wrong type is an
error naming the field, never a bare TypeError deep inside. Shared by the HF readers (ViT, CLIP, DINOv2)."""
from __future__ import annotations

import math

from numpy_vit.errors import CheckpointError


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
