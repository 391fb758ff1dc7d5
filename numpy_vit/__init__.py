"""numpy_vit: a Vision Transformer in plain NumPy whose forward pass records every intermediate.

    import numpy_vit as nv
    model = nv.ViT(nv.ViTConfig(img_size=224, patch_size=16, num_classes=10,
                                embed_dim=768, depth=12, num_heads=12), seed=0)
    trace = model.run("cat.jpg")
    trace["blocks.3.attn.pattern"]   # [B, H, N, N]
"""
from .config import PRESETS, ViTConfig, param_shapes
from .errors import ArgumentError, CheckpointError, ConfigError, ImageError, NumpyViTError
from .image import ImageConversionWarning
from .layers import get_num_threads, set_num_threads
from .model import ViT, ViTWithAttention, init_params
from .trace import TRACE_KEYS, Trace

__all__ = ["ViT", "ViTWithAttention", "ViTConfig", "PRESETS", "Trace", "TRACE_KEYS", "init_params", "param_shapes",
           "NumpyViTError", "ConfigError", "ImageError", "CheckpointError", "ArgumentError", "ImageConversionWarning",
           "get_num_threads", "set_num_threads"]
__version__ = "0.1.0"
