"""The speed-ups: numpy_vit/layers.py's functions computed faster, beside them, never instead of them.

Every function here that computes a layer names (in its docstring) the function of ``numpy_vit.layers`` it
accelerates; tests/test_fast.py compares each with it, with the tolerance it states: bit for bit where the
same elementwise operations run in the same order, within the rounding bound of a dot product where a matrix
product is another BLAS call. ``ViT.forward`` takes this module in place of ``layers`` when it may use several
threads (``wanted``), and runs the reference math on one unless told otherwise (``ViT.speedups``).
bench/README.md has the timings.

How the work is split: BLAS spreads every matrix multiply over its threads, but NumPy runs each elementwise
ufunc on one. So on several threads BLAS is held to one thread (``blas_on_one_thread``) and numpy_vit splits
the work itself, as torch does: a batch of several images is cut into one shard of images per thread
(``encoder_in_shards``); a single image's steps split their output features (``linear``), groups of heads
(``attend_in_head_groups``) and GELU chunks (``gelu_float32_in_cache``) between the threads. The thread count
follows the usual environment variables, as BLAS and torch do, or ``set_num_threads``.

Shapes as in numpy_vit/layers.py: B batch, N tokens, D width, H heads, Dh head width, M MLP width.
"""
import concurrent.futures
import contextlib
import math
import os
import threading

import numpy as np

from . import layers
from .erf import ERFC_CHEBYSHEV
from .errors import ArgumentError
from .layers import _no_record, patchify  # noqa: F401 (patchify: a reshape and one copy, nothing to speed up)

# --- threads -------------------------------------------------------------------------------------

_num_threads = None
_pools = {}
_in_shard = threading.local()  # .active is True in a thread that runs one shard of a batch: it stays on one thread


def _forget_pools():
    _pools.clear()


os.register_at_fork(after_in_child=_forget_pools)


def _threads_from_environment():
    for name in ("NUMPY_VIT_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def get_num_threads():
    """Threads numpy_vit uses (shards of a batch, or the split steps of one image): set_num_threads(n),
    else NUMPY_VIT_NUM_THREADS, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or MKL_NUM_THREADS, else the number of
    cores this process may use. 1 inside a shard, which is already one of the threads."""
    if getattr(_in_shard, "active", False):
        return 1
    return _num_threads if _num_threads is not None else _threads_from_environment()


def set_num_threads(n):
    """Like torch.set_num_threads: how many threads numpy_vit may use. With 1, ViT.forward runs the reference
    math of numpy_vit.layers on the calling thread (this module's functions with ``model.speedups = True``),
    and BLAS spreads each matrix multiply over its own threads (OPENBLAS_NUM_THREADS, or threadpoolctl)."""
    global _num_threads
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ArgumentError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    _num_threads = int(n)


def uses_threads():
    """Whether numpy_vit may split its work between threads: several threads, and BLAS's thread count can be
    held to one (else BLAS spreads each product over its own threads)."""
    return get_num_threads() > 1 and can_put_blas_on_one_thread()


def wanted(speedups=None):
    """Whether ``ViT.forward`` runs this module rather than the reference functions of numpy_vit.layers:
    ``speedups`` (the model's setting) True or False, or None: where it may use several threads."""
    return uses_threads() if speedups is None else bool(speedups)


def run_in_shard(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with numpy_vit's own threading off in this thread (it is one of them)."""
    _in_shard.active = True
    try:
        return function(*args, **kwargs)
    finally:
        _in_shard.active = False


class _LockedIterator:
    """An iterator several threads can draw from: each item goes to exactly one of them."""

    def __init__(self, items):
        self._items, self._lock = iter(items), threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            return next(self._items)


def equal_blocks(n, parts):
    """range(n) cut into ``parts`` consecutive slices whose lengths differ by at most one."""
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def share_between_threads(work, jobs, threads):
    """``work(queue)`` on this thread and on ``threads - 1`` helpers, all taking the next job from one queue
    until it is empty, so a thread that waits for a busy core delays nothing: the others take its share.
    Returns when every thread is done; re-raises a helper's exception here."""
    queue = _LockedIterator(jobs)
    helpers = [_thread_pool(threads - 1).submit(work, queue) for _ in range(threads - 1)]
    try:
        work(queue)
    finally:
        for helper in helpers:
            helper.exception()  # waits for it, whatever happened here
    for helper in helpers:
        helper.result()


def _thread_pool(threads):
    """One pool per size, made on first use. A forked child process (multiprocessing, as the demo uses)
    inherits the dict but not the threads: ``_forget_pools`` empties it there, so the child makes its own."""
    if threads not in _pools:
        _pools[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="numpy_vit")
    return _pools[threads]


# --- BLAS on one thread ----------------------------------------------------------------------------

_blas_handle = []  # [threadpoolctl's handle on the loaded BLAS libraries, or None], filled on first use
_blas_hold = {"holders": 0, "limiter": None, "lock": threading.Lock()}  # see blas_on_one_thread


def _blas_threads():
    """threadpoolctl's handle on the BLAS libraries loaded in this process, or None where threadpoolctl
    (installed with scikit-learn) is missing or finds no BLAS whose thread count it can set."""
    if not _blas_handle:
        try:
            import threadpoolctl

            handle = threadpoolctl.ThreadpoolController().select(user_api="blas")
            _blas_handle.append(handle if len(handle) else None)
        except Exception:  # not installed, or a platform it does not know: the reference math, BLAS's threads
            _blas_handle.append(None)
    return _blas_handle[0]


def can_put_blas_on_one_thread():
    return _blas_threads() is not None


@contextlib.contextmanager
def blas_on_one_thread():
    """Within the block, every BLAS call (from any thread) runs on the calling thread alone; nothing where
    BLAS's thread count cannot be set (no threadpoolctl). BLAS's thread count is one setting for the whole
    process: the first block to enter sets it to 1 and the last to leave gives BLAS its threads back, so
    blocks entered at once in several threads of a program (forward passes, the demo's figures) do not undo
    each other's setting, and a block entered inside another costs a lock and a counter."""
    with _blas_hold["lock"]:
        if _blas_hold["holders"] == 0 and can_put_blas_on_one_thread():
            _release_openblas_control()
            _blas_hold["limiter"] = _blas_threads().limit(limits=1)
            _release_openblas_control()
        _blas_hold["holders"] += 1
    try:
        yield
    finally:
        with _blas_hold["lock"]:
            _blas_hold["holders"] -= 1
            if _blas_hold["holders"] == 0 and _blas_hold["limiter"] is not None:
                _release_openblas_control()
                _blas_hold["limiter"].restore_original_limits()
                _blas_hold["limiter"] = None
                _release_openblas_control()


def _release_openblas_control():
    """threadpoolctl (3.6 and later) lets one Python thread at a time set OpenBLAS's process-wide thread count
    and ignores the others; the last block to leave ``blas_on_one_thread`` may run in another thread than the
    first, so numpy_vit, which counts its holders itself, hands that control back around each change."""
    try:
        from threadpoolctl import OpenBLASController

        OpenBLASController.clear_controlling_thread(force=True)
    except (ImportError, AttributeError):  # an older threadpoolctl: any thread may set the count
        pass


def blas_is_held():
    return _blas_hold["holders"] > 0


def matmul_threads():
    """Threads a step may split its matrix multiplies between, each on one BLAS thread: get_num_threads()
    where BLAS's thread count can be held to one, else 1 (BLAS spreads each product over its own threads)."""
    return get_num_threads() if can_put_blas_on_one_thread() else 1


# --- the layers, faster ----------------------------------------------------------------------------

_MIN_ROWS_TO_SPLIT = 16  # a few rows are not worth a thread


def linear(x, weight, bias=None):  # [..., in] -> [..., out]
    """``layers.linear`` with the output features split between ``matmul_threads()`` threads
    (``linear_split_between_threads``). Tolerance: the rounding bound of the dot product (another BLAS call).

    One row: NumPy calls gemv, whose summation order depends on the weight's memory order (the model keeps
    the blocks' weights column-major, model._stored), so the weight is made row-major first: an image gives
    the same numbers alone as at batch size 1 of any layout."""
    rows = x.reshape(-1, x.shape[-1])  # [R, in]
    if rows.shape[0] == 1:
        weight = np.ascontiguousarray(weight)
    threads = matmul_threads() if rows.shape[0] >= _MIN_ROWS_TO_SPLIT else 1
    if 1 < threads <= weight.shape[0]:  # several threads, each with at least one output feature
        with blas_on_one_thread():
            y = linear_split_between_threads(rows, weight, bias, threads)
    else:
        y = rows @ weight.T  # [R, in] @ [in, out] -> [R, out]
        if bias is not None:
            y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])  # [..., out]


def linear_split_between_threads(x, weight, bias, threads):  # x [R, in] -> [R, out]
    """``layers.linear`` with the output features cut into one block per thread, each block one BLAS call on
    one BLAS thread (the caller holds ``blas_on_one_thread``). Tolerance: the dot product's rounding bound.

    Why: with BLAS's own threads, every step between two matrix multiplies (GELU, softmax) had one core to
    itself while the other BLAS thread spun, waiting for the next product. With BLAS on one thread the
    products and everything else are split between the same threads. By output features rather than by
    rows, because each thread then reads and packs only its own block of the weight."""
    y = np.empty((x.shape[0], weight.shape[0]), x.dtype)

    def multiply(queue):
        for block in queue:
            np.matmul(x, weight[block].T, out=y[:, block])  # [R, in] @ [in, block] -> [R, block]
            if bias is not None:
                y[:, block] += bias[block]

    share_between_threads(multiply, equal_blocks(weight.shape[0], threads), threads)
    return y


def layer_norm(x, weight, bias, *, eps):  # [..., D] -> [..., D]
    """``layers.layer_norm`` with its last three steps in place on one array instead of three new ones.
    The same operations in the same order: bit for bit."""
    centred = x - x.mean(axis=-1, keepdims=True)  # [..., D], a new array: the steps below reuse it
    var = np.mean(centred * centred, axis=-1, keepdims=True)  # [..., 1]
    out = np.divide(centred, np.sqrt(var + eps), out=centred)
    out *= weight
    out += bias
    return out


def softmax(x, axis=-1, out=None):
    """``layers.softmax`` written into ``out`` (may be x itself; by default a new array) and normalised in
    place. The same operations in the same order: bit for bit."""
    e = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def gelu(x, approximate="erf"):
    """``layers.gelu``; its exact float32 form by ``gelu_float32_in_cache``, bit for bit. The tanh form and CLIP's
    quick GELU run the reference function (tests/test_family_clip.py checks a CLIP model on this path against
    the reference)."""
    if approximate == "erf" and x.dtype == np.float32:
        return gelu_float32_in_cache(x)
    return layers.gelu(x, approximate)


def gelu_float32_in_cache(x, chunk=131072, threads=None):
    """``layers.gelu(x)`` for float32 x, with the same float32 operations in the same order, so bit for bit,
    but evaluated chunk by chunk in place on four scratch buffers, on ``threads`` threads (default:
    ``get_num_threads()``).

    Why: the formula is about 30 elementwise passes (10 of them Horner steps of two each). As array
    expressions over the MLP's [B, N, M] activations each pass allocates a new array and streams it through
    memory; on chunks of 128k values (512 KiB a buffer) every pass runs on data already in the CPU cache.
    NumPy's ufuncs release the GIL, so the chunks can be shared between threads as torch shares its GELU
    between its threads. Each ufunc call takes the GIL back when it returns, and a thread that finds it held
    waits to be woken: 128k-value chunks make few enough calls that two threads gain (bench/README.md).
    """
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    starts = range(0, flat.size, chunk)
    threads = min(get_num_threads() if threads is None else threads, len(starts))
    if threads <= 1:
        _gelu_float32_chunks(flat, out, iter(starts), chunk)
    else:
        share_between_threads(lambda queue: _gelu_float32_chunks(flat, out, queue, chunk), starts, threads)
    return out.reshape(x.shape)


def _gelu_float32_chunks(flat, out, starts, chunk):
    """The body of ``gelu_float32_in_cache`` for the chunks beginning at each of ``starts`` (an iterator,
    maybe shared with other threads): flat -> out, each chunk written by the one thread that took it.
    numpy_vit.erf.erfc_float32 step by step."""
    f = np.float32
    coefficients = [f(c) for c in ERFC_CHEBYSHEV]
    size = min(chunk, flat.size)
    u_buf, t_buf, y_buf, sign_buf = (np.empty(size, f) for _ in range(4))
    for start in starts:
        x_c = flat[start:start + chunk]
        n = x_c.size
        u, t, y, sign = u_buf[:n], t_buf[:n], y_buf[:n], sign_buf[:n]
        np.divide(x_c, f(-math.sqrt(2.0)), out=u)  # u = -x / sqrt 2, the argument of erfc
        np.copysign(f(1.0), u, out=sign)
        np.abs(u, out=u)  # a = |u|
        np.multiply(u, f(0.5), out=t)
        t += f(1.0)
        np.divide(f(1.0), t, out=t)  # t = 1 / (1 + a/2)
        np.multiply(t, coefficients[-1], out=y)
        y += coefficients[-2]
        for coefficient in coefficients[-3::-1]:  # Horner's rule: y = c0 + t (c1 + t (c2 + ...))
            y *= t
            y += coefficient
        np.multiply(u, u, out=u)
        np.subtract(y, u, out=y)
        np.exp(y, out=y)
        y *= t  # erfc(a) = t exp(-a^2 + poly(t))
        # erfc(u) = y for u >= 0, 2 - y for u < 0, without a masked (slow) ufunc: (1 - sign) + sign y is
        # 0 + y or 2 + (-y), each rounded exactly as y or 2 - y. (At u = -0, i.e. x = +0, the output is 0 anyway.)
        y *= sign
        np.subtract(f(1.0), sign, out=sign)
        y += sign
        out_c = out[start:start + n]
        np.multiply(x_c, f(0.5), out=out_c)
        out_c *= y  # 0.5 x erfc(-x / sqrt 2)


_SCORES_IN_CACHE = 1 << 20  # bytes of [N, N] scores in one group of heads: about one core's L2 cache


def attend_in_head_groups(q, k, v, scale, bias=None):  # q, k, v [B, H, N, Dh] -> scores, pattern, z
    """The three lines of ``layers.attention`` (scores = q * scale @ k^T (+ bias [H, N, N]), pattern =
    softmax(scores), z = pattern @ v), evaluated a group of heads of one image at a time, the groups shared between
    ``matmul_threads()`` threads on one BLAS thread each. Tolerance: each product within the dot product's
    rounding bound, the softmax between them bit for bit.

    Why: written over all heads at once, ``softmax(scores)`` makes five passes over a [B, H, N, N] array
    (15 MB for ViT-B at batch 8) that no longer sits in the CPU cache after the product that wrote it; a
    group's scores (at most ``_SCORES_IN_CACHE`` bytes: 6 heads of ViT-B, 930 KB) do, so the softmax and
    the product with v run while they are still there. On several threads each takes whole groups on one
    BLAS thread: BLAS would otherwise split every small [N, Dh] x [Dh, N] product between its threads, and
    the softmax would run on one. ``z`` is written token-major ([B, N, H, Dh]) and returned as a
    [B, H, N, Dh] view of it, so that merging the heads afterwards is a free reshape.
    """
    B, H, N, Dh = q.shape
    scores = np.empty((B, H, N, N), q.dtype)
    pattern = np.empty((B, H, N, N), q.dtype)
    z = np.empty((B, N, H, Dh), q.dtype)
    threads = matmul_threads()
    group = max(1, min(_SCORES_IN_CACHE // (N * N * q.itemsize), -(-H // threads)))  # heads per group
    jobs = [(b, slice(h, min(h + group, H))) for b in range(B) for h in range(0, H, group)]  # (image, heads)
    threads = min(threads, len(jobs))

    def attend(queue):
        q_scaled = np.empty((group, N, Dh), q.dtype)  # one per thread
        for b, heads in queue:
            qs = q_scaled[:heads.stop - heads.start]
            np.multiply(q[b, heads], scale, out=qs)
            np.matmul(qs, k[b, heads].transpose(0, 2, 1), out=scores[b, heads])  # [G, N, Dh] @ [G, Dh, N] -> [G, N, N]
            if bias is not None:
                scores[b, heads] += bias[heads]  # BEiT's relative position bias: [G, N, N]
            softmax(scores[b, heads], axis=-1, out=pattern[b, heads])
            np.matmul(pattern[b, heads], v[b, heads], out=z[b, :, heads].transpose(1, 0, 2))  # -> [G, N, Dh]

    if threads == 1:
        attend(iter(jobs))
    else:
        with blas_on_one_thread():
            share_between_threads(attend, jobs, threads)
    return scores, pattern, z.transpose(0, 2, 1, 3)  # [B, N, H, Dh] -> [B, H, N, Dh], a view


def attention(x, qkv, proj, *, num_heads, rope=None, bias=None, record=_no_record):  # [B, N, D] -> [B, N, D]
    """``layers.attention`` line for line, with this module's ``linear`` and the three lines of attention in
    groups of heads (``attend_in_head_groups``); EVA-02's rotation of q and k is ``layers.apply_rope`` itself.
    The same names recorded; the tolerance of its products."""
    B, N, D = x.shape
    Dh = D // num_heads
    qkv_out = linear(x, **qkv).reshape(B, N, 3, num_heads, Dh)  # [B, N, 3D] -> [B, N, 3, H, Dh]
    q, k, v = qkv_out.transpose(2, 0, 3, 1, 4)  # each [B, H, N, Dh]
    record("q", q)
    record("k", k)
    record("v", v)
    if rope is not None:
        q, k = layers.apply_rope(q, **rope), layers.apply_rope(k, **rope)  # [B, H, N, Dh] each
        record("q_rot", q)
        record("k_rot", k)
    if bias is not None:
        record("bias", bias)
    scores, pattern, z = attend_in_head_groups(q, k, v, scale=x.dtype.type(Dh ** -0.5), bias=bias)
    record("scores", scores)
    record("pattern", pattern)
    record("z", z)
    z = z.transpose(0, 2, 1, 3).reshape(B, N, D)  # [B, H, N, Dh] -> [B, N, D], no copy: z is token-major
    return linear(z, **proj)  # [B, N, D]


def mlp_block(x, fc1, fc2, *, gelu_approximate="erf", record=_no_record):  # [B, N, D] -> [B, N, D]
    """``layers.mlp_block`` line for line, with this module's ``linear`` and ``gelu``."""
    h = linear(x, **fc1)  # [B, N, M]
    record("pre", h)
    h = gelu(h, gelu_approximate)
    record("post", h)
    return linear(h, **fc2)  # [B, N, D]


def swiglu_mlp(x, fc2, fc1=None, fc1_g=None, fc1_x=None, norm=None, *, eps=1e-6,
               record=_no_record):  # [B, N, D] -> [B, N, D]
    """``layers.swiglu_mlp`` line for line, with this module's ``linear`` and ``layer_norm`` (the SiLU and the
    product are the reference's). The same names recorded; the tolerance of its products."""
    if fc1 is not None:
        both = linear(x, **fc1)  # [B, N, 2M]
        M = both.shape[-1] // 2
        gate, value = both[..., :M], both[..., M:]  # [B, N, M] each
    else:
        gate, value = linear(x, **fc1_g), linear(x, **fc1_x)  # [B, N, M] each
    record("gate", gate)
    record("value", value)
    h = layers.silu(gate) * value  # [B, N, M]
    record("post", h)
    if norm is not None:
        h = layer_norm(h, **norm, eps=eps)
        record("norm", h)
    return linear(h, **fc2)  # [B, N, D]


def encoder(x, blocks, *, record=_no_record, **options):  # [B, N, D] -> [B, N, D]
    """``layers.encoder`` on numpy_vit's threads with BLAS held to one thread: a batch of several images as one
    shard of images per thread, each through every block (``encoder_in_shards``); one image block by block,
    each step split between the threads (``block``). Tolerance: that of the products, which BLAS may block
    differently for another number of rows or threads."""
    shards = min(len(x), matmul_threads())
    with blas_on_one_thread() if matmul_threads() > 1 else contextlib.nullcontext():
        if shards > 1 and hasattr(record, "shard"):  # a plain callback wants whole-batch arrays: one pass
            return encoder_in_shards(x, shards, blocks, record=record, **options)
        for i, weights in enumerate(blocks):
            x = block(x, **weights, **options, record=lambda name, a, i=i: record(f"{i}.{name}", a))
        return x


def encoder_in_shards(x, shards, blocks, *, record, **options):  # [B, N, D] -> [B, N, D]
    """``encoder`` of a batch as ``shards`` passes over consecutive images, one per thread, each on one BLAS
    thread (the caller holds ``blas_on_one_thread``), each recording its rows through
    ``record.shard(rows, batch_size)`` (a numpy_vit.trace.Recorder).

    Why: BLAS spreads a matrix multiply over the threads, but NumPy runs every other step (GELU, softmax,
    LayerNorm, the bias adds) on one, so a single pass over a batch leaves the other cores idle between the
    products (bench/README.md). Passes side by side keep them busy, and a shard that runs through every block
    waits for the others once, not once a block. The math per image is unchanged."""
    out = np.empty_like(x)

    def run_shards(queue):
        for rows in queue:
            out[rows] = run_in_shard(encoder, x[rows], blocks, record=record.shard(rows, len(x)), **options)

    share_between_threads(run_shards, equal_blocks(len(x), shards), shards)  # returns when every shard is done
    return out


def encoder_backward(dy, saved, blocks, *, record=_no_record, **options):  # dy [B, N, D] -> dx [B, N, D], [grads]
    """``layers.encoder_backward`` of a batch of several images as one shard of images per thread (as
    ``encoder_in_shards``), each through every block in reverse on one BLAS thread, recording its rows through
    ``record.shard(rows, batch_size)``; the shards' weight gradients are then summed. One image or one
    thread: the reference itself, BLAS on its own threads. Tolerance: that of the products (a weight's
    gradient sums the images' contributions in another grouping).

    Why: as in the forward pass, NumPy runs the elementwise steps (the derivatives of the softmax, GELU and
    LayerNorm) on one thread while BLAS spreads only the products; shards keep every core busy."""
    shards = min(len(dy), matmul_threads())
    if shards <= 1 or not hasattr(record, "shard"):
        return layers.encoder_backward(dy, saved, blocks, record=record, **options)
    dx = np.empty_like(dy)
    shard_grads = {}  # first image of the shard -> its list of each block's weight gradients

    def run_shards(queue):
        for rows in queue:
            rows_saved = [{name: array[rows] for name, array in block.items()} for block in saved]
            dx[rows], shard_grads[rows.start] = run_in_shard(layers.encoder_backward, dy[rows], rows_saved, blocks,
                                                             record=record.shard(rows, len(dy)), **options)

    with blas_on_one_thread():
        share_between_threads(run_shards, equal_blocks(len(dy), shards), shards)
    in_order = [shard_grads[start] for start in sorted(shard_grads)]  # the same sum whichever thread ran which
    return dx, [_sum_trees([grads[i] for grads in in_order]) for i in range(len(blocks))]


def _sum_trees(trees):
    """Nested dicts of arrays (one per shard) -> one nested dict of their sums, into the first's arrays."""
    if isinstance(trees[0], dict):
        return {key: _sum_trees([tree[key] for tree in trees]) for key in trees[0]}
    total = trees[0]
    for other in trees[1:]:
        total += other
    return total


def block(x, norm1, attn, norm2, mlp, ls1=None, ls2=None, attn_bias=None, *, num_heads, eps, gelu_approximate="erf",
          rope=None, swiglu=False, record=_no_record):  # [B, N, D] -> [B, N, D]
    """``layers.block`` line for line, each step this module's faster one (``layer_norm``, ``attention``,
    ``mlp_block`` or ``swiglu_mlp``), which splits its work between the threads where it has several. The same
    names recorded; the tolerance of its products."""
    record("resid_pre", x)
    h = layer_norm(x, **norm1, eps=eps)
    record("ln1", h)
    h = attention(h, **attn, num_heads=num_heads, rope=rope, bias=attn_bias,
                  record=lambda name, a: record("attn." + name, a))
    if ls1 is not None:
        h = h * ls1["gamma"]
    record("attn_out", h)
    x = x + h
    record("resid_mid", x)
    h = layer_norm(x, **norm2, eps=eps)
    record("ln2", h)
    if swiglu:
        h = swiglu_mlp(h, **mlp, eps=eps, record=lambda name, a: record("mlp." + name, a))
    else:
        h = mlp_block(h, **mlp, gelu_approximate=gelu_approximate, record=lambda name, a: record("mlp." + name, a))
    if ls2 is not None:
        h = h * ls2["gamma"]
    record("mlp_out", h)
    x = x + h
    record("resid_post", x)
    return x
