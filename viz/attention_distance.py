"""Figure 5, mean attention distance: how far, in pixels, each layer's heads look (ViT paper Fig. 7 right,
App. D.7). The numbers come from :func:`numpy_vit.analysis.mean_attention_distance`.

A model with a relative position bias (BEiT) adds it to the scores before the softmax: the patterns this figure
reads already include it, so the distances are those of the attention the model uses (said under the figure).
"""
from __future__ import annotations

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import TokenLayout, footnote, grid_note, is_trace, new_figure, resolve_attention, save_figure, style


DISTANCE_SIZE = (17, 5.4)


def _gather_attention(attention_maps, grid, patch_size, num_prefix_tokens):
    """Attention layers from one source, or from a list of Traces whose images are pooled together."""
    if isinstance(attention_maps, (list, tuple)) and attention_maps and all(is_trace(t) for t in attention_maps):
        parts = [resolve_attention(t) for t in attention_maps]
        layout = parts[0][1]
        if any(p[1].grid != layout.grid or len(p[0]) != len(parts[0][0]) for p in parts):
            raise ArgumentError("the Traces differ in grid or depth; pool only runs of one model at one image size")
        layers = [np.concatenate([p[0][i] for p in parts]) for i in range(len(parts[0][0]))]
        return layers, layout
    layers, layout, _ = resolve_attention(attention_maps, grid, num_prefix_tokens, patch_size,
                                          "visualize_attention_distance")
    return [np.asarray(a) for a in layers], layout


def depth_groups(depth: int) -> list:
    """Shallow / middle / deep thirds of the layers as (name, [layers]); fewer groups for shallow models."""
    thirds = np.array_split(np.arange(depth), min(3, depth))
    names = ["shallow", "middle", "deep"] if len(thirds) == 3 else ["shallow", "deep"][:len(thirds)]
    return [(name, list(map(int, group))) for name, group in zip(names, thirds)]


def draw_attention_distance(fig, layers, layout: TokenLayout, prefix="renormalise"):
    distance = analysis.mean_attention_distance(layers, layout.grid, layout.patch_size, layout.num_prefix_tokens,
                                                prefix=prefix)                              # [L, H]
    depth, num_heads = distance.shape
    uniform = analysis.uniform_attention_distance(layout.grid, layout.patch_size)
    x = np.arange(depth)
    ax_curve, ax_bars, ax_heads = fig.subplots(1, 3)

    uniform_label = f"uniform attention ({uniform:.0f} px): every patch weighted alike"
    ax_curve.fill_between(x, distance.min(1), distance.max(1), color="#9ecae1", alpha=0.6,
                          label="range over the layer's heads")
    ax_curve.plot(x, distance.mean(1), "o-", color="#08519c", linewidth=2, label="mean over the layer's heads")
    ax_curve.axhline(uniform, color="grey", linestyle="--", linewidth=1, label=uniform_label)
    ax_curve.set_title("(a) Mean attention distance per layer")
    ax_curve.set_xlabel("layer")
    ax_curve.set_ylabel("mean attention distance (pixels)")
    ax_curve.set_xticks(x)
    ax_curve.legend(loc="lower left", fontsize=9)

    groups = depth_groups(depth)
    means = [distance[g].mean() for _, g in groups]
    spreads = [distance[g].std() for _, g in groups]          # over every (layer, head) of the group
    labels = [f"{name}\nlayers {g[0]}-{g[-1]}" if len(g) > 1 else f"{name}\nlayer {g[0]}" for name, g in groups]
    colours = [{"shallow": "#fdae6b", "middle": "#9ecae1", "deep": "#08519c"}[name] for name, _ in groups]
    bars = ax_bars.bar(labels, means, color=colours, edgecolor="black", linewidth=0.6)
    ax_bars.errorbar(np.arange(len(groups)), means, yerr=spreads, fmt="none", ecolor="black", capsize=6,
                     label="±1 standard deviation over the\ngroup's heads (all its layers)")
    for bar, value, spread in zip(bars, means, spreads):
        ax_bars.annotate(f"{value:.0f} px", (bar.get_x() + bar.get_width() / 2, value + spread), ha="center",
                         va="bottom", xytext=(0, 6), textcoords="offset points", fontsize=10, fontweight="bold")
    ax_bars.axhline(uniform, color="grey", linestyle="--", linewidth=1, label=f"uniform attention ({uniform:.0f} px)")
    ax_bars.set_title("(b) Mean over each group's layers and heads")
    ax_bars.set_ylabel("mean attention distance (pixels)")
    ax_bars.set_ylim(0, max(max(m + s for m, s in zip(means, spreads)), uniform) * 1.5)
    ax_bars.legend(loc="upper center", fontsize=9, ncols=1)

    head_colours = ListedColormap(_head_palette(num_heads))
    spread = np.linspace(-0.22, 0.22, num_heads) if num_heads > 1 else np.zeros(1)   # side by side, not stacked
    for head in range(num_heads):
        ax_heads.scatter(x + spread[head], distance[:, head], color=head_colours(head), s=28, edgecolors="black",
                         linewidths=0.3, label="one head (colour: its number)" if head == 0 else None)
    ax_heads.axhline(uniform, color="grey", linestyle="--", linewidth=1, label=f"uniform attention ({uniform:.0f} px)")
    ax_heads.set_title("(c) Every head (ViT paper, Fig. 7 right)")
    ax_heads.set_xlabel("layer")
    ax_heads.set_ylabel("mean attention distance (pixels)")
    ax_heads.set_xticks(x)
    ax_heads.legend(loc="lower left", fontsize=9)
    bounds = np.arange(num_heads + 1) - 0.5
    bar = fig.colorbar(_mappable(head_colours, BoundaryNorm(bounds, num_heads)), ax=ax_heads, shrink=0.85, pad=0.02,
                       ticks=np.arange(num_heads) if num_heads <= 16 else None)
    bar.set_label("head")
    top = max(distance.max(), uniform) * 1.08
    ax_curve.set_ylim(0, top)
    ax_heads.set_ylim(0, top)
    p = layout.patch_size
    for ax in (ax_curve, ax_bars, ax_heads):   # pixels mean different things for 14 and 16 px patches
        ax.secondary_yaxis("right", functions=(lambda px: px / p, lambda patches: patches * p)).set_ylabel(
            f"in patches ({p} px each)")

    images = layers[0].shape[0]
    fig.suptitle(f"Local or global? How far each layer's attention reaches "
                 f"(averaged over {images} image{'s' if images != 1 else ''})")
    treatment = ("prefix-token columns dropped and each row renormalised over the patches" if prefix == "renormalise"
                 else "prefix-token columns dropped without renormalising (biased low)")
    if layout.num_prefix_tokens == 0:
        treatment = "no prefix tokens in this model: every key is a patch"
    assumed = f"; {layout.caveat()}" if layout.caveat() else ""
    footnote(fig, f"Attention-weighted distance between query and key patch centres, averaged over "
                  f"{layout.grid[0]}x{layout.grid[1]} query patches and {images} image(s); {treatment}; dashed line: "
                  f"a head that weights every patch alike ({uniform:.0f} px = {uniform / layout.patch_size:.1f} "
                  f"patches){grid_note(layout)}{assumed}")
    return distance


def _head_palette(count):
    from matplotlib import colormaps
    base = colormaps["tab20" if count > 10 else "tab10"]
    return [base(i % base.N) for i in range(count)]


def _mappable(cmap, norm):
    from matplotlib.cm import ScalarMappable
    return ScalarMappable(norm=norm, cmap=cmap)


def visualize_attention_distance(attention_maps, save_path=None, *, grid=None, patch_size=None,
                                 num_prefix_tokens=None, prefix="renormalise"):
    """Figure 5: mean attention distance in pixels (ViT paper Fig. 7 right, App. D.7): (a) per layer,
    (b) shallow vs middle vs deep layers, (c) every head as a dot.

    ``attention_maps``: the guide's ``model.attention_maps`` (a list over layers of [B, H, N, N]),
    a Trace, a model that has run, or a list of Traces (their images are pooled, as the paper
    averages over 128 images). For a bare list the grid and prefix count are inferred from N
    unless given, and ``patch_size`` defaults to 16 (the figure says so).

    Prefix tokens: only patches are queries; the prefix key columns are dropped and each row is
    renormalised over the patches (``prefix="drop"`` skips the renormalisation, like
    probing-vits, which counts attention to CLS as distance 0 and biases the number low).
    """
    layers, layout = _gather_attention(attention_maps, grid, patch_size, num_prefix_tokens)
    with style():
        fig = new_figure(*DISTANCE_SIZE)
        draw_attention_distance(fig, layers, layout, prefix)
    save_figure(fig, save_path)
    return fig
