"""The guide's module name for its first three figures: ``from visualize_attention import visualize_attention_map``
keeps working as ``from numpy_vit.viz.visualize_attention import ...``. The figures live in patch_grid.py and
attention_maps.py; the guide imported its model class from here too.
"""
from numpy_vit import ViTWithAttention

from .attention_maps import visualize_all_heads, visualize_attention_map
from .patch_grid import visualize_patch_grid

__all__ = ["visualize_patch_grid", "visualize_attention_map", "visualize_all_heads", "ViTWithAttention"]
