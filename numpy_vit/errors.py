"""The errors numpy_vit raises on bad input. All are ValueErrors, and each message names the
file, key, index or shape that was wrong and what would be accepted instead.

This module imports nothing, so ``weights/`` and ``viz/`` can use the same classes.
"""


class NumpyViTError(ValueError):
    """Base class: catch this to catch every input error of numpy_vit, weights and viz."""


class ConfigError(NumpyViTError):
    """A configuration, preset name or architecture that cannot describe a working ViT."""


class ImageError(NumpyViTError):
    """An image file or array that cannot be turned into the model's input."""


class CheckpointError(NumpyViTError):
    """A weights file that is missing, truncated, of another architecture, or unsafe to read."""


class ArgumentError(NumpyViTError):
    """A layer or head index out of range, an empty list, a bad option or output path."""
