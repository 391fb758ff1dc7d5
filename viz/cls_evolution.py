"""Figure 6, the CLS token's path: its residual-stream state entering each block and leaving the last, as a 2-D
PCA path and as norms next to the patch tokens' mean norm.
"""
from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import TokenLayout, footnote, grid_note, new_figure, resolve_trace, save_figure, style, trace_array

RECORD = ("blocks.*.resid_pre", "blocks.*.resid_post")   # the residual stream is all this figure draws


CLS_SIZE = (14, 5.6)


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
    summary, _ = analysis.summary_query(layout.prefix_names)
    if summary == "cls":
        name, why = "CLS token", ""
        path = analysis.token_trajectory(stream, token=layout.prefix_names.index("cls"), image=image_index)
    else:  # what average pooling reads: the mean over the patch tokens
        name, why = "mean patch token", " (mean over patch tokens: this model has no class token)"
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
    ax_norm.set_title(f"(b) Norm of the {name}, input and after each layer")
    ax_norm.set_xlabel("in = input to layer 0; k = output of layer k")
    ax_norm.set_ylabel("L2 norm of the residual stream")
    ax_norm.set_xticks(steps, point_labels)
    ax_norm.set_ylim(bottom=0)
    ax_norm.legend(loc="best")
    fig.suptitle(f"How the {name} is built up, layer by layer, in the residual stream"
                 + (f"\n{why.strip()}" if why else ""))
    embedded = ("the embedded input (patch or CLS embedding + position) after the LayerNorm before the blocks "
                "(norm_pre)" if trace.config.norm_pre else "the embedded input (patch or CLS embedding + position)")
    footnote(fig, f"Residual stream before the final LayerNorm: 'in' is {embedded}, k the output of layer k (layers numbered 0..{depth - 1}); PCA fitted on "
                  f"these {depth + 1} points{grid_note(layout)}")


def visualize_cls_token_evolution(model, img_tensor=None, save_path=None, *, image_index=0):
    """Figure 6: the CLS token's residual-stream state after each layer: (a) its 2-D PCA path, green
    square "in" = input embedding, dots labelled by the layer they leave, red star = output of the
    last layer; (b) its norm at each of those points, next
    to the patch tokens' mean norm. ``img_tensor`` is anything ``model.run`` takes; or pass a Trace."""
    trace = resolve_trace(model, img_tensor, "visualize_cls_token_evolution", record=RECORD)
    with style():
        fig = new_figure(*CLS_SIZE)
        draw_cls_evolution(fig, trace, image_index)
    save_figure(fig, save_path)
    return fig
