"""Resizing a grid of vectors (a position embedding) to another grid, the way each reference does it.

Every method here is separable: it is a weight matrix along rows and one along columns, so
``out[c] = W_rows @ grid[c] @ W_cols.T``. Building the two small matrices explicitly keeps the
arithmetic visible and lets the tests compare them entry by entry with torch.

- ``bicubic_antialias``: timm ``resample_abs_pos_embed`` = torch ``F.interpolate(mode="bicubic",
  antialias=True)``: Keys' cubic with a = -0.5, the kernel stretched by the scale when shrinking,
  weights normalised to sum to 1, samples outside the grid dropped (the Pillow algorithm).
- ``bicubic_hf``: HF ``interpolate_pos_encoding`` = ``F.interpolate(mode="bicubic", align_corners=False)``:
  a = -0.75, no antialias, indices clamped to the border.
- ``bilinear``: ``F.interpolate(mode="bilinear", align_corners=False)`` without antialias
  (timm's loader for the JAX ``.npz`` checkpoints; HF's BEiT for its relative position bias table).
- ``geometric``: timm ``resize_rel_pos_bias_table`` (BEiT's ``run_class_finetuning.py``) for BEiT's relative
  position bias table: the source offsets spread on a geometric progression, linear interpolation between
  them (``RegularGridInterpolator``, timm's default; its scipy cubic variant is not modelled).
"""
import math

import numpy as np


def _cubic(t, a):
    """Keys (1981) cubic convolution kernel."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1  # |t| <= 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # 1 < |t| < 2
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _weights_antialias(n_in, n_out):  # -> [n_out, n_in]
    scale = n_in / n_out
    stretch = max(scale, 1.0)  # only shrinking widens the kernel (anti-aliasing)
    support = 2.0 * stretch  # bicubic reaches 2 input samples on each side, times the stretch
    W = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = _cubic((j - centre + 0.5) / stretch, a=-0.5)
        W[i, lo:hi] = w / w.sum()
    return W


def _weights_bicubic_clamped(n_in, n_out):  # -> [n_out, n_in]
    scale = n_in / n_out
    W = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = scale * (i + 0.5) - 0.5
        x0 = math.floor(src)
        t = src - x0
        for offset in (-1, 0, 1, 2):
            W[i, min(max(x0 + offset, 0), n_in - 1)] += _cubic(np.float64(t - offset), a=-0.75)
    return W


def _weights_bilinear(n_in, n_out):  # -> [n_out, n_in]
    scale = n_in / n_out
    W = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        x0 = min(int(src), n_in - 1)
        x1 = min(x0 + 1, n_in - 1)
        t = src - x0
        W[i, x0] += 1.0 - t
        W[i, x1] += t
    return W


def geometric_offsets(n_in, n_out):  # -> [n_in] positions
    """Where timm (after BEiT's fine-tuning code) places the n_in = 2 g - 1 offsets of a bias table before
    reading it at the n_out integer offsets -(n_out // 2) .. n_out // 2: 0, then +-1, +-(1 + r), +-(1 + r + r^2),
    ..., with the ratio r in [1.01, 1.5] found by bisection so that the last one, 1 + r + ... + r^(k-1)
    (k = n_in // 2), reaches n_out // 2. Small offsets keep their spacing near 1; the far ones stretch."""
    half = n_in // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        r = (left + right) / 2.0
        if (1.0 - r ** half) / (1.0 - r) > n_out // 2:  # the geometric series 1 + r + ... + r^(half-1)
            right = r
        else:
            left = r
    sums = np.cumsum(r ** np.arange(half))  # [half]: 1, 1 + r, 1 + r + r^2, ...
    return np.concatenate([-sums[::-1], [0.0], sums])  # [n_in]


def _weights_geometric(n_in, n_out):  # -> [n_out, n_in]
    """Linear interpolation of values at ``geometric_offsets`` onto the integer offsets, held at the end values
    beyond the outermost offsets (np.interp's rule, and that of timm's RegularGridInterpolator)."""
    points = geometric_offsets(n_in, n_out)  # [n_in]
    targets = np.arange(n_out) - n_out // 2  # [n_out]
    return np.stack([np.interp(targets, points, column) for column in np.eye(n_in)], axis=1)  # [n_out, n_in]


_METHODS = {
    "bicubic_antialias": _weights_antialias,
    "bicubic_hf": _weights_bicubic_clamped,
    "bilinear": _weights_bilinear,
    "geometric": _weights_geometric,
}


def resize_weights(n_in, n_out, method):
    """The [n_out, n_in] matrix that resizes one axis with ``method``."""
    if n_in == n_out:
        return np.eye(n_in)
    return _METHODS[method](n_in, n_out)


def resample_grid(grid, new_size, method="bicubic_antialias"):  # [gh, gw, D] -> [nh, nw, D]
    """Resize a grid of D-dim vectors. Computed in float64 and returned in the grid's dtype, so a
    float32 result is the correctly rounded one (torch's float32 kernel differs from it by ~1 ulp)."""
    gh, gw, D = grid.shape
    nh, nw = new_size
    Wr = resize_weights(gh, nh, method)  # [nh, gh]
    Wc = resize_weights(gw, nw, method)  # [nw, gw]
    rows = np.einsum("ig,gwd->iwd", Wr, grid.astype(np.float64))  # [nh, gw, D]
    return np.einsum("jw,iwd->ijd", Wc, rows).astype(grid.dtype)  # [nh, nw, D]


def resample_pos_embed(pos_embed, old_grid, new_grid, num_prefix, method="bicubic_antialias"):
    """[N_old, D] -> [N_new, D]: the prefix rows (class token etc.) are kept, the patch rows resized as a grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, patches = pos_embed[:num_prefix], pos_embed[num_prefix:]
    grid = patches.reshape(old_grid[0], old_grid[1], -1)  # [gh, gw, D]
    grid = resample_grid(grid, new_grid, method)  # [nh, nw, D]
    return np.concatenate([prefix, grid.reshape(-1, grid.shape[-1])], axis=0)


def resample_pos_embed_backward(d_pos, old_grid, new_grid, num_prefix,
                                method="bicubic_antialias"):  # [N_new, D] -> [N_old, D]
    """The backward of ``resample_pos_embed``: the gradient of the stored table, from that of the resampled
    one. The prefix rows are copied by the forward, so their gradient passes unchanged. The patch rows are a
    linear, separable resize, out[:, :, c] = W_rows @ grid[:, :, c] @ W_cols^T per channel c, so
    d grid[:, :, c] = W_rows^T @ d_out[:, :, c] @ W_cols: the transposed products, in d_pos's dtype."""
    if tuple(old_grid) == tuple(new_grid):
        return d_pos
    d_prefix, d_patches = d_pos[:num_prefix], d_pos[num_prefix:]
    d_grid = d_patches.reshape(new_grid[0], new_grid[1], -1)  # [nh, nw, D]
    Wr = resize_weights(old_grid[0], new_grid[0], method).astype(d_pos.dtype)  # [nh, gh]
    Wc = resize_weights(old_grid[1], new_grid[1], method).astype(d_pos.dtype)  # [nw, gw]
    d_rows = np.einsum("jw,ijd->iwd", Wc, d_grid)  # W_cols^T along the columns: [nh, nw, D] -> [nh, gw, D]
    d_grid = np.einsum("ig,iwd->gwd", Wr, d_rows)  # W_rows^T along the rows: [nh, gw, D] -> [gh, gw, D]
    return np.concatenate([d_prefix, d_grid.reshape(-1, d_grid.shape[-1])], axis=0)  # [N_old, D]


def table_axis_weights(n_in, n_out, method):  # -> [n_out, n_in]
    """The weights along one axis of a bias table being resized. timm's "geometric" resampling moves the offsets
    of an axis even where its length stays (their spacing is the progression's, not 1), so it is never the
    identity once the table is resized at all; torch's bilinear interpolation to the same length is."""
    return _weights_geometric(n_in, n_out) if method == "geometric" else resize_weights(n_in, n_out, method)


def resample_rel_pos_table(table, old_grid, new_grid, method="geometric"):  # [T_old, H] -> [T_new, H]
    """BEiT's relative position bias table for another patch grid: the (2 gh - 1) x (2 gw - 1) offsets resized
    as a grid of H-vectors by ``method`` ("geometric": timm's ``resize_rel_pos_bias_table``; "bilinear": HF's
    ``BeitRelativePositionBias``), the three class-token entries at the end kept as they are. Computed in
    float64, returned in the table's dtype."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    (gh, gw), (nh, nw) = old_grid, new_grid
    Wr = table_axis_weights(2 * gh - 1, 2 * nh - 1, method)  # [2nh-1, 2gh-1]
    Wc = table_axis_weights(2 * gw - 1, 2 * nw - 1, method)  # [2nw-1, 2gw-1]
    offsets = table[:-3].reshape(2 * gh - 1, 2 * gw - 1, -1).astype(np.float64)  # [T_old - 3, H] -> [2gh-1, 2gw-1, H]
    rows = np.einsum("ig,gwh->iwh", Wr, offsets)  # [2nh-1, 2gw-1, H]
    offsets = np.einsum("jw,iwh->ijh", Wc, rows).astype(table.dtype)  # [2nh-1, 2nw-1, H]
    return np.concatenate([offsets.reshape(-1, table.shape[1]), table[-3:]], axis=0)  # [T_new, H]


def resample_rel_pos_table_backward(d_table, old_grid, new_grid, method="geometric"):  # [T_new, H] -> [T_old, H]
    """``resample_rel_pos_table`` in reverse: the class-token rows pass unchanged, the offset grid goes back
    through the transposed weight matrices (as in ``resample_pos_embed_backward``)."""
    if tuple(old_grid) == tuple(new_grid):
        return d_table
    (gh, gw), (nh, nw) = old_grid, new_grid
    d_grid = d_table[:-3].reshape(2 * nh - 1, 2 * nw - 1, -1)  # [2nh-1, 2nw-1, H]
    Wr = table_axis_weights(2 * gh - 1, 2 * nh - 1, method).astype(d_table.dtype)  # [2nh-1, 2gh-1]
    Wc = table_axis_weights(2 * gw - 1, 2 * nw - 1, method).astype(d_table.dtype)  # [2nw-1, 2gw-1]
    d_rows = np.einsum("jw,ijh->iwh", Wc, d_grid)  # [2nh-1, 2gw-1, H]
    d_grid = np.einsum("ig,iwh->gwh", Wr, d_rows)  # [2gh-1, 2gw-1, H]
    return np.concatenate([d_grid.reshape(-1, d_table.shape[1]), d_table[-3:]], axis=0)  # [T_old, H]
