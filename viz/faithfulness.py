"""The figures of ``bench/explanations.py``: every explanation method scored against objects known exactly.

``scores_figure(result)`` draws the perturbation curves (Chefer et al. 2021, Sec. 4.2) of every method and bars
of the segmentation and class-sensitivity scores with their 95% intervals; ``disagreement_figure`` one scene
under several methods' maps. ``result`` is the dict ``bench/explanations.py`` writes as JSON. One colour per
method in both panels and both figures (``COLOURS``).
"""
from __future__ import annotations

import numpy as np

from ._common import HEAT_CMAP, footnote, new_figure, overlay, save_figure, show_image, style

COLOURS = {
    "attention": "#8c564b", "rollout": "#1f77b4", "rollout_max": "#17becf", "rollout_min": "#9edae5",
    "rollout_late": "#393b79", "flow": "#bcbd22", "chefer": "#d62728", "grad_rollout": "#ff7f0e",
    "grad_cam": "#e377c2", "input_x_grad": "#2ca02c", "integrated_gradients": "#98df8a",
    "random": "#7f7f7f", "centre": "#c7c7c7", "oracle": "#000000",
}
STYLES = {"random": ":", "centre": ":", "oracle": "--"}
BARS = (("average_precision", "average precision", "average_precision"),
        ("best_iou", "best IoU over thresholds", None),
        ("pointing_game", "pointing game (top patch on the object)", "pointing_game"),
        ("class_sensitivity", "class sensitivity (two objects)", "class_sensitivity"),
        ("perturbation.positive.auc", "AUC, positive perturbation\n(lower = more faithful)", None))


def _score(method, key):
    """A score of one method by its dotted path in the results ({} where it was not measured)."""
    for part in key.split("."):
        method = method.get(part, {})
    return method


def _curves(ax, result, order):
    levels = np.asarray(result["levels"]) * 100
    count = 0
    for name, method in result["methods"].items():
        pert = method.get("perturbation", {}).get(order)
        if not pert:
            continue
        count = pert["images"]
        ax.plot(levels, pert["accuracy"], STYLES.get(name, "-"), color=COLOURS.get(name, "#333333"), marker="o",
                markersize=3.5, linewidth=2.4 if name in ("oracle", "chefer", "rollout", "attention") else 1.5,
                label=method["label"])
    first = "most" if order == "positive" else "least"
    better = "lower" if order == "positive" else "higher"
    ax.set_title(f"{order} perturbation: {first} relevant patches removed first\n"
                 f"({count} images; {better} curve = more faithful map)")
    ax.set_xlabel("patches removed (%)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xticks(levels)
    ax.grid(alpha=0.3)


def _bars(ax, result, key, title, chance_key):
    """One score of every method as a horizontal bar with its interval; every panel lists all methods in one order,
    a method not measured on this score keeps an empty row (marked "not run")."""
    every = list(result["methods"])
    names = [n for n in every if _score(result["methods"][n], key).get("n")]
    scores = [_score(result["methods"][n], key) for n in names]
    means = np.array([s["mean"] for s in scores])
    low = np.array([s["low"] for s in scores])
    high = np.array([s["high"] for s in scores])
    y = np.array([every.index(n) for n in names])
    ax.barh(y, means, xerr=[means - low, high - means], color=[COLOURS.get(n, "#333333") for n in names],
            edgecolor="#333333", linewidth=0.5, capsize=2.5, error_kw=dict(linewidth=1))
    for row, name in enumerate(every):
        if name not in names:
            ax.text(0.02, row, "not run", va="center", fontsize=8, color="#777777")
    ax.set_yticks(np.arange(len(every)))
    ax.set_yticklabels([result["methods"][n]["label"] for n in every], fontsize=8.5)
    ax.set_ylim(len(every) - 0.5, -0.5)                                   # the first method on top
    if chance_key:
        ax.axvline(result["chance"][chance_key], color="#555555", linestyle="--", linewidth=1.2,
                   label="chance (theory)")
        ax.legend(fontsize=8, loc="lower right")
    counts = sorted({s["n"] for s in scores})
    ax.set_title(f"{title}\nN = {', '.join(str(c) for c in counts)} images", fontsize=10.5)
    ax.set_xlim(0, 1.02)
    ax.grid(axis="x", alpha=0.3)


def scores_figure(result, save_path=None):
    """Perturbation curves (both orders) above bars of AP, best IoU, pointing game and class sensitivity."""
    with style():
        fig = new_figure(19, 12.5)
        grid = fig.add_gridspec(2, 5, width_ratios=[1, 1, 1, 1, 0.9])
        positive = fig.add_subplot(grid[0, :2])
        _curves(positive, result, "positive")
        _curves(fig.add_subplot(grid[0, 2:4], sharey=positive), result, "negative")
        handles, labels = positive.get_legend_handles_labels()
        legend = fig.add_subplot(grid[0, 4])
        legend.axis("off")
        legend.legend(handles, labels, loc="center left", fontsize=10, title="method (both figures)",
                      frameon=False)
        for column, (key, title, chance_key) in enumerate(BARS):
            ax = fig.add_subplot(grid[1, column])
            _bars(ax, result, key, title, chance_key)
            if column:
                ax.tick_params(labelleft=False)
        fig.suptitle(f"Which map shows what the model used?  {result['model']}, seed {result['seed']}: "
                     f"{result['images']} single-object and {result['pairs']} two-object scenes\n"
                     f"perturbation: patches painted in the image's mean colour, on the first {result['subset']} "
                     f"images; accuracy against the label")
        footnote(fig, "Bars: mean over images with its 95% bootstrap interval; dashed line: chance. Segmentation "
                      "scores against the patches >= 50% covered by the object; class sensitivity = the map of "
                      "class c's mass on object c over its mass on both objects (a class-agnostic map scores 0.5). "
                      "Gradient maps, flow and integrated gradients run on the first images only (N in each title).")
        save_figure(fig, save_path)
    return fig


def disagreement_figure(image, truth, maps, labels, title, scores=None, save_path=None):
    """One scene and several methods' maps over it, the object's patches outlined.

    ``image`` [H, W, 3] uint8, ``truth`` [gh, gw] bool patch mask, ``maps`` {name: [gh, gw]}, ``labels``
    {name: text}, ``title`` over the image, ``scores`` {name: text} under each map's title (e.g. its AP).
    """
    picture = np.asarray(image, dtype=np.float64) / 255.0
    with style():
        fig = new_figure(3.6 * (len(maps) + 1), 4.7)
        axes = fig.subplots(1, len(maps) + 1)
        show_image(axes[0], picture, title)
        for ax, (name, values) in zip(axes[1:], maps.items()):
            shown = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
            overlay(ax, picture, shown, interpolation="nearest", mask=np.asarray(truth), cmap=HEAT_CMAP)
            extra = f"\n{scores[name]}" if scores and name in scores else ""
            ax.set_title(f"{labels[name]}{extra}", color=COLOURS.get(name, "#333333"))
        footnote(fig, "Each map's positive part, scaled to its own maximum (yellow), over the image in grey; cyan "
                      "outline: the patches >= 50% covered by the object.")
        save_figure(fig, save_path)
    return fig
