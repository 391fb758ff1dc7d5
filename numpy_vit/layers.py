"""The Vision Transformer's math as small pure functions of NumPy arrays.

Shapes: B batch, N tokens (prefix tokens + patches), P patches, D width, H heads,
Dh head width (D // H), M MLP width, C channels, p patch side, gh x gw the patch grid.

Weights follow torch's layout (``weight`` is [out, in]) so that a timm or HF state dict
can be wired in with ``**`` and no transposes. Every function computes in the dtype of
its input (float32 by default, float64 on request) and never upcasts.

``record`` is an optional callback ``record(name, array)``: the trace uses it to keep the
intermediates the forward pass computes anyway (lucidrains/vit-pytorch makes the softmax
its own step for the same reason).
"""
import concurrent.futures
import contextlib
import math
import os
import threading

import numpy as np

from .errors import ArgumentError


def _no_record(name, array):
    pass


def linear(x, weight, bias=None):  # [..., in] -> [..., out]
    """``x @ weight.T + bias`` as one matrix multiply over all leading axes (one BLAS call, not one per image)."""
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])  # [B*N, in]
    if x.shape[0] == 1:  # one row: NumPy calls gemv, whose summation order depends on the weight's memory order
        weight = np.ascontiguousarray(weight)  # (the model keeps some weights column-major: model._stored)
    threads = matmul_threads() if x.shape[0] >= _MIN_ROWS_TO_SPLIT else 1  # a few rows are not worth a thread
    if 1 < threads <= weight.shape[0]:  # several threads, each with at least one output feature
        return _linear_split_between_threads(x, weight, bias, threads).reshape(*lead, weight.shape[0])
    y = x @ weight.T  # [B*N, in] @ [in, out] -> [B*N, out]
    if bias is not None:
        y += bias
    return y.reshape(*lead, weight.shape[0])


_MIN_ROWS_TO_SPLIT = 16


def _linear_split_between_threads(x, weight, bias, threads):  # x [R, in] -> [R, out]
    """``x @ weight.T + bias`` with the output features cut into one block per thread, each block one BLAS
    call on one BLAS thread (``blas_on_one_thread``, which ``ViT.forward`` holds for a single image on
    several cores).

    Why: with BLAS's own threads, every step between two matrix multiplies (GELU, softmax) had one core to
    itself while the other BLAS thread spun, waiting for the next product; our threads could not use that
    core. With BLAS on one thread, the products and everything else are split between the same threads.
    By output features rather than by rows, because each thread then reads and packs only its own block of
    the weight: the four linear layers of a ViT-B block at batch 1 took 23.9 ms split by features, 26.9 ms
    by rows, 44.2 ms on one thread (bench/README.md).
    """
    y = np.empty((x.shape[0], weight.shape[0]), x.dtype)

    def multiply(queue):
        for block in queue:
            np.matmul(x, weight[block].T, out=y[:, block])  # [R, in] @ [in, block] -> [R, block]
            if bias is not None:
                y[:, block] += bias[block]

    _share_between_threads(multiply, equal_blocks(weight.shape[0], threads), threads)
    return y


def layer_norm(x, weight, bias, *, eps):  # [..., D] -> [..., D]
    """Ba et al. 2016: normalise each token to zero mean and unit variance (biased), then scale and shift."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean  # [..., D], a new array: the last three steps reuse it in place
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    out = np.divide(centred, np.sqrt(var + eps), out=centred)
    out *= weight
    out += bias
    return out


# --- erf and GELU ---------------------------------------------------------------------------
# NumPy has no erf. In float32 we use the Chebyshev-fitted erfc of Numerical Recipes (Press et al.,
# 2nd ed., sec. 6.2, "erfcc": relative error < 1.2e-7 everywhere, i.e. float32 resolution), plus a short
# Taylor series for erf near 0 where 1 - erfc cancels. In float64 a Taylor series near 0 and a continued
# fraction for the tail are summed to double precision.

_ERFC_CHEB = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
              0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _erfc_float32(x):
    """erfc(x) = t exp(-x^2 + c0 + c1 t + ... + c9 t^9) for x >= 0, t = 1 / (1 + x/2); erfc(-x) = 2 - erfc(x)."""
    one = x.dtype.type(1.0)
    a = np.abs(x)
    t = one / (one + x.dtype.type(0.5) * a)
    poly = x.dtype.type(_ERFC_CHEB[-1])
    for coefficient in _ERFC_CHEB[-2::-1]:  # Horner's rule
        poly = poly * t + x.dtype.type(coefficient)
    y = t * np.exp(poly - a * a)
    return np.where(x >= 0, y, 2 * one - y)


def _erf_series(x, terms):  # erf x = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
    x2 = x * x
    term = x.copy()  # (-1)^n x^(2n+1) / n!
    total = x.copy()
    for n in range(1, terms):
        term = term * (-x2) / x.dtype.type(n)
        total = total + term / x.dtype.type(2 * n + 1)
    return total * x.dtype.type(2.0 / math.sqrt(math.pi))


def _erfc_continued_fraction(a):  # a >= 2: erfc a = exp(-a^2)/sqrt(pi) / (a + 1/2 / (a + 1 / (a + 3/2 / (a + ...))))
    tail = np.zeros_like(a)
    for k in range(60, 0, -1):  # evaluated from the bottom up; 60 levels reach double precision for a >= 2
        tail = (k / 2.0) / (a + tail)
    return np.exp(-a * a) / math.sqrt(math.pi) / (a + tail)


def erfc_float64(x):
    """Complementary error function to double precision (float64 GELU, and the reference in tests)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    small = a < 2.0
    out = np.empty_like(x)
    out[small] = 1.0 - _erf_series(x[small], terms=40)  # at |x| = 2 the 40th term is < 1e-20
    tail = _erfc_continued_fraction(a[~small])
    out[~small] = np.where(x[~small] > 0, tail, 2.0 - tail)
    return out


def erf(x):
    """The error function, elementwise, in the dtype of x (float32: ~1e-7 relative; float64: ~1e-16)."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        return 1.0 - erfc_float64(x)
    x = x.astype(np.float32, copy=False)
    near_zero = np.abs(x) < 0.5
    return np.where(near_zero, _erf_series(x, terms=8), 1 - _erfc_float32(x))  # 8 terms: < 1e-8 at |x| = 0.5


def gelu(x, approximate="erf"):
    """Hendrycks & Gimpel 2016: x * Phi(x). "erf" is exact (timm, HF); "tanh" is the Flax approximation.

    Phi(x) = erfc(-x / sqrt 2) / 2 keeps full relative precision for large negative x, where 1 + erf(x)
    would cancel.
    """
    if approximate == "tanh":
        c = x.dtype.type(math.sqrt(2.0 / math.pi))
        return 0.5 * x * (1.0 + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))
    if x.dtype == np.float64:
        return 0.5 * x * erfc_float64(-x / math.sqrt(2.0))
    if x.dtype == np.float32:
        return _gelu_erf_float32_in_cache(x)  # the line below, bit for bit, 2-3.5x faster
    return x.dtype.type(0.5) * x * _erfc_float32(x * x.dtype.type(-1.0 / math.sqrt(2.0)))


def _gelu_erf_float32_in_cache(x, chunk=131072, threads=None):
    """``0.5 * x * _erfc_float32(-x / sqrt 2)`` with the same float32 operations in the same order, so the
    same bits, but evaluated chunk by chunk in place on four scratch buffers, on ``threads`` threads
    (default: ``get_num_threads()``).

    Why: the formula is about 30 elementwise passes (10 of them Horner steps of two each). As array
    expressions over the MLP's [B, N, M] activations each pass allocates a new array and streams it through
    memory; on chunks of 128k values (512 KiB a buffer) every pass runs on data already in the CPU cache.
    This made the GELU 1.9x faster at batch 1, 3.4x at batch 8 (bench/README.md). NumPy's ufuncs release
    the GIL, so the chunks can be shared between threads as torch shares its GELU between its threads. Each
    ufunc call takes the GIL back when it returns, and a thread that finds it held waits to be woken: with
    32k-value chunks two threads spent that long waiting that the GELU of one image ran only 1.2x faster
    than on one thread; 128k-value chunks make 4x fewer calls (1.65x; one thread: as fast as 32k).
    """
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    starts = range(0, flat.size, chunk)
    threads = min(get_num_threads() if threads is None else threads, len(starts))
    if threads <= 1:
        _gelu_float32_chunks(flat, out, iter(starts), chunk)
    else:
        _share_between_threads(lambda queue: _gelu_float32_chunks(flat, out, queue, chunk), starts, threads)
    return out.reshape(x.shape)


def _gelu_float32_chunks(flat, out, starts, chunk):
    """The body of ``_gelu_erf_float32_in_cache`` for the chunks beginning at each of ``starts`` (an
    iterator, maybe shared with other threads): flat -> out, each chunk written by the one thread that took it."""
    f = np.float32
    coefficients = [f(c) for c in _ERFC_CHEB]
    size = min(chunk, flat.size)
    u_buf, t_buf, y_buf, sign_buf = (np.empty(size, f) for _ in range(4))
    for start in starts:
        x_c = flat[start:start + chunk]
        n = x_c.size
        u, t, y, sign = u_buf[:n], t_buf[:n], y_buf[:n], sign_buf[:n]
        np.multiply(x_c, f(-1.0 / math.sqrt(2.0)), out=u)  # u = -x / sqrt 2, the argument of erfc
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


# --- threads -------------------------------------------------------------------------------------
# BLAS spreads every matrix multiply over its threads; NumPy runs each elementwise ufunc on one. So with
# several threads ``ViT.forward`` holds BLAS to one thread (``blas_on_one_thread``) and splits the work
# itself, as torch does: a batch of several images is cut into one shard per thread, each shard a whole
# forward pass (model.py); a single image's layers split their output features (``linear``), groups of heads
# (``attend_in_head_groups``) and GELU chunks between the threads.
# The count follows the usual environment variables, as BLAS and torch do, or set_num_threads().

_num_threads = None
_pools = {}
_in_shard = threading.local()  # .active is True in a thread that runs one shard of a batch: it stays on one thread
_blas_handle = []  # [threadpoolctl's handle on the loaded BLAS libraries, or None], filled on first use
_blas_hold = {"holders": 0, "limiter": None, "lock": threading.Lock()}  # see blas_on_one_thread


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
    """Threads numpy_vit uses (shards of a batch, or the split layers of one image): set_num_threads(n),
    else NUMPY_VIT_NUM_THREADS, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or MKL_NUM_THREADS, else the number of
    cores this process may use. 1 inside a shard, which is already one of the threads."""
    if getattr(_in_shard, "active", False):
        return 1
    return _num_threads if _num_threads is not None else _threads_from_environment()


def set_num_threads(n):
    """Like torch.set_num_threads: how many threads numpy_vit may use. 1 keeps every step on the calling
    thread except the matrix multiplies, which BLAS spreads over its own threads (OPENBLAS_NUM_THREADS, or
    threadpoolctl). On a machine whose cores are busy, 1 is faster."""
    global _num_threads
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ArgumentError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    _num_threads = int(n)


def _blas_threads():
    """threadpoolctl's handle on the BLAS libraries loaded in this process, or None where threadpoolctl
    (installed with scikit-learn) is missing or finds no BLAS whose thread count it can set."""
    if not _blas_handle:
        try:
            import threadpoolctl

            handle = threadpoolctl.ThreadpoolController().select(user_api="blas")
            _blas_handle.append(handle if len(handle) else None)
        except Exception:  # not installed, or a platform it does not know: ViT.forward makes one pass
            _blas_handle.append(None)
    return _blas_handle[0]


def can_put_blas_on_one_thread():
    return _blas_threads() is not None


@contextlib.contextmanager
def blas_on_one_thread():
    """Within the block, every BLAS call (from any thread) runs on the calling thread alone, so the layers
    split their matrix multiplies between numpy_vit's threads instead (``matmul_threads``). BLAS's thread
    count is one setting for the whole process: the first block to enter sets it to 1 and the last to leave
    gives BLAS its threads back, so forward passes running at once in several threads of a program do not
    undo each other's setting."""
    with _blas_hold["lock"]:
        if _blas_hold["holders"] == 0:
            _release_openblas_control()
            _blas_hold["limiter"] = _blas_threads().limit(limits=1)
            _release_openblas_control()
        _blas_hold["holders"] += 1
    try:
        yield
    finally:
        with _blas_hold["lock"]:
            _blas_hold["holders"] -= 1
            if _blas_hold["holders"] == 0:
                _release_openblas_control()
                _blas_hold["limiter"].restore_original_limits()
                _release_openblas_control()


def _release_openblas_control():
    """threadpoolctl (3.6 and later) lets one Python thread at a time set OpenBLAS's process-wide thread count
    and ignores the others; the last pass to leave ``blas_on_one_thread`` may run in another thread than the
    first, so numpy_vit, which counts its holders itself, hands that control back around each change."""
    try:
        from threadpoolctl import OpenBLASController

        OpenBLASController.clear_controlling_thread(force=True)
    except (ImportError, AttributeError):  # an older threadpoolctl: any thread may set the count
        pass


def blas_is_held():
    return _blas_hold["holders"] > 0


def matmul_threads():
    """Threads a layer may split its matrix multiplies between: get_num_threads() while BLAS is held to one
    thread (``blas_on_one_thread``), else 1, because BLAS spreads each product over its own threads."""
    return get_num_threads() if blas_is_held() else 1


def run_in_shard(function, *args):
    """``function(*args)`` with numpy_vit's own threading off in this thread (it is one of the threads already)."""
    _in_shard.active = True
    try:
        return function(*args)
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


def _share_between_threads(work, jobs, threads):
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


def softmax(x, axis=-1, out=None):
    """exp(x - max) / sum: subtracting the row maximum changes nothing mathematically and prevents overflow.
    ``out``: the array to write into (may be x itself); by default a new one."""
    e = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)  # then exponentiated and normalised in place
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


# --- the transformer's pieces -----------------------------------------------------------------

def patchify(images, patch_size):  # [B, C, H, W] -> [B, P, C*p*p]
    """Cut the image into non-overlapping p x p patches, row by row, each flattened in (channel, row, col)
    order: the order of a conv weight [D, C, p, p], so the patch embedding is one matrix multiply."""
    B, C, H, W = images.shape
    p = patch_size
    gh, gw = H // p, W // p
    x = images.reshape(B, C, gh, p, gw, p)  # [B, C, gh, p, gw, p]
    x = x.transpose(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
    return x.reshape(B, gh * gw, C * p * p)  # [B, P, C*p*p]


def split_heads(x, num_heads):  # [B, N, D] -> [B, H, N, Dh]
    B, N, D = x.shape
    return x.reshape(B, N, num_heads, D // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x):  # [B, H, N, Dh] -> [B, N, D]
    B, H, N, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, N, H * Dh)


_SCORES_IN_CACHE = 1 << 20  # bytes of [N, N] scores in one group of heads: about one core's L2 cache


def attend_in_head_groups(q, k, v, scale):  # q, k, v [B, H, N, Dh] -> scores, pattern, z
    """The three lines of attention (see ``attention``), evaluated a group of heads of one image at a time,
    the groups shared between ``matmul_threads()`` threads.

    Why: written over all heads at once, ``softmax(scores)`` makes five passes over a [B, H, N, N] array
    (15 MB for ViT-B at batch 8) that no longer sits in the CPU cache after the product that wrote it; a
    group's scores (at most ``_SCORES_IN_CACHE`` bytes: 6 heads of ViT-B, 930 KB) do, so the softmax and
    the product with v run while they are still there. Each product is the same BLAS call per head that
    NumPy's stacked ``@`` makes, and the softmax the same operations, so the numbers are the same bits.
    With several threads (one image on a multi-core machine) each thread takes whole groups on one BLAS
    thread: BLAS would otherwise split every small [N, Dh] x [Dh, N] product between its threads, and the
    softmax would run on one (2.9 against 4.9 ms a ViT-B layer at batch 1 on two cores, bench/README.md).
    ``z`` is written token-major ([B, N, H, Dh]) and returned as a [B, H, N, Dh] view of it, so that
    merging the heads afterwards is a free reshape. Returns scores, pattern [B, H, N, N] and z [B, H, N, Dh].
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
            # [G, N, Dh] @ [G, Dh, N] -> [G, N, N]; softmax; [G, N, N] @ [G, N, Dh] -> [G, N, Dh] (token-major)
            np.matmul(qs, k[b, heads].transpose(0, 2, 1), out=scores[b, heads])
            softmax(scores[b, heads], axis=-1, out=pattern[b, heads])
            np.matmul(pattern[b, heads], v[b, heads], out=z[b, :, heads].transpose(1, 0, 2))

    if threads == 1:
        attend(iter(jobs))
    else:
        _share_between_threads(attend, jobs, threads)
    return scores, pattern, z.transpose(0, 2, 1, 3)


def attention(x, qkv, proj, *, num_heads, record=_no_record):  # [B, N, D] -> [B, N, D]
    """Multi-head self-attention (Vaswani et al. 2017, eq. 1): softmax(q k^T / sqrt(Dh)) v, per head.

    ``qkv`` holds q, k and v stacked along the output axis ([3D, D], rows laid out (q|k|v, head, Dh)) as
    timm stores them. The query is scaled before the product, as timm does, so float32 rounding matches.
    """
    B, N, D = x.shape
    Dh = D // num_heads
    qkv_out = linear(x, **qkv)  # [B, N, 3D]
    qkv_out = qkv_out.reshape(B, N, 3, num_heads, Dh).transpose(2, 0, 3, 1, 4)  # [3, B, H, N, Dh]
    q, k, v = qkv_out[0], qkv_out[1], qkv_out[2]  # each [B, H, N, Dh]
    record("q", q)
    record("k", k)
    record("v", v)
    # scores = (q * Dh^-1/2) @ k^T    [B, H, N, Dh] @ [B, H, Dh, N] -> [B, H, N, N]
    # pattern = softmax(scores)       [B, H, N, N], each row a distribution over the N keys
    # z = pattern @ v                 [B, H, N, N] @ [B, H, N, Dh] -> [B, H, N, Dh]
    scores, pattern, z = attend_in_head_groups(q, k, v, scale=x.dtype.type(Dh ** -0.5))
    record("scores", scores)
    record("pattern", pattern)
    record("z", z)
    return linear(merge_heads(z), **proj)  # [B, N, D]


def mlp_block(x, fc1, fc2, *, gelu_approximate="erf", record=_no_record):  # [B, N, D] -> [B, N, D]
    h = linear(x, **fc1)  # [B, N, M]
    record("pre", h)
    h = gelu(h, gelu_approximate)  # [B, N, M]
    record("post", h)
    return linear(h, **fc2)  # [B, N, D]


def block(x, norm1, attn, norm2, mlp, ls1=None, ls2=None, *, num_heads, eps, gelu_approximate="erf",
          record=_no_record):  # [B, N, D] -> [B, N, D]
    """One pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x)); optional layer scale (CaiT)."""
    record("resid_pre", x)
    h = layer_norm(x, **norm1, eps=eps)
    record("ln1", h)
    h = attention(h, **attn, num_heads=num_heads, record=lambda name, a: record("attn." + name, a))
    if ls1 is not None:
        h = h * ls1["gamma"]
    record("attn_out", h)
    x = x + h
    record("resid_mid", x)
    h = layer_norm(x, **norm2, eps=eps)
    record("ln2", h)
    h = mlp_block(h, **mlp, gelu_approximate=gelu_approximate, record=lambda name, a: record("mlp." + name, a))
    if ls2 is not None:
        h = h * ls2["gamma"]
    record("mlp_out", h)
    x = x + h
    record("resid_post", x)
    return x
