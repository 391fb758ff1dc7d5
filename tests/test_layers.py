"""The reference math of numpy_vit/layers.py and numpy_vit/erf.py without torch: erf and GELU against math.erf,
the patch order, and the properties each layer function promises (parity_tests/ compare them with timm and HF).
tests/test_fast.py compares numpy_vit/fast.py's speed-ups with these functions."""
import math

import numpy as np
import pytest

from numpy_vit import erf, layers


def test_erf_matches_math_erf():
    x = np.linspace(-7, 7, 14001)
    exact = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(erf.erf(x) - exact)) < 1e-14  # float64: double precision
    x32 = x.astype(np.float32)
    exact32 = np.array([math.erf(v) for v in x32.astype(np.float64)])
    err = np.abs(erf.erf(x32).astype(np.float64) - exact32)
    assert np.max(err) < 3e-7 and np.max(err / np.maximum(np.abs(exact32), 1e-30)) < 1e-6  # float32 resolution
    assert erf.erf(x32).dtype == np.float32


def test_erfc_in_the_dtype_of_its_input():
    x = np.linspace(-9, 9, 1801)
    exact = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(erf.erfc(x) - exact) / exact) < 1e-12  # 1 - series near abs(x) = 2 loses a few bits
    x32 = x.astype(np.float32)
    exact32 = np.array([math.erfc(v) for v in x32.astype(np.float64)])
    got = erf.erfc(x32)
    relative = np.abs(got - exact32) / exact32  # x^2 rounded to float32 costs erfc ~ x^2 ulp of its own
    assert got.dtype == np.float32 and np.max(relative / (1 + x.astype(np.float64) ** 2)) < 3e-7


def test_gelu_float64_and_tanh_form():
    x = np.linspace(-30, 30, 601)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x])
    assert np.max(np.abs(layers.gelu(x) - exact) / np.maximum(np.abs(exact), 1e-300)) < 1e-13
    tanh = layers.gelu(x, "tanh")
    assert 0 < np.max(np.abs(tanh - exact)) < 1e-3  # the approximation differs, but only slightly


def test_gelu_float32_close_to_the_exact_function():
    """Absolute error within ~1 float32 ulp of |x| (what the residual stream sees), float64 math.erfc as truth."""
    x = np.linspace(-12, 8, 8001).astype(np.float32)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
    got = layers.gelu(x)
    assert got.dtype == np.float32
    assert np.max(np.abs(got.astype(np.float64) - exact) / np.maximum(1.0, np.abs(x))) < 2e-7


def test_patchify_order_is_row_major_with_channel_row_col_inside():
    img = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)  # B=2, C=3, H=4, W=6, p=2 -> 2x3 grid
    patches = layers.patchify(img, 2)
    assert patches.shape == (2, 6, 12)
    # patch 4 = grid row 1, column 1: pixels rows 2..3, cols 2..3 of each channel, flattened (c, i, j)
    expected = img[1, :, 2:4, 2:4].reshape(-1)
    np.testing.assert_array_equal(patches[1, 4], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_layer_norm_do_what_they_say(dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 7, 33)) * 5).astype(dtype)
    before = x.copy()
    p = layers.softmax(x)
    assert p.dtype == dtype and np.all(p > 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=10 * np.finfo(dtype).eps)
    big = layers.softmax(np.array([[1e4, 1e4 + 1]], dtype))  # exp(1e4) overflows: the maximum is subtracted
    np.testing.assert_allclose(big, [[1 / (1 + math.e), math.e / (1 + math.e)]], rtol=10 * np.finfo(dtype).eps)
    y = layers.layer_norm(x, np.ones(33, dtype), np.zeros(33, dtype), eps=0.0)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-5)
    assert np.array_equal(x, before)  # the inputs are not modified


def test_linear_is_one_product_over_the_leading_axes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 8))
    weight, bias = rng.standard_normal((6, 8)), rng.standard_normal(6)
    y = layers.linear(x, weight, bias)
    assert y.shape == (2, 5, 6)
    np.testing.assert_allclose(y[1, 3], weight @ x[1, 3] + bias, atol=1e-12)
    np.testing.assert_allclose(layers.linear(x, weight), y - bias, atol=1e-12)


def test_attention_records_its_three_lines_and_heads_stay_apart():
    """q, k, v, scores, pattern, z are recorded in that order with the trace's shapes; each head attends with
    its own slice of q, k and v (a change in head 1's values leaves head 0's output slice alone)."""
    rng = np.random.default_rng(4)
    B, N, H, Dh = 2, 5, 3, 4
    D = H * Dh
    x = rng.standard_normal((B, N, D))
    qkv = dict(weight=rng.standard_normal((3 * D, D)), bias=rng.standard_normal(3 * D))
    proj = dict(weight=np.eye(D), bias=np.zeros(D))  # the output is z with the heads side by side
    recorded = {}
    out = layers.attention(x, qkv, proj, num_heads=H, record=lambda name, a: recorded.setdefault(name, a))
    assert list(recorded) == ["q", "k", "v", "scores", "pattern", "z"]
    assert all(recorded[name].shape == (B, H, N, Dh) for name in ("q", "k", "v", "z"))
    assert recorded["scores"].shape == recorded["pattern"].shape == (B, H, N, N)
    np.testing.assert_allclose(recorded["pattern"].sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(out[:, :, Dh:2 * Dh], recorded["z"][:, 1], atol=1e-12)  # head 1's columns
    changed = dict(weight=qkv["weight"].copy(), bias=qkv["bias"])
    changed["weight"][2 * D + Dh:2 * D + 2 * Dh] *= 3  # head 1's values
    out2 = layers.attention(x, changed, proj, num_heads=H)
    np.testing.assert_array_equal(out2[:, :, :Dh], out[:, :, :Dh])
    assert not np.allclose(out2[:, :, Dh:2 * Dh], out[:, :, Dh:2 * Dh])


def test_block_records_the_residual_stream_in_order():
    rng = np.random.default_rng(5)
    D, M = 8, 16
    norm = dict(weight=np.ones(D), bias=np.zeros(D))
    attn = dict(qkv=dict(weight=rng.standard_normal((3 * D, D)) * 0.1, bias=np.zeros(3 * D)),
                proj=dict(weight=rng.standard_normal((D, D)) * 0.1, bias=np.zeros(D)))
    mlp = dict(fc1=dict(weight=rng.standard_normal((M, D)) * 0.1, bias=np.zeros(M)),
               fc2=dict(weight=rng.standard_normal((D, M)) * 0.1, bias=np.zeros(D)))
    x = rng.standard_normal((2, 3, D))
    recorded = {}
    y = layers.block(x, norm, attn, norm, mlp, num_heads=2, eps=1e-6, record=lambda n, a: recorded.setdefault(n, a))
    assert list(recorded) == ["resid_pre", "ln1", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern",
                              "attn.z", "attn_out", "resid_mid", "ln2", "mlp.pre", "mlp.post", "mlp_out", "resid_post"]
    np.testing.assert_allclose(y, x + recorded["attn_out"] + recorded["mlp_out"], atol=1e-12)
    assert y is recorded["resid_post"]
