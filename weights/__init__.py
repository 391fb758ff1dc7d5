"""weights: checkpoints in, ``(ViTConfig, params)`` out, and back; the shipped default model; models by name.

``params`` is a flat ``{name: float32 array}`` in timm's state-dict names: exactly timm's
``VisionTransformer.state_dict()`` names (timm 1.0, ``timm/models/vision_transformer.py``; DeiT's
``dist_token`` / ``head_dist`` from ``timm/models/deit.py``), so a timm state dict *is* a params dict and every
other format is translated into this one vocabulary. ``pre_logits.fc`` is the representation layer of the
original JAX ViT (Dosovitskiy et al. 2021, Sec. 3.1 "a MLP with one hidden layer at pre-training time"), kept
under the name timm gave it before timm dropped it. ``param_shapes(config)`` (``numpy_vit.config``) is the one
list of them: the model initialises from it and ``check_params`` holds every loaded checkpoint to it.

Readers for timm, HF transformers, Google JAX npz and DINO translate their keys with tables
(``weights.mapping``) and take their config from the tensors' shapes (``weights.config_from_tensors``); our own
format is one ``.npz`` (``weights.native``); ``weights.convert.convert(src, out)`` turns any of them into it.
``weights.named_models.load_model(name)`` is the ViT behind a name: default, random, a file, a folder or a
hub name. Imports numpy and numpy_vit's core only; torch and huggingface_hub are imported inside the readers
that need them.
"""
from numpy_vit.config import check_params, count_params, param_shapes

from .loader import Checkpoint, load_any, read_checkpoint
from .native import load, save

__all__ = ["save", "load", "load_any", "read_checkpoint", "Checkpoint", "param_shapes", "check_params",
           "count_params"]
