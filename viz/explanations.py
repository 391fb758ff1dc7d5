"""Figure 8, class-specific explanations: for each class explained (a row), where the model's evidence for that
class lies, by several gradient methods side by side with the class-agnostic attention rollout.

    visualize_explanations(model, "two_shapes.png", save_path="explanations.png")       # the top-2 classes
    visualize_explanations(model, image, targets=["heart", 5], methods=["chefer", "grad_cam"])

The maps are the arrays of :mod:`numpy_vit.analysis`'s "gradient explanations" section, from
``model.backward(trace, target)``. This module also holds the model-facing helpers that need the model more than
once (integrated gradients runs it at every step): :func:`explanation_maps` and :func:`integrated_gradients_map`.
Shapes: B images, T classes explained, (gh, gw) the patch grid, C colour channels.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import (DPI, UNDERLAY_NOTE, colorbar, footnote, grey_underlay, is_trace, new_figure, overlay,
                      resolve_trace, save_figure, show_image, style, trace_image)

# method name -> (column title, what its values are); integrated gradients' two baselines are two methods here
METHODS = {
    "chefer": ("Chefer et al. 2021\nrelevance (grad x attention)", "relevance (>= 0)"),
    "grad_rollout": ("Gradient-weighted rollout\n(vit-explain)", "share of the CLS input (>= 0)"),
    "grad_cam": ("Grad-CAM on the last\nblock's ln1 tokens", "Grad-CAM (>= 0)"),
    "input_x_grad": ("Gradient x input\nsummed per patch", "logit share (signed)"),
    "ig_black": ("Integrated gradients\nblack baseline", "logit share (signed)"),
    "ig_blur": ("Integrated gradients\nblurred baseline", "logit share (signed)"),
}
IG_STEPS = 16
IG_STEPS_PER_CALL = 8         # path points per forward + backward pass: bigger matrices, fewer passes
BLUR_SIGMA = 8.0              # pixels: half a 16 px patch, enough to remove the shapes' edges, keeps their colour
METHOD_NOTES = {
    "chefer": "Chefer: R += mean over heads of ReLU(dA * A) @ R, layer by layer, the CLS row.",
    "grad_rollout": "Gradient rollout: ReLU of the head mean of dA * A, + I, rows normalised, multiplied through "
                    "the layers, the CLS row.",
    "grad_cam": "Grad-CAM: ReLU(sum over channels of the patch-mean gradient x token), tokens entering the last "
                "block's attention.",
    "input_x_grad": "Gradient x input: pixels times d logit / d pixels.",
    "ig_black": "Integrated gradients (Sundararajan et al. 2017): (x - x') x the mean gradient on the path from x' "
                "(midpoint rule), x' black.",
    "ig_blur": f"Integrated gradients (Sundararajan et al. 2017): (x - x') x the mean gradient on the path from x' "
               f"(midpoint rule), x' the image blurred (Gaussian, sigma {BLUR_SIGMA:g} px).",
}
# integrated gradients from the blurred image: on the shipped two-object scene its 16-step sums come within 1% of
# the logit gap they must equal, where the black baseline's star map is still far off (-0.22 of 1.16)
DEFAULT_METHODS = ("chefer", "grad_rollout", "grad_cam", "input_x_grad", "ig_blur")
SIGNED = ("input_x_grad", "ig_black", "ig_blur")
DIVERGING_CMAP = "RdBu_r"     # red for the class, blue against, white 0


# --- which classes ----------------------------------------------------------------------------------------------

def class_index(target, labels, probabilities=None) -> int:
    """One class to explain as its index: an int, a class name from ``labels``, a digit string, or "top" (the
    most probable class; needs ``probabilities`` [C] of the image)."""
    count = len(labels)
    if isinstance(target, str):
        if target == "top":
            if probabilities is None:
                raise ArgumentError("target 'top' needs the model's probabilities for the image")
            return int(np.argmax(probabilities))
        if target in labels:
            return list(labels).index(target)
        if target.lstrip("-").isdigit():
            target = int(target)
        else:
            shown = ", ".join(labels[:20]) + (f", ... ({count} classes)" if count > 20 else "")
            raise ArgumentError(f"unknown class {target!r}: use 'top', an index 0..{count - 1}, or one of: {shown}")
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ArgumentError(f"a target is a class name, an index or 'top', got {target!r}")
    if not 0 <= target < count:
        raise ArgumentError(f"class index {target} is out of range: this model has {count} classes (0..{count - 1})")
    return int(target)


def model_labels(model) -> tuple:
    """The class names of a model: its config's labels, else "class 0", "class 1", ..."""
    config = model.config
    if not config.num_classes:
        raise ArgumentError("this model has no classifier (num_classes=0): there is no class to explain; "
                            "pass a model with a classification head")
    return tuple(config.labels) if config.labels else tuple(f"class {i}" for i in range(config.num_classes))


# --- the model-facing helpers -------------------------------------------------------------------------------------

def input_gradient_function(model, target_indices):
    """``images -> d logit[target] / d images``: the ``gradient_of`` that
    :func:`numpy_vit.analysis.integrated_gradients` calls, one class index per image (fixed, never "top").
    A batch of k times as many images (k points of the path, point-major) gets the targets repeated k times."""
    targets = [int(t) for t in np.atleast_1d(target_indices)]

    def gradient_of(images):                                             # [k*B, C, H, W] -> [k*B, C, H, W]
        repeats, leftover = divmod(len(images), len(targets))
        if leftover:
            raise ArgumentError(f"gradient_of got {len(images)} images for {len(targets)} targets")
        trace = model.forward(np.asarray(images, dtype=model.dtype))
        return model.backward(trace, targets * repeats)["input"]
    return gradient_of


def integrated_gradients_map(model, trace, target, baseline="black", steps=IG_STEPS, rule="midpoint",
                             sigma=BLUR_SIGMA, per="patch", steps_per_call=IG_STEPS_PER_CALL):
    """Integrated gradients (Sundararajan et al. 2017, eq. 1) of class ``target`` for the images of ``trace``.

    ``target``: an index, a name, "top", or a list with one per image, resolved on the images themselves (not
    on the interpolated ones). ``baseline``: "black" (:func:`numpy_vit.analysis.black_baseline` with the
    model's mean and std), "blur" (:func:`numpy_vit.analysis.blurred_baseline`, ``sigma`` px) or an array shaped
    like ``trace["input"]``. ``per="patch"`` sums the attributions over colour and each patch: [B, gh, gw];
    ``per="pixel"``: over colour only, [B, H_img, W_img]. Costs ``steps`` forward and backward passes of the
    batch, run ``steps_per_call`` at a time as one larger batch (faster; more memory).
    """
    x = np.asarray(trace["input"], dtype=np.float64)                     # [B, C, H, W]
    targets = resolve_targets(model, trace, target)
    baseline = baseline_images(model, x, baseline, sigma)
    attributions = analysis.integrated_gradients(x, input_gradient_function(model, targets), baseline, steps, rule,
                                                 steps_per_call)
    pixels = attributions.sum(axis=1)                                    # [B, C, H, W] -> [B, H, W]
    if per == "pixel":
        return pixels
    if per != "patch":
        raise ArgumentError(f"per must be 'patch' or 'pixel', got {per!r}")
    return analysis.sum_per_patch(pixels, model.config.patch_size)      # [B, gh, gw]


def baseline_images(model, images, baseline="black", sigma=BLUR_SIGMA) -> np.ndarray:
    """Integrated gradients' starting point x' for normalised ``images`` [B, C, H, W]: "black" (the model's
    normalisation of 0), "blur" (Gaussian, ``sigma`` px) or an array, returned as it is."""
    if isinstance(baseline, str):
        if baseline == "black":
            return analysis.black_baseline(images, model.config.mean, model.config.std)
        if baseline == "blur":
            return analysis.blurred_baseline(images, sigma)
        raise ArgumentError(f"baseline must be 'black', 'blur' or an array, got {baseline!r}")
    return np.asarray(baseline, dtype=np.float64)


def resolve_targets(model, trace, target) -> list:
    """One class index per image of ``trace`` from a target (or a list of one target per image)."""
    labels = model_labels(model)
    probabilities = trace.probabilities()                                # [B, C]
    batch = probabilities.shape[0]
    if isinstance(target, (list, tuple, np.ndarray)):
        if len(target) != batch:
            raise ArgumentError(f"got {len(target)} targets for {batch} image(s): give one, or one per image")
        return [class_index(t, labels, p) for t, p in zip(target, probabilities)]
    return [class_index(target, labels, p) for p in probabilities]


@dataclass
class Explanations:
    """What :func:`explanation_maps` computed for one image: ``maps[method]`` is [T, gh, gw], one map per class of
    ``targets``; ``rollout`` [gh, gw] is the class-agnostic attention rollout; ``probabilities`` [C];
    ``completeness[ig_method]``: per class, (the attributions' sum, the logit gap F(x) - F(x') it should equal,
    Sundararajan et al. 2017, Proposition 1): how far ``steps`` is from converged."""
    trace: object
    targets: list
    labels: tuple
    probabilities: np.ndarray
    maps: dict
    rollout: np.ndarray
    image_index: int = 0
    completeness: dict = None    # IG method -> per class (sum of the attributions, F(x) - F(x')): Proposition 1
    steps: int = IG_STEPS


def explanation_maps(model, image, targets=None, methods=DEFAULT_METHODS, image_index=0, steps=IG_STEPS,
                     **options) -> Explanations:
    """Run ``model`` once on ``image`` (or take a Trace) and explain image ``image_index`` for each target class.

    ``targets``: class names, indices or "top" (default: the two most probable classes). ``methods``: names of
    METHODS; "ig_black" / "ig_blur" run the model ``steps`` more times per class. ``options`` go to
    :func:`numpy_vit.analysis.explanation_map` (e.g. ``start_layer`` for "chefer"; only those a method takes).
    """
    trace = image if is_trace(image) else resolve_trace(model, image, "explanation_maps")
    labels = model_labels(model)
    index = analysis.check_index(image_index, trace.batch_size, "image_index")
    probabilities = trace.probabilities()[index]                         # [C]
    if targets is None:
        targets = list(np.argsort(-probabilities, kind="stable")[:min(2, len(labels))])
    if isinstance(targets, (str, int, np.integer)):
        targets = [targets]
    targets = [class_index(t, labels, probabilities) for t in targets]
    if not targets:
        raise ArgumentError("targets is empty: name at least one class, or leave it out for the top two")
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ArgumentError(f"unknown method(s) {unknown or '(none given)'}: choose from {', '.join(METHODS)}")
    single = slice(index, index + 1)
    image_trace = trace if trace.batch_size == 1 else model.forward(trace["input"][single])
    logits = image_trace.logits[0]                                       # [C]
    baseline_logits = {m: model.forward(baseline_images(model, image_trace["input"], m[3:]).astype(model.dtype),
                                        record=["logits"]).logits[0] for m in methods if m.startswith("ig_")}
    maps = {method: [] for method in methods}
    completeness = {method: [] for method in baseline_logits}
    for target in targets:
        grads = model.backward(trace, [target] * trace.batch_size)
        for method in methods:
            if method.startswith("ig_"):
                value = integrated_gradients_map(model, image_trace, target, method[3:], steps)[0]
                gap = float(logits[target] - baseline_logits[method][target])       # F(x) - F(x')
                completeness[method].append((float(value.sum()), gap))
            else:
                method_options = {k: v for k, v in options.items() if k in analysis.EXPLANATION_OPTIONS[method]}
                value = analysis.explanation_map(trace, grads, method, **method_options)[index]
            maps[method].append(value)                                   # [gh, gw]
    rollout = analysis.explanation_map(trace, None, "rollout")[index]    # [gh, gw]
    return Explanations(trace, targets, labels, probabilities,
                        {m: np.stack(v) for m, v in maps.items()}, rollout, index, completeness, steps)


# --- the figure ---------------------------------------------------------------------------------------------------

def explanations_size(num_targets, num_methods):
    return (2.4 * (num_methods + 2) + 0.6, 2.6 * num_targets + 2.4)


def _signed_overlay(ax, image, grid_values, limit, interpolation):
    """A signed map on a diverging scale symmetric about 0 (white), over the grey image."""
    from matplotlib.colors import Normalize

    size = image.shape[:2] if image is not None else grid_values.shape
    upsampled = analysis.upsample_grid(grid_values, size, interpolation)
    norm = Normalize(vmin=-limit, vmax=limit)
    if image is not None:
        ax.imshow(grey_underlay(image), interpolation="antialiased")
    ax.imshow(upsampled, cmap=DIVERGING_CMAP, norm=norm, alpha=0.75 if image is not None else 1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return norm, DIVERGING_CMAP


def draw_explanations(fig, explained: Explanations, image=None, interpolation="nearest"):
    """Rows: the classes explained; columns: the image, the attention rollout, then one column per method.
    Each column has one colour scale for all its rows."""
    methods = list(explained.maps)
    rows, columns = len(explained.targets), len(methods) + 2
    axes = np.asarray(fig.subplots(rows, columns, squeeze=False))
    grid = explained.rollout.shape
    for row, target in enumerate(explained.targets):
        ax = axes[row, 0]
        if image is not None:
            show_image(ax, image)
        else:
            ax.set_visible(False)
        ax.set_ylabel(f"{explained.labels[target]}\np = {explained.probabilities[target]:.1%}", fontsize=13,
                      fontweight="bold", rotation=0, ha="right", va="center", labelpad=8)
        ax.yaxis.set_visible(True)
        ax.yaxis.label.set_visible(True)
    axes[0, 0].set_title("Input image\n(row: class explained)")
    size = None if image is not None else grid
    for row in range(rows):                                              # one map, the same in every row
        norm, cmap = overlay(axes[row, 1], image, explained.rollout, interpolation, size=size)
    axes[0, 1].set_title("Attention rollout\n(class-agnostic: every row)")
    # the row the rollouts read: the class token's, or the mean of the patch rows (analysis.summary_query)
    with_cls = analysis.summary_query(explained.trace.prefix_names)[0] == "cls"
    summary = "CLS" if with_cls else "mean patch token's"
    colorbar(fig, list(axes[:, 1]), norm, cmap, f"share of the {summary} input", location="bottom", shrink=0.9)
    for column, method in enumerate(methods, start=2):
        values = explained.maps[method]                                  # [T, gh, gw]
        title, unit = METHODS[method]
        for row in range(rows):
            ax = axes[row, column]
            if method in SIGNED:
                limit = max(float(np.abs(values).max()), 1e-12)
                norm, cmap = _signed_overlay(ax, image, values[row], limit, interpolation)
                if method in (explained.completeness or {}):
                    total, gap = explained.completeness[method][row]
                    ax.set_xlabel(f"sum {total:+.2f}, logit gap {gap:+.2f}", fontsize=10)
            else:
                norm, cmap = overlay(ax, image, values[row], interpolation, vmax=max(float(values.max()), 1e-12),
                                     size=size)
        axes[0, column].set_title(title)
        colorbar(fig, list(axes[:, column]), norm, cmap, unit.replace("CLS", summary), location="bottom", shrink=0.9)
    width = fig.get_figwidth() if hasattr(fig, "get_figwidth") else 12
    title = "Gradient explanations: which patches speak for each class, beside the attention rollout"
    fig.suptitle(textwrap.fill(title, max(30, int(width * 72 / (15 * 0.62)))))
    notes = ["Each column has one colour scale for all its rows (the bar under it), so a column compares the "
             "classes; columns do not compare with each other. Rollout uses no gradient: the same map in every row."]
    notes += [METHOD_NOTES[method] if with_cls else METHOD_NOTES[method].replace(
        "the CLS row", f"the mean of the patch rows ({analysis.NO_CLASS_TOKEN_QUERY})") for method in methods]
    if any(method in SIGNED for method in methods):
        notes.append("Signed maps: red for the class, blue against, white 0, summed over each patch.")
    if explained.completeness:
        notes.append(f"Under each integrated-gradients panel: the map's sum and the logit gap F(x) - F(x') it equals "
                     f"when the {explained.steps}-step path integral has converged (their Proposition 1); a "
                     f"large difference asks for more steps.")
    if image is not None:
        notes.append(f"{UNDERLAY_NOTE[0].upper()}{UNDERLAY_NOTE[1:]}.")
    notes.append(f"One value per patch ({interpolation} upsampling).")
    footnote(fig, " ".join(notes), fontsize=10.5)


def visualize_explanations(model, image, targets=None, methods=DEFAULT_METHODS, save_path=None, *,
                           interpolation="nearest", steps=IG_STEPS, dpi=DPI, **options):
    """Figure 8: gradient explanations for ``targets`` (default: the image's two most probable classes).

    ``model``: a numpy_vit.ViT with a classifier (the backward pass is needed); ``image``: what ``model.run``
    takes, a Trace of it, or the :class:`Explanations` of :func:`explanation_maps` (then nothing is computed
    again and ``targets``, ``methods``, ``steps`` are its own). ``methods``: names from METHODS (default
    DEFAULT_METHODS). Returns the Figure and writes it to ``save_path`` when given.
    """
    if isinstance(image, Explanations):
        explained = image
    else:
        explained = explanation_maps(model, image, targets, methods, steps=steps, **options)
    index = explained.image_index
    underlay = trace_image(explained.trace, index)
    with style():
        fig = new_figure(*explanations_size(len(explained.targets), len(explained.maps)))
        draw_explanations(fig, explained, underlay, interpolation)
    save_figure(fig, save_path, dpi)
    return fig
