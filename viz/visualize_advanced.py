"""The guide's last four figures: position embeddings, attention distance, the CLS token's path,
attention rollout (plus the ViT paper's patch-embedding filters).

Like the first three, each takes the guide's arguments or a Trace, returns the Figure, and saves
it when given ``save_path``. The numbers come from :mod:`numpy_vit.analysis`.
"""
from __future__ import annotations

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import (SIMILARITY_CMAP, UNDERLAY_NOTE, TokenLayout, colorbar, footnote, is_trace,
                      new_figure, overlay, query_label, resolve_attention, resolve_trace, save_figure, show_image,
                      style, trace_array, trace_image)


# --- 4. position embedding ------------------------------------------------------------------------

def _position_source(model):
    """(pos_embed [N_pos, D], TokenLayout) from a Trace (the embedding actually used) or a model."""
    if is_trace(model):
        return trace_array(model, "pos_embed"), TokenLayout.of_trace(model)
    config, params = getattr(model, "config", None), getattr(model, "params", None)
    if config is None or params is None or "pos_embed" not in params:
        raise ArgumentError(f"visualize_position_embedding takes a numpy_vit.ViT (with params['pos_embed']) or a "
                            f"Trace; got {type(model).__name__}")
    layout = TokenLayout(config.grid_size, config.num_prefix_tokens, config.prefix_names, config.patch_size)
    return np.asarray(params["pos_embed"]), layout


def position_size(grid):
    return (15.5, 10.5 * min(1.3, max(0.8, grid[0] / max(grid[1], 1))))


DISTANCE_SIZE = (17, 5.4)
CLS_SIZE = (14, 5.6)


def rollout_size(num_fusions):
    return (3.5 * (num_fusions + 2) + 0.4, 4.3)


def similarity_scale(matrix, low=None):
    """(norm, cmap) for cosine similarities: one colour map (SIMILARITY_CMAP) from the lowest similarity
    present (or ``low``, to give several figures one scale) up to 1, so a model whose similarities all
    lie in [0.5, 1] still shows its structure; the colour bar gives the numbers."""
    low = float(np.min(matrix)) if low is None else float(low)
    return Normalize(min(low, 0.999), 1.0), SIMILARITY_CMAP


def similarity_mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """The ViT paper's Fig. 7 (centre) as one image: [gh, gw, gh, gw] tiles -> [gh*(gh+gap), gw*(gw+gap)], NaN gaps."""
    gh, gw = tiles.shape[:2]
    mosaic = np.full((gh * (gh + gap) - gap, gw * (gw + gap) - gap), np.nan)
    for row in range(gh):
        for col in range(gw):
            top, left = row * (gh + gap), col * (gw + gap)
            mosaic[top:top + gh, left:left + gw] = tiles[row, col]
    return mosaic


def lowest_similarity(pos_embed, layout: TokenLayout) -> float:
    """The lowest cosine similarity between two patch positions: where the colour scale starts."""
    return float(analysis.position_embedding_similarity(pos_embed, layout.grid, layout.num_prefix_tokens).min())


def draw_position_embedding(fig, pos_embed, layout: TokenLayout, similarity_low=None):
    """``similarity_low``: where the colour scale starts (default: this embedding's lowest similarity)."""
    gh, gw = layout.grid
    tiles = analysis.position_embedding_similarity(pos_embed, layout.grid, layout.num_prefix_tokens)  # [gh,gw,gh,gw]
    matrix = tiles.reshape(gh * gw, gh * gw)
    norm, cmap = similarity_scale(matrix, similarity_low)
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.85])
    ax_matrix, ax_centre, ax_pca = left.subplots(3, 1)

    ax_matrix.imshow(matrix, cmap=cmap, norm=norm, interpolation="nearest")
    ax_matrix.set_title("(a) Cosine similarity, all pairs")
    ax_matrix.set_xlabel("patch index")
    ax_matrix.set_ylabel("patch index")
    ax_matrix.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax_matrix.yaxis.set_major_locator(MaxNLocator(5, integer=True))
    colorbar(left, ax_matrix, norm, cmap, "cosine sim.", shrink=0.9)

    centre = (gh // 2, gw // 2)
    ax_centre.imshow(tiles[centre], cmap=cmap, norm=norm, interpolation="nearest")
    ax_centre.add_patch(Rectangle((centre[1] - 0.5, centre[0] - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
    ax_centre.set_title(f"(b) Centre patch {centre[0] * gw + centre[1]} (row {centre[0]}, col {centre[1]}) "
                        f"vs all")
    ax_centre.set_xlabel("patch column")
    ax_centre.set_ylabel("patch row")
    ax_centre.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_centre.yaxis.set_major_locator(MaxNLocator(integer=True))
    colorbar(left, ax_centre, norm, cmap, "cosine sim.", shrink=0.9)

    patch_embed = analysis.patch_position_embeddings(pos_embed, layout.grid, layout.num_prefix_tokens)  # [P, D]
    scores, _, ratio = analysis.pca(patch_embed, 2)                                                      # [P, 2]
    points = scores.reshape(gh, gw, -1)
    for row in range(gh):
        ax_pca.plot(points[row, :, 0], points[row, :, 1], color="#bbbbbb", linewidth=0.8, zorder=1)
    cols = np.tile(np.arange(gw), gh)
    dots = ax_pca.scatter(scores[:, 0], scores[:, 1], c=cols, cmap="viridis", s=18, zorder=2,
                          edgecolors="white", linewidths=0.3)
    for index in sorted({0, gw - 1, gh * gw - gw, gh * gw - 1}):
        ax_pca.annotate(str(index), scores[index], fontsize=9, xytext=(4, 4), textcoords="offset points",
                        fontweight="bold")
    ax_pca.set_title("(c) PCA of the position embeddings\n(lines join each grid row; corners numbered)")
    ax_pca.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
    ax_pca.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax_pca.xaxis.set_major_locator(MaxNLocator(4))
    ax_pca.yaxis.set_major_locator(MaxNLocator(4))
    left.colorbar(dots, ax=ax_pca, shrink=0.9, pad=0.02).set_label("patch column")

    ax_tiles = right.subplots(1, 1)
    ax_tiles.imshow(similarity_mosaic(tiles), cmap=cmap, norm=norm, interpolation="nearest")
    step_h, step_w = gh + 1, gw + 1
    ax_tiles.set_xticks(np.arange(gw) * step_w + (gw - 1) / 2, [str(c) for c in range(gw)])
    ax_tiles.set_yticks(np.arange(gh) * step_h + (gh - 1) / 2, [str(r) for r in range(gh)])
    ax_tiles.tick_params(length=0)
    for spine in ax_tiles.spines.values():
        spine.set_visible(False)
    ax_tiles.set_xlabel("input patch column")
    ax_tiles.set_ylabel("input patch row")
    ax_tiles.set_title("(d) Tile at (row, col): that position's similarity to every position\n"
                       "(ViT paper, Fig. 7 centre)")
    colorbar(right, ax_tiles, norm, cmap, "cosine similarity", shrink=0.8)
    fig.suptitle("Position embeddings: cosine similarity between positions")
    scale = (f"colours span {norm.vmin:.2f} to 1" if similarity_low is not None else
             f"colours span the similarities present, from {matrix.min():.2f} to 1")
    footnote(fig, f"{gh}x{gw} patch positions, numbered from 0 like the tokens ({layout.num_prefix_tokens} prefix "
                  f"token row(s) excluded); {scale}. The figure shows the embedding as it is, not how it got "
                  f"there: a fixed sine-cosine table makes neighbours similar without any training.")


def visualize_position_embedding(model, save_path=None):
    """Figure 4: (a) the cosine-similarity matrix of the patch position embeddings, (b) the centre
    patch's similarity to every position, (c) their 2-D PCA, and (d) the ViT paper's grid of tiles
    (Dosovitskiy et al. 2021, Fig. 7 centre). ``model`` is a ViT or a Trace (whose ``pos_embed``
    is the one actually used, resampled if the image size differed)."""
    pos_embed, layout = _position_source(model)
    with style():
        fig = new_figure(*position_size(layout.grid))
        draw_position_embedding(fig, pos_embed, layout)
    save_figure(fig, save_path)
    return fig


# --- 5. attention distance ----------------------------------------------------------------------

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

    images = layers[0].shape[0]
    fig.suptitle(f"Local or global? How far each layer's attention reaches "
                 f"(averaged over {images} image{'s' if images != 1 else ''})")
    treatment = ("prefix-token columns dropped and each row renormalised over the patches" if prefix == "renormalise"
                 else "prefix-token columns dropped without renormalising (biased low)")
    assumed = f"; {layout.caveat()}" if layout.caveat() else ""
    footnote(fig, f"Attention-weighted distance between query and key patch centres, averaged over "
                  f"{layout.grid[0]}x{layout.grid[1]} query patches and {images} image(s); {treatment}; dashed line: "
                  f"a head that weights every patch alike ({uniform:.0f} px){assumed}")
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


# --- 6. CLS token evolution ------------------------------------------------------------------------

def residual_stream(trace) -> list:
    """The residual stream entering every block, then leaving the last: L+1 arrays [B, N, D]."""
    depth = sum(1 for key in trace.keys() if key.startswith("blocks.") and key.endswith(".resid_pre"))
    if depth == 0:
        raise ArgumentError("this Trace recorded no residual stream; run with record=None or "
                            "record=['blocks.*.resid_pre', 'blocks.*.resid_post']")
    return [trace_array(trace, f"blocks.{i}.resid_pre") for i in range(depth)] + \
        [trace_array(trace, f"blocks.{depth - 1}.resid_post")]


def draw_cls_evolution(fig, trace, image_index=0):
    layout = TokenLayout.of_trace(trace)
    stream = residual_stream(trace)                                          # L+1 x [B, N, D]
    image_index = analysis.check_index(image_index, stream[0].shape[0], "image_index")
    t = layout.num_prefix_tokens
    if "cls" in layout.prefix_names:
        name = "CLS token"
        path = analysis.token_trajectory(stream, token=layout.prefix_names.index("cls"), image=image_index)
    else:
        name = "mean patch token (no CLS in this model)"
        path = np.stack([r[image_index, t:].mean(0) for r in stream])        # [L+1, D]
    patch_norm = [float(np.linalg.norm(r[image_index, t:], axis=-1).mean()) for r in stream]
    depth = len(stream) - 1
    scores, _, ratio = analysis.pca(path, 2)                                 # [L+1, 2]
    if scores.shape[1] == 1:
        scores = np.concatenate([scores, np.zeros_like(scores)], 1)
        ratio = np.append(ratio, 0.0)
    ax_path, ax_norm = fig.subplots(1, 2)

    # point 0 is the embedded input, point k the output of layer k-1: labelled "in", then by layer number
    point_labels = ["in"] + [str(layer) for layer in range(depth)]
    ax_path.plot(scores[:, 0], scores[:, 1], "-", color="#6b6b6b", linewidth=1.3, zorder=1)
    dots = ax_path.scatter(scores[1:-1, 0], scores[1:-1, 1], c=np.arange(0, depth - 1), cmap="viridis",
                           vmin=0, vmax=depth - 1, s=55, zorder=2, edgecolors="black", linewidths=0.4)
    ax_path.scatter(*scores[0], marker="s", s=170, color="#2ca02c", edgecolors="black", zorder=3,
                    label="in: input to layer 0 (embedding + position)")
    ax_path.scatter(*scores[-1], marker="*", s=380, color="#d62728", edgecolors="black", zorder=3,
                    label=f"{depth - 1}: output of layer {depth - 1}, the last")
    for label, (x, y) in zip(point_labels, scores):
        ax_path.annotate(label, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    ax_path.set_title(f"(a) The {name} through the layers (PCA)")
    ax_path.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
    ax_path.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
    ax_path.legend(loc="best", fontsize=9)
    if depth > 1:
        bar = fig.colorbar(dots, ax=ax_path, shrink=0.85, pad=0.02)
        bar.set_label("dot: output of layer")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))

    steps = np.arange(depth + 1)
    ax_norm.plot(steps, np.linalg.norm(path, axis=-1), "o-", color="#d62728", linewidth=2, label=name)
    ax_norm.plot(steps, patch_norm, "s--", color="#7f7f7f", linewidth=1.2, markersize=4,
                 label="patch tokens (mean norm)")
    ax_norm.set_title(f"(b) Norm of the {name.split(' (')[0]}, input and after each layer")
    ax_norm.set_xlabel("in = input to layer 0; k = output of layer k")
    ax_norm.set_ylabel("L2 norm of the residual stream")
    ax_norm.set_xticks(steps, point_labels)
    ax_norm.set_ylim(bottom=0)
    ax_norm.legend(loc="best")
    fig.suptitle(f"How the {name.split(' (')[0]} is built up, layer by layer, in the residual stream")
    footnote(fig, f"Residual stream before the final LayerNorm: 'in' is the embedded input (patch or CLS "
                  f"embedding + position), k the output of layer k (layers numbered 0..{depth - 1}); PCA fitted on "
                  f"these {depth + 1} points")


def visualize_cls_token_evolution(model, img_tensor=None, save_path=None, *, image_index=0):
    """Figure 6: the CLS token's residual-stream state after each layer: (a) its 2-D PCA path, green
    square "in" = input embedding, dots labelled by the layer they leave, red star = output of the
    last layer; (b) its norm at each of those points, next
    to the patch tokens' mean norm. ``img_tensor`` is anything ``model.run`` takes; or pass a Trace."""
    trace = resolve_trace(model, img_tensor, "visualize_cls_token_evolution")
    with style():
        fig = new_figure(*CLS_SIZE)
        draw_cls_evolution(fig, trace, image_index)
    save_figure(fig, save_path)
    return fig


# --- 7. attention rollout --------------------------------------------------------------------------

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


# --- extra: patch-embedding filters (ViT paper Fig. 7 left) ---------------------------------------

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


__all__ = ["visualize_position_embedding", "visualize_attention_distance", "visualize_cls_token_evolution",
           "visualize_attention_rollout", "visualize_patch_embedding_filters"]
