"""Figure 7, attention rollout (Abnar & Zuidema 2020, eq. 1): the query's attention traced back through every
layer to the input patches, next to the last layer's attention alone. The numbers come from
:func:`numpy_vit.analysis.attention_rollout_row`: the query's row only, by vector-matrix products.

An attention sink (one head whose every query reads one patch, :func:`numpy_vit.analysis.attention_sinks`)
makes the plain rollout one bright dot: the figure then says so on the panel, marks the patch, and adds
the rollout with the sink heads fused out beside it.

A model with a relative position bias (BEiT) adds it to the scores before the softmax, so the patterns rolled
out here already include it: the rollout traces the attention the model uses (said under the figure).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import (UNDERLAY_NOTE, colorbar, footnote, grid_note, new_figure, overlay, query_label,
                      resolve_attention, save_figure, show_image, style, trace_image)

SINK_COLOUR = "#ff2d55"


def rollout_size(num_panels):
    """Inches for the input image plus ``num_panels`` maps."""
    return (3.5 * (num_panels + 1) + 0.4, 4.5)


def _display_image(image, size):
    """An image for overlays at the grid's pixel size: HxWx3 floats in [0, 1]."""
    from PIL import Image

    from numpy_vit.image import to_rgb_array

    rgb = to_rgb_array(image)                                             # HxWx3 uint8
    if rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BICUBIC))
    return rgb.astype(np.float64) / 255.0


@dataclass(frozen=True)
class Panel:
    title: str
    grid_map: np.ndarray            # [gh, gw] the query's row over the patches
    sinks: tuple = ()               # the sinks that dominate this map (drawn as a marker)


@dataclass(frozen=True)
class RolloutPlan:
    panels: tuple
    excluded: tuple                 # (layer, head) pairs the "without the sink" panel leaves out


_LAST = {"key": None, "refs": None, "plan": None}   # the last plan, so size() and draw() compute it once


def _sink_title(sinks, share) -> str:
    first = sinks[0]
    heads = ", ".join(f"L{s.layer}·H{s.head}" for s in sinks[:3]) + (" ..." if len(sinks) > 3 else "")
    return (f"dominated by a sink (ringed): {first.name}\n(row {first.position[0]}, col {first.position[1]}) holds "
            f"{share:.0%}, read by {heads}")


def rollout_plan(layers, layout, head_fusions=("mean", "max", "min"), discard_ratio=0.0, query=None,
                 image_index=0, start_layer=0, exclude_heads=(), exclude_layers=(), full_matrix=False,
                 sink_threshold=None) -> RolloutPlan:
    """The maps of the figure, in order: the last layer alone, one rollout per head fusion, and, when a sink
    dominates a fusion's rollout, the first such rollout again without the sink heads, beside it."""
    for fusion in head_fusions:
        if fusion not in analysis.HEAD_FUSIONS:
            raise ArgumentError(f"head_fusions must be drawn from {analysis.HEAD_FUSIONS}, got {fusion!r}")
    if not head_fusions:
        raise ArgumentError(f"head_fusions is empty; pick from {analysis.HEAD_FUSIONS}")
    key = (tuple(head_fusions), discard_ratio, repr(query), image_index, start_layer, repr(exclude_heads),
           repr(exclude_layers), full_matrix, sink_threshold, layout)
    refs = _LAST["refs"]
    if _LAST["key"] == key and refs is not None and len(refs) == len(layers) and \
            all(ref() is a for ref, a in zip(refs, layers)):
        return _LAST["plan"]
    plan = _make_plan(layers, layout, tuple(head_fusions), discard_ratio, query, image_index, start_layer,
                      exclude_heads, exclude_layers, full_matrix, sink_threshold)
    try:
        _LAST.update(key=key, refs=[weakref.ref(a) for a in layers], plan=plan)
    except TypeError:   # an array type without weak references: no cache
        pass
    return plan


def _make_plan(layers, layout, head_fusions, discard_ratio, query, image_index, start_layer, exclude_heads,
               exclude_layers, full_matrix, sink_threshold) -> RolloutPlan:
    image_index = analysis.check_index(image_index, layers[0].shape[0], "image_index")
    token = analysis.query_token_index(query, layout.grid, layout.prefix_names)
    t, grid, depth = layout.num_prefix_tokens, layout.grid, len(layers)
    start = analysis.check_index(start_layer, depth, "start_layer")
    options = dict(discard_ratio=discard_ratio, num_prefix_tokens=t, start_layer=start,
                   exclude_heads=tuple(exclude_heads), exclude_layers=tuple(exclude_layers), image=image_index)

    def rollout_row(fusion, **changes):                                   # -> [N]
        settings = {**options, **changes}
        if not full_matrix:
            return analysis.attention_rollout_row(layers, token, fusion, **settings)
        image = settings.pop("image")
        matrix = analysis.attention_rollout(layers, fusion, **settings)[image]   # [N, N]
        return matrix[t:].mean(0) if token == "mean" else matrix[token]

    last = np.asarray(layers[-1][image_index])                             # [H, N, N]
    last_row = (last[:, t:].mean(axis=(0, 1), dtype=np.float64) if token == "mean"
                else last[:, token].mean(0, dtype=np.float64))            # [N]
    panels = [Panel(f"Last layer ({depth - 1}) alone\nheads averaged", analysis.attention_to_grid(last_row, grid, t))]
    if sink_threshold is None:
        sink_threshold = analysis.majority_sink_threshold(layers[0].shape[-1])
    sinks = analysis.find_sinks(layers, grid, layout.prefix_names, sink_threshold, image_index)
    through = f"layers {start}-{depth - 1}" if start else f"all {depth} layers"
    dropped = _exclusion_words(exclude_heads, exclude_layers)
    first_dominated = None
    for fusion in head_fusions:
        row = rollout_row(fusion)
        dominating = analysis.dominating_sinks(row, sinks, grid, t)
        title = f"Rollout through {through}{dropped}\nhead fusion: {fusion}"
        if dominating:
            share = row[dominating[0].token] / row[t:].sum()
            title = f"Rollout, head fusion {fusion}\n{_sink_title(dominating, share)}"
            first_dominated = first_dominated or (fusion, dominating)
        panels.append(Panel(title, analysis.attention_to_grid(row, grid, t), tuple(dominating)))
    excluded = ()
    if first_dominated is not None:   # the first fusion a sink dominates, drawn again without the sink heads beside it
        fusion = first_dominated[0]
        row, excluded = analysis.rollout_without_sinks(
            layers, sinks, token, fusion, t, grid, image=image_index, discard_ratio=discard_ratio,
            start_layer=start, exclude_heads=tuple(exclude_heads), exclude_layers=tuple(exclude_layers))
        new = [pair for pair in excluded if tuple(pair) not in {tuple(p) for p in exclude_heads}]
        names = ", ".join(f"L{l}·H{h}" for l, h in new[:4]) + (" ..." if len(new) > 4 else "")
        panels.insert(2 + head_fusions.index(fusion), Panel(f"Rollout without the sink head{'s' if len(new) > 1 else ''} {names}\n"
                               f"head fusion: {fusion}", analysis.attention_to_grid(row, grid, t)))
    return RolloutPlan(tuple(panels), tuple(excluded))


def _exclusion_words(exclude_heads, exclude_layers) -> str:
    words = [f"L{l}·H{h}" for l, h in exclude_heads] + [f"layer {l}" for l in exclude_layers]
    return f", without {', '.join(words)}" if words else ""


def _mark_sink(ax, sink, patch_size):
    """A ring around the sink patch and its name, on the map it dominates."""
    from matplotlib.patches import Circle

    row, col = sink.position
    centre = ((col + 0.5) * patch_size - 0.5, (row + 0.5) * patch_size - 0.5)
    ax.add_patch(Circle(centre, patch_size * 1.3, fill=False, edgecolor=SINK_COLOUR, linewidth=2.2))
    ax.annotate(f"sink: {sink.name}", centre, xytext=(0, -patch_size * 1.6), textcoords="offset pixels",
                ha="center", va="top", color="white", fontsize=9, fontweight="bold",
                bbox=dict(boxstyle="round,pad=0.2", facecolor=SINK_COLOUR, edgecolor="none", alpha=0.85))


def draw_attention_rollout(fig, layers, layout, image=None, head_fusions=("mean", "max", "min"),
                           discard_ratio=0.0, query=None, interpolation="bilinear", dino_mask=False, keep=0.6,
                           image_index=0, start_layer=0, exclude_heads=(), exclude_layers=(), full_matrix=False):
    plan = rollout_plan(layers, layout, head_fusions, discard_ratio, query, image_index, start_layer,
                        exclude_heads, exclude_layers, full_matrix)
    axes = fig.subplots(1, len(plan.panels) + 1)
    if image is not None:
        show_image(axes[0], image, "Input image")
    else:
        axes[0].set_visible(False)
    for ax, panel in zip(axes[1:], plan.panels):
        mask = analysis.dino_mask(panel.grid_map, keep) if dino_mask else None
        norm, cmap = overlay(ax, image, panel.grid_map, interpolation, mask=mask,
                             size=layout.image_size if image is None else None)
        for sink in panel.sinks[:1]:
            _mark_sink(ax, sink, layout.patch_size)
        ax.set_title(panel.title, color=SINK_COLOUR if panel.sinks else "black", fontsize=10.5)
        colorbar(fig, ax, norm, cmap, "share of the query's input", shrink=0.78)
    fig.suptitle(f"Attention rollout (Abnar & Zuidema 2020): {query_label(query, layout)}, traced back to the "
                 f"input patches")
    discard = (f"; lowest {discard_ratio:.0%} of patch-row weights discarded per layer (query rows kept)"
               if discard_ratio else "")
    sink_note = ""
    if plan.excluded:
        sink_note = ("; a sink: a head whose every query reads one patch; rolled out it hands each token's mass "
                     "to that patch, so the panel beside it fuses the sink heads out (the rest of their layer stays)")
    caveat = f"; {layout.caveat()}" if layout.caveat() else ""
    underlay = f"; {UNDERLAY_NOTE}" if image is not None else ""
    footnote(fig, f"Per layer A_hat = (A + I) / row sum (the residual path); rollout = A_hat of the last "
                  f"layer x ... x A_hat of layer {analysis.check_index(start_layer, len(layers), 'start_layer')}; "
                  f"the map is the query's row over the patches; each panel has its own colour "
                  f"scale{discard}{sink_note}{grid_note(layout)}{caveat}{underlay}")


def visualize_attention_rollout(attention_maps, save_path=None, *, image=None, head_fusions=("mean", "max", "min"),
                                discard_ratio=0.0, query=None, interpolation="bilinear", dino_mask=False,
                                keep=0.6, grid=None, num_prefix_tokens=None, patch_size=None, image_index=0,
                                start_layer=0, exclude_heads=(), exclude_layers=(), full_matrix=False):
    """Figure 7: attention rollout (Abnar & Zuidema 2020, eq. 1) next to the last layer's attention alone.

    ``attention_maps``: the guide's ``model.attention_maps``, a Trace (then the image is drawn
    under the maps) or a model that has run; ``image`` adds an underlay for a bare list. One panel
    per head fusion in ``head_fusions`` (mean, max, min); ``discard_ratio`` zeroes the lowest
    weights of the patch rows per layer, never the query (CLS) row or the residual identity.
    ``start_layer``, ``exclude_heads`` ((layer, head) pairs) and ``exclude_layers`` leave attention out of
    the rollout; a sink that dominates it is named on the panel and a panel without its heads is added.
    Only the query's row is computed (vector-matrix products); ``full_matrix=True`` forms every N x N product.
    """
    layers, layout, trace = resolve_attention(attention_maps, grid, num_prefix_tokens, patch_size,
                                              "visualize_attention_rollout")
    if trace is not None and image is None:
        underlay = trace_image(trace, image_index)
    else:
        underlay = None if image is None else _display_image(image, layout.image_size)
    plan = rollout_plan(layers, layout, tuple(head_fusions), discard_ratio, query, image_index, start_layer,
                        exclude_heads, exclude_layers, full_matrix)
    with style():
        fig = new_figure(*rollout_size(len(plan.panels)))
        draw_attention_rollout(fig, layers, layout, underlay, tuple(head_fusions), discard_ratio, query,
                               interpolation, dino_mask, keep, image_index, start_layer, exclude_heads,
                               exclude_layers, full_matrix)
    save_figure(fig, save_path)
    return fig
