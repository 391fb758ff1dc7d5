"""The numbers behind the figures: attention rollout and flow, attention sinks and token norms, mean
attention distance, position-embedding similarity, PCA, DINO masks, the CLS token's path and the patch filters.

Every function takes plain arrays plus the metadata it needs (the patch grid ``(gh, gw)``, the
number of prefix tokens, the patch size); ``attention_sinks`` and ``token_norms`` read a Trace. None of
them assumes a square grid, a class token or 197 tokens; ``viz/`` reads these arrays off a ``Trace``
and draws them.

Shapes use one vocabulary:
    B images, L layers, H heads, N tokens = T prefix tokens (cls, dist, registers) + P patches,
    (gh, gw) the patch grid with P = gh * gw, p the patch side in pixels, D width, k components.
Attention patterns are softmax probabilities ``A[b, h, i, j]``: how much query token i reads
from key token j; every row sums to 1.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError

HEAD_FUSIONS = ("mean", "max", "min")
PREFIX_TREATMENTS = ("renormalise", "drop")


# --- checking what comes in ------------------------------------------------------------------

def _as_grid(grid) -> tuple:
    try:
        gh, gw = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ArgumentError(f"grid must be a pair (gh, gw) of patch counts, got {grid!r}") from None
    if gh < 1 or gw < 1:
        raise ArgumentError(f"grid must hold positive patch counts (gh, gw), got {grid!r}")
    return gh, gw


def _check_tokens(num_tokens: int, grid, num_prefix_tokens: int, what: str) -> tuple:
    """The token axis must be T prefix tokens followed by the gh * gw patches, in row-major order."""
    gh, gw = _as_grid(grid)
    if not isinstance(num_prefix_tokens, (int, np.integer)) or num_prefix_tokens < 0:
        raise ArgumentError(f"num_prefix_tokens must be an integer >= 0, got {num_prefix_tokens!r}")
    if num_tokens != num_prefix_tokens + gh * gw:
        raise ArgumentError(f"{what} has {num_tokens} tokens, but a {gh}x{gw} grid with {num_prefix_tokens} "
                            f"prefix token(s) needs {num_prefix_tokens + gh * gw}; pass the grid and "
                            f"num_prefix_tokens of the model that made it")
    return gh, gw


def as_attention(attention, what: str = "attention") -> np.ndarray:
    """One layer's pattern as float64 [B, H, N, N]; a single image's [H, N, N] gains the batch axis."""
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim == 3:
        a = a[None]                                                      # [H, N, N] -> [1, H, N, N]
    if a.ndim != 4 or a.shape[-1] != a.shape[-2] or a.size == 0:
        raise ArgumentError(f"{what} must have shape [B, H, N, N] or [H, N, N] (square over tokens, none of them "
                            f"0), got {np.shape(attention)}")
    if not np.all(np.isfinite(a)):
        raise ArgumentError(f"{what} holds NaN or inf values")
    return a


def as_attention_layers(attentions, what: str = "attention_maps") -> list:
    """A list over layers of [B, H, N, N] (or an array [L, B, H, N, N]); checks all layers agree."""
    if isinstance(attentions, np.ndarray) and attentions.ndim == 5:
        attentions = list(attentions)
    if isinstance(attentions, np.ndarray) or not hasattr(attentions, "__len__"):
        raise ArgumentError(f"{what} must be a list over layers of [B, H, N, N] arrays, "
                            f"got {type(attentions).__name__} {np.shape(attentions)}")
    if len(attentions) == 0:
        raise ArgumentError(f"{what} is empty: run the model on an image first (it records one pattern per layer)")
    layers = [as_attention(a, f"{what}[{i}]") for i, a in enumerate(attentions)]
    for i, a in enumerate(layers):
        if a.shape[0] != layers[0].shape[0] or a.shape[-1] != layers[0].shape[-1]:
            raise ArgumentError(f"{what}[{i}] has shape {a.shape}, unlike layer 0's {layers[0].shape}")
    return layers


def check_index(index, count: int, what: str) -> int:
    """A layer / head / image index in range(count); negative indices count from the end like Python's."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise ArgumentError(f"{what} must be an integer, got {index!r}")
    if not -count <= index < count:
        raise ArgumentError(f"{what} {index} is out of range: there are {count} (valid: 0..{count - 1}, "
                            f"or -{count}..-1 from the end)")
    return int(index) % count


def _assert_row_stochastic(matrix: np.ndarray, what: str, atol: float = 1e-6) -> None:
    """Every row a probability distribution: entries >= 0 and rows summing to 1 (to ``atol``)."""
    worst_sum = float(np.max(np.abs(matrix.sum(-1) - 1.0)))
    lowest = float(matrix.min())
    if worst_sum > atol or lowest < -atol:
        raise ArgumentError(f"{what} is not row-stochastic (largest |row sum - 1| = {worst_sum:.2e}, smallest "
                            f"entry {lowest:.2e}); attention must be softmax probabilities >= 0")


# --- reading one attention row as a picture --------------------------------------------------

NO_CLASS_TOKEN_QUERY = "mean over patch queries: this model has no class token"


def summary_query(prefix_names) -> tuple:
    """(query, label): the query whose attention the figures read as "what the image's summary looks at".

    The class token where the model has one: its final state is what the head reads (ViT eq. 4), so its
    attention row is the classic map. A model without one (average pooling: timm's ``*_gap_*``) reads every patch
    token equally, so the figures use the mean over the patch queries' rows, and their titles say so with
    ``label``. ``prefix_names``: the model's prefix tokens (``trace.prefix_names``), or a Trace / ViTConfig.
    A pooling with a query of its own (an attention-pooling head's latent) is to be answered here as well."""
    names = tuple(getattr(prefix_names, "prefix_names", prefix_names))
    if "cls" in names:
        return "cls", "CLS token's query"
    return "mean", NO_CLASS_TOKEN_QUERY


def query_token_index(query, grid, prefix_names=("cls",)):
    """Which token's attention row to show.

    ``None`` or ``"cls"``: the class token (the classic map); any other prefix name (``"dist"``,
    ``"reg0"``); an int: patch number 0..P-1 in row-major order; a pair ``(row, col)`` on the grid;
    ``"mean"``: the average over all patch queries. None: :func:`summary_query`'s choice (the class token, or
    the mean over the patch queries for a model without one). Returns a token index into N, or ``"mean"``.
    """
    gh, gw = _as_grid(grid)
    prefix_names = tuple(prefix_names)
    if query is None:
        query = summary_query(prefix_names)[0]
    if isinstance(query, str):
        if query == "mean":
            return "mean"
        if query in prefix_names:
            return prefix_names.index(query)
        raise ArgumentError(f"query {query!r} is not a token of this model; use one of {list(prefix_names)}, "
                            f"'mean', a patch number 0..{gh * gw - 1} or a (row, col) pair")
    if isinstance(query, (tuple, list)) and len(query) == 2:
        row = check_index(query[0], gh, "query row")
        col = check_index(query[1], gw, "query column")
        return len(prefix_names) + row * gw + col
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        if not 0 <= query < gh * gw:
            raise ArgumentError(f"query patch {query} is out of range: the {gh}x{gw} grid has patches "
                                f"0..{gh * gw - 1}")
        return len(prefix_names) + int(query)
    raise ArgumentError(f"query must be None, a token name, a patch number or a (row, col) pair, got {query!r}")


def attention_to_grid(rows: np.ndarray, grid, num_prefix_tokens: int) -> np.ndarray:
    """The patch columns of attention rows laid out on the grid: [..., N] -> [..., gh, gw].

    The prefix columns are dropped, not renormalised: the values stay attention probabilities,
    and the mass they held is ``1 - result.sum((-2, -1))``.
    """
    rows = np.asarray(rows)
    gh, gw = _check_tokens(rows.shape[-1], grid, num_prefix_tokens, "attention row")
    return rows[..., num_prefix_tokens:].reshape(rows.shape[:-1] + (gh, gw))  # [..., P] -> [..., gh, gw]


def attention_map(attention, grid, num_prefix_tokens: int, head=0, query=None, prefix_names=None) -> np.ndarray:
    """One layer's attention from a query token to every patch, per image: [B, H, N, N] -> [B, gh, gw].

    ``head`` is a head index or ``"mean"`` (the average over heads); ``query`` is as in
    :func:`query_token_index` (default: the class token, or the mean over patches without one).
    """
    a = as_attention(attention)                                           # [B, H, N, N]
    _check_tokens(a.shape[-1], grid, num_prefix_tokens, "attention")
    if prefix_names is None:
        prefix_names = ("cls",) + tuple(f"prefix{i}" for i in range(1, num_prefix_tokens)) if num_prefix_tokens else ()
    if len(prefix_names) != num_prefix_tokens:
        raise ArgumentError(f"prefix_names {prefix_names} does not match num_prefix_tokens={num_prefix_tokens}")
    a = a.mean(1) if head == "mean" else a[:, check_index(head, a.shape[1], "head")]  # [B, N, N]
    token = query_token_index(query, grid, prefix_names)
    rows = a[:, num_prefix_tokens:].mean(1) if token == "mean" else a[:, token]  # [B, N]
    return attention_to_grid(rows, grid, num_prefix_tokens)              # [B, gh, gw]


def upsample_grid(values: np.ndarray, size, interpolation: str = "bilinear") -> np.ndarray:
    """Resize a patch-grid map to pixels: [..., gh, gw] -> [..., H_img, W_img].

    ``"nearest"`` repeats each patch's value over its pixels (blocky, honest: the model only has
    one number per patch); ``"bilinear"`` interpolates between patch centres with half-pixel
    alignment (torch's ``align_corners=False``), clamping at the borders.
    """
    values = np.asarray(values, dtype=np.float64)
    out_h, out_w = (int(s) for s in size)
    if values.ndim < 2 or values.size == 0 or out_h < 1 or out_w < 1:
        raise ArgumentError(f"upsample_grid needs a non-empty map [..., gh, gw] and a positive size, got shape "
                            f"{values.shape} and size {tuple(size)}")
    gh, gw = values.shape[-2:]
    if interpolation not in ("nearest", "bilinear"):
        raise ArgumentError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")

    def axis_weights(n_in, n_out):
        centre = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5           # output pixel centre in input coordinates
        if interpolation == "nearest":
            index = np.clip(np.floor((np.arange(n_out) + 0.5) * n_in / n_out), 0, n_in - 1).astype(int)
            return index, index, np.zeros(n_out)
        centre = np.clip(centre, 0, n_in - 1)
        lo = np.floor(centre).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), centre - lo

    lo, hi, w = axis_weights(gh, out_h)
    values = values[..., lo, :] * (1 - w)[:, None] + values[..., hi, :] * w[:, None]   # [..., H_img, gw]
    lo, hi, w = axis_weights(gw, out_w)
    return values[..., lo] * (1 - w) + values[..., hi] * w                            # [..., H_img, W_img]


# --- attention rollout and flow (Abnar & Zuidema 2020) ---------------------------------------

def fuse_heads(attention, head_fusion: str = "mean") -> np.ndarray:
    """One matrix per image from all heads: [B, H, N, N] -> [B, N, N] by mean, max or min.

    Abnar & Zuidema (2020) average the heads; max and min are the variants of jacobgil's
    vit-explain. Max and min rows no longer sum to 1; rollout renormalises them.
    """
    a = as_attention(attention)
    if head_fusion not in HEAD_FUSIONS:
        raise ArgumentError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    return getattr(a, head_fusion)(axis=1)                               # [B, H, N, N] -> [B, N, N]


def discard_lowest(attention: np.ndarray, discard_ratio: float, num_prefix_tokens: int = 1) -> np.ndarray:
    """Zero the smallest ``discard_ratio`` fraction of the patch rows' entries: [B, N, N] -> [B, N, N].

    vit-explain's noise filter, without its bug: the rows of the prefix tokens (the CLS row the
    rollout map is read from) are never touched, and the residual identity is added after this
    step, so it is never discarded either. Ties at the threshold are broken by position (stable).
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ArgumentError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    a = np.array(attention, dtype=np.float64)                            # a copy we may zero
    patch_rows = a[:, num_prefix_tokens:, :].reshape(a.shape[0], -1)     # [B, P*N] candidates
    count = int(patch_rows.shape[1] * discard_ratio)
    if count:
        lowest = np.argsort(patch_rows, axis=1, kind="stable")[:, :count]  # [B, count]
        np.put_along_axis(patch_rows, lowest, 0.0, axis=1)
        a[:, num_prefix_tokens:, :] = patch_rows.reshape(a.shape[0], -1, a.shape[2])
    return a


def add_residual(attention: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema (2020), eq. 1's ingredient: A_hat = (A + I) / rowsum(A + I), [B, N, N] -> [B, N, N].

    The identity stands for the residual connection around attention, which carries each token's
    own value forward; rows are renormalised so each stays a distribution (rows, never columns:
    normalising columns is vit-explain issue #16).
    """
    a = np.asarray(attention, dtype=np.float64)
    a = a + np.eye(a.shape[-1])                                          # [B, N, N]
    return a / a.sum(-1, keepdims=True)


def _exclusions(exclude_heads, exclude_layers, depth: int, num_heads: int) -> tuple:
    """Checked (set of (layer, head), set of layers) to leave out of a rollout."""
    heads, layers = set(), set()
    for pair in exclude_heads or ():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ArgumentError(f"exclude_heads must hold (layer, head) pairs, got {pair!r}")
        heads.add((check_index(pair[0], depth, "excluded layer"), check_index(pair[1], num_heads, "excluded head")))
    for layer in exclude_layers or ():
        layers.add(check_index(layer, depth, "excluded layer"))
    full = {layer for layer in range(depth) if all((layer, h) in heads for h in range(num_heads))}
    return heads, layers | full


def _fused_layer(a, head_fusion: str, dropped_heads, image=None) -> np.ndarray:
    """Head-fused attention of one layer without the ``dropped_heads``: [B, H, N, N] -> [B, N, N] (or one
    image's [N, N]), averaged in float64 without a float64 copy of the pattern."""
    if head_fusion not in HEAD_FUSIONS:
        raise ArgumentError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    a = np.asarray(a)
    a = a if image is None else a[image]
    kept = [h for h in range(a.shape[-3]) if h not in dropped_heads]
    a = a if len(kept) == a.shape[-3] else np.take(a, kept, axis=-3)
    if head_fusion == "mean":
        return a.mean(axis=-3, dtype=np.float64)                             # [..., H, N, N] -> [..., N, N]
    return getattr(a, head_fusion)(axis=-3).astype(np.float64)


def attention_rollout(attentions, head_fusion: str = "mean", discard_ratio: float = 0.0,
                      num_prefix_tokens: int = 1, start_layer: int = 0, every_layer: bool = False,
                      exclude_heads=(), exclude_layers=()) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020, eq. 1): list over L of [B, H, N, N] -> [B, N, N].

    R_0 = A_hat_0 and R_l = A_hat_l @ R_{l-1}, with A_hat_l = (A_l + I) / rowsum the head-fused
    attention of layer l plus the residual identity (their ``compute_joint_attention``). Row i of
    the result says how much of token i's final state flowed, through all layers, from each input
    token; the classic map is the CLS row over the patch columns (:func:`attention_to_grid`), and for a model
    without a class token the mean of the patch rows (:func:`summary_query`; ``num_prefix_tokens=0`` is fine).
    A is the recorded softmax output, so anything a model adds to the scores before the softmax (a relative
    position bias) is part of the attention rolled out. Every A_hat is checked to be row-stochastic, so R is too. ``every_layer=True`` returns every R_l on the
    way, [L - start_layer, B, N, N]: the rollout through each layer, for the cost of the last one.

    ``exclude_heads``: (layer, head) pairs fused out of their layer (a sink head, :func:`attention_sinks`);
    ``exclude_layers``: layers whose attention is left out, so only their residual path remains (A_hat = I),
    as a layer before ``start_layer`` is. A layer whose heads are all excluded is an excluded layer.
    """
    layers = as_attention_layers(attentions)
    start = check_index(start_layer, len(layers), "start_layer")
    heads, skipped = _exclusions(exclude_heads, exclude_layers, len(layers), layers[0].shape[1])
    rollout, steps = None, []
    for index, a in enumerate(layers[start:], start):
        if index in skipped:
            a_hat = np.broadcast_to(np.eye(a.shape[-1]), (a.shape[0],) + a.shape[-2:])  # [B, N, N] residual only
        else:
            fused = _fused_layer(a, head_fusion, {h for l, h in heads if l == index})  # [B, N, N]
            if discard_ratio:
                fused = discard_lowest(fused, discard_ratio, num_prefix_tokens)
            a_hat = add_residual(fused)                                      # [B, N, N]
            _assert_row_stochastic(a_hat, f"A_hat of layer {index}")
        rollout = a_hat if rollout is None else a_hat @ rollout              # [B, N, N] @ [B, N, N]
        steps.append(rollout)
    return np.stack(steps) if every_layer else rollout


def attention_rollout_row(attentions, query=0, head_fusion: str = "mean", discard_ratio: float = 0.0,
                          num_prefix_tokens: int = 1, start_layer: int = 0, exclude_heads=(), exclude_layers=(),
                          image: int = 0) -> np.ndarray:
    """One row of :func:`attention_rollout`, by vector-matrix products: -> [N].

    e_q^T A_hat_{L-1} ... A_hat_start, taken from the left: each layer costs one [N] @ [N, N] product
    instead of an [N, N] @ [N, N] one, N times less work (the full matrix at 1,370 tokens x 12 layers is
    ~30 GFLOP per head fusion). And r @ A_hat = w @ A + w with w = r / rowsum(A + I), so A_hat itself is
    never formed. ``query``: a token index, or ``"mean"`` for the average of the patch rows. Agrees with
    the full rollout's row to rounding (the sums are the same, in another order).
    """
    layers = [np.asarray(a) for a in attentions] if isinstance(attentions, (list, tuple)) else \
        list(as_attention_layers(attentions))
    if not layers:
        raise ArgumentError("attentions is empty: run the model on an image first (it records one pattern per layer)")
    for i, a in enumerate(layers):
        if a.ndim != 4 or a.shape[-1] != a.shape[-2] or a.shape[-1] != layers[0].shape[-1]:
            raise ArgumentError(f"attentions[{i}] must have shape [B, H, N, N] like layer 0's {layers[0].shape}, "
                                f"got {a.shape}")
    n = layers[0].shape[-1]
    image = check_index(image, layers[0].shape[0], "image")
    start = check_index(start_layer, len(layers), "start_layer")
    heads, skipped = _exclusions(exclude_heads, exclude_layers, len(layers), layers[0].shape[1])
    row = np.zeros(n)
    if isinstance(query, str) and query == "mean":
        row[num_prefix_tokens:] = 1.0 / (n - num_prefix_tokens)              # the average of the patch rows
    else:
        row[check_index(query, n, "query token")] = 1.0
    for index in range(len(layers) - 1, start - 1, -1):
        if index in skipped:
            continue                                                         # A_hat = I
        fused = _fused_layer(layers[index], head_fusion, {h for l, h in heads if l == index}, image)  # [N, N]
        if discard_ratio:
            fused = discard_lowest(fused[None], discard_ratio, num_prefix_tokens)[0]
        if fused.min() < -1e-6:
            raise ArgumentError(f"attention of layer {index} has negative weights; it must be softmax probabilities")
        weight = row / (fused.sum(-1) + 1.0)                                 # [N] r / rowsum(A + I)
        row = weight @ fused + weight                                        # [N] @ [N, N] -> [N]
    return row


def rollout_without_sinks(attentions, sinks, query=0, head_fusion: str = "mean", num_prefix_tokens: int = 1,
                          grid=None, rounds: int = 3, image: int = 0, **options):
    """The rollout row with the sink heads that dominate it fused out: (row [N], excluded (layer, head) pairs).

    Each round drops the heads whose sink is the row's dominating patch (:func:`dominating_sinks`) and
    rolls out again, since a second sink can surface once the first is gone; at most ``rounds`` rounds.
    Dropping the sink heads keeps the rest of their layer (``start_layer`` would drop it all), and
    unlike zeroing the sink's column, it moves no mass onto another token.
    """
    excluded = set(options.pop("exclude_heads", ()))
    row = attention_rollout_row(attentions, query, head_fusion, num_prefix_tokens=num_prefix_tokens,
                                exclude_heads=excluded, image=image, **options)
    for _ in range(rounds):
        found = dominating_sinks(row, sinks, grid, num_prefix_tokens)
        new = {(s.layer, s.head) for s in found} - excluded
        if not new:
            break
        excluded |= new
        row = attention_rollout_row(attentions, query, head_fusion, num_prefix_tokens=num_prefix_tokens,
                                    exclude_heads=excluded, image=image, **options)
    return row, sorted(excluded)


def _max_flow(capacity: np.ndarray, source: int, sink: int) -> float:
    """Edmonds-Karp max flow on a dense capacity matrix [V, V] (shortest augmenting paths by BFS)."""
    residual = capacity.astype(np.float64).copy()
    total = 0.0
    while True:
        parent = np.full(len(residual), -1)
        parent[source] = source
        queue = deque([source])
        while queue and parent[sink] < 0:
            u = queue.popleft()
            for v in np.flatnonzero((residual[u] > 1e-12) & (parent < 0)):
                parent[v] = u
                queue.append(v)
        if parent[sink] < 0:
            return total
        path, v = [], sink
        while v != source:
            path.append((parent[v], v))
            v = parent[v]
        bottleneck = min(residual[u, v] for u, v in path)
        for u, v in path:
            residual[u, v] -= bottleneck
            residual[v, u] += bottleneck
        total += bottleneck


def attention_flow(attentions, query: int = 0, head_fusion: str = "mean", image: int = 0) -> np.ndarray:
    """Attention flow (Abnar & Zuidema 2020, section 3): max-flow from a final token to each input token.

    The layers form a graph: node (l, j) is token j entering layer l, and an edge from (l+1, i) to
    (l, j) has capacity A_hat_l[i, j] (head-fused attention plus the residual identity, as in
    their code). The flow value from the output node of ``query`` to input node j is token j's
    share. Returns [N]. Exact but slow (Edmonds-Karp per input token, in Python): meant for small
    models and for checking rollout, not for 197 tokens x 12 layers.
    """
    layers = as_attention_layers(attentions)
    image = check_index(image, layers[0].shape[0], "image")
    n = layers[0].shape[-1]
    query = check_index(query, n, "query token")
    depth = len(layers)
    capacity = np.zeros(((depth + 1) * n, (depth + 1) * n))             # nodes: layer-major, token-minor
    for l, a in enumerate(layers):
        a_hat = add_residual(fuse_heads(a, head_fusion)[image])          # [N, N]
        capacity[(l + 1) * n:(l + 2) * n, l * n:(l + 1) * n] = a_hat     # edge (l+1, i) -> (l, j)
    source = depth * n + query
    return np.array([_max_flow(capacity, source, j) for j in range(n)])  # [N]


# --- attention sinks and token norms ---------------------------------------------------------------
# A sink is a key token that one head's queries all read, whatever they are (Xiao et al. 2023, "Efficient
# Streaming Language Models with Attention Sinks"; in ViTs, Darcet et al. 2023, "Vision Transformers Need
# Registers"). Rolled out, a sink head of an early layer hands every token's mass to one patch, and the
# rollout map becomes one bright dot that says nothing about the image.

SINK_FACTOR = 10.0
# A key is a sink when the average query of a head gives it more than SINK_FACTOR times the uniform share
# 1/N. A content-driven head spreads its mass over the few to few dozen patches of an object, so one key
# rarely holds 10/N; a sink head holds 80-100% on one key (at 197 tokens: 5% is the threshold, a sink 0.8+;
# at 1,370 tokens: 0.73%). Prefix tokens (CLS, registers) pass it often: that is what registers are for.
SINK_SHARE = 0.5
# What the figures call a sink: a key that holds more than half of one head's average query's attention. The
# 10/N test above also fires on a head that reads one small object from everywhere (the shipped model's heads
# give each of the heart's ~30 patches 5-15%); a sink takes 80-100% on one key (a DINOv2 ViT-S/14 layer-0 head),
# an object head never a majority on one patch unless the object is one patch.
NORM_FACTOR = 4.0
# Darcet et al. 2023 (Fig. 3) find artifact patches as a separate mode of the token-norm histogram, about
# an order of magnitude above the rest; ordinary patches stay within ~2x of the median (DINOv2 ViT-S/14
# without registers: max / median <= 2.2 in every layer). A token above 4x its layer's median patch norm
# sits between the two.


@dataclass(frozen=True)
class Sink:
    """One key token that one head's queries read more than the threshold share of (on average)."""
    layer: int
    head: int
    token: int                 # index into the N tokens
    name: str                  # "cls", "reg0", ... or "patch 123"
    position: tuple | None     # (row, col) on the patch grid; None for a prefix token
    share: float               # the average query's attention to it, in [0, 1]

    def describe(self) -> str:
        where = f" (row {self.position[0]}, col {self.position[1]})" if self.position else ""
        return (f"layer {self.layer} head {self.head} -> {self.name}{where}: {self.share:.0%} of its average query's "
                f"attention")


def token_name(token: int, grid, prefix_names) -> str:
    """``"cls"``, ``"reg0"``... for a prefix token, ``"patch 17"`` for a patch (numbered from 0, row by row)."""
    prefix_names = tuple(prefix_names)
    return prefix_names[token] if token < len(prefix_names) else f"patch {token - len(prefix_names)}"


def token_position(token: int, grid, num_prefix_tokens: int):
    """(row, col) of a patch token on the grid; None for a prefix token."""
    if token < num_prefix_tokens:
        return None
    return divmod(token - num_prefix_tokens, _as_grid(grid)[1])


def received_attention(attention, image: int = 0) -> np.ndarray:
    """The average query's attention to each key, per head: [B, H, N, N] -> [H, N] (rows sum to 1).

    Averaged in float64 without copying the float32 pattern (N x N per head, 45 MB a layer at 37 x 37).
    """
    a = np.asarray(attention)
    a = a[check_index(image, a.shape[0], "image")] if a.ndim == 4 else a      # [H, N, N]
    return a.mean(axis=-2, dtype=np.float64)                                  # [H, N, N] -> [H, N]


def trace_layers(trace) -> list:
    """The attention pattern of every layer of a Trace, as it is stored (no copy)."""
    return [trace[f"blocks.{i}.attn.pattern"] for i in range(trace.config.depth)]


def attention_sinks(trace, threshold: float | None = None, image: int = 0) -> list:
    """Every (layer, head, key) whose received share exceeds ``threshold``: a list of :class:`Sink`, largest first.

    ``trace``: a Trace that recorded ``blocks.*.attn.pattern``. ``threshold``: a share in (0, 1]; default
    ``SINK_FACTOR / N``, ten times the uniform share (see SINK_FACTOR for why), or 1 where N <= 10 tokens make
    that more than all of a query's attention: then no key can be a sink and the list is empty. Prefix tokens
    are named (cls, dist, reg0...), patches given with their grid position.
    """
    return find_sinks(trace_layers(trace), trace.grid, tuple(trace.prefix_names), threshold, image)


def find_sinks(layers, grid, prefix_names, threshold: float | None = None, image: int = 0) -> list:
    """:func:`attention_sinks` for a list over layers of [B, H, N, N] patterns and their token layout."""
    num_tokens = np.shape(layers[0])[-1]
    names = tuple(prefix_names)
    _check_tokens(num_tokens, grid, len(names), "attention")
    if threshold is None:
        threshold = min(1.0, SINK_FACTOR / num_tokens)  # 10 tokens or fewer: no key can take 10x its share
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 < threshold <= 1:
        raise ArgumentError(f"threshold must be a share of attention in (0, 1], got {threshold!r}")
    sinks = []
    for layer, a in enumerate(layers):
        received = received_attention(a, image)                              # [H, N]
        for head, token in zip(*np.nonzero(received > threshold)):
            sinks.append(Sink(layer, int(head), int(token), token_name(int(token), grid, names),
                              token_position(int(token), grid, len(names)), float(received[head, token])))
    return sorted(sinks, key=lambda s: -s.share)


@dataclass(frozen=True)
class TokenNorms:
    """Each token's residual norm after each layer, and the tokens far above their layer's median patch."""
    norms: np.ndarray          # [L, N] ||x_l|| of every token leaving layer l
    median: np.ndarray         # [L] the median patch norm of each layer
    outliers: tuple            # ((layer, token, name, norm / median), ...), largest ratio first
    factor: float

    def patch_outliers(self) -> set:
        """The patch tokens that are outliers in some layer."""
        return {token for _, token, name, _ in self.outliers if name.startswith("patch")}


def token_norms(trace, factor: float = NORM_FACTOR, image: int = 0) -> TokenNorms:
    """Darcet et al. 2023's high-norm test: ||x_l|| of every token leaving each layer, [L, N], and the tokens
    above ``factor`` times that layer's median patch norm (see NORM_FACTOR). Needs ``blocks.*.resid_post``."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.floating)) or not factor > 1:
        raise ArgumentError(f"factor must be a number > 1 (a multiple of the median norm), got {factor!r}")
    t, grid, names = trace.num_prefix_tokens, trace.grid, tuple(trace.prefix_names)
    norms = []
    for layer in range(trace.config.depth):
        x = np.asarray(trace[f"blocks.{layer}.resid_post"])
        x = x[check_index(image, x.shape[0], "image")]                          # [N, D]
        norms.append(np.linalg.norm(x.astype(np.float64), axis=-1))             # [N]
    norms = np.stack(norms)                                                     # [L, N]
    median = np.median(norms[:, t:], axis=1)                                    # [L]
    ratio = norms / np.maximum(median, 1e-12)[:, None]                          # [L, N]
    found = [(int(l), int(j), token_name(int(j), grid, names), float(ratio[l, j]))
             for l, j in zip(*np.nonzero(ratio > factor))]
    return TokenNorms(norms, median, tuple(sorted(found, key=lambda o: -o[3])), float(factor))


def majority_sink_threshold(num_tokens: int) -> float:
    """The figures' sink threshold: SINK_SHARE, or SINK_FACTOR / N where fewer than 20 tokens make that larger
    (at most 1: with 10 tokens or fewer no key can hold ten times its uniform share, and none is a sink)."""
    return min(1.0, max(SINK_SHARE, SINK_FACTOR / num_tokens))


def dominating_sinks(row, sinks, grid, num_prefix_tokens: int, factor: float = SINK_FACTOR) -> list:
    """The sinks that make a rollout row one dot: when the row's largest patch holds more than ``factor``
    times the uniform share of the patch mass and that patch is a sink of some head, that patch's sinks."""
    row = np.asarray(row, dtype=np.float64)
    patches = row[num_prefix_tokens:]                                           # [P]
    top = int(np.argmax(patches))
    if patches[top] <= factor * patches.sum() / patches.size:
        return []
    return [s for s in sinks if s.token == num_prefix_tokens + top]


# --- mean attention distance (Dosovitskiy et al. 2021, Fig. 7 right, App. D.7) ----------------

def patch_centres(grid, patch_size: int) -> np.ndarray:
    """Pixel coordinates (y, x) of each patch's centre, row-major: -> [P, 2]."""
    gh, gw = _as_grid(grid)
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")  # [gh, gw] each
    return (np.stack([rows, cols], -1).reshape(-1, 2) + 0.5) * patch_size  # [P, 2]


def patch_distances(grid, patch_size: int) -> np.ndarray:
    """Euclidean distance in pixels between every pair of patch centres: -> [P, P]."""
    centres = patch_centres(grid, patch_size)                            # [P, 2]
    return np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)  # [P, P]


def mean_attention_distance(attentions, grid, patch_size: int, num_prefix_tokens: int,
                            prefix: str = "renormalise") -> np.ndarray:
    """Mean attention distance in pixels per layer and head, averaged over images: -> [L, H].

    The ViT paper (Dosovitskiy et al. 2021, Fig. 7 right, App. D.7): for each query patch i,
    sum_j A[i, j] * ||pos_i - pos_j||, averaged over query patches and images ("attention
    distance" is analogous to a CNN's receptive field size; they used 128 images and ViT-L/16).

    Prefix tokens have no position on the image. Queries are the patches only. For the keys,
    ``prefix="renormalise"`` (the default) drops the prefix columns and rescales each row's
    remaining mass to 1, so the number is the distance *among the patches a query reads*;
    ``prefix="drop"`` drops them without rescaling, as probing-vits does, which counts the mass
    sent to the class token as distance 0 and biases the number low. Rows that send no mass to
    any patch are left out of the average. A single layer [B, H, N, N] is accepted as L = 1. A model
    without prefix tokens (``num_prefix_tokens=0``) has only patch columns, so both treatments agree. A is
    the recorded softmax output: a bias added to the scores before it (relative position) is part of the
    attention measured.
    """
    if prefix not in PREFIX_TREATMENTS:
        raise ArgumentError(f"prefix must be one of {PREFIX_TREATMENTS}, got {prefix!r}")
    if isinstance(attentions, np.ndarray) and attentions.ndim in (3, 4):
        attentions = [attentions]
    if isinstance(attentions, np.ndarray) and attentions.ndim == 5:
        attentions = list(attentions)
    if isinstance(attentions, np.ndarray) or not hasattr(attentions, "__len__") or len(attentions) == 0:
        as_attention_layers(attentions)                                  # raises the error that names the problem
    distance = patch_distances(grid, patch_size)                         # [P, P]
    t = num_prefix_tokens
    result, first = [], None
    for index, a in enumerate(attentions):   # one layer in float64 at a time: 90 MB each at 37 x 37 patches
        a = as_attention(a, f"attentions[{index}]")                      # [B, H, N, N]
        first = a.shape if first is None else first
        if a.shape[0] != first[0] or a.shape[-1] != first[-1]:
            raise ArgumentError(f"attentions[{index}] has shape {a.shape}, unlike layer 0's {first}")
        if index == 0:
            _check_tokens(a.shape[-1], grid, num_prefix_tokens, "attention")
        a = a[:, :, t:, t:]                                              # [B, H, P, P] patch queries -> patch keys
        mass = a.sum(-1)                                                 # [B, H, P]
        per_query = np.einsum("bhij,ij->bhi", a, distance)               # [B, H, P], no [B, H, P, P] product
        if prefix == "renormalise":
            with np.errstate(invalid="ignore", divide="ignore"):
                per_query = np.where(mass > 0, per_query / mass, np.nan)
        result.append(np.nanmean(per_query, axis=(0, 2)))               # [H]
    return np.stack(result)                                              # [L, H]


def uniform_attention_distance(grid, patch_size: int) -> float:
    """The mean attention distance of a head that attends uniformly to all patches: a reference line."""
    return float(patch_distances(grid, patch_size).mean())


# --- position embeddings (Dosovitskiy et al. 2021, Fig. 7 centre) -----------------------------

def patch_position_embeddings(pos_embed, grid, num_prefix_tokens: int) -> np.ndarray:
    """The rows of the position embedding that belong to patches: [1, N_pos, D] or [N_pos, D] -> [P, D].

    With a class-token embedding (timm's default) the first T rows are the prefix tokens' and are
    dropped; models with ``no_embed_class`` (DINOv2, DeiT-3) have patch rows only.
    """
    pe = np.asarray(pos_embed, dtype=np.float64)
    if pe.ndim == 3 and pe.shape[0] == 1:
        pe = pe[0]                                                       # [1, N_pos, D] -> [N_pos, D]
    gh, gw = _as_grid(grid)
    if pe.ndim != 2:
        raise ArgumentError(f"pos_embed must be [N_pos, D] or [1, N_pos, D], got {np.shape(pos_embed)}")
    if pe.shape[0] == gh * gw + num_prefix_tokens:
        return pe[num_prefix_tokens:]
    if pe.shape[0] == gh * gw:
        return pe
    raise ArgumentError(f"pos_embed has {pe.shape[0]} rows; a {gh}x{gw} grid needs {gh * gw} "
                        f"(or {gh * gw + num_prefix_tokens} with the {num_prefix_tokens} prefix token(s))")


def cosine_similarity(x: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row with every other: [P, D] -> [P, P] (zero rows give 0)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)                    # [P, 1]
    unit = x / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T                                                 # [P, D] @ [D, P] -> [P, P]


def position_embedding_similarity(pos_embed, grid, num_prefix_tokens: int) -> np.ndarray:
    """ViT Fig. 7 (centre): cosine similarity between the position embeddings of all patch pairs.

    Returns [gh, gw, gh, gw]: ``sim[r, c]`` is the tile for the patch at row r, column c, i.e. its
    similarity to every position, the small image the paper draws in each grid cell. Reshape to
    [P, P] for the full matrix. Prefix rows are excluded (they have no place on the grid).
    """
    gh, gw = _as_grid(grid)
    sim = cosine_similarity(patch_position_embeddings(pos_embed, grid, num_prefix_tokens))  # [P, P]
    return sim.reshape(gh, gw, gh, gw)


# --- PCA ---------------------------------------------------------------------------------------

def pca(x, n_components: int = 2):
    """Principal components by SVD of the centred data: [n, D] -> (scores [n, k], components [k, D], ratio [k]).

    ``ratio`` is the fraction of the total variance each component explains. Signs are fixed so
    that each component's largest-magnitude loading is positive (SVD signs are arbitrary).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ArgumentError(f"pca needs a 2-D array [n, D] with n >= 2 samples, got shape {x.shape}")
    k = min(int(n_components), *x.shape)
    if k < 1:
        raise ArgumentError(f"n_components must be >= 1, got {n_components!r}")
    centred = x - x.mean(0)                                              # [n, D]
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)        # vt: [min(n, D), D]
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1, signs)[:, None]
    variance = singular ** 2
    ratio = variance / variance.sum() if variance.sum() > 0 else np.zeros_like(variance)
    return centred @ vt[:k].T, vt[:k], ratio[:k]                         # [n, k], [k, D], [k]


# --- DINO masks (Caron et al. 2021) --------------------------------------------------------------

def dino_mask(values, keep: float = 0.6) -> np.ndarray:
    """The smallest set of patches that holds ``keep`` of the attention mass: [..., gh, gw] -> bool.

    Caron et al. (2021), ``visualize_attention.py``: sort, normalise, take the cumulative sum and
    keep the patches above ``1 - keep``, i.e. the largest values until their share reaches
    ``keep`` (60% in the paper's Fig. 3). Applied to each map of the leading axes separately.
    """
    if not 0.0 < keep <= 1.0:
        raise ArgumentError(f"keep must be in (0, 1], got {keep!r}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim < 2 or v.size == 0:
        raise ArgumentError(f"dino_mask needs non-empty maps [..., gh, gw], got shape {v.shape}")
    flat = v.reshape(v.shape[:-2] + (-1,))                               # [..., P]
    order = np.argsort(-flat, axis=-1, kind="stable")                    # largest first
    ranked = np.take_along_axis(flat, order, -1)
    share = np.cumsum(ranked, -1) / ranked.sum(-1, keepdims=True)        # [..., P]
    count = (share < keep - 1e-9).sum(-1, keepdims=True) + 1             # values needed to reach keep
    keep_sorted = np.arange(flat.shape[-1]) < count                      # [..., P]
    mask = np.zeros_like(keep_sorted)
    np.put_along_axis(mask, order, keep_sorted, -1)
    return mask.reshape(v.shape)


# --- the CLS token's path through the residual stream ----------------------------------------

def token_trajectory(residuals, token: int = 0, image: int = 0) -> np.ndarray:
    """One token's state at each depth: list over L+1 of [B, N, D] -> [L+1, D].

    Pass the residual stream entering every block plus the last block's output
    (``blocks.{i}.resid_pre`` for i < L, then ``blocks.{L-1}.resid_post``): the input embedding,
    then one point per layer. Token 0 is the class token in timm's layout.
    """
    if len(residuals) == 0:
        raise ArgumentError("residuals is empty: pass the residual stream of every layer")
    states = [np.asarray(r, dtype=np.float64) for r in residuals]
    for i, r in enumerate(states):
        if r.ndim != 3 or r.shape != states[0].shape:
            raise ArgumentError(f"residuals[{i}] must be [B, N, D] like residuals[0] {states[0].shape}, got {r.shape}")
    image = check_index(image, states[0].shape[0], "image")
    token = check_index(token, states[0].shape[1], "token")
    return np.stack([r[image, token] for r in states])                  # [L+1, D]


# --- patch-embedding filters (Dosovitskiy et al. 2021, Fig. 7 left) --------------------------

def patch_embedding_filters(weight, n_components: int = 28):
    """The top principal components of the patch projection, as RGB images: -> ([k, p, p, C], ratio [k]).

    ``weight`` is ``patch_embed.proj.weight`` [D, C, p, p]: D filters, each a C*p*p vector. The
    ViT paper shows the first 28 components; each image here is min-max scaled to [0, 1] for
    display (the sign and scale of a component carry no meaning).
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 4:
        raise ArgumentError(f"patch_embed.proj.weight must be [D, C, p, p], got shape {w.shape}")
    d, c, ph, pw = w.shape
    _, components, ratio = pca(w.reshape(d, c * ph * pw), n_components)  # [k, C*p*p]
    images = components.reshape(-1, c, ph, pw).transpose(0, 2, 3, 1)    # [k, p, p, C]
    low = images.min(axis=(1, 2, 3), keepdims=True)
    span = images.max(axis=(1, 2, 3), keepdims=True) - low
    return (images - low) / np.where(span > 0, span, 1.0), ratio


# --- one value per patch, from a trace ---------------------------------------------------------
#
# The attention-only explanations as maps [B, gh, gw] read off a Trace recorded with at least
# "blocks.*.attn.pattern": the same signature as the gradient methods below, so numpy_vit.faithfulness can score
# every method alike. All of them are class-agnostic: the pattern does not depend on which class is explained.

def cls_attention_map(trace, layer: int = -1) -> np.ndarray:
    """The class token's attention to every patch in one layer, mean over heads: -> [B, gh, gw].

    The "raw attention" map (Dosovitskiy et al. 2021 show its rollout; Chefer et al. 2021, Table 1, score it as
    "raw attention" from the last layer). Prefix columns dropped, not renormalised (:func:`attention_to_grid`).
    """
    layer = trace.layer(layer)
    return attention_map(trace[f"blocks.{layer}.attn.pattern"], trace.grid, trace.num_prefix_tokens, head="mean",
                         prefix_names=trace.prefix_names)                  # [B, gh, gw]


def rollout_map(trace, head_fusion: str = "mean", start_layer: int = 0, discard_ratio: float = 0.0) -> np.ndarray:
    """The class token's row of :func:`attention_rollout` over the patches (:func:`attention_rollout_row`): -> [B, gh, gw].

    ``start_layer`` > 0 rolls out from a later layer (Chefer et al. 2021 start their relevance at layer 0 for
    ViT; jacobgil's vit-explain and the CLIP notebooks offer a later start, so the first layers' global mixing
    does not flatten the map).
    """
    layers, t = trace_layers(trace), trace.num_prefix_tokens
    rows = [attention_rollout_row(layers, 0, head_fusion, discard_ratio, t, start_layer, image=b)
            for b in range(layers[0].shape[0])]                          # B x [N], row by row: N times less work
    return attention_to_grid(np.stack(rows), trace.grid, t)              # [B, N] -> [B, gh, gw]


def flow_capacity(attentions, head_fusion: str = "mean", image: int = 0) -> np.ndarray:
    """The graph of attention flow (Abnar & Zuidema 2020, section 3) as a dense capacity matrix [(L+1)N, (L+1)N].

    Node l * N + j is token j entering layer l; the edge (l+1, i) -> (l, j) has capacity A_hat_l[i, j], the
    head-fused attention plus the residual identity, rows renormalised (:func:`add_residual`), as in their code.
    """
    layers = as_attention_layers(attentions)
    n, depth = layers[0].shape[-1], len(layers)
    capacity = np.zeros(((depth + 1) * n, (depth + 1) * n))             # nodes: layer-major, token-minor
    for l, a in enumerate(layers):
        a_hat = add_residual(fuse_heads(a[image:image + 1], head_fusion)[0])  # [N, N]
        capacity[(l + 1) * n:(l + 2) * n, l * n:(l + 1) * n] = a_hat     # edge (l+1, i) -> (l, j)
    return capacity


def attention_flow_map(trace, head_fusion: str = "mean", max_flow=None) -> np.ndarray:
    """Attention flow from the class token's output to every input patch: -> [B, gh, gw].

    The flow value from node (L, cls) to node (0, j) in :func:`flow_capacity`'s graph is patch j's share
    (Abnar & Zuidema 2020, section 3). ``max_flow(capacity, source, sinks) -> [len(sinks)]`` solves the max-flow
    problems; the default is this module's exact Edmonds-Karp in Python, which takes minutes per sink at 197
    tokens x 12 layers: pass a compiled solver for real models (bench/explanations.py passes SciPy's).
    """
    layers = trace_layers(trace)
    n, depth, t = layers[0].shape[-1], len(layers), trace.num_prefix_tokens
    if max_flow is None:
        def max_flow(capacity, source, sinks):
            return [_max_flow(capacity, source, sink) for sink in sinks]
    source, sinks = depth * n, list(range(t, n))                         # (L, cls) -> (0, each patch)
    rows = []
    for image in range(layers[0].shape[0]):
        rows.append(np.asarray(max_flow(flow_capacity(layers, head_fusion, image), source, sinks), np.float64))
    return np.stack(rows).reshape(-1, *trace.grid)                       # [B, P] -> [B, gh, gw]


# --- gradient explanations ---------------------------------------------------------------------
#
# Class-specific maps from the gradients of one class's logit (numpy_vit.model.ViT.backward). Every function here
# takes arrays: attention patterns and d target / d pattern, tokens and d target / d tokens, images and
# d target / d images; integrated gradients takes a callable that returns gradients, so this module never runs a
# model. ``explanation_map(trace, grads, method)`` reads the arrays off a Trace and its gradients.
# Shapes: as at the top of this module; C colour channels, H_img x W_img pixels, S integration steps.

EXPLANATION_METHODS = ("chefer", "grad_rollout", "grad_cam", "input_x_grad", "rollout")
EXPLANATION_OPTIONS = {"chefer": ("start_layer", "query"), "grad_rollout": ("discard_ratio", "query"),
                       "grad_cam": ("layer",), "input_x_grad": (), "rollout": ("head_fusion", "discard_ratio", "query")}
IG_RULES = ("midpoint", "trapezoid")


def _attention_and_gradients(attentions, gradients) -> tuple:
    """Both lists over layers of [B, H, N, N], checked to pair up layer by layer."""
    layers = as_attention_layers(attentions)
    grads = as_attention_layers(gradients, "gradients")
    if len(grads) != len(layers):
        raise ArgumentError(f"gradients has {len(grads)} layers but attentions has {len(layers)}: pass "
                            f"d target / d pattern for every layer whose pattern is given")
    for index, (a, g) in enumerate(zip(layers, grads)):
        if a.shape != g.shape:
            raise ArgumentError(f"gradients[{index}] has shape {g.shape} but attentions[{index}] has {a.shape}; "
                                f"each gradient has its pattern's shape")
    return layers, grads


def chefer_relevance(attentions, gradients, start_layer: int = 0) -> np.ndarray:
    """Generic attention relevance (Chefer, Gur & Wolf 2021, ICCV, arXiv 2103.15679, eqs. 5-6): -> [B, N, N].

    For each layer l from ``start_layer`` on, with A_l its pattern and dA_l = d target / d A_l:
        A_bar_l = E_h[(dA_l * A_l)^+]              eq. 5: ReLU per head, THEN the mean over heads
        R <- R + A_bar_l @ R,  R starting at I      eq. 6 (self-attention rule)
    No row normalisation: relevance accumulates. Row ``q`` of R over the patch columns is the map for query
    token q (the class token, row 0, for a classifier). Heads whose gradient-weighted attention is negative are
    cut to 0 before averaging, so they cannot cancel the positive heads (compare :func:`gradient_rollout`).
    Layers before ``start_layer`` are skipped, as in their CLIP notebook (``if i < start_layer: continue``).
    """
    layers, grads = _attention_and_gradients(attentions, gradients)
    start = check_index(start_layer, len(layers), "start_layer")
    b, _, n, _ = layers[0].shape
    relevance = np.broadcast_to(np.eye(n), (b, n, n)).copy()           # [B, N, N]
    for a, g in zip(layers[start:], grads[start:]):
        weighted = np.maximum(g * a, 0.0).mean(axis=1)                   # [B, H, N, N] -> [B, N, N]
        relevance = relevance + weighted @ relevance                     # [B, N, N] @ [B, N, N]
    return relevance


def gradient_rollout(attentions, gradients, discard_ratio: float = 0.0, num_prefix_tokens: int = 1) -> np.ndarray:
    """Gradient-weighted attention rollout as jacobgil/vit-explain's ``grad_rollout``: -> [B, N, N], row-stochastic.

    Per layer, with A its pattern and dA = d target / d A:
        F = (E_h[dA * A])^+          the mean over heads FIRST, then negatives set to 0 (Chefer: ReLU per head first)
        F <- discard_lowest(F)       optional: the smallest ``discard_ratio`` of the patch rows' entries set to 0
        A_hat = (F + I) / rowsum     vit-explain writes (F + I) / 2 and then divides by the row sums; the / 2
                                     cancels in the row normalisation, so it is left out
        R <- A_hat @ R,  R starting at I
    Then rollout as Abnar & Zuidema (2020, eq. 1) with the gradient-weighted matrix in place of the attention.
    Differences from vit-explain's code, on purpose: rows are normalised (their ``a / a.sum(dim=-1)`` broadcasts
    over the columns for one image, vit-explain issue #16); discarding leaves the prefix rows alone (they
    discard over the whole matrix of the first image only), as :func:`discard_lowest` does for the plain
    rollout. Against :func:`chefer_relevance`: the head fusion order differs (here heads with a negative
    product cancel positive ones before the clamp) and every step is renormalised, so R stays a distribution.
    """
    layers, grads = _attention_and_gradients(attentions, gradients)
    rollout = None
    for index, (a, g) in enumerate(zip(layers, grads)):
        fused = np.maximum((g * a).mean(axis=1), 0.0)                   # [B, H, N, N] -> [B, N, N]
        if discard_ratio:
            fused = discard_lowest(fused, discard_ratio, num_prefix_tokens)
        a_hat = add_residual(fused)                                      # [B, N, N], rows sum to 1
        _assert_row_stochastic(a_hat, f"gradient-weighted A_hat of layer {index}")
        rollout = a_hat if rollout is None else a_hat @ rollout          # [B, N, N] @ [B, N, N]
    return rollout


def grad_cam(tokens, gradients, grid, num_prefix_tokens: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017, eqs. 1-2) on a layer's patch tokens: [B, N, D] x2 -> [B, gh, gw].

        alpha_c = mean over patches of d target / d token[:, c]        eq. 1 (global-average-pooled gradients)
        map     = ReLU(sum_c alpha_c * token[:, c])                    eq. 2
    The D channels of the tokens play the CNN's feature maps and the patch grid its spatial axes; prefix tokens
    are left out of both the pooling and the map, as pytorch-grad-cam's ViT ``reshape_transform`` drops them.
    Which layer: pytorch-grad-cam's ViT example uses ``model.blocks[-1].norm1``, the last block's first LayerNorm
    output (trace name ``blocks.{L-1}.ln1``): after the last block the class token (what the head reads) no
    longer mixes with the patches, so the gradient at the last block's output patch tokens is 0.
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    gradients = np.asarray(gradients, dtype=np.float64)
    if tokens.ndim != 3 or tokens.shape != gradients.shape:
        raise ArgumentError(f"grad_cam needs tokens and their gradients as [B, N, D] of one shape, got "
                            f"{tokens.shape} and {gradients.shape}")
    gh, gw = _check_tokens(tokens.shape[1], grid, num_prefix_tokens, "tokens")
    patches = tokens[:, num_prefix_tokens:]                              # [B, P, D]
    weights = gradients[:, num_prefix_tokens:].mean(axis=1)              # [B, P, D] -> [B, D]
    cam = np.maximum(np.einsum("bpd,bd->bp", patches, weights), 0.0)     # [B, P]
    return cam.reshape(-1, gh, gw)                                       # [B, P] -> [B, gh, gw]


def _as_images(images, what: str) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.size == 0:
        raise ArgumentError(f"{what} must be a batch [B, C, H_img, W_img], got shape {np.shape(images)}")
    return x


def input_times_gradient(images, gradients) -> np.ndarray:
    """Gradient * input (Shrikumar et al. 2016, arXiv 1605.01713), summed over colour: -> [B, H_img, W_img].

        R_i = x_i * dF / dx_i       the first-order Taylor term of F at x, read as x_i's share (signed)
    ``images`` are the model's (normalised) input and ``gradients`` d target / d input. :func:`sum_per_patch` turns it into one value per patch.
    """
    x, g = _as_images(images, "images"), _as_images(gradients, "gradients")
    if x.shape != g.shape:
        raise ArgumentError(f"images {x.shape} and gradients {g.shape} must have one shape")
    return (x * g).sum(axis=1)                                           # [B, C, H, W] -> [B, H, W]


def sum_per_patch(pixel_map, patch_size: int) -> np.ndarray:
    """Add up a per-pixel map over each patch: [B, H_img, W_img] -> [B, gh, gw] (pixels past the last whole patch
    are not seen by the model and are dropped)."""
    m = np.asarray(pixel_map, dtype=np.float64)
    p = int(patch_size)
    if m.ndim != 3 or p < 1 or m.shape[1] < p or m.shape[2] < p:
        raise ArgumentError(f"sum_per_patch needs a map [B, H_img, W_img] at least one patch ({patch_size} px) "
                            f"on a side, got shape {m.shape}")
    gh, gw = m.shape[1] // p, m.shape[2] // p
    m = m[:, :gh * p, :gw * p].reshape(m.shape[0], gh, p, gw, p)        # [B, gh, p, gw, p]
    return m.sum(axis=(2, 4))                                            # [B, gh, gw]


def black_baseline(images, mean, std) -> np.ndarray:
    """The all-black image in the model's normalised pixels: (0 - mean) / std per channel, shaped like ``images``."""
    x = _as_images(images, "images")
    mean = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)      # [1, C, 1, 1]
    std = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    if mean.shape[1] != x.shape[1] or std.shape[1] != x.shape[1]:
        raise ArgumentError(f"mean and std need one value per channel ({x.shape[1]}), got {mean.size} and {std.size}")
    return np.broadcast_to((0.0 - mean) / std, x.shape).copy()


def blurred_baseline(images, sigma: float = 8.0) -> np.ndarray:
    """The images blurred by a Gaussian of ``sigma`` pixels: an integrated-gradients baseline that keeps colour
    but removes edges (Sturmfels, Lundberg & Lee 2020, Distill, "Visualizing the Impact of Feature Attribution
    Baselines"; Sundararajan et al. 2017 use the black image). Separable kernel cut at 3 sigma, edges mirrored;
    blurring commutes with the per-channel normalisation, so normalised pixels may be passed."""
    x = _as_images(images, "images")
    if not sigma > 0:
        raise ArgumentError(f"sigma must be a positive number of pixels, got {sigma!r}")
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()                                                   # [2r+1], sums to 1
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        x = sum(w * np.take(padded, np.arange(k, k + x.shape[axis]), axis=axis) for k, w in enumerate(taps))
    return x


def integrated_gradients(images, gradient_of, baseline, steps: int = 16, rule: str = "midpoint",
                         steps_per_call: int = 1) -> np.ndarray:
    """Integrated gradients (Sundararajan, Taly & Yan 2017, eq. 1) per input value: -> [B, C, H_img, W_img].

        IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i da
    The integral is a Riemann sum over ``steps`` evaluations (their eq. 3): ``rule="midpoint"`` at a = (k + 1/2) / S,
    k = 0..S-1, weight 1/S each (exact for an integrand linear in a); ``"trapezoid"`` at a = k / S, k = 0..S,
    end points weighted 1/(2S). ``gradient_of(images) -> d target / d images`` (same shape) gets the whole batch
    at ``steps_per_call`` points of the path at once, stacked point-major ([k * B, C, H, W]: the B images at the
    first point, then at the next), so a model can run them as one larger batch; the target must be fixed
    beforehand (a class index per image, repeated for each point; never "the top class of this interpolated
    image"). ``baseline`` is an array shaped like ``images`` (:func:`black_baseline`,
    :func:`blurred_baseline`). Completeness (their Proposition 1): the sum over inputs approaches
    F(x) - F(x'), a check on ``steps``.
    """
    x = _as_images(images, "images")
    x0 = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ArgumentError(f"steps must be an integer >= 1, got {steps!r}")
    if rule == "midpoint":
        alphas, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    elif rule == "trapezoid":
        alphas, weights = np.arange(steps + 1) / steps, np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] /= 2
    else:
        raise ArgumentError(f"rule must be one of {IG_RULES}, got {rule!r}")
    if not callable(gradient_of):
        raise ArgumentError("gradient_of must be a function images -> d target / d images")
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, (int, np.integer)) or steps_per_call < 1:
        raise ArgumentError(f"steps_per_call must be an integer >= 1, got {steps_per_call!r}")
    total = np.zeros_like(x)
    for first in range(0, len(alphas), steps_per_call):
        chunk, chunk_weights = alphas[first:first + steps_per_call], weights[first:first + steps_per_call]
        points = x0[None] + chunk[:, None, None, None, None] * (x - x0)[None]   # [k, B, C, H, W]
        g = np.asarray(gradient_of(points.reshape(-1, *x.shape[1:])), dtype=np.float64)  # [k*B, C, H, W]
        if g.shape != (len(chunk) * x.shape[0],) + x.shape[1:]:
            raise ArgumentError(f"gradient_of returned shape {g.shape}; it must return d target / d images, "
                                f"the shape of its input {(len(chunk) * x.shape[0],) + x.shape[1:]}")
        total += np.tensordot(chunk_weights, g.reshape(len(chunk), *x.shape), axes=1)   # [k] . [k, B, ...]
    return (x - x0) * total                                              # [B, C, H, W]


def _relevance_row(matrix, grid, num_prefix_tokens, prefix_names, query) -> np.ndarray:
    """Row ``query`` of a [B, N, N] token-to-token matrix, over the patch columns: -> [B, gh, gw]."""
    token = query_token_index(query, grid, prefix_names)
    rows = matrix[:, num_prefix_tokens:].mean(1) if token == "mean" else matrix[:, token]   # [B, N]
    return attention_to_grid(rows, grid, num_prefix_tokens)                                 # [B, gh, gw]


def explanation_map(trace, grads, method: str, **options) -> np.ndarray:
    """One value per patch for each image of a Trace: -> [B, gh, gw], larger = more for the target.

    ``grads``: ``model.backward(trace, target)`` (d target / d every trace array), which fixes the class
    explained; ``trace`` must hold what the method reads (the default ``record=None`` keeps everything).
    ``method`` (EXPLANATION_METHODS) and its ``options``:
      "chefer"        :func:`chefer_relevance`; ``start_layer`` (0), ``query`` (None: the class token, or the mean
                      over patch rows for a model without one; see :func:`query_token_index`). Values >= 0.
      "grad_rollout"  :func:`gradient_rollout`; ``discard_ratio`` (0.0), ``query``. Values >= 0, a distribution.
      "grad_cam"      :func:`grad_cam` on ``blocks.{layer}.ln1``; ``layer`` (-1, the last block). Values >= 0.
      "input_x_grad"  :func:`input_times_gradient` summed per patch (:func:`sum_per_patch`). Signed.
      "rollout"       plain attention rollout, class-agnostic (``grads`` unused, may be None); ``head_fusion``,
                      ``discard_ratio``, ``query``.
    Integrated gradients runs the model again for every step: ``numpy_vit.viz.explanations.integrated_gradients_map``
    (or :func:`integrated_gradients` with your own ``gradient_of``).
    """
    known = EXPLANATION_OPTIONS
    if method not in known:
        raise ArgumentError(f"method must be one of {EXPLANATION_METHODS} (integrated gradients needs the model: "
                            f"numpy_vit.viz.explanations.integrated_gradients_map), got {method!r}")
    unknown = set(options) - set(known[method])
    if unknown:
        raise ArgumentError(f"method {method!r} takes the options {sorted(known[method]) or 'none'}, "
                            f"not {sorted(unknown)}")
    if grads is None and method != "rollout":
        raise ArgumentError(f"method {method!r} needs gradients: grads = model.backward(trace, target)")
    grid, prefix, names = trace.grid, trace.num_prefix_tokens, trace.prefix_names
    depth = trace.depth
    patterns = [f"blocks.{i}.attn.pattern" for i in range(depth)]
    query = options.get("query")
    if method == "chefer":
        matrix = chefer_relevance([trace[k] for k in patterns], [grads[k] for k in patterns],
                                  options.get("start_layer", 0))
        return _relevance_row(matrix, grid, prefix, names, query)
    if method == "grad_rollout":
        matrix = gradient_rollout([trace[k] for k in patterns], [grads[k] for k in patterns],
                                  options.get("discard_ratio", 0.0), prefix)
        return _relevance_row(matrix, grid, prefix, names, query)
    if method == "rollout":
        matrix = attention_rollout([trace[k] for k in patterns], options.get("head_fusion", "mean"),
                                   options.get("discard_ratio", 0.0), prefix)
        return _relevance_row(matrix, grid, prefix, names, query)
    if method == "grad_cam":
        name = f"blocks.{check_index(options.get('layer', -1), depth, 'layer')}.ln1"
        return grad_cam(trace[name], grads[name], grid, prefix)
    pixels = input_times_gradient(trace["input"], grads["input"])       # [B, H_img, W_img]
    return sum_per_patch(pixels, trace.patch_size)                       # [B, gh, gw]
