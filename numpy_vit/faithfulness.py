"""Which map shows what the model used? Explanation methods as per-patch maps, scored against known objects.

Every method is a function ``map(trace, grads=None, **context) -> [B, gh, gw]``, larger = more relevant to the
class explained; ``METHODS`` names them (``explain(name, trace, grads, ...)`` calls one). The scores below take
such maps and ground truth the scenes know exactly (``training/synthetic_shapes.py`` draws every object itself):

* segmentation against a patch mask: :func:`average_precision`, :func:`best_iou`, :func:`pointing_game`,
  :func:`object_mass_ratio`;
* perturbation (Samek et al. 2017; Chefer, Gur & Wolf 2021, Sec. 4.2): :func:`removal_order`,
  :func:`remove_patches`, :func:`perturbation_correct`, :func:`curve_auc`;
* class sensitivity on two-object scenes: :func:`class_share`;
* the mean over images with its 95% interval: :func:`mean_interval`.

``bench/explanations.py`` runs them all on the shipped model. Shapes: B images, (gh, gw) the patch grid,
P = gh * gw patches, p the patch side, C colour channels, H_img x W_img pixels, K removal levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from . import analysis
from .errors import ArgumentError

PATCH_COVER = 0.5            # a patch is "on the object" when at least half of its pixels are object pixels
LEVELS = tuple(np.round(np.arange(1, 10) / 10, 1))   # fractions of the patches removed: 10%, 20%, ... 90%
CENTRE_SIGMA = 0.25          # the centre prior's Gaussian width, as a fraction of the image side
IG_STEPS = 8                 # integrated gradients' Riemann steps (midpoint rule, black baseline)
LATE_START = 0.5             # the later rollout starts at this fraction of the depth (layer 6 of 12)


# --- ground truth on the patch grid ----------------------------------------------------------------

def patch_coverage(masks, grid) -> np.ndarray:
    """The fraction of each patch's pixels that are object pixels: [B, H_img, W_img] bool -> [B, gh, gw]."""
    m = np.asarray(masks)
    gh, gw = analysis._as_grid(grid)
    if m.ndim != 3 or m.shape[1] < gh or m.shape[2] < gw:
        raise ArgumentError(f"masks must be [B, H_img, W_img] with at least one pixel per patch of the {gh}x{gw} "
                            f"grid, got shape {m.shape}")
    ph, pw = m.shape[1] // gh, m.shape[2] // gw
    blocks = m[:, :gh * ph, :gw * pw].reshape(len(m), gh, ph, gw, pw)  # [B, gh, ph, gw, pw]
    return blocks.mean(axis=(2, 4))                                      # [B, gh, gw]


def patch_mask(masks, grid, cover: float = PATCH_COVER) -> np.ndarray:
    """Which patches are on the object: at least ``cover`` of their pixels are. -> [B, gh, gw] bool."""
    if not 0.0 < cover <= 1.0:
        raise ArgumentError(f"cover must be a fraction in (0, 1], got {cover!r}")
    return patch_coverage(masks, grid) >= cover


def _rows(maps, truth) -> tuple:
    """Maps and a bool patch mask of one shape [B, gh, gw], flattened to [B, P] float64 and [B, P] bool."""
    m, t = np.asarray(maps, dtype=np.float64), np.asarray(truth)
    if m.ndim != 3 or m.shape != t.shape:
        raise ArgumentError(f"maps and the patch mask must both be [B, gh, gw] of one shape, got {m.shape} and "
                            f"{t.shape}")
    if t.dtype != bool:
        raise ArgumentError(f"the patch mask must be bool (patch_mask gives one), got {t.dtype}")
    if not np.all(np.isfinite(m)):
        raise ArgumentError("maps hold NaN or inf values")
    return m.reshape(len(m), -1), t.reshape(len(t), -1)                  # [B, P], [B, P]


def _tie_groups(scores, truth) -> tuple:
    """One image's patches ranked by score, highest first, cut where the score changes.

    Returns (count, hits): for each group end, how many patches rank at or above it, and how many of them are
    on the object. Ties form one group, as a threshold on the map cannot split them (scikit-learn's
    ``average_precision_score`` does the same).
    """
    order = np.argsort(-scores, kind="stable")
    ranked, on = scores[order], truth[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])        # the last index of each tie group
    return ends + 1, np.cumsum(on)[ends]


# --- segmentation scores -----------------------------------------------------------------------------

def average_precision(maps, truth) -> np.ndarray:
    """Average precision of each map as a ranking of the patches against the patch mask: -> [B].

    AP = sum over thresholds k of (R_k - R_{k-1}) * P_k, the precision P_k and recall R_k of "the patches
    scoring >= threshold k" (Everingham et al. 2010, VOC, without interpolation; scikit-learn's
    ``average_precision_score``), thresholds at every distinct value of the map. A map that ranks every object
    patch first scores 1. A random map scores :func:`random_ap_expectation`, a little above the object's
    share of patches. NaN where the mask is empty.
    """
    m, t = _rows(maps, truth)
    result = np.full(len(m), np.nan)
    for b in range(len(m)):
        positives = t[b].sum()
        if positives:
            count, hits = _tie_groups(m[b], t[b])
            recall_step = np.diff(np.r_[0, hits]) / positives
            result[b] = float((recall_step * hits / count).sum())
    return result


def random_ap_expectation(positives, patches) -> np.ndarray:
    """The expected AP of a random ranking of ``patches`` items with ``positives`` of them relevant.

    E[AP] = (K-1)/(N-1) + H_N (N-K) / (N (N-1)), H_N the N-th harmonic number (Bestgen 2015, "Exact expected
    average precision of the random baseline"): the k-th positive at rank r has precision k / r, and averaging
    over rankings gives (1/N) sum_r [1/r + (K-1)/(N-1) (r-1)/r]. It tends to the share K/N for large K.
    """
    k = np.asarray(positives, dtype=np.float64)
    n = float(patches)
    harmonic = np.sum(1.0 / np.arange(1, int(patches) + 1))
    return (k - 1) / (n - 1) + harmonic * (n - k) / (n * (n - 1))


def best_iou(maps, truth) -> np.ndarray:
    """The best intersection-over-union of a thresholded map with the patch mask, over all thresholds: -> [B].

    Thresholding at each distinct value of the map keeps its top-k patches (ties together); IoU = hits /
    (k + K - hits). Chefer et al. 2021 (Table 1) threshold each map at its mean; the best over all thresholds
    takes the choice of threshold, and with it each method's scale, out of the comparison. NaN where the mask
    is empty.
    """
    m, t = _rows(maps, truth)
    result = np.full(len(m), np.nan)
    for b in range(len(m)):
        positives = t[b].sum()
        if positives:
            count, hits = _tie_groups(m[b], t[b])
            result[b] = float((hits / (count + positives - hits)).max())
    return result


def pointing_game(maps, truth) -> np.ndarray:
    """Is the map's top patch on the object? (Zhang et al. 2018, "Top-down neural attention by excitation
    backprop", IJCV, Sec. 5.1, at patch resolution): -> [B] in [0, 1].

    A hit when the highest-scoring patch lies in the patch mask. When several patches tie for the top, the score
    is the share of them on the object: the expected hit of breaking the tie at random. A random map scores the
    object's share of patches. NaN where the mask is empty.
    """
    m, t = _rows(maps, truth)
    top = m == m.max(axis=1, keepdims=True)                              # [B, P] the tied top patches
    hits = (top & t).sum(axis=1) / top.sum(axis=1)                       # [B]
    return np.where(t.any(axis=1), hits, np.nan)


def object_mass_ratio(maps, truth) -> np.ndarray:
    """The share of the map's positive mass on the object, over the object's share of patches: -> [B].

    (sum over object patches of max(map, 0) / sum over all patches of max(map, 0)) / (K / P): 1 for a map blind
    to the object (uniform or random), P / K for a map entirely on it. The positive part because signed maps
    (input x gradient, integrated gradients) mark evidence against the class with negative values, which is not
    mass "on" anything. The measure of ``training/evaluate.py``'s rollout_object_ratio, for any map; NaN where the
    mask is empty or the map has no positive value.
    """
    m, t = _rows(maps, truth)
    mass = np.maximum(m, 0.0)                                            # [B, P]
    total = mass.sum(axis=1)
    share = t.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (mass * t).sum(axis=1) / total / share
    return np.where((total > 0) & (share > 0), ratio, np.nan)


# --- class sensitivity (two objects of different classes) ----------------------------------------------

def class_share(maps, own, other) -> np.ndarray:
    """The map's positive mass on its own class's object over its mass on both objects: -> [B] in [0, 1].

    For the map explaining class c in a scene holding an object of class c (patches ``own``) and one of another
    class (patches ``other``, disjoint): mass(own) / (mass(own) + mass(other)), mass the sum of max(map, 0).
    Chefer et al. 2021 show such class-specific maps on two-object images by eye; this makes it a number. A
    class-agnostic map (attention, rollout, flow) gives the same map for both classes, so its two shares add to
    1 and average 0.5 on every image; a class-specific map scores above 0.5. NaN where the map has no positive
    mass on either object.
    """
    m, a = _rows(maps, own)
    _, b = _rows(maps, other)
    if np.any(a & b):
        raise ArgumentError("the two objects' patch masks overlap; class_share needs disjoint objects")
    mass = np.maximum(m, 0.0)
    on_own, on_other = (mass * a).sum(axis=1), (mass * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(on_own + on_other > 0, on_own / (on_own + on_other), np.nan)


# --- perturbation: remove patches in the order of the map -----------------------------------------------

def removal_order(maps, most_relevant_first: bool = True, rng=None) -> np.ndarray:
    """The patches in the order they are removed: [B, gh, gw] -> [B, P] patch indices (row-major).

    "positive" perturbation removes the most relevant first, "negative" the least (Chefer et al. 2021,
    Sec. 4.2). Ties are broken at random (``rng``, a numpy Generator or a seed), so a flat stretch of a map
    is removed in random order rather than top-left first.
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ArgumentError(f"maps must be [B, gh, gw], got shape {m.shape}")
    rng = np.random.default_rng(rng)
    flat = m.reshape(len(m), -1)                                         # [B, P]
    tie_break = rng.random(flat.shape)
    key = -flat if most_relevant_first else flat
    return np.lexsort((tie_break, key), axis=1)                          # sort by key, then by the random draw


def remove_patches(images, order, count: int, patch_size: int) -> np.ndarray:
    """The images with their first ``count`` patches of ``order`` painted in each image's mean colour.

    ``images`` [B, C, H_img, W_img] (normalised pixels; the mean of normalised pixels is the normalised mean
    colour), ``order`` [B, P] from :func:`removal_order`. The mean colour (Samek et al. 2017 fill with noise,
    Chefer et al. 2021 with zeros, i.e. the dataset mean after normalisation) keeps the removed area free of any
    edge or shape the model could read. Returns a new array.
    """
    x = np.asarray(images)
    if x.ndim != 4:
        raise ArgumentError(f"images must be [B, C, H_img, W_img], got shape {x.shape}")
    p = int(patch_size)
    gh, gw = x.shape[2] // p, x.shape[3] // p
    order = np.asarray(order)
    if order.shape != (len(x), gh * gw):
        raise ArgumentError(f"order must be [B, P] = {(len(x), gh * gw)} for these images, got {order.shape}")
    if not 0 <= count <= gh * gw:
        raise ArgumentError(f"count must be 0..{gh * gw} patches, got {count}")
    removed = np.zeros((len(x), gh * gw), bool)
    np.put_along_axis(removed, order[:, :count], True, axis=1)           # [B, P]
    pixels = removed.reshape(len(x), gh, 1, gw, 1)
    pixels = np.broadcast_to(pixels, (len(x), gh, p, gw, p)).reshape(len(x), 1, gh * p, gw * p)  # [B, 1, H, W]
    pixels = np.pad(pixels, ((0, 0), (0, 0), (0, x.shape[2] - gh * p), (0, x.shape[3] - gw * p)))
    fill = x.mean(axis=(2, 3), keepdims=True)                            # [B, C, 1, 1]
    return np.where(pixels, fill, x).astype(x.dtype, copy=False)


def perturbation_correct(images, labels, maps, predict, patch_size: int, levels=LEVELS,
                         most_relevant_first: bool = True, rng=None) -> np.ndarray:
    """Is the model still right after removing each level's share of the patches? -> [B, K] bool.

    For each level f, the first round(f * P) patches of :func:`removal_order` are painted in the mean colour
    (:func:`remove_patches`) and ``predict(images) -> [B] classes`` runs on the result. The mean over images at
    each level is the accuracy curve of Chefer et al. 2021 (Sec. 4.2, Fig. 4); a faithful map makes the
    "positive" curve fall fast and the "negative" curve stay high.
    """
    x = np.asarray(images)
    labels = np.asarray(labels)
    order = removal_order(maps, most_relevant_first, rng)
    patches = order.shape[1]
    correct = []
    for level in levels:
        if not 0.0 <= level <= 1.0:
            raise ArgumentError(f"levels must be fractions in [0, 1], got {level!r}")
        predicted = np.asarray(predict(remove_patches(x, order, int(round(level * patches)), patch_size)))
        correct.append(predicted == labels)
    return np.stack(correct, axis=1)                                     # [B, K]


def curve_auc(values, levels=LEVELS) -> np.ndarray:
    """The area under a curve sampled at ``levels``, divided by the levels' span: [..., K] -> [...].

    The trapezoid rule over the removal fractions, as Chefer et al. 2021 report the area under the perturbation
    curve; divided by (levels[-1] - levels[0]) so it reads as the mean accuracy over 10%..90% removed (0..1).
    Lower is better for "positive" removal, higher for "negative".
    """
    v = np.asarray(values, dtype=np.float64)
    x = np.asarray(levels, dtype=np.float64)
    if v.shape[-1] != len(x) or len(x) < 2:
        raise ArgumentError(f"values need one entry per level ({len(x)} levels, at least 2), got shape {v.shape}")
    widths = np.diff(x)                                                  # [K-1]
    return ((v[..., 1:] + v[..., :-1]) / 2 * widths).sum(-1) / (x[-1] - x[0])


# --- the mean over images with its interval --------------------------------------------------------------

def mean_interval(values, rounds: int = 2000, seed: int = 0) -> dict:
    """The mean over images and its 95% percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13).

    ``rounds`` resamples of the images with replacement; the interval is the 2.5th and 97.5th percentiles of
    their means. NaN values (an undefined score) are left out and counted. Returns dict(mean, low, high, n,
    undefined).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    kept = v[np.isfinite(v)]
    if len(kept) == 0:
        return dict(mean=float("nan"), low=float("nan"), high=float("nan"), n=0, undefined=int(len(v)))
    draws = np.random.default_rng(seed).integers(0, len(kept), size=(rounds, len(kept)))
    means = kept[draws].mean(axis=1)                                     # [rounds]
    low, high = np.percentile(means, [2.5, 97.5])
    return dict(mean=float(kept.mean()), low=float(low), high=float(high), n=int(len(kept)),
                undefined=int(len(v) - len(kept)))


# --- the methods, each a map per patch ----------------------------------------------------------------------

def _attention(trace, grads=None, **context):
    return analysis.cls_attention_map(trace, layer=-1)


def _rollout(trace, grads=None, head_fusion="mean", late=False, **context):
    start = int(round(LATE_START * trace.depth)) if late else 0
    return analysis.rollout_map(trace, head_fusion=head_fusion, start_layer=start)


def _flow(trace, grads=None, max_flow=None, **context):
    return analysis.attention_flow_map(trace, max_flow=max_flow)


def _gradient(trace, grads=None, method=None, **context):
    if grads is None:
        raise ArgumentError(f"method {method!r} needs gradients: grads = model.backward(trace, target)")
    return analysis.explanation_map(trace, grads, method)


def _integrated_gradients(trace, grads=None, model=None, target=None, steps=IG_STEPS, **context):
    """Integrated gradients of ``target`` (one class per image) from the black image, summed per patch."""
    if model is None or target is None:
        raise ArgumentError("integrated_gradients needs the model and the target classes: explain(..., model=model, "
                            "target=labels)")
    from .grads import BACKWARD_RECORD

    def gradient_of(images):                                             # [B, C, H, W] -> d target / d images
        step = model.forward(images.astype(model.dtype), record=BACKWARD_RECORD)
        return model.backward(step, list(np.asarray(target).tolist()))["input"]

    x = trace["input"]
    c = trace.config
    pixels = analysis.integrated_gradients(x, gradient_of, analysis.black_baseline(x, c.mean, c.std), steps)
    return analysis.sum_per_patch(pixels.sum(axis=1), trace.patch_size)  # [B, C, H, W] -> [B, gh, gw]


def _random(trace, grads=None, rng=None, **context):
    """Uniform noise: a map that knows nothing, the chance level of every score."""
    if rng is None:
        raise ArgumentError("the random baseline needs rng (a numpy Generator) so that a run can be repeated")
    return rng.random((trace.batch_size, *trace.grid))


def _centre(trace, grads=None, **context):
    """A Gaussian bump at the image centre (sigma CENTRE_SIGMA of the side): where objects are most often."""
    gh, gw = trace.grid
    rows = (np.arange(gh) + 0.5) / gh - 0.5                              # [gh] patch centres, image side = 1
    cols = (np.arange(gw) + 0.5) / gw - 0.5                              # [gw]
    bump = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * CENTRE_SIGMA ** 2))  # [gh, gw]
    return np.broadcast_to(bump, (trace.batch_size, gh, gw)).copy()


def _oracle(trace, grads=None, coverage=None, **context):
    """The answer itself: each patch's share of object pixels (the target object's mask)."""
    if coverage is None:
        raise ArgumentError("the oracle needs coverage: patch_coverage(masks, grid) of the explained object")
    return np.asarray(coverage, dtype=np.float64)


@dataclass(frozen=True)
class Method:
    """An explanation method: how to compute its map and what it needs."""
    label: str               # the name in tables and legends
    family: str              # "attention" (class-agnostic), "gradient" (class-specific), "baseline", "reference"
    needs: str               # "pattern", "grads", "model", "max_flow", "rng", "coverage" or "nothing"
    map: Callable            # map(trace, grads=None, **context) -> [B, gh, gw]

    @property
    def class_specific(self) -> bool:
        return self.family in ("gradient", "reference")


METHODS = {
    "attention": Method("raw attention (last layer)", "attention", "pattern", _attention),
    "rollout": Method("rollout, mean", "attention", "pattern", _rollout),
    "rollout_max": Method("rollout, max", "attention", "pattern", partial(_rollout, head_fusion="max")),
    "rollout_min": Method("rollout, min", "attention", "pattern", partial(_rollout, head_fusion="min")),
    "rollout_late": Method("rollout, mean, from layer L/2", "attention", "pattern", partial(_rollout, late=True)),
    "flow": Method("attention flow", "attention", "max_flow", _flow),
    "chefer": Method("Chefer 2021 relevance", "gradient", "grads", partial(_gradient, method="chefer")),
    "grad_rollout": Method("gradient rollout", "gradient", "grads", partial(_gradient, method="grad_rollout")),
    "grad_cam": Method("Grad-CAM (last block)", "gradient", "grads", partial(_gradient, method="grad_cam")),
    "input_x_grad": Method("input x gradient", "gradient", "grads", partial(_gradient, method="input_x_grad")),
    "integrated_gradients": Method(f"integrated gradients ({IG_STEPS} steps)", "gradient", "model",
                                   _integrated_gradients),
    "random": Method("random (baseline)", "baseline", "rng", _random),
    "centre": Method("centre prior (baseline)", "baseline", "nothing", _centre),
    "oracle": Method("oracle: the mask", "reference", "coverage", _oracle),
}


def explain(name: str, trace, grads=None, **context) -> np.ndarray:
    """The map of method ``name`` (a key of METHODS) for every image of ``trace``: -> [B, gh, gw].

    ``context`` carries what some methods need: ``rng`` (random), ``max_flow`` (flow, optional), ``model`` and
    ``target`` (integrated gradients), ``coverage`` (oracle), ``steps`` (integrated gradients).
    """
    if name not in METHODS:
        raise ArgumentError(f"unknown explanation method {name!r}; choose from {sorted(METHODS)}")
    return np.asarray(METHODS[name].map(trace, grads, **context), dtype=np.float64)
