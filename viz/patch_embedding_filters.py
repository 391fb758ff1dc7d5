"""The ViT paper's Fig. 7 (left): the first principal components of the patch projection
``patch_embed.proj.weight``, drawn as RGB images. The numbers come from
:func:`numpy_vit.analysis.patch_embedding_filters`.
"""
from __future__ import annotations

import numpy as np

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import footnote, new_figure, save_figure, style


def visualize_patch_embedding_filters(model, save_path=None, n_components=28):
    """The first principal components of the patch projection ``patch_embed.proj.weight``, as RGB
    images (Dosovitskiy et al. 2021, Fig. 7 left). ``model`` is a ViT or anything with ``params``."""
    params = getattr(model, "params", None)
    if params is None or "patch_embed.proj.weight" not in params:
        raise ArgumentError(f"visualize_patch_embedding_filters needs a model with params['patch_embed.proj.weight'], "
                            f"got {type(model).__name__}")
    images, ratio = analysis.patch_embedding_filters(params["patch_embed.proj.weight"], n_components)
    cols = min(7, len(images))
    rows = int(np.ceil(len(images) / cols))
    with style():
        fig = new_figure(1.6 * cols + 0.4, 1.75 * rows + 1.0)
        axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
        for index, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if index < len(images):
                ax.imshow(images[index], interpolation="nearest")
                ax.set_title(f"PC{index + 1} · {ratio[index]:.1%}", fontsize=9)
            else:
                ax.set_visible(False)
        fig.suptitle("Principal components of the patch-embedding filters (ViT paper, Fig. 7 left)")
        footnote(fig, "Each component min-max scaled to RGB; % = share of the filters' variance")
    save_figure(fig, save_path)
    return fig
