"""Figure 1, the patch grid: how the model's input image is cut into patches, each labelled with its token index.

Like every figure module here, the ``visualize_*`` function takes what the guide passes (an image, or a Trace)
and returns the matplotlib Figure, writing it when given ``save_path``; the drawing lives in a ``draw_*``
function that fills a Figure or SubFigure, so the before/after comparison can put two of them side by side.
"""
from __future__ import annotations

import numpy as np
from matplotlib import patheffects
from matplotlib.patches import Rectangle

from numpy_vit.errors import ArgumentError

from ._common import (TokenLayout, footnote, grid_note, label_step, new_figure, preprocessing_note, save_figure,
                      show_image, style, trace_image)

LEGIBLE = 16   # labels per side that stay legible on a 7.4-inch panel (a 16x16 grid: 224 px at 14 px patches)

OUTLINE = [patheffects.withStroke(linewidth=2.2, foreground="black")]
LINE_OUTLINE = [patheffects.withStroke(linewidth=2.0, foreground="white")]   # red grid lines stay visible on red


def _grid_image(image, config):
    """(image HxWx3 in [0, 1], TokenLayout, what was done to it) for a raw image, prepared exactly as the
    model would see it."""
    from numpy_vit import ViTConfig
    from numpy_vit.image import load_image, to_rgb_array

    config = getattr(config, "config", config) or ViTConfig()
    rgb = to_rgb_array(image)                                                  # [h, w, 3] uint8, as given
    _, pixels = load_image(rgb, config)                                        # [H, W, 3] in [0, 1]
    layout = TokenLayout(config.grid_size, config.num_prefix_tokens, config.prefix_names, config.patch_size)
    note = preprocessing_note(rgb.shape[:2], layout.image_size, config.crop_pct)
    return np.asarray(pixels, dtype=np.float64), layout, note


def trace_preprocessing_note(trace) -> str:
    """What turned the trace's first image into the model's input, from its recorded ``source_size``."""
    crop_pct = getattr(getattr(trace, "config", None), "crop_pct", 1.0)
    layout = TokenLayout.of_trace(trace)
    return preprocessing_note(getattr(trace, "source_size", None), layout.image_size, crop_pct)


def draw_patch_grid(fig, image, layout: TokenLayout, show_indices=True, preprocessing=None):
    """``preprocessing``: what turned the original image into this input (``preprocessing_note``)."""
    gh, gw = layout.grid
    p = layout.patch_size
    ax = fig.add_subplot(1, 1, 1)
    show_image(ax, image)
    for row in range(1, gh):
        ax.axhline(row * p - 0.5, color="red", linewidth=1.0, path_effects=LINE_OUTLINE)
    for col in range(1, gw):
        ax.axvline(col * p - 0.5, color="red", linewidth=1.0, path_effects=LINE_OUTLINE)
    ax.add_patch(Rectangle((-0.5, -0.5), gw * p, gh * p, fill=False, edgecolor="red", linewidth=2,
                           path_effects=LINE_OUTLINE))
    step = label_step(max(gh, gw), LEGIBLE)
    if show_indices:
        # above LEGIBLE patches a side, every step-th row and column is labelled (said in the title)
        size = max(6.0, min(11.0, 110.0 / -(-max(gh, gw) // step)))   # about a third of a patch wide for "195"
        for row in range(0, gh, step):
            for col in range(0, gw, step):
                ax.text(col * p + p * 0.5, row * p + p * 0.5, str(row * gw + col), ha="center", va="center",
                        color="white", fontsize=size, path_effects=OUTLINE)
                if step > 1:
                    ax.add_patch(Rectangle((col * p - 0.5, row * p - 0.5), p, p, fill=False, edgecolor="yellow",
                                           linewidth=1.0))
    prefix = " + ".join(name.upper() for name in layout.prefix_names)
    labelled = (f"; token index on rows and columns 0, {step}, {2 * step}, ... (yellow squares)"
                if show_indices and step > 1 else "")
    ax.set_title(f"{gw * p}x{gh * p} px model input → {gh} rows x {gw} columns = {gh * gw} patches of {p}x{p} px"
                 + (f"\n{preprocessing}" if preprocessing else "") + labelled.replace("; ", "\n"))
    footnote(fig, "Sizes are width x height. Each patch becomes one token, numbered row by row from 0"
                  + (f"; the sequence is [{prefix}] + patches 0..{gh * gw - 1}" if prefix else "")
                  + grid_note(layout))


def patch_grid_size(grid):
    return (7.4, 7.4 * grid[0] / grid[1] + 1.1)


def visualize_patch_grid(image, save_path=None, *, config=None, show_indices=True):
    """Figure 1: how the image is cut into patches (red grid), each labelled with its token index.

    ``image`` is a path, PIL image or array (resized and cropped as ``config`` says; default:
    224x224 with 16 px patches), or a Trace (its preprocessed image and grid). ``config`` may be
    a ViTConfig or a model.
    """
    if hasattr(image, "grid") and hasattr(image, "keys"):
        pixels, layout, note = trace_image(image), TokenLayout.of_trace(image), trace_preprocessing_note(image)
        if pixels is None:
            raise ArgumentError("this Trace holds no image; run the model on an image, not on a bare array batch")
    else:
        pixels, layout, note = _grid_image(image, config)
    with style():
        fig = new_figure(*patch_grid_size(layout.grid))
        draw_patch_grid(fig, pixels, layout, show_indices, note)
    save_figure(fig, save_path)
    return fig
