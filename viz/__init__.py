"""The guide's seven figures (matplotlib, headless), each callable as the guide calls it or on a Trace.

    from numpy_vit.viz import visualize_attention_map
    visualize_attention_map(model, "cat.jpg", save_path="attention.png", layer_indices=[0, 3, 6, 11])
    visualize_attention_map(model.run("cat.jpg"), layer_indices=[0, 11], interpolation="nearest")

``python -m numpy_vit.viz.demo`` (or ``numpy-vit demo``) draws all seven from the sample image.
"""
from .visualize_advanced import (visualize_attention_distance, visualize_attention_rollout,
                                 visualize_cls_token_evolution, visualize_patch_embedding_filters,
                                 visualize_position_embedding)
from .visualize_attention import visualize_all_heads, visualize_attention_map, visualize_patch_grid

__all__ = [
    "visualize_patch_grid",               # 1
    "visualize_attention_map",            # 2
    "visualize_all_heads",                # 3
    "visualize_position_embedding",       # 4
    "visualize_attention_distance",       # 5
    "visualize_cls_token_evolution",      # 6
    "visualize_attention_rollout",        # 7
    "visualize_patch_embedding_filters",  # the ViT paper's Fig. 7 left
]
