"""The seven figures by name, drawn from one Trace: what the demo, ``numpy-vit show`` and the
before/after comparison use, so a model runs once per image however many figures are drawn.

    make_figure("attention_rollout", trace, save_path="rollout.png")
    compare_figure("attention_layers", [trace_before, trace_after], ["random init", "trained"])
"""
from __future__ import annotations

import multiprocessing
import os
import textwrap

import numpy as np
from dataclasses import dataclass
from typing import Callable, Optional

from numpy_vit.errors import ArgumentError
from numpy_vit.fast import blas_on_one_thread

from . import (attention_budget, attention_distance, attention_maps, cls_evolution, patch_grid, position_embedding,
               rollout)
from ._common import (ATTENTION_RECORD, DPI, FIGURE_NAMES, TokenLayout, check_layers, default_layers, footnote,
                      new_figure, save_figure, style, trace_array, trace_attention, trace_image)


@dataclass(frozen=True)
class FigureSpec:
    filename: str            # the guide's demo file name
    draw: Callable           # draw(fig, trace, options)
    size: Callable           # size(trace, options) -> (width, height) in inches
    shared: Optional[Callable] = None   # shared(traces, options) -> options that give compared rows one scale
    record: Optional[tuple] = None      # the trace names it draws (globs); None: it may read anything


def _layers_option(trace, options):
    depth = len(trace_attention(trace))
    layers = options.get("layer_indices")
    return check_layers(default_layers(depth) if layers is None else layers, depth)


def _draw_patch_grid(fig, trace, options):
    image = trace_image(trace, options.get("image_index", 0))
    if image is None:
        raise ArgumentError("this Trace holds no image to draw the patch grid on")
    note = patch_grid.trace_preprocessing_note(trace) if options.get("image_index", 0) == 0 else None
    patch_grid.draw_patch_grid(fig, image, TokenLayout.of_trace(trace), preprocessing=note)


def _draw_position_embedding(fig, trace, options):
    if "pos_embed" not in trace and "blocks.0.attn.bias" in trace:  # BEiT: positions enter as an attention bias
        position_embedding.draw_relative_position_bias(fig, trace_array(trace, "blocks.0.attn.bias"),
                                                       TokenLayout.of_trace(trace))
        return
    position_embedding.draw_position_embedding(fig, trace_array(trace, "pos_embed"), TokenLayout.of_trace(trace),
                                               options.get("similarity_low"),
                                               rope=getattr(getattr(trace, "config", None), "rope", False))


def _position_size(trace, options):
    """Figure 2's size: the embedding's four panels, or a row of head panels for a relative position bias."""
    if "pos_embed" not in trace and "blocks.0.attn.bias" in trace:
        return position_embedding.relative_bias_size(np.shape(trace["blocks.0.attn.bias"])[0], trace.grid)
    return position_embedding.position_size(trace.grid)


def _shared_similarity_scale(traces, options):
    """Compared position embeddings share one colour scale, from the lowest similarity of any of them."""
    if any("pos_embed" not in t for t in traces):  # a model drawn by its relative position bias instead
        return {}
    return {"similarity_low": min(position_embedding.lowest_similarity(trace_array(t, "pos_embed"),
                                                                       TokenLayout.of_trace(t))
                                  for t in traces)}


def _draw_attention_layers(fig, trace, options):
    attention_maps.draw_attention_layers(fig, trace, _layers_option(trace, options), options.get("head_index", 0),
                                         options.get("query"), options.get("interpolation", "bilinear"),
                                         options.get("dino_mask", False), options.get("keep", 0.6),
                                         options.get("image_index", 0))


def _draw_all_heads(fig, trace, options):
    layers = options.get("layer_indices")                     # the first of --layers picks the layer
    layer = layers if layers is None or isinstance(layers, int) else (list(layers) or [None])[0]
    attention_maps.draw_all_heads(fig, trace, layer,
                                  options.get("query"), options.get("interpolation", "bilinear"),
                                  options.get("shared_scale", False), options.get("dino_mask", False),
                                  options.get("keep", 0.6), options.get("image_index", 0))


RELATIVE_BIAS_NOTE = ("This model's relative position bias (BEiT) is added to the scores before the softmax, so the "
                      "attention shown includes it.")


def _note_relative_bias(fig, trace):
    """Say, under a figure drawn from the attention patterns, that they include a relative position bias."""
    if getattr(trace.config, "rel_pos_bias", ""):
        footnote(fig, f"{fig.get_supxlabel().rstrip('. ')}. {RELATIVE_BIAS_NOTE}")


def _draw_attention_distance(fig, trace, options):
    attention_distance.draw_attention_distance(fig, trace_attention(trace), TokenLayout.of_trace(trace),
                                               options.get("prefix", "renormalise"))
    _note_relative_bias(fig, trace)


def _draw_cls_evolution(fig, trace, options):
    cls_evolution.draw_cls_evolution(fig, trace, options.get("image_index", 0))


def _rollout_settings(options) -> dict:
    return dict(head_fusions=tuple(options.get("head_fusions", ("mean", "max", "min"))),
                discard_ratio=options.get("discard_ratio", 0.0), query=options.get("query"),
                image_index=options.get("image_index", 0), start_layer=options.get("start_layer", 0),
                exclude_heads=tuple(tuple(pair) for pair in options.get("exclude_heads", ())),
                exclude_layers=tuple(options.get("exclude_layers", ())),
                full_matrix=options.get("full_matrix", False))


def _draw_attention_rollout(fig, trace, options):
    settings = _rollout_settings(options)
    rollout.draw_attention_rollout(fig, trace_attention(trace), TokenLayout.of_trace(trace),
                                   trace_image(trace, settings["image_index"]),
                                   interpolation=options.get("interpolation", "bilinear"),
                                   dino_mask=options.get("dino_mask", False), keep=options.get("keep", 0.6),
                                   **settings)
    _note_relative_bias(fig, trace)


def _rollout_size(trace, options):
    """One panel per map the plan holds: a sink that dominates the rollout adds the panel without it."""
    plan = rollout.rollout_plan(trace_attention(trace), TokenLayout.of_trace(trace), **_rollout_settings(options))
    return rollout.rollout_size(len(plan.panels))


def _draw_attention_budget(fig, trace, options):
    attention_budget.draw_attention_budget(fig, trace, options.get("image_index", 0))


FIGURES = {
    "patch_grid": FigureSpec("vis_1_patch_grid.png",
                             _draw_patch_grid, lambda t, o: patch_grid.patch_grid_size(t.grid), record=()),
    "position_embedding": FigureSpec("vis_2_position_embedding.png",
                                     _draw_position_embedding, _position_size,
                                     _shared_similarity_scale, record=("pos_embed", "blocks.0.attn.bias")),
    "attention_layers": FigureSpec("vis_3_attention_layers.png",
                                   _draw_attention_layers,
                                   lambda t, o: attention_maps.layers_size(
                                       len(_layers_option(t, o)),
                                       o.get("query") is None and attention_maps.pool_pattern(t) is not None),
                                   record=ATTENTION_RECORD),
    "all_heads": FigureSpec("vis_4_all_heads.png", _draw_all_heads,
                            lambda t, o: attention_maps.heads_size(trace_attention(t)[0].shape[1]),
                            record=ATTENTION_RECORD),
    "attention_distance": FigureSpec("vis_5_attention_distance.png",
                                     _draw_attention_distance, lambda t, o: attention_distance.DISTANCE_SIZE,
                                     record=ATTENTION_RECORD),
    "cls_evolution": FigureSpec("vis_6_cls_evolution.png",
                                _draw_cls_evolution, lambda t, o: cls_evolution.CLS_SIZE,
                                record=cls_evolution.RECORD),
    "attention_rollout": FigureSpec("vis_7_attention_rollout.png", _draw_attention_rollout, _rollout_size,
                                    record=ATTENTION_RECORD),
    "attention_budget": FigureSpec("vis_9_attention_budget.png", _draw_attention_budget,
                                   lambda t, o: attention_budget.BUDGET_SIZE, record=attention_budget.RECORD),
}
assert tuple(FIGURES) == FIGURE_NAMES
ALIASES = {"attention_map": "attention_layers", "attention": "attention_layers", "heads": "all_heads",
           "distance": "attention_distance", "rollout": "attention_rollout", "pos_embed": "position_embedding",
           "cls": "cls_evolution", "grid": "patch_grid", "budget": "attention_budget",
           "sinks": "attention_budget", "where_attention_goes": "attention_budget"}


def figure_name(name: str) -> str:
    """The canonical figure name for a name, an alias or a demo file stem (``vis_3_attention_layers``)."""
    key = str(name).lower().replace("-", "_")
    for canonical, spec in FIGURES.items():
        if key == spec.filename[:-4]:
            return canonical
    key = ALIASES.get(key, key)
    if key not in FIGURES:
        raise ArgumentError(f"unknown figure {name!r}; choose from {', '.join(FIGURES)} or 'all'")
    return key


def record_for(names) -> list | None:
    """The trace names (globs) that figures ``names`` draw, for ``model.run(image, record=...)``; None (record
    everything) when one of them does not say. The logits and the pooled features are kept for predictions."""
    needs = [FIGURES[figure_name(name)].record for name in names]
    if any(need is None for need in needs):
        return None
    return sorted({pattern for need in needs for pattern in need} | {"logits", "pooled"})


def make_figure(name: str, trace, save_path=None, dpi=DPI, **options):
    """Draw figure ``name`` from a Trace; options are those of the matching ``visualize_*`` function."""
    spec = FIGURES[figure_name(name)]
    # a figure's arrays are small for BLAS: on one thread an SVD of 1,369 x 384 takes 0.3 s, on two threads
    # shared with another process 5-20 s
    with style(), blas_on_one_thread():
        fig = new_figure(*spec.size(trace, options))
        spec.draw(fig, trace, options)
    save_figure(fig, save_path, dpi)
    return fig


_JOB = {}   # what forked workers draw from: inherited through fork, never pickled


def _draw_job(job):
    name, path, dpi = job
    make_figure(name, _JOB["trace"], save_path=path, dpi=dpi, **_JOB["options"])
    return path


def draw_figures(trace, jobs, workers=None, **options):
    """Draw (figure name, path, dpi) jobs from one trace, yielding each path once written, in order, on up to
    ``workers`` forked processes (default: the CPU count, at most 2). Rendering and PNG encoding hold the GIL,
    so only processes draw two figures at once; forked, they share the trace's arrays without copying them.
    Without fork (Windows, macOS' default) the figures are drawn in turn."""
    workers = min(len(jobs), workers or min(2, os.cpu_count() or 1))
    _JOB.update(trace=trace, options=options)
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                yield from pool.imap(_draw_job, jobs, chunksize=1)
        else:
            for job in jobs:
                yield _draw_job(job)
    finally:
        _JOB.clear()


COMPARE_NOTE = ("Each row is its own model run on the same image: a row shows that model as it is, not how it was "
                "made; the lower row's model need not have started from the upper one.")
COMPARE_NOTES = {
    "position_embedding": " A grid of similar neighbours needs no training: a fixed sine-cosine table gives one "
                          "(the shipped default model's position embedding started from such a table).",
}


def compare_figure(name: str, traces, labels, save_path=None, dpi=DPI, **options):
    """The guide's before/after comparison: the same figure for several Traces, stacked, each row labelled
    (its label on one line, the figure's own title under it), on one colour scale where the figure allows."""
    if len(traces) != len(labels) or not traces:
        raise ArgumentError(f"compare_figure needs one label per trace, got {len(traces)} traces and "
                            f"{len(labels)} labels")
    name = figure_name(name)
    spec = FIGURES[name]
    if spec.shared is not None:
        options = {**spec.shared(traces, options), **options}
    sizes = [spec.size(t, options) for t in traces]
    width = max(w for w, _ in sizes)
    title_size = 13
    chars = max(40, int(width * 72 / (title_size * 0.62)))     # bold characters that fit across the figure
    with style():
        fig = new_figure(width, sum(h for _, h in sizes) + 0.55 * len(traces) + 0.5)
        rows = fig.subfigures(len(traces), 1, height_ratios=[h for _, h in sizes])
        for index, (row, trace, label) in enumerate(zip(list(getattr(rows, "flat", [rows])), traces, labels)):
            spec.draw(row, trace, options)
            title = row._suptitle.get_text() if getattr(row, "_suptitle", None) is not None else ""
            lines = textwrap.wrap(str(label), chars) + textwrap.wrap(title, chars)
            row.suptitle("\n".join(lines), color="#08306b", fontsize=title_size)
            row.set_facecolor("#f4f4f4" if index % 2 else "white")
        footnote(fig, COMPARE_NOTE + COMPARE_NOTES.get(name, ""), fontsize=10.5)
    save_figure(fig, save_path, dpi)
    return fig
