"""numpy_vit/fast.py's speed-ups against the reference functions of numpy_vit/layers.py they accelerate: the
chunked in-place float32 GELU, the attention in groups of heads, the in-place softmax and LayerNorm, the
linear layers split between threads, a batch in shards, and the threads and BLAS setting around them.

Two kinds of comparison, each for its reason:
- elementwise work (GELU, softmax, LayerNorm) performs the same NumPy operations in the same order on the same
  values, so it is compared bit for bit (np.array_equal);
- a matrix product is a BLAS call, and two BLAS calls (another memory order, another number of rows, another
  kernel: OpenBLAS picks one per CPU) may sum in another order. Such results are compared within the rounding
  bound of a dot product: for K terms any summation order gives |fl(a.b) - a.b| <= gamma_K |a|.|b|, with
  gamma_K = K u / (1 - K u) and u the unit roundoff (Higham, "Accuracy and Stability of Numerical Algorithms",
  2nd ed., eq. 3.5), so two orders differ by at most 2 gamma_K |a|.|b| (``_assert_within_product_rounding``).
  Whole forward passes, where such differences pass through later layers, are compared within 1e-5 (float32)
  or 1e-12 (float64) of each array's scale (``_assert_same_trace``).
"""
import concurrent.futures
import contextlib
import os
import threading

import numpy as np
import pytest

import numpy_vit as nv
from numpy_vit import fast, layers


def _gamma(terms, dtype):
    u = np.finfo(dtype).eps / 2
    return terms * u / (1 - terms * u)


def _assert_within_product_rounding(got, expected, abs_product, terms):
    """``got`` and ``expected`` are two evaluations of one product whose exact value is within
    gamma_terms * ``abs_product`` (|a| @ |b|, elementwise) of each: they differ by at most twice that."""
    assert got.shape == expected.shape and got.dtype == expected.dtype
    excess = np.abs(got.astype(np.float64) - expected) - 2 * _gamma(terms, got.dtype) * abs_product
    assert excess.max() <= 0, f"off by {excess.max():.3g} more than the rounding bound"


def _blas_threads():
    import threadpoolctl

    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


def _held_if_threads(threads):
    """BLAS on one thread where several threads share the products, as ``fast.block`` holds it."""
    return fast.blas_on_one_thread() if threads > 1 else contextlib.nullcontext()


# --- elementwise: bit for bit ----------------------------------------------------------------------------

def test_chunked_gelu_equals_the_reference_bit_for_bit():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 0.5, -0.5, 5.0, -5.0, 9.0, -9.0, 13.0,
                        -13.0, 20.0, -20.0, 1e4, -1e4], np.float32)
    x = np.concatenate([special, (rng.standard_normal(100_003) * 4).astype(np.float32)])  # not a chunk multiple
    expected = layers.gelu(x)
    for chunk in (7, 4096, 1 << 20):  # several chunks, a ragged last one, and a single chunk
        got = fast.gelu_float32_in_cache(x, chunk=chunk)
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.array_equal(got, expected)
        assert np.array_equal(np.signbit(got), np.signbit(expected))  # signed zeros too
    batch = x[:3 * 5 * 64].reshape(3, 5, 64)
    assert np.array_equal(fast.gelu(batch), layers.gelu(batch))
    x64 = x.astype(np.float64)
    assert np.array_equal(fast.gelu(x64), layers.gelu(x64))  # float64 and the tanh form: the reference itself
    assert np.array_equal(fast.gelu(x, "tanh"), layers.gelu(x, "tanh"))


@pytest.mark.parametrize("threads", [2, 3])
def test_gelu_shared_between_threads_equals_the_reference_bit_for_bit(threads):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 197, 1000)) * 4).astype(np.float32)  # 591,000 values: 5 chunks, the last ragged
    expected = layers.gelu(x)
    assert np.array_equal(fast.gelu_float32_in_cache(x, threads=1), expected)
    for _ in range(3):  # which thread takes which chunk varies from call to call; the bits may not
        assert np.array_equal(fast.gelu_float32_in_cache(x, chunk=4096, threads=threads), expected)
        assert np.array_equal(fast.gelu_float32_in_cache(x, threads=threads), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_softmax_and_layer_norm_equal_the_reference_bit_for_bit(dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 7, 33)) * 5).astype(dtype)
    before = x.copy()
    assert np.array_equal(fast.softmax(x), layers.softmax(x))
    out = np.empty_like(x)
    assert fast.softmax(x, out=out) is out and np.array_equal(out, layers.softmax(x))
    weight, bias = rng.standard_normal(33).astype(dtype), rng.standard_normal(33).astype(dtype)
    assert np.array_equal(fast.layer_norm(x, weight, bias, eps=1e-6), layers.layer_norm(x, weight, bias, eps=1e-6))
    assert np.array_equal(x, before)  # the input is not modified
    in_place = x.copy()
    assert fast.softmax(in_place, out=in_place) is in_place and np.array_equal(in_place, layers.softmax(x))


# --- products: within their rounding bound ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads, heads, cache_bytes", [
    (1, 3, None),  # one group of all heads, this thread
    (1, 5, 2 * 11 * 11 * 4),  # groups of 2 heads (1 in float64): the cache size sets the group
    (2, 3, None),  # groups of 2 and 1 heads shared between two threads
    (3, 5, None),
    (2, 7, 3 * 11 * 11 * 4),  # both limits at once, a last group smaller than the others
])
def test_attention_in_head_groups_equals_the_reference(monkeypatch, dtype, threads, heads, cache_bytes):
    """The three lines against ``layers.attention``'s recorded ones on the same q, k, v (a qkv weight of unit
    rows copies x's values exactly): the scores within the rounding bound of their Dh terms, the pattern bit for
    bit the reference softmax of those scores, z within the bound of its N terms plus what the patterns'
    difference carries through (|dP| @ |v|); the whole attention within 1e-5 (float32) / 1e-12 of its scale."""
    if cache_bytes is not None:
        monkeypatch.setattr(fast, "_SCORES_IN_CACHE", cache_bytes)
    monkeypatch.setattr(fast, "_num_threads", threads)
    rng = np.random.default_rng(1)
    B, N, H, Dh = 2, 11, heads, 8
    D = H * Dh
    x = rng.standard_normal((B, N, D)).astype(dtype)
    qkv = dict(weight=np.concatenate([np.eye(D)[rng.permutation(D)] for _ in range(3)]).astype(dtype),
               bias=None)  # q, k, v: three permutations of x's columns, exact in any summation order
    proj = dict(weight=rng.standard_normal((D, D)).astype(dtype), bias=rng.standard_normal(D).astype(dtype))
    ref, got = {}, {}
    expected = layers.attention(x, qkv, proj, num_heads=H, record=ref.__setitem__)
    blas_before = _blas_threads()
    out = fast.attention(x, qkv, proj, num_heads=H, record=got.__setitem__)
    assert _blas_threads() == blas_before and not fast.blas_is_held()  # given back after the heads
    assert list(got) == list(ref)
    for name in ("q", "k", "v"):
        assert np.array_equal(got[name], ref[name])
    q, k, v = ref["q"], ref["k"], ref["v"]
    scale = np.dtype(dtype).type(Dh ** -0.5)
    _assert_within_product_rounding(got["scores"], ref["scores"], np.abs(q * scale) @ np.abs(k.swapaxes(-1, -2)), Dh)
    assert np.array_equal(got["pattern"], layers.softmax(got["scores"]))
    pattern_difference = np.abs(got["pattern"].astype(np.float64) - ref["pattern"])
    bound = 2 * _gamma(N, dtype) * (np.maximum(got["pattern"], ref["pattern"]) @ np.abs(v)) \
        + pattern_difference @ np.abs(v)
    assert np.all(np.abs(got["z"].astype(np.float64) - ref["z"]) <= bound)
    assert got["z"].shape == (B, H, N, Dh)
    assert np.shares_memory(got["z"].transpose(0, 2, 1, 3).reshape(B, N, D), got["z"])  # merging heads: no copy
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=0, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("rows", [1, 2, 197])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_with_a_column_major_weight(rows, dtype):
    """The model keeps the blocks' linear weights column-major (model._stored): ``fast.linear`` on them gives
    ``layers.linear``'s products on the row-major weight within their rounding bound (64 inputs and the bias:
    65 terms), including one row, where NumPy switches to gemv. Not bit for bit: OpenBLAS's kernels for a
    transposed and a plain weight may sum in different orders (its SkylakeX kernel does, in the last bits)."""
    from numpy_vit.model import _stored

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((48, 64)).astype(dtype)
    bias = rng.standard_normal(48).astype(dtype)
    x = rng.standard_normal((rows, 64)).astype(dtype)
    stored = _stored("blocks.0.mlp.fc1.weight", weight, dtype)
    assert stored.flags.f_contiguous and np.array_equal(stored, weight)
    assert _stored("head.weight", weight, dtype).flags.c_contiguous
    abs_product = np.abs(x) @ np.abs(weight.T) + np.abs(bias)
    for linear in (fast.linear, layers.linear):
        _assert_within_product_rounding(linear(x, stored, bias), layers.linear(x, weight, bias), abs_product, 65)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_linear_split_between_threads_equals_the_reference(monkeypatch, threads):
    """Within the rounding bound of the 24 inputs and the bias (25 terms), for more and fewer output features
    than threads and for bias=None; split only while BLAS is on one thread, and BLAS gets its threads back."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 37, 24)).astype(np.float32)
    weight = np.asfortranarray(rng.standard_normal((40, 24)).astype(np.float32))
    bias = rng.standard_normal(40).astype(np.float32)
    rows = x.reshape(-1, 24)
    with _held_if_threads(threads):
        got = fast.linear_split_between_threads(rows, weight, bias, threads).reshape(2, 37, 40)
    _assert_within_product_rounding(got, layers.linear(x, weight, bias),
                                    np.abs(x) @ np.abs(weight.T) + np.abs(bias), 25)
    monkeypatch.setattr(fast, "_num_threads", threads)
    assert fast.matmul_threads() == (threads if fast.can_put_blas_on_one_thread() else 1)
    blas_before = _blas_threads()
    for out_features in (1, 2, 40):
        w, b = weight[:out_features], bias[:out_features]
        for bias_or_none in (b, None):
            abs_product = np.abs(x) @ np.abs(w.T) + (0 if bias_or_none is None else np.abs(bias_or_none))
            _assert_within_product_rounding(fast.linear(x, w, bias_or_none), layers.linear(x, w, bias_or_none),
                                            abs_product, 25)
    assert _blas_threads() == blas_before and not fast.blas_is_held()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_block_and_encoder_equal_the_reference(monkeypatch, dtype):
    """``fast.mlp_block``, ``fast.block`` and ``fast.encoder`` on two threads record the same names as ``layers``'
    and the same numbers within 1e-5 (float32) / 1e-12 (float64) of each array's scale."""
    model = _small_model(dtype)
    blocks = [model.param_tree["blocks"][str(i)] for i in range(2)]
    x = np.random.default_rng(10).standard_normal((3, 17, 48)).astype(dtype)
    options = dict(num_heads=3, eps=1e-6, gelu_approximate="erf")
    monkeypatch.setattr(fast, "_num_threads", 2)
    for name, args in (("block", blocks[0]), ("encoder", dict(blocks=blocks))):  # encoder: a plain callback, one pass
        ref, got = {}, {}
        expected = getattr(layers, name)(x, **args, **options, record=ref.__setitem__)
        _assert_same_arrays(getattr(fast, name)(x, **args, **options, record=got.__setitem__), expected, dtype)
        assert list(got) == list(ref) and len(ref) == (15 if name == "block" else 30)
        for key in ref:
            _assert_same_arrays(got[key], ref[key], dtype, key)
    h = np.random.default_rng(11).standard_normal((2, 5, 48)).astype(dtype)
    _assert_same_arrays(fast.mlp_block(h, **blocks[0]["mlp"]), layers.mlp_block(h, **blocks[0]["mlp"]), dtype)


# --- threads, BLAS, shards ----------------------------------------------------------------------------------

def test_num_threads_setting(monkeypatch):
    monkeypatch.setattr(fast, "_num_threads", None)
    monkeypatch.setenv("NUMPY_VIT_NUM_THREADS", "3")
    assert nv.get_num_threads() == 3
    monkeypatch.delenv("NUMPY_VIT_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert nv.get_num_threads() == 1
    nv.set_num_threads(2)
    assert nv.get_num_threads() == 2 and fast.get_num_threads() == 2
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(nv.ArgumentError, match="set_num_threads: n must be an integer >= 1"):
            nv.set_num_threads(bad)
    assert nv.get_num_threads() == 2
    assert fast.run_in_shard(fast.get_num_threads) == 1 and fast.get_num_threads() == 2  # a shard is one thread


def test_work_shared_between_threads_takes_every_job_once_and_reraises():
    done, lock = [], threading.Lock()

    def work(queue):
        for job in queue:
            with lock:
                done.append(job)

    fast.share_between_threads(work, range(50), threads=3)
    assert sorted(done) == list(range(50))

    def failing(queue):
        for job in queue:
            if job == 7:
                raise ValueError("job 7")

    with pytest.raises(ValueError, match="job 7"):
        fast.share_between_threads(failing, range(20), threads=2)


def test_blas_on_one_thread_nests_and_gives_blas_back(monkeypatch):
    """One process-wide setting: held by the first to enter, given back by the last to leave, entered from
    several threads at once; nothing where BLAS's threads cannot be set."""
    if not fast.can_put_blas_on_one_thread():
        pytest.skip("threadpoolctl finds no BLAS whose threads it can set")
    before = _blas_threads()
    with fast.blas_on_one_thread():
        assert set(_blas_threads()) == {1} and fast.blas_is_held()
        with fast.blas_on_one_thread():
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {1}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # others enter and leave while this one holds
            for _ in pool.map(lambda _: _enter_and_leave(), range(8)):
                pass
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before and not fast.blas_is_held()
    monkeypatch.setattr(fast, "_blas_handle", [None])
    with fast.blas_on_one_thread():  # no threadpoolctl: nothing to hold, and no error
        assert _blas_threads() == before
    assert not fast.blas_is_held()


def _enter_and_leave():
    with fast.blas_on_one_thread():
        assert set(_blas_threads()) == {1}


def _small_model(dtype=np.float32, img_size=32, depth=2, seed=1):
    return nv.ViT(nv.ViTConfig(img_size=img_size, patch_size=8, embed_dim=48, depth=depth, num_heads=3,
                               num_classes=5), seed=seed, dtype=dtype)


def _assert_same_arrays(a, b, dtype, name=""):
    assert a.shape == b.shape and a.dtype == b.dtype, name
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.max(np.abs(a - b)) <= tol * max(1.0, float(np.max(np.abs(b)))), name


def _assert_same_trace(got, expected, dtype):
    """Same names in the same order, shapes and dtypes; numbers within 1e-5 (float32) or 1e-12 (float64) of
    each array's scale: BLAS may block a product differently for another number of rows or threads."""
    assert list(got) == list(expected)
    for name in expected:
        _assert_same_arrays(got[name], expected[name], dtype, name)


def test_one_thread_runs_the_reference_functions(monkeypatch):
    model = _small_model()
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    monkeypatch.setattr(fast, "_num_threads", 1)
    assert not fast.uses_threads()
    for name in ("encoder", "block", "linear", "layer_norm", "attention", "gelu"):
        monkeypatch.setattr(fast, name, lambda *a, **k: pytest.fail("one thread runs numpy_vit.layers"))
    assert model.forward(x)["logits"].shape == (2, 5)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_model_setting_chooses_the_path(monkeypatch, threads):
    """``model.speedups``: None (fast on several threads), True (fast on one too), False (the reference on any)."""
    model = _small_model()
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    monkeypatch.setattr(fast, "_num_threads", threads)
    reference = layers.encoder
    ran = []
    monkeypatch.setattr(fast, "encoder", lambda *a, _f=fast.encoder, **k: ran.append("fast") or _f(*a, **k))
    monkeypatch.setattr(layers, "encoder", lambda *a, **k: ran.append("layers") or reference(*a, **k))
    expected = {None: "fast" if fast.uses_threads() else "layers", True: "fast", False: "layers"}
    results = {}
    for setting in (None, True, False):
        model.speedups = setting
        ran.clear()
        results[setting] = model.forward(x)
        assert ran[0] == expected[setting], setting
    _assert_same_trace(results[True], results[False], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch,threads", [(2, 2), (3, 2), (5, 3), (2, 4)])
def test_batch_in_shards_equals_the_reference(monkeypatch, batch, threads, dtype):
    """Same names in the same order, same shapes and dtypes, and the same numbers up to BLAS's blocking of a
    product (the last bits). The parity tests check the sharded pass against timm as well."""
    model = _small_model(dtype)
    x = np.random.default_rng(4).standard_normal((batch, 3, 32, 32)).astype(dtype)
    monkeypatch.setattr(fast, "_num_threads", 1)
    reference = model.forward(x)
    calls = []
    original = fast.encoder_in_shards
    monkeypatch.setattr(fast, "encoder_in_shards",
                        lambda x, shards, *a, **k: calls.append(shards) or original(x, shards, *a, **k))
    monkeypatch.setattr(fast, "_num_threads", threads)
    blas_before = _blas_threads()
    sharded = model.forward(x)
    if fast.can_put_blas_on_one_thread():
        assert calls == [min(batch, threads)]  # the shards really ran
    assert _blas_threads() == blas_before and not fast.blas_is_held()  # and BLAS got its threads back
    _assert_same_trace(sharded, reference, dtype)
    assert model.last_trace is sharded and len(model.attention_maps) == 2
    assert model.attention_maps[1].shape == (batch, 3, 17, 17)
    only = model.forward(x, record=["blocks.1.attn.pattern", "logits"])
    assert list(only) == ["blocks.1.attn.pattern", "logits"]
    _assert_same_arrays(only["logits"], reference["logits"], dtype)


def test_a_failing_shard_raises_and_gives_blas_its_threads_back(monkeypatch):
    model = _small_model()
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    monkeypatch.setattr(fast, "_num_threads", 2)
    original = fast.encoder

    def failing(x, blocks, *, record, **kwargs):
        if getattr(record.trace, "rows", slice(0, 0)).start > 0:  # the helper thread's shard
            raise RuntimeError("shard failed")
        return original(x, blocks, record=record, **kwargs)

    monkeypatch.setattr(fast, "encoder", failing)
    blas_before = _blas_threads()
    if fast.can_put_blas_on_one_thread():
        with pytest.raises(RuntimeError, match="shard failed"):
            model.forward(x)
    assert _blas_threads() == blas_before and not fast.blas_is_held()


def test_reference_functions_when_blas_threads_cannot_be_set(monkeypatch):
    """Without threadpoolctl (or with a BLAS it does not know) the reference functions run, on BLAS's threads."""
    model = _small_model(img_size=48, depth=1)
    monkeypatch.setattr(fast, "_num_threads", 2)
    monkeypatch.setattr(fast, "_blas_handle", [None])
    assert not fast.uses_threads() and fast.matmul_threads() == 1
    monkeypatch.setattr(fast, "encoder", lambda *a, **k: pytest.fail("BLAS has its threads"))
    monkeypatch.setattr(fast, "linear_split_between_threads", lambda *a: pytest.fail("BLAS has its threads"))
    for batch in (1, 3):
        assert model.forward(np.zeros((batch, 3, 48, 48), np.float32))["logits"].shape == (batch, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [2, 3])
def test_one_image_split_between_threads_equals_the_reference(monkeypatch, threads, dtype):
    """A single image on several threads: BLAS on one thread, each layer splits its output features (37
    tokens: enough rows to split) and its heads between the threads. The same trace as the reference functions
    on one thread, up to BLAS's blocking of a product."""
    if not fast.can_put_blas_on_one_thread():
        pytest.skip("threadpoolctl finds no BLAS whose threads it can set")
    model = _small_model(dtype, img_size=48, seed=2)
    x = np.random.default_rng(8).standard_normal((1, 3, 48, 48)).astype(dtype)
    monkeypatch.setattr(fast, "_num_threads", 1)
    reference = model.forward(x)
    splits = []
    for name in ("linear_split_between_threads", "share_between_threads"):
        original = getattr(fast, name)
        monkeypatch.setattr(fast, name, lambda *a, _name=name, _f=original: splits.append(_name) or _f(*a))
    monkeypatch.setattr(fast, "_num_threads", threads)
    blas_before = _blas_threads()
    split = model.forward(x)
    assert _blas_threads() == blas_before and not fast.blas_is_held()
    assert splits.count("linear_split_between_threads") == 1 + 2 * 4  # patch embedding; qkv, proj, fc1, fc2 x 2
    assert splits.count("share_between_threads") >= 9 + 2  # those, and both layers' attention heads
    _assert_same_trace(split, reference, dtype)


def test_forward_passes_in_several_threads_at_once_give_blas_its_threads_back(monkeypatch):
    """A program may run forward passes in threads of its own: BLAS's thread count is one setting for the
    process, held to 1 while any pass needs it and given back when the last one ends."""
    model = _small_model(img_size=48, seed=3)
    rng = np.random.default_rng(9)
    batches = [rng.standard_normal((b, 3, 48, 48)).astype(np.float32) for b in (1, 2, 1, 3, 1, 2)]
    monkeypatch.setattr(fast, "_num_threads", 1)
    expected = [model.forward(x)["logits"] for x in batches]
    monkeypatch.setattr(fast, "_num_threads", 2)
    blas_before = _blas_threads()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda x: model.forward(x, record=["logits"])["logits"], batches * 3))
    assert _blas_threads() == blas_before and not fast.blas_is_held()
    for a, b in zip(got, expected * 3):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def _gelu_sum_in_child(queue):
    x = np.linspace(-6, 6, 200_000, dtype=np.float32)
    queue.put(float(fast.gelu_float32_in_cache(x, chunk=4096, threads=2).sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is a POSIX call")
def test_gelu_threads_work_in_a_forked_child():
    """A child forked after the pool exists inherits no pool threads; it must make its own, not wait on the
    parent's forever (the demo draws its figures in forked processes)."""
    import multiprocessing

    x = np.linspace(-6, 6, 200_000, dtype=np.float32)
    expected = float(fast.gelu_float32_in_cache(x, chunk=4096, threads=2).sum())  # the parent's pool exists
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
