"""Figure 4, the position embedding: cosine similarity between the patch positions' embeddings, as a matrix,
from the centre patch, as a 2-D PCA and as the ViT paper's grid of tiles (Dosovitskiy et al. 2021, Fig. 7
centre). The numbers come from :func:`numpy_vit.analysis.position_embedding_similarity`.
"""
from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError
from numpy_vit.fast import blas_on_one_thread

from ._common import (SIMILARITY_CMAP, TokenLayout, colorbar, footnote, grid_note, is_trace, label_step, new_figure,
                      save_figure, style, trace_array)

MAX_TILES = 20   # tiles per side of panel (d); a larger grid shows every k-th position (said in the title)


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


def relative_bias_size(heads, grid):
    """Inches for ``draw_relative_position_bias``: up to 8 head panels a row, each about 2.2 in wide, plus room
    for the two-line title, the colour bar and the footnote."""
    columns = min(heads, 8)
    rows = -(-heads // columns)
    aspect = grid[0] / max(grid[1], 1)
    return (max(9.0, 2.2 * columns + 1.6), 2.2 * aspect * rows + 2.6)


def similarity_scale(matrix, low=None):
    """(norm, cmap) for cosine similarities: one colour map (SIMILARITY_CMAP) from the lowest similarity
    present (or ``low``, to give several figures one scale) up to 1, so a model whose similarities all
    lie in [0.5, 1] still shows its structure; the colour bar gives the numbers."""
    low = float(np.min(matrix)) if low is None else float(low)
    return Normalize(min(low, 0.999), 1.0), SIMILARITY_CMAP


def similarity_mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """The ViT paper's Fig. 7 (centre) as one image: [th, tw, gh, gw] tiles -> [th*(gh+gap), tw*(gw+gap)], NaN gaps.

    ``th x tw`` tiles (the query positions shown), each a full ``gh x gw`` map of similarities."""
    th, tw, gh, gw = tiles.shape
    mosaic = np.full((th * (gh + gap) - gap, tw * (gw + gap) - gap), np.nan)
    for row in range(th):
        for col in range(tw):
            top, left = row * (gh + gap), col * (gw + gap)
            mosaic[top:top + gh, left:left + gw] = tiles[row, col]
    return mosaic


def lowest_similarity(pos_embed, layout: TokenLayout) -> float:
    """The lowest cosine similarity between two patch positions: where the colour scale starts."""
    return float(analysis.position_embedding_similarity(pos_embed, layout.grid, layout.num_prefix_tokens).min())


def draw_position_embedding(fig, pos_embed, layout: TokenLayout, similarity_low=None, rope=False):
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
    with blas_on_one_thread():   # a small SVD: BLAS threads only contend (0.3 s on one, up to 20 s on two)
        scores, _, ratio = analysis.pca(patch_embed, 2)                                                  # [P, 2]
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
    step = label_step(max(gh, gw), MAX_TILES)
    rows, cols = np.arange(0, gh, step), np.arange(0, gw, step)
    ax_tiles.imshow(similarity_mosaic(tiles[rows][:, cols]), cmap=cmap, norm=norm,
                    interpolation="nearest" if step == 1 else "antialiased")
    step_h, step_w = gh + 1, gw + 1
    ax_tiles.set_xticks(np.arange(len(cols)) * step_w + (gw - 1) / 2, [str(c) for c in cols])
    ax_tiles.set_yticks(np.arange(len(rows)) * step_h + (gh - 1) / 2, [str(r) for r in rows])
    ax_tiles.tick_params(length=0)
    for spine in ax_tiles.spines.values():
        spine.set_visible(False)
    ax_tiles.set_xlabel("input patch column")
    ax_tiles.set_ylabel("input patch row")
    ax_tiles.set_title("(d) Tile at (row, col): that position's similarity to every position\n"
                       "(ViT paper, Fig. 7 centre)"
                       + (f"\nrows and columns 0, {step}, {2 * step}, ... of the {gh}x{gw} positions"
                          if step > 1 else ""))
    colorbar(right, ax_tiles, norm, cmap, "cosine similarity", shrink=0.8)
    fig.suptitle("Position embeddings: cosine similarity between positions"
                 + (f"\n{grid_note(layout, lead='')}" if layout.resampled_from else ""))
    scale = (f"colours span {norm.vmin:.2f} to 1" if similarity_low is not None else
             f"colours span the similarities present, from {matrix.min():.2f} to 1")
    prefix_rows = np.shape(pos_embed)[-2] - gh * gw        # 0 where the prefix tokens have no position
    footnote(fig, f"{gh}x{gw} patch positions, numbered from 0 like the tokens ({prefix_rows} prefix "
                  f"token row(s) excluded); {scale}. The figure shows the embedding as it is, not how it got "
                  f"there: a fixed sine-cosine table makes neighbours similar without any training."
                  + (" This model also turns each patch's q and k by its row and column in every block (EVA-02's "
                     "rotary embedding, layers.rope_tables), which this table does not show." if rope else ""))


def draw_relative_position_bias(fig, bias, layout: TokenLayout, layer: int = 0):
    """For a model without an absolute position embedding (BEiT): where its positions enter instead, the
    relative position bias of one layer (Bao et al. 2022, Sec. 2.2): for every head, what it adds to the centre
    patch's attention scores for each key patch, a gh x gw map (one colour scale for every head, centred on 0),
    and the class token's three entries. ``bias``: the trace's ``blocks.{layer}.attn.bias``, [H, N, N]."""
    gh, gw = layout.grid
    bias = np.asarray(bias, dtype=np.float64)
    heads = bias.shape[0]
    centre = (gh // 2) * gw + gw // 2  # the centre patch's index among the patches
    maps = bias[:, 1 + centre, 1:].reshape(heads, gh, gw)  # [H, gh, gw] the centre patch as query, patches as keys
    limit = max(float(np.abs(maps).max()), 1e-12)
    norm = Normalize(-limit, limit)
    columns = min(heads, 8)
    rows = -(-heads // columns)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for head, ax in enumerate(axes):
        if head >= heads:
            ax.set_visible(False)
            continue
        ax.imshow(maps[head], cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.add_patch(Rectangle((gw // 2 - 0.5, gh // 2 - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5))
        ax.set_title(f"head {head}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    colorbar(fig, list(axes[:heads]), norm, "RdBu_r", "bias added to the score", shrink=0.8)
    fig.suptitle(f"Relative position bias of layer {layer}: this model has no absolute position embedding, so "
                 f"this is where positions enter\nwhat each head adds to the centre patch's attention scores "
                 f"(black square) for every key patch")
    cls_rows = [f"head {h}: {bias[h, 0, 1]:+.3f} / {bias[h, 1, 0]:+.3f} / {bias[h, 0, 0]:+.3f}"
                for h in range(min(heads, 4))]
    footnote(fig, f"{gh}x{gw} patch grid. The bias depends only on the (row, column) offset between query and key "
                  f"(one learned table entry per offset and head); it is added before the softmax, so the attention "
                  f"figures already include it. Class token entries (class to patch / patch to class / class to "
                  f"class): {'; '.join(cls_rows)}{' ...' if heads > 4 else ''}. "
                  f"All zero where the table is untrained (timm initialises it to zero).")


def visualize_position_embedding(model, save_path=None):
    """Figure 4: (a) the cosine-similarity matrix of the patch position embeddings, (b) the centre
    patch's similarity to every position, (c) their 2-D PCA, and (d) the ViT paper's grid of tiles
    (Dosovitskiy et al. 2021, Fig. 7 centre). ``model`` is a ViT or a Trace (whose ``pos_embed``
    is the one actually used, resampled if the image size differed). A model without an absolute position
    embedding (BEiT) gets layer 0's relative position bias instead (``draw_relative_position_bias``)."""
    config = getattr(model, "config", None)
    if config is not None and not getattr(config, "abs_pos_embed", True):  # BEiT: its relative position bias
        layout = TokenLayout.of_trace(model) if is_trace(model) else TokenLayout(
            config.grid_size, config.num_prefix_tokens, config.prefix_names, config.patch_size)
        bias = trace_array(model, "blocks.0.attn.bias") if is_trace(model) else model.block_weights(
            config.grid_size)[0]["attn_bias"]  # [H, N, N]
        with style():
            fig = new_figure(*relative_bias_size(np.shape(bias)[0], layout.grid))
            draw_relative_position_bias(fig, bias, layout)
        save_figure(fig, save_path)
        return fig
    pos_embed, layout = _position_source(model)
    with style():
        fig = new_figure(*position_size(layout.grid))
        draw_position_embedding(fig, pos_embed, layout, rope=getattr(getattr(model, "config", None), "rope", False))
    save_figure(fig, save_path)
    return fig
