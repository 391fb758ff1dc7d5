"""The forward pass's speed-ups (bench/README.md) compute the same bits as the plain array expressions they
replace: the chunked in-place float32 GELU, the head-by-head attention, the in-place softmax and LayerNorm.
Exact equality (np.array_equal), not a tolerance: each optimisation performs the same float operations in
the same order."""
import math
import os

import numpy as np
import pytest

from numpy_vit import layers


def _gelu_expression(x):  # the formula as written in layers.gelu before it was chunked
    f = x.dtype.type
    return f(0.5) * x * layers._erfc_float32(x * f(-1.0 / math.sqrt(2.0)))


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
def test_head_by_head_attention_equals_the_stacked_expression(dtype):
    rng = np.random.default_rng(1)
    B, N, H, Dh = 2, 11, 3, 8
    qkv_out = rng.standard_normal((B, N, 3, H, Dh)).astype(dtype).transpose(2, 0, 3, 1, 4)  # views, as in attention
    q, k, v = qkv_out[0], qkv_out[1], qkv_out[2]
    scale = np.dtype(dtype).type(Dh ** -0.5)
    scores, pattern, z = layers.attend_head_by_head(q, k, v, scale)
    expected_scores = (q * scale) @ k.swapaxes(-1, -2)
    expected_pattern = _softmax_expression(expected_scores)
    assert np.array_equal(scores, expected_scores)
    assert np.array_equal(pattern, expected_pattern)
    assert np.array_equal(z, expected_pattern @ v)
    assert z.shape == (B, H, N, Dh)
    assert layers.merge_heads(z).base is not None  # merging the heads is a view, no copy


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
def test_linear_same_bits_for_a_column_major_weight(rows, dtype):
    """The model keeps the blocks' linear weights column-major (model._stored): same products, bit for bit,
    including one row, where NumPy switches to gemv."""
    from numpy_vit.model import _stored

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((48, 64)).astype(dtype)
    bias = rng.standard_normal(48).astype(dtype)
    x = rng.standard_normal((rows, 64)).astype(dtype)
    stored = _stored("blocks.0.mlp.fc1.weight", weight, dtype)
    assert stored.flags.f_contiguous and np.array_equal(stored, weight)
    assert _stored("head.weight", weight, dtype).flags.c_contiguous
    assert np.array_equal(layers.linear(x, stored, bias), layers.linear(x, weight, bias))


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
    assert list(sharded) == list(one_pass)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name in one_pass:
        a, b = sharded[name], one_pass[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert np.max(np.abs(a - b)) <= tol * max(1.0, float(np.max(np.abs(b)))), name
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
