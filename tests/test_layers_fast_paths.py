"""The forward pass's speed-ups (bench/README.md) against the plain array expressions they replace: the chunked
in-place float32 GELU, the attention in groups of heads, the in-place softmax and LayerNorm, the linear layers
split between threads.

Two kinds of comparison, each for its reason:
- elementwise work (GELU, softmax, LayerNorm) performs the same NumPy operations in the same order on the same
  values, so it is compared bit for bit (np.array_equal);
- a matrix product is a BLAS call, and two BLAS calls (another memory order, another number of rows, another
  kernel: OpenBLAS picks one per CPU) may sum in another order. Such results are compared within the rounding
  bound of a dot product: for K terms any summation order gives |fl(a.b) - a.b| <= gamma_K |a|.|b|, with
  gamma_K = K u / (1 - K u) and u the unit roundoff (Higham, "Accuracy and Stability of Numerical Algorithms",
  2nd ed., eq. 3.5), so two orders differ by at most 2 gamma_K |a|.|b| (``_assert_within_product_rounding``).
"""
import contextlib
import math
import os
import threading

import numpy as np
import pytest

from numpy_vit import layers


def _gelu_expression(x):  # GELU as one array expression: 0.5 x erfc(-x / sqrt 2), no chunks
    f = x.dtype.type
    return f(0.5) * x * layers._erfc_float32(x * f(-1.0 / math.sqrt(2.0)))


def _assert_within_product_rounding(got, expected, abs_product, terms):
    """``got`` and ``expected`` are two evaluations of one product whose exact value is within
    gamma_terms * ``abs_product`` (|a| @ |b|, elementwise) of each: they differ by at most twice that."""
    u = np.finfo(got.dtype).eps / 2
    gamma = terms * u / (1 - terms * u)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    excess = np.abs(got.astype(np.float64) - expected) - 2 * gamma * abs_product
    assert excess.max() <= 0, f"off by {excess.max():.3g} more than the rounding bound"


def _softmax_expression(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_chunked_gelu_equals_the_expression_bit_for_bit():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 0.5, -0.5, 5.0, -5.0, 9.0, -9.0, 13.0,
                        -13.0, 20.0, -20.0, 1e4, -1e4], np.float32)
    x = np.concatenate([special, (rng.standard_normal(100_003) * 4).astype(np.float32)])  # not a chunk multiple
    for chunk in (7, 4096, 1 << 20):  # several chunks, a ragged last one, and a single chunk
        got = layers._gelu_erf_float32_in_cache(x, chunk=chunk)
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.array_equal(got, _gelu_expression(x))
        assert np.array_equal(np.signbit(got), np.signbit(_gelu_expression(x)))  # signed zeros too
    batch = x[:3 * 5 * 64].reshape(3, 5, 64)
    assert np.array_equal(layers.gelu(batch), _gelu_expression(batch))


@pytest.mark.parametrize("threads", [2, 3])
def test_gelu_shared_between_threads_equals_one_thread_bit_for_bit(threads):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 197, 1000)) * 4).astype(np.float32)  # 591,000 values: 19 chunks, the last ragged
    one = layers._gelu_erf_float32_in_cache(x, threads=1)
    assert np.array_equal(one, _gelu_expression(x))
    for _ in range(3):  # which thread takes which chunk varies from call to call; the bits may not
        assert np.array_equal(layers._gelu_erf_float32_in_cache(x, chunk=4096, threads=threads), one)
        assert np.array_equal(layers._gelu_erf_float32_in_cache(x, threads=threads), one)


def test_num_threads_setting(monkeypatch):
    import numpy_vit as nv

    monkeypatch.setattr(layers, "_num_threads", None)
    monkeypatch.setenv("NUMPY_VIT_NUM_THREADS", "3")
    assert nv.get_num_threads() == 3
    monkeypatch.delenv("NUMPY_VIT_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert nv.get_num_threads() == 1
    nv.set_num_threads(2)
    assert nv.get_num_threads() == 2
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(nv.ArgumentError, match="set_num_threads: n must be an integer >= 1"):
            nv.set_num_threads(bad)
    assert nv.get_num_threads() == 2


def test_gelu_float32_close_to_the_exact_function():
    """Absolute error within ~1 float32 ulp of |x| (what the residual stream sees), float64 math.erfc as truth."""
    x = np.linspace(-12, 8, 8001).astype(np.float32)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
    got = layers.gelu(x).astype(np.float64)
    assert np.max(np.abs(got - exact) / np.maximum(1.0, np.abs(x))) < 2e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads, heads, cache_bytes", [
    (1, 3, None),  # one group of all heads, this thread
    (1, 5, 2 * 11 * 11 * 4),  # groups of 2 heads (1 in float64): the cache size sets the group
    (2, 3, None),  # groups of 2 and 1 heads shared between two threads
    (3, 5, None),
    (2, 7, 3 * 11 * 11 * 4),  # both limits at once, a last group smaller than the others
])
def test_attention_in_head_groups_equals_the_stacked_expression(monkeypatch, dtype, threads, heads, cache_bytes):
    if cache_bytes is not None:
        monkeypatch.setattr(layers, "_SCORES_IN_CACHE", cache_bytes)
    rng = np.random.default_rng(1)
    B, N, H, Dh = 2, 11, heads, 8
    qkv_out = rng.standard_normal((B, N, 3, H, Dh)).astype(dtype).transpose(2, 0, 3, 1, 4)  # views, as in attention
    q, k, v = qkv_out[0], qkv_out[1], qkv_out[2]
    scale = np.dtype(dtype).type(Dh ** -0.5)
    blas_before = layers._blas_threads().info()[0]["num_threads"] if layers.can_put_blas_on_one_thread() else None
    monkeypatch.setattr(layers, "_num_threads", threads)
    # the heads are shared between threads while BLAS is held to one thread, as ViT.forward holds it; each
    # product then runs on one BLAS thread: so does the reference
    blas = layers.blas_on_one_thread() if threads > 1 and blas_before is not None else contextlib.nullcontext()
    with blas:
        scores, pattern, z = layers.attend_in_head_groups(q, k, v, scale)
        expected_scores = (q * scale) @ k.swapaxes(-1, -2)
    if blas_before is not None:
        assert layers._blas_threads().info()[0]["num_threads"] == blas_before  # given back after the heads
    # each product within its rounding bound (K = Dh terms for the scores, N for the weighted values); the
    # softmax between them elementwise, so bit for bit on the scores this path computed
    _assert_within_product_rounding(scores, expected_scores, np.abs(q * scale) @ np.abs(k.swapaxes(-1, -2)), Dh)
    assert np.array_equal(pattern, _softmax_expression(scores))
    _assert_within_product_rounding(z, pattern @ v, pattern @ np.abs(v), N)
    assert z.shape == (B, H, N, Dh)
    assert layers.merge_heads(z).base is not None  # merging the heads is a view, no copy


def test_work_shared_between_threads_takes_every_job_once_and_reraises():
    done, lock = [], threading.Lock()

    def work(queue):
        for job in queue:
            with lock:
                done.append(job)

    layers._share_between_threads(work, range(50), threads=3)
    assert sorted(done) == list(range(50))

    def failing(queue):
        for job in queue:
            if job == 7:
                raise ValueError("job 7")

    with pytest.raises(ValueError, match="job 7"):
        layers._share_between_threads(failing, range(20), threads=2)


def test_in_place_softmax_and_layer_norm_equal_the_expressions():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 7, 33)) * 5).astype(np.float32)
    assert np.array_equal(layers.softmax(x), _softmax_expression(x))
    out = np.empty_like(x)
    assert layers.softmax(x, out=out) is out and np.array_equal(out, _softmax_expression(x))
    weight, bias = rng.standard_normal(33).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    expected = centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + 1e-6) * weight + bias
    before = x.copy()
    assert np.array_equal(layers.layer_norm(x, weight, bias, eps=1e-6), expected)
    assert np.array_equal(x, before)  # the input is not modified


@pytest.mark.parametrize("rows", [1, 2, 197])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_with_a_column_major_weight(rows, dtype):
    """The model keeps the blocks' linear weights column-major (model._stored): the same products within their
    rounding bound (64 inputs and the bias: 65 terms), including one row, where NumPy switches to gemv. Not bit
    for bit: OpenBLAS's kernels for a transposed and a plain weight may sum in different orders (its SkylakeX
    kernel does, in the last bits)."""
    from numpy_vit.model import _stored

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((48, 64)).astype(dtype)
    bias = rng.standard_normal(48).astype(dtype)
    x = rng.standard_normal((rows, 64)).astype(dtype)
    stored = _stored("blocks.0.mlp.fc1.weight", weight, dtype)
    assert stored.flags.f_contiguous and np.array_equal(stored, weight)
    assert _stored("head.weight", weight, dtype).flags.c_contiguous
    _assert_within_product_rounding(layers.linear(x, stored, bias), layers.linear(x, weight, bias),
                                    np.abs(x) @ np.abs(weight.T) + np.abs(bias), 64 + 1)


def _gelu_sum_in_child(queue):
    x = np.linspace(-6, 6, 200_000, dtype=np.float32)
    queue.put(float(layers._gelu_erf_float32_in_cache(x, chunk=4096, threads=2).sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is a POSIX call")
def test_gelu_threads_work_in_a_forked_child():
    """A child forked after the pool exists inherits no pool threads; it must make its own, not wait on the
    parent's forever (the demo draws its figures in forked processes: it hung here once)."""
    import multiprocessing

    x = np.linspace(-6, 6, 200_000, dtype=np.float32)
    expected = float(layers._gelu_erf_float32_in_cache(x, chunk=4096, threads=2).sum())  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_gelu_sum_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "the GELU in a forked child did not finish in 60 s"
    assert queue.get(timeout=5) == expected


# --- a batch in shards, one per thread (ViT._forward_in_shards) ---------------------------------------------

def _small_model(dtype=np.float32):
    import numpy_vit as nv

    return nv.ViT(nv.ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5),
                  seed=1, dtype=dtype)


def _blas_threads():
    import threadpoolctl

    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


def _assert_same_trace(got, expected, dtype):
    """Same names in the same order, shapes and dtypes; numbers within 1e-5 (float32) or 1e-12 (float64) of
    each array's scale: BLAS may block a product differently for another number of rows or threads."""
    assert list(got) == list(expected)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name in expected:
        a, b = got[name], expected[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert np.max(np.abs(a - b)) <= tol * max(1.0, float(np.max(np.abs(b)))), name
    return tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch,threads", [(2, 2), (3, 2), (5, 3), (2, 4)])
def test_batch_in_shards_equals_one_pass(monkeypatch, batch, threads, dtype):
    """Same names in the same order, same shapes and dtypes, and the same numbers up to BLAS's blocking of a
    product (the last bits). The parity tests check the sharded pass against timm as well."""
    import numpy_vit as nv

    model = _small_model(dtype)
    x = np.random.default_rng(4).standard_normal((batch, 3, 32, 32)).astype(dtype)
    monkeypatch.setattr(nv.layers, "_num_threads", 1)
    one_pass = model.forward(x)
    calls = []
    original = type(model)._forward_in_shards
    monkeypatch.setattr(type(model), "_forward_in_shards",
                        lambda self, *args: calls.append(args[-1]) or original(self, *args))
    monkeypatch.setattr(nv.layers, "_num_threads", threads)
    blas_before = _blas_threads()
    sharded = model.forward(x)
    assert calls == [min(batch, threads)]  # the shards really ran
    assert _blas_threads() == blas_before  # and BLAS got its threads back
    tol = _assert_same_trace(sharded, one_pass, dtype)
    assert model.last_trace is sharded and len(model.attention_maps) == 2
    assert model.attention_maps[1].shape == (batch, 3, 17, 17)
    only = model.forward(x, record=["blocks.1.attn.pattern", "logits"])
    assert list(only) == ["blocks.1.attn.pattern", "logits"]
    np.testing.assert_allclose(only["logits"], one_pass["logits"], rtol=0, atol=tol)


def test_a_failing_shard_raises_and_gives_blas_its_threads_back(monkeypatch):
    import numpy_vit as nv

    model = _small_model()
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    monkeypatch.setattr(nv.layers, "_num_threads", 2)
    original = type(model)._forward

    def failing(self, images, trace):
        if trace.rows.start > 0:  # the helper thread's shard
            raise RuntimeError("shard failed")
        return original(self, images, trace)

    monkeypatch.setattr(type(model), "_forward", failing)
    blas_before = _blas_threads()
    with pytest.raises(RuntimeError, match="shard failed"):
        model.forward(x)
    assert _blas_threads() == blas_before


def test_one_pass_when_blas_threads_cannot_be_set(monkeypatch):
    """Without threadpoolctl (or with a BLAS it does not know) a batch runs as one pass, as before."""
    import numpy_vit as nv

    model = _small_model()
    x = np.random.default_rng(6).standard_normal((3, 3, 32, 32)).astype(np.float32)
    monkeypatch.setattr(nv.layers, "_num_threads", 2)
    monkeypatch.setattr(nv.layers, "_blas_handle", [None])
    monkeypatch.setattr(type(model), "_forward_in_shards", lambda *args: pytest.fail("no shards without BLAS control"))
    assert model.forward(x)["logits"].shape == (3, 5)


# --- one image on several threads: the layers split their work (BLAS held to one thread) -------------------

def test_linear_split_between_threads():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 37, 24)).astype(np.float32)
    weight = np.asfortranarray(rng.standard_normal((40, 24)).astype(np.float32))
    bias = rng.standard_normal(40).astype(np.float32)
    expected = x @ weight.T + bias
    assert layers.matmul_threads() == 1  # outside blas_on_one_thread, BLAS spreads each product itself
    for threads in (2, 3, 4):
        got = layers._linear_split_between_threads(x.reshape(-1, 24), weight, bias, threads).reshape(2, 37, 40)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    rows = x.reshape(-1, 24)
    _assert_within_product_rounding(layers._linear_split_between_threads(rows, weight, None, 1), rows @ weight.T,
                                    np.abs(rows) @ np.abs(weight.T), 24)
    blas = layers.blas_on_one_thread() if layers.can_put_blas_on_one_thread() else contextlib.nullcontext()
    with blas:  # as ViT.forward holds it for one image on several threads (where BLAS's threads can be set)
        assert layers.matmul_threads() == (layers.get_num_threads() if layers.blas_is_held() else 1)
        for out_features in (1, 2, 40):  # fewer features than threads, too
            w = weight[:out_features]
            got = layers.linear(x, w, bias[:out_features])
            np.testing.assert_allclose(got, x @ w.T + bias[:out_features], rtol=0, atol=1e-5 * np.abs(expected).max())
    assert layers.matmul_threads() == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [2, 3])
def test_one_image_split_between_threads_equals_one_thread(monkeypatch, threads, dtype):
    """A single image on several threads: BLAS on one thread, each layer splits its output features (37
    tokens: enough rows to split) and its heads between the threads. The same trace as one thread, up to BLAS's
    blocking of a product."""
    import numpy_vit as nv

    model = nv.ViT(nv.ViTConfig(img_size=48, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5),
                   seed=2, dtype=dtype)
    x = np.random.default_rng(8).standard_normal((1, 3, 48, 48)).astype(dtype)
    monkeypatch.setattr(nv.layers, "_num_threads", 1)
    one_thread = model.forward(x)
    splits = []
    for name in ("_linear_split_between_threads", "_share_between_threads"):
        original = getattr(nv.layers, name)
        monkeypatch.setattr(nv.layers, name, lambda *a, _name=name, _f=original: splits.append(_name) or _f(*a))
    monkeypatch.setattr(nv.layers, "_num_threads", threads)
    blas_before = _blas_threads()
    split = model.forward(x)
    assert _blas_threads() == blas_before and not nv.layers.blas_is_held()
    assert splits.count("_linear_split_between_threads") == 1 + 2 * 4  # patch embedding; qkv, proj, fc1, fc2 x 2
    assert splits.count("_share_between_threads") >= 9 + 2  # those, and both layers' attention heads
    _assert_same_trace(split, one_thread, dtype)


def test_one_image_on_blas_threads_when_they_cannot_be_set(monkeypatch):
    import numpy_vit as nv

    model = nv.ViT(nv.ViTConfig(img_size=48, patch_size=8, embed_dim=48, depth=1, num_heads=3, num_classes=5))
    monkeypatch.setattr(nv.layers, "_num_threads", 2)
    monkeypatch.setattr(nv.layers, "_blas_handle", [None])
    monkeypatch.setattr(nv.layers, "_linear_split_between_threads", lambda *a: pytest.fail("BLAS has its threads"))
    assert model.forward(np.zeros((1, 3, 48, 48), np.float32))["logits"].shape == (1, 5)


def test_forward_passes_in_several_threads_at_once_give_blas_its_threads_back(monkeypatch):
    """A program may run forward passes in threads of its own: BLAS's thread count is one setting for the
    process, held to 1 while any pass needs it and given back when the last one ends."""
    import concurrent.futures

    import numpy_vit as nv

    model = nv.ViT(nv.ViTConfig(img_size=48, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5),
                   seed=3)
    rng = np.random.default_rng(9)
    batches = [rng.standard_normal((b, 3, 48, 48)).astype(np.float32) for b in (1, 2, 1, 3, 1, 2)]
    monkeypatch.setattr(nv.layers, "_num_threads", 1)
    expected = [model.forward(x)["logits"] for x in batches]
    monkeypatch.setattr(nv.layers, "_num_threads", 2)
    blas_before = _blas_threads()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda x: model.forward(x, record=["logits"])["logits"], batches * 3))
    assert _blas_threads() == blas_before and not nv.layers.blas_is_held()
    for a, b in zip(got, expected * 3):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(np.abs(b).max())))
