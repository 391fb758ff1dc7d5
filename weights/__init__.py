"""weights: checkpoints in, ``(ViTConfig, params)`` out, and back.

``params`` is a flat ``{name: float32 array}`` in timm's state-dict names
(``weights.schema``). Readers for timm, HF transformers, Google JAX npz and DINO
translate their keys with tables (``weights.mapping``); our own format is one
``.npz`` (``weights.native``); ``weights.convert.convert(src, out)`` turns any
of them into it. Imports numpy and numpy_vit's config only; torch
and huggingface_hub are imported inside the readers that need them.
"""
from .loader import Checkpoint, load_any, read_checkpoint
from .native import load, save
from .schema import check_params, count_params, param_shapes


__all__ = ["save", "load", "load_any", "read_checkpoint", "Checkpoint", "param_shapes", "check_params",
           "count_params"]
