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

from numpy_vit.config import check_params, count_params, param_shapes

__all__ = ["param_shapes", "check_params", "count_params"]  # defined in numpy_vit/config.py, the one copy
