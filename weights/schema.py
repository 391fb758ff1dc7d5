"""The parameter names and shapes of a ViT, and the check every loaded checkpoint passes.

``param_shapes(config)`` is ``numpy_vit.config.param_shapes``: the one list of
parameters, which the model initialises from and every reader is checked against.

Names are exactly timm's ``VisionTransformer.state_dict()`` names (timm 1.0,
``timm/models/vision_transformer.py``; DeiT's ``dist_token`` / ``head_dist`` from
``timm/models/deit.py``), so a timm state dict *is* a params dict and every other
format is translated into this one vocabulary. ``pre_logits.fc`` is the
representation layer of the original JAX ViT (Dosovitskiy et al. 2021, Sec. 3.1
"a MLP with one hidden layer at pre-training time"), kept under the name timm
gave it before timm dropped it.

Imports nothing but numpy and numpy_vit's config and errors.
"""
from __future__ import annotations

import numpy as np

from numpy_vit.config import ViTConfig, param_shapes
from numpy_vit.errors import CheckpointError

__all__ = ["param_shapes", "check_params", "count_params"]


def count_params(params: dict) -> int:
    """Number of scalars in a params dict."""
    return int(sum(np.prod(np.shape(v), dtype=np.int64) for v in params.values()))


def _listing(names, limit=8):
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_params(config: ViTConfig, params: dict, where: str = "", sources: dict | None = None) -> None:
    """Raise CheckpointError unless ``params`` has exactly the names and shapes ``config`` needs.

    The message names every missing key, every unexpected key and every wrong
    shape (both shapes). ``where`` names the file; ``sources`` maps a timm name
    to the key it is read from in the source format, to say what was looked for.
    """
    expected = param_shapes(config)
    missing = [k for k in expected if k not in params]
    unexpected = sorted(k for k in params if k not in expected)
    wrong = [f"{k} has shape {tuple(np.shape(params[k]))} but the config needs {expected[k]}"
             for k in expected if k in params and tuple(np.shape(params[k])) != expected[k]]
    not_float = [f"{k} has dtype {np.asarray(params[k]).dtype}" for k in expected
                 if k in params and np.asarray(params[k]).dtype.kind != "f"]
    if not (missing or unexpected or wrong or not_float):
        return
    sources = sources or {}
    problems = []
    if missing:
        named = [k + (f" (from {sources[k]})" if k in sources else "") for k in missing]
        problems.append("missing keys: " + _listing(named))
    if unexpected:
        problems.append("unexpected keys: " + _listing(unexpected))
    if wrong:
        problems.append("wrong shapes: " + _listing(wrong, limit=5))
    if not_float:
        problems.append("not floating point: " + _listing(not_float, limit=5))
    summary = (f"{config.name or 'ViT'} (depth {config.depth}, width {config.embed_dim}, {config.num_heads} heads, "
               f"patch {config.patch_size}, img_size {config.img_size}, {config.num_classes} classes)")
    raise CheckpointError(f"{where + ': ' if where else ''}parameters do not fit the config {summary}; "
                          + "; ".join(problems))
