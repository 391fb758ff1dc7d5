"""Figures 2 and 3, attention maps: one head's attention over the patches for several layers, and every head of
one layer, overlaid on the image.

Each function takes what the guide passes, ``(model, image, ...)``, or a Trace in place of the model
(``visualize_attention_map(trace, layer_indices=[0, 5])``), returns the matplotlib Figure and writes it when
given ``save_path``. The maps come from :func:`numpy_vit.analysis.attention_map`.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.patches import Rectangle

from numpy_vit import analysis

from ._common import (ATTENTION_RECORD, UNDERLAY_NOTE, TokenLayout, check_layers, colorbar, default_layers, footnote,
                      grid_note, new_figure, overlay, query_label, resolve_trace, save_figure, show_image, style,
                      trace_attention, trace_image)


def _mark_query(ax, query, layout: TokenLayout):
    token = analysis.query_token_index(query, layout.grid, layout.prefix_names)
    if token == "mean" or token < layout.num_prefix_tokens:
        return
    row, col = divmod(token - layout.num_prefix_tokens, layout.grid[1])
    p = layout.patch_size
    ax.add_patch(Rectangle((col * p - 0.5, row * p - 0.5), p, p, fill=False, edgecolor="#39ff14", linewidth=2))


def _attention_panel(fig, ax, trace_or_layers, layout, layer, head, query, interpolation, dino_mask, keep,
                     image, image_index, colour_bar=True, vmax=None, title=None):
    layers = trace_or_layers
    grid_map = analysis.attention_map(layers[layer], layout.grid, layout.num_prefix_tokens, head=head,
                                      query=query, prefix_names=layout.prefix_names)[image_index]  # [gh, gw]
    mask = analysis.dino_mask(grid_map, keep) if dino_mask else None
    size = layout.image_size if image is None else None
    norm, cmap = overlay(ax, image, grid_map, interpolation, vmax=vmax, mask=mask, size=size)
    _mark_query(ax, query, layout)
    ax.set_title(title or f"Layer {layer} · head {head}\npatches hold {grid_map.sum():.0%} of it")
    if colour_bar:
        colorbar(fig, ax, norm, cmap, "attention weight", shrink=0.78)
    return grid_map


def draw_attention_layers(fig, trace, layer_indices=None, head_index=0, query=None, interpolation="bilinear",
                          dino_mask=False, keep=0.6, image_index=0):
    layers = trace_attention(trace)
    layout = TokenLayout.of_trace(trace)
    layer_indices = check_layers(default_layers(len(layers)) if layer_indices is None else layer_indices,
                                 len(layers))
    head_index = analysis.check_index(head_index, layers[0].shape[1], "head_index")
    image_index = analysis.check_index(image_index, layers[0].shape[0], "image_index")
    image = trace_image(trace, image_index)
    pool = pool_pattern(trace) if query is None else None   # [B, H, P] the attention pool's latent query, or None
    axes = fig.subplots(1, len(layer_indices) + 1 + (pool is not None))
    if image is not None:
        show_image(axes[0], image, "Input image")
    else:
        axes[0].set_visible(False)
    for ax, layer in zip(axes[1:], layer_indices):
        _attention_panel(fig, ax, layers, layout, layer, head_index, query, interpolation, dino_mask, keep,
                         image, image_index)
    title = f"Where the model looks: {query_label(query, layout)}, head {head_index}, layer by layer"
    if pool is not None:   # the summary's own query: what the head reads, after the last block
        grid_map = pool[image_index, head_index].reshape(layout.grid)   # [gh, gw]
        norm, cmap = overlay(axes[-1], image, grid_map, interpolation,
                             size=layout.image_size if image is None else None)
        axes[-1].set_title(f"Attention pool · head {head_index}\nits latent query, after layer {len(layers) - 1}")
        colorbar(fig, axes[-1], norm, cmap, "attention weight", shrink=0.78)
        title += ";\nlast panel: the attention-pooling head's latent query, which makes the image's summary"
    fig.suptitle(title)
    note = (f"{layout.grid[0]}x{layout.grid[1]} attention grid upsampled to "
            f"{layout.image_size[0]}x{layout.image_size[1]} px ({interpolation}); each panel has its own colour scale"
            + grid_note(layout) + (f"; {UNDERLAY_NOTE}" if image is not None else ""))
    if dino_mask:
        note += f"; cyan outline: the fewest patches holding {keep:.0%} of the patch attention (DINO)"
    footnote(fig, note)


def layers_size(count, pool=False):
    """Inches for the input image plus ``count`` layer panels (and the attention pool's, with ``pool``)."""
    return (3.3 * (count + 1 + pool) + 0.6, 4.1 + 0.3 * pool)


def pool_pattern(trace):  # -> [B, H, P] or None
    """The attention-pooling head's attention (SigLIP's latent query over the patch tokens), from the trace's
    ``attn_pool.pattern`` [B, H, L, P] (its first latent, the one the summary reads), or None without one."""
    if "attn_pool.pattern" not in trace:
        return None
    return np.asarray(trace["attn_pool.pattern"])[:, :, 0]   # [B, H, L, P] -> [B, H, P]


def visualize_attention_map(model, image=None, save_path=None, layer_indices=None, head_index=0, *, query=None,
                            interpolation="bilinear", dino_mask=False, keep=0.6, image_index=0):
    """Figure 2: one head's attention over the patches for several layers, overlaid on the image.

    ``layer_indices`` defaults to the guide's [0, 3, 6, 11] for a 12-layer model (four layers spread
    the same way otherwise). ``query``: None = the CLS token (the classic map), a patch number,
    a (row, col) pair, a prefix name (``"dist"``, ``"reg0"``) or ``"mean"``. Prefix columns are
    not drawn; each title says how much of the row the patches hold. ``interpolation="nearest"``
    shows the blocky patch grid the model actually has (the guide's FAQ 1). ``dino_mask=True``
    outlines the fewest patches that hold ``keep`` (60%) of the mass (Caron et al. 2021). A model with an
    attention-pooling head (SigLIP) gets one more panel, its latent query's attention after the last block.
    """
    trace = resolve_trace(model, image, "visualize_attention_map", record=ATTENTION_RECORD)
    depth = len(trace_attention(trace))
    count = len(check_layers(default_layers(depth) if layer_indices is None else layer_indices, depth))
    with style():
        fig = new_figure(*layers_size(count, query is None and pool_pattern(trace) is not None))
        draw_attention_layers(fig, trace, layer_indices, head_index, query, interpolation, dino_mask, keep,
                              image_index)
    save_figure(fig, save_path)
    return fig


def _head_grid(num_heads):
    cols = min(num_heads, max(3, math.ceil(math.sqrt(num_heads * 4 / 3))))
    return math.ceil(num_heads / cols), cols


def heads_size(num_heads):
    rows, cols = _head_grid(num_heads)
    return (2.9 * cols + 1.2, 2.9 * rows + 1.1)


def draw_all_heads(fig, trace, layer_idx=None, query=None, interpolation="bilinear", shared_scale=False,
                   dino_mask=False, keep=0.6, image_index=0):
    layers = trace_attention(trace)
    layout = TokenLayout.of_trace(trace)
    if layer_idx is None:
        layer_idx = max(len(layers) // 2 - 1, 0)             # the guide's 5 for 12 layers
    layer_idx = analysis.check_index(layer_idx, len(layers), "layer_idx")
    image_index = analysis.check_index(image_index, layers[0].shape[0], "image_index")
    image = trace_image(trace, image_index)
    num_heads = layers[0].shape[1]
    rows, cols = _head_grid(num_heads)
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    pattern = layers[layer_idx][image_index:image_index + 1]           # [1, H, N, N], as stored: no copy
    heads = [analysis.attention_map(pattern[:, h:h + 1], layout.grid, layout.num_prefix_tokens, head=0,
                                    query=query, prefix_names=layout.prefix_names)[0]   # one head in float64
             for h in range(num_heads)]
    top = max(float(m.max()) for m in heads)
    for head, (ax, grid_map) in enumerate(zip(axes, heads)):
        shown = grid_map if shared_scale else grid_map / max(grid_map.max(), 1e-12)
        mask = analysis.dino_mask(grid_map, keep) if dino_mask else None
        norm, cmap = overlay(ax, image, shown, interpolation, vmax=top if shared_scale else 1.0, mask=mask,
                             size=layout.image_size if image is None else None)
        _mark_query(ax, query, layout)
        ax.set_title(f"head {head} · max {grid_map.max():.3g}")   # 3 digits at any grid size
    for ax in axes[num_heads:]:
        ax.set_visible(False)
    colorbar(fig, list(axes[:num_heads]), norm, cmap,
             "attention weight" if shared_scale else "attention / that head's max", shrink=0.6)
    fig.suptitle(f"All {num_heads} heads of layer {layer_idx}: {query_label(query, layout)}")
    note = ("one colour scale for all heads" if shared_scale else
            "each head scaled to its own max (in its title), so weak heads stay visible")
    if dino_mask:
        note += f"; cyan: the fewest patches holding {keep:.0%} of each head's patch attention"
    if image is not None:
        note += f"; {UNDERLAY_NOTE}"
    footnote(fig, f"Heads of one layer learn different patterns; {note}{grid_note(layout)}")


def visualize_all_heads(model, image=None, save_path=None, layer_idx=None, *, query=None,
                        interpolation="bilinear", shared_scale=False, dino_mask=False, keep=0.6, image_index=0):
    """Figure 3: every head of one layer (the guide's ``layer_idx=5``, the default for 12 layers).

    Each head is scaled to its own maximum unless ``shared_scale=True``; ``query``,
    ``interpolation`` and ``dino_mask`` as in :func:`visualize_attention_map`.
    """
    trace = resolve_trace(model, image, "visualize_all_heads", record=ATTENTION_RECORD)
    with style():
        fig = new_figure(*heads_size(trace_attention(trace)[0].shape[1]))
        draw_all_heads(fig, trace, layer_idx, query, interpolation, shared_scale, dino_mask, keep, image_index)
    save_figure(fig, save_path)
    return fig
