"""Figure 9, where the attention goes: per layer, the share of all attention that lands on the class token,
on the registers, on sink patches and on the other patches; and the tokens whose residual norm stands far
above the rest (Darcet et al. 2023, "Vision Transformers Need Registers"), on the image.

A ViT without registers often repurposes a few low-information patches as global scratch space: every
query reads them (a sink) and their norms grow. Registers are extra tokens given for that job, so the
patches can keep describing the image. The numbers come from :func:`numpy_vit.analysis.find_sinks`,
:func:`numpy_vit.analysis.received_attention` and :func:`numpy_vit.analysis.token_norms`.
"""
from __future__ import annotations

import numpy as np
from matplotlib.patches import Circle

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import (UNDERLAY_NOTE, TokenLayout, colorbar, footnote, grid_note, new_figure, overlay,
                      resolve_trace, save_figure, style, trace_attention, trace_image)

BUDGET_SIZE = (17, 5.6)
RECORD = ("blocks.*.attn.pattern", "blocks.*.resid_post")
GROUP_COLOURS = {"CLS": "#1f77b4", "distillation token": "#6baed6", "registers": "#9467bd",
                 "sink patches": "#ff2d55", "other patches": "#c7c7c7"}
SINK_RING, NORM_RING = "#ff2d55", "#00e5ff"


def token_groups(layout: TokenLayout, sink_tokens) -> dict:
    """{group name: token indices}: the class token, DeiT's distillation token, registers, sink patches, others."""
    names, t = layout.prefix_names, layout.num_prefix_tokens
    groups = {"CLS": [i for i, n in enumerate(names) if n == "cls"],
              "distillation token": [i for i, n in enumerate(names) if n == "dist"],
              "registers": [i for i, n in enumerate(names) if n.startswith("reg")],
              "sink patches": sorted(j for j in sink_tokens if j >= t)}
    groups["other patches"] = sorted(set(range(t, t + layout.grid[0] * layout.grid[1])) - set(groups["sink patches"]))
    return {name: tokens for name, tokens in groups.items() if tokens}


def attention_shares(layers, groups: dict, image_index: int = 0) -> dict:
    """{group: [L] share of the average query's attention (all tokens, heads averaged) that lands on it}."""
    received = [analysis.received_attention(a, image_index).mean(0) for a in layers]   # L x [N]
    return {name: np.array([r[tokens].sum() for r in received]) for name, tokens in groups.items()}


def _ring(ax, token, layout, colour, radius=0.75, width=1.8):
    row, col = divmod(token - layout.num_prefix_tokens, layout.grid[1])
    p = layout.patch_size
    ax.add_patch(Circle(((col + 0.5) * p - 0.5, (row + 0.5) * p - 0.5), p * radius, fill=False,
                        edgecolor=colour, linewidth=width))


def draw_attention_budget(fig, trace, image_index=0, sink_threshold=None, norm_factor=analysis.NORM_FACTOR):
    layers = trace_attention(trace)
    layout = TokenLayout.of_trace(trace)
    image_index = analysis.check_index(image_index, layers[0].shape[0], "image_index")
    if sink_threshold is None:
        sink_threshold = analysis.majority_sink_threshold(layers[0].shape[-1])
    sinks = analysis.find_sinks(layers, layout.grid, layout.prefix_names, sink_threshold, image_index)
    sink_patches = sorted({s.token for s in sinks if s.position is not None})
    groups = token_groups(layout, sink_patches)
    shares = attention_shares(layers, groups, image_index)
    norms = analysis.token_norms(trace, norm_factor, image_index)
    depth, t = len(layers), layout.num_prefix_tokens
    ax_share, ax_image, ax_norm = fig.subplots(1, 3)

    x = np.arange(depth)
    bottom = np.zeros(depth)
    for name, values in shares.items():
        count = len(groups[name])
        ax_share.bar(x, values, bottom=bottom, color=GROUP_COLOURS[name], edgecolor="white", linewidth=0.5,
                     label=f"{name} ({count} token{'s' if count != 1 else ''})")
        bottom += values
    uniform_patches = (layout.grid[0] * layout.grid[1]) / layers[0].shape[-1]
    ax_share.axhline(uniform_patches, color="black", linestyle=":", linewidth=1,
                     label=f"patches' share under uniform attention ({uniform_patches:.0%})")
    ax_share.set_xticks(x if depth <= 24 else x[::2])
    ax_share.set_ylim(0, 1)
    ax_share.set_xlabel("layer")
    ax_share.set_ylabel("share of all attention (average query, heads averaged)")
    ax_share.set_title("(a) Where each layer's attention lands")
    ax_share.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8.5, ncols=2, frameon=False)

    image = trace_image(trace, image_index)
    ratio = norms.norms[:, t:] / np.maximum(norms.median, 1e-12)[:, None]              # [L, P]
    peak = ratio.max(0).reshape(layout.grid)                                            # [gh, gw]
    norm, cmap = overlay(ax_image, image, peak, "nearest", size=layout.image_size if image is None else None)
    colorbar(fig, ax_image, norm, cmap, "largest norm / layer's median patch norm", shrink=0.8)
    outliers = sorted(norms.patch_outliers())
    for token in outliers[:50]:
        _ring(ax_image, token, layout, NORM_RING, 0.62)
    for token in sink_patches[:50]:
        _ring(ax_image, token, layout, SINK_RING, 0.85)
    ax_image.set_title(f"(b) Token norms on the image: {len(outliers)} outlier patch(es) (cyan ring),\n"
                       f"{len(sink_patches)} sink patch(es) (red ring)")

    steps = np.arange(depth)
    ax_norm.plot(steps, ratio.max(1), "o-", color="#444444", label="largest patch")
    prefix_colours = {"cls": GROUP_COLOURS["CLS"], "dist": GROUP_COLOURS["distillation token"]}
    for index, name in enumerate(layout.prefix_names):
        ax_norm.plot(steps, norms.norms[:, index] / np.maximum(norms.median, 1e-12), "s--", markersize=4,
                     color=prefix_colours.get(name, GROUP_COLOURS["registers"]), linewidth=1.2,
                     label=name.upper() if name in ("cls", "dist") else name,
                     alpha=1.0 if not name.startswith("reg") else 0.75)
    ax_norm.axhline(norm_factor, color="#d62728", linestyle=":", linewidth=1.2,
                    label=f"outlier threshold ({norm_factor:g}x the median)")
    ax_norm.axhline(1.0, color="grey", linewidth=0.8)
    ax_norm.set_xticks(steps if depth <= 24 else steps[::2])
    ax_norm.set_ylim(bottom=0)
    ax_norm.set_xlabel("layer (its output)")
    ax_norm.set_ylabel("residual norm / median patch norm")
    ax_norm.set_title("(c) Norms relative to the median patch, per layer")
    ax_norm.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8.5, ncols=3, frameon=False)

    if analysis.summary_query(layout.prefix_names)[0] == "cls":
        fig.suptitle("Where the attention goes: class token, registers, sink patches and the rest, layer by layer")
    else:
        fig.suptitle("Where the attention goes: registers, sink patches and the rest, layer by layer "
                     "(this model has no class token)")
    named = ", ".join(dict.fromkeys(s.name for s in sinks if s.position is not None))
    footnote(fig, f"A sink: a key to which one head's average query gives more than {sink_threshold:.0%} of its "
                  f"attention{f' (here {named})' if named else ' (none here)'}; "
                  f"an outlier: a token whose norm leaving a layer exceeds {norm_factor:g}x that layer's median "
                  f"patch norm (Darcet et al. 2023). Registers are extra tokens that take the global attention "
                  f"a model without them puts on sink patches, so its patches keep describing the image"
                  f"{grid_note(layout)}; (b) shows each patch's largest ratio over the layers"
                  + (f"; {UNDERLAY_NOTE}" if image is not None else ""))
    return shares


def visualize_attention_budget(model, image=None, save_path=None, *, image_index=0, sink_threshold=None,
                               norm_factor=analysis.NORM_FACTOR):
    """Figure 9: where each layer's attention goes (class token, registers, sink patches, other patches) and
    the token-norm outliers on the image. ``model``: a ViT with ``image`` (only the attention patterns and
    the residual stream are recorded), or a Trace that recorded them."""
    trace = resolve_trace(model, image, "visualize_attention_budget", record=RECORD)
    if not any(key.endswith(".resid_post") for key in trace.keys()):
        raise ArgumentError("this Trace recorded no residual stream; run with record=None or "
                            f"record={list(RECORD)}")
    with style():
        fig = new_figure(*BUDGET_SIZE)
        draw_attention_budget(fig, trace, image_index, sink_threshold, norm_factor)
    save_figure(fig, save_path)
    return fig
