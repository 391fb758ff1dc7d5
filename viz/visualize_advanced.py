"""The guide's module name for its last four figures: ``from visualize_advanced import ...`` keeps working as
``from numpy_vit.viz.visualize_advanced import ...``. The figures live in position_embedding.py,
attention_distance.py, cls_evolution.py, rollout.py and patch_embedding_filters.py.
"""
from .attention_distance import visualize_attention_distance
from .cls_evolution import visualize_cls_token_evolution
from .patch_embedding_filters import visualize_patch_embedding_filters
from .position_embedding import visualize_position_embedding
from .rollout import visualize_attention_rollout

__all__ = ["visualize_position_embedding", "visualize_attention_distance", "visualize_cls_token_evolution",
           "visualize_attention_rollout", "visualize_patch_embedding_filters"]
