"""Figure 7, attention rollout (Abnar & Zuidema 2020, eq. 1): the query's attention traced back through every
layer to the input patches, next to the last layer's attention alone. The numbers come from
:func:`numpy_vit.analysis.attention_rollout`.
"""
from __future__ import annotations

import numpy as np

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import (UNDERLAY_NOTE, colorbar, footnote, new_figure, overlay, query_label, resolve_attention,
                      save_figure, show_image, style, trace_image)


def rollout_size(num_fusions):
    return (3.5 * (num_fusions + 2) + 0.4, 4.3)


def _display_image(image, size):
    """An image for overlays at the grid's pixel size: HxWx3 floats in [0, 1]."""
    from PIL import Image

    from numpy_vit.image import to_rgb_array

    rgb = to_rgb_array(image)                                             # HxWx3 uint8
    if rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BICUBIC))
    return rgb.astype(np.float64) / 255.0


def draw_attention_rollout(fig, layers, layout, image=None, head_fusions=("mean", "max", "min"),
                           discard_ratio=0.0, query=None, interpolation="bilinear", dino_mask=False, keep=0.6,
                           image_index=0):
    for fusion in head_fusions:
        if fusion not in analysis.HEAD_FUSIONS:
            raise ArgumentError(f"head_fusions must be drawn from {analysis.HEAD_FUSIONS}, got {fusion!r}")
    if not head_fusions:
        raise ArgumentError(f"head_fusions is empty; pick from {analysis.HEAD_FUSIONS}")
    image_index = analysis.check_index(image_index, layers[0].shape[0], "image_index")
    token = analysis.query_token_index(query, layout.grid, layout.prefix_names)
    t = layout.num_prefix_tokens

    def read(matrix):                                                    # [B, N, N] -> [gh, gw]
        rows = matrix[image_index, t:].mean(0) if token == "mean" else matrix[image_index, token]
        return analysis.attention_to_grid(rows, layout.grid, t)

    panels = [(f"Last layer ({len(layers) - 1}) alone\nheads averaged", read(analysis.fuse_heads(layers[-1])))]
    for fusion in head_fusions:
        rollout = analysis.attention_rollout(layers, head_fusion=fusion, discard_ratio=discard_ratio,
                                             num_prefix_tokens=t)        # [B, N, N]
        panels.append((f"Rollout through all {len(layers)} layers\nhead fusion: {fusion}", read(rollout)))
    axes = fig.subplots(1, len(panels) + 1)
    if image is not None:
        show_image(axes[0], image, "Input image")
    else:
        axes[0].set_visible(False)
    for ax, (title, grid_map) in zip(axes[1:], panels):
        mask = analysis.dino_mask(grid_map, keep) if dino_mask else None
        norm, cmap = overlay(ax, image, grid_map, interpolation, mask=mask,
                             size=layout.image_size if image is None else None)
        ax.set_title(title)
        colorbar(fig, ax, norm, cmap, "share of the query's input", shrink=0.78)
    fig.suptitle(f"Attention rollout (Abnar & Zuidema 2020): {query_label(query, layout)}, traced back to the "
                 f"input patches")
    discard = (f"; lowest {discard_ratio:.0%} of patch-row weights discarded per layer (query rows kept)"
               if discard_ratio else "")
    caveat = f"; {layout.caveat()}" if layout.guessed else ""
    underlay = f"; {UNDERLAY_NOTE}" if image is not None else ""
    footnote(fig, f"Per layer A_hat = (A + I) / row sum (the residual path); rollout = A_hat of the last "
                  f"layer x ... x A_hat of layer 0; the map is the query's row over the patches; each panel has "
                  f"its own colour scale{discard}{caveat}{underlay}")


def visualize_attention_rollout(attention_maps, save_path=None, *, image=None, head_fusions=("mean", "max", "min"),
                                discard_ratio=0.0, query=None, interpolation="bilinear", dino_mask=False,
                                keep=0.6, grid=None, num_prefix_tokens=None, patch_size=None, image_index=0):
    """Figure 7: attention rollout (Abnar & Zuidema 2020, eq. 1) next to the last layer's attention alone.

    ``attention_maps``: the guide's ``model.attention_maps``, a Trace (then the image is drawn
    under the maps) or a model that has run; ``image`` adds an underlay for a bare list. One panel
    per head fusion in ``head_fusions`` (mean, max, min); ``discard_ratio`` zeroes the lowest
    weights of the patch rows per layer, never the query (CLS) row or the residual identity.
    """
    layers, layout, trace = resolve_attention(attention_maps, grid, num_prefix_tokens, patch_size,
                                              "visualize_attention_rollout")
    if trace is not None and image is None:
        underlay = trace_image(trace, image_index)
    else:
        underlay = None if image is None else _display_image(image, layout.image_size)
    with style():
        fig = new_figure(*rollout_size(len(head_fusions)))
        draw_attention_rollout(fig, layers, layout, underlay, tuple(head_fusions), discard_ratio, query,
                               interpolation, dino_mask, keep, image_index)
    save_figure(fig, save_path)
    return fig
