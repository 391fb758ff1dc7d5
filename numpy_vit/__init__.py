"""numpy_vit: a Vision Transformer in plain NumPy whose forward pass records every intermediate."""
from .config import PRESETS, ConfigError, ViTConfig

__all__ = ["ViTConfig", "PRESETS", "ConfigError"]
