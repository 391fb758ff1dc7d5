"""numpy_vit: a Vision Transformer in plain NumPy whose forward pass records every intermediate.

    import numpy_vit as nv
    model = nv.ViT(nv.ViTConfig(img_size=224, patch_size=16, num_classes=10,
                                embed_dim=768, depth=12, num_heads=12), seed=0)
    trace = model.run("cat.jpg")
    trace["blocks.3.attn.pattern"]   # [B, H, N, N]

The figures are ``numpy_vit.viz`` and the checkpoint readers ``numpy_vit.weights``. A source checkout keeps
them in the folders ``viz/`` and ``weights/`` beside ``numpy_vit/`` (the installed package holds them inside
it), so there the checkout's top folder is searched for those two subpackages as well.
"""
import os as _os

_HERE = _os.path.dirname(_os.path.abspath(__file__))
_CHECKOUT = _os.path.dirname(_HERE)
if not _os.path.isdir(_os.path.join(_HERE, "viz")) and _os.path.isfile(_os.path.join(_CHECKOUT, "setup.cfg")):
    __path__.append(_CHECKOUT)   # a source checkout: numpy_vit.viz is ../viz, numpy_vit.weights ../weights

from .config import PRESETS, ViTConfig, param_shapes
from .errors import ArgumentError, CheckpointError, ConfigError, ImageError, NumpyViTError
from .image import ImageConversionWarning
from .fast import get_num_threads, set_num_threads
from .grads import BACKWARD_RECORD, Grads
from .model import ViT, ViTWithAttention, init_params
from .trace import TRACE_KEYS, Trace

__all__ = ["ViT", "ViTWithAttention", "ViTConfig", "PRESETS", "Trace", "TRACE_KEYS", "Grads", "BACKWARD_RECORD",
           "init_params", "param_shapes",
           "NumpyViTError", "ConfigError", "ImageError", "CheckpointError", "ArgumentError", "ImageConversionWarning",
           "get_num_threads", "set_num_threads", "sample_image"]
__version__ = "0.1.0"


def sample_image() -> str:
    """The path of the sample image the demo draws (a heart in clutter, 224x224), wherever numpy_vit is installed:
    ``model.run(numpy_vit.sample_image())``."""
    for folder in __path__:
        path = _os.path.join(folder, "viz", "assets", "sample.png")
        if _os.path.isfile(path):
            return path
    raise FileNotFoundError("the sample image viz/assets/sample.png is missing from this installation of numpy_vit")
