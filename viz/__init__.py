"""The guide's seven figures (matplotlib, headless), each callable as the guide calls it or on a Trace.

    from numpy_vit.viz import visualize_attention_map
    visualize_attention_map(model, "cat.jpg", save_path="attention.png", layer_indices=[0, 3, 6, 11])
    visualize_attention_map(model.run("cat.jpg"), layer_indices=[0, 11], interpolation="nearest")

One module per figure, named for what it draws (patch_grid, attention_maps, position_embedding,
attention_distance, cls_evolution, rollout, patch_embedding_filters); figures.py names them for the command
line and the before/after comparison; _common.py holds what they share. ``python -m numpy_vit.viz.demo`` (or
``numpy-vit demo``) draws all seven from the sample image.
"""
from .attention_budget import visualize_attention_budget
from .attention_distance import visualize_attention_distance
from .attention_maps import visualize_all_heads, visualize_attention_map
from .cls_evolution import visualize_cls_token_evolution
from .explanations import visualize_explanations
from .patch_embedding_filters import visualize_patch_embedding_filters
from .patch_grid import visualize_patch_grid
from .position_embedding import visualize_position_embedding
from .rollout import visualize_attention_rollout

__all__ = [
    "visualize_patch_grid",               # 1
    "visualize_attention_map",            # 2
    "visualize_all_heads",                # 3
    "visualize_position_embedding",       # 4
    "visualize_attention_distance",       # 5
    "visualize_cls_token_evolution",      # 6
    "visualize_attention_rollout",        # 7
    "visualize_explanations",             # 8, gradient explanations of chosen classes (needs the model)
    "visualize_attention_budget",         # 9, where the attention goes: sinks, registers, token norms
    "visualize_patch_embedding_filters",  # the ViT paper's Fig. 7 left
]
