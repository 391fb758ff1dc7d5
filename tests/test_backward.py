"""ViT.backward against central finite differences, on tiny float64 models of every family numpy_vit supports.

The check is the directional derivative: for a unit vector u over all the entries of one array a (a parameter,
the input, or any intermediate the trace holds),
    (f(a + eps u) - f(a - eps u)) / (2 eps)   against   <grads[a], u>,
with f = sum(cotangent * output) for a random cotangent. One random direction covers every entry at once: a
wrong entry of the gradient (a sign, a transposition, a missing term) moves <grads[a], u> by the size of the
error, almost surely not cancelled by the others.

Tolerance (``_TOL``): a central difference errs by its truncation, eps^2 / 6 |f'''| (~1e-10 of the scale for
eps = 1e-5 and third derivatives of order one), plus rounding, about eps_machine |f| / eps (~1e-11 of |f|).
We allow 1e-7 of (|f| + ||grad||): these tiny models show 1e-11 of that scale (median over the arrays) and
at most 1.1e-9 (the class token of the down-sampled family); a broken backward errs by a fraction of ||grad||
itself, above 1e-4 (test_the_check_catches_a_broken_backward).

Intermediates are perturbed by re-running the rest of the forward pass from them: ``forward_perturbed`` is
the forward's arithmetic written out with numpy_vit.layers, adding delta[name] to each array where the trace
records it; a test holds it to ViT.forward, array by array.
"""
import numpy as np
import pytest

import numpy_vit as nv
from numpy_vit import fast, layers
from numpy_vit.erf import erfc
from numpy_vit.errors import ArgumentError

_EPS = 1e-5
_TOL = 1e-7

_TINY = dict(img_size=(16, 24), patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)

FAMILIES = {  # name: (config fields, input size (H, W))
    "plain": (dict(), (16, 24)),
    "distilled": (dict(distilled=True), (16, 24)),
    "registers_layer_scale_no_embed_class": (dict(num_reg_tokens=2, no_embed_class=True, init_values=0.5,
                                                  qkv_bias=False), (16, 24)),
    "avg_fc_norm_no_class_token": (dict(global_pool="avg", class_token=False), (16, 24)),
    "avg_fc_norm_class_token_tanh_gelu": (dict(global_pool="avg", gelu="tanh"), (16, 24)),
    "pre_logits": (dict(representation_size=12), (16, 24)),
    "resampled_bicubic_antialias_up": (dict(), (24, 40)),  # grid 2x3 -> 3x5
    "resampled_bicubic_antialias_down": (dict(img_size=(32, 32)), (16, 24)),  # grid 4x4 -> 2x3, antialiased
    "resampled_bicubic_hf": (dict(pos_embed_resample="bicubic_hf"), (24, 40)),
    "resampled_bilinear_no_embed_class": (dict(pos_embed_resample="bilinear", no_embed_class=True,
                                               num_reg_tokens=1), (24, 16)),
    "headless_pooled": (dict(num_classes=0), (16, 24)),
    "headless_pre_logits": (dict(num_classes=0, representation_size=12), (16, 24)),
    "headless_dinov2": (dict(num_classes=0, num_reg_tokens=2, no_embed_class=True, init_values=0.5), (24, 16)),
    "headless_tokens": (dict(num_classes=0, global_pool=""), (16, 24)),
}


def tiny_model(fields, seed=0, dtype=np.float64):
    """A tiny model whose weights are far from their initial values (layer-scale gains, LayerNorm gains and
    biases, the tokens), so that every term of every derivative matters; attention weights large enough that
    the patterns are far from uniform."""
    config = nv.ViTConfig(**{**_TINY, **fields})
    rng = np.random.default_rng(seed)
    params = {name: value + rng.standard_normal(value.shape) * (0.4 if "qkv" in name else 0.2)
              for name, value in nv.init_params(config, seed, dtype=np.float64).items()}
    return nv.ViT(config, params, dtype=dtype)


def random_input(model, size, batch=2, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, *size)).astype(model.dtype)


def random_cotangent(model, trace, seed=2):
    shape = trace[nv.grads.output_name(model.config)].shape
    return np.random.default_rng(seed).standard_normal(shape)


def forward_perturbed(model, x, delta, visited=None):
    """The output of ViT.forward written out with numpy_vit.layers, with delta[name] added to each array where
    the trace records it under that name. ``visited``: a list the names are appended to, in order."""
    c, w = model.config, model.param_tree
    visited = [] if visited is None else visited

    def at(name, a):
        visited.append(name)
        return a + delta[name] if name in delta else a

    B = x.shape[0]
    grid = (x.shape[2] // c.patch_size, x.shape[3] // c.patch_size)
    x = at("input", x)
    patches = at("patches", layers.patchify(x, c.patch_size))
    proj = w["patch_embed"]["proj"]
    tokens = at("patch_embed", layers.linear(patches, proj["weight"].reshape(c.embed_dim, -1), proj["bias"]))
    pos = at("pos_embed", model.pos_embed_for(grid))
    prefix = np.broadcast_to(model.prefix_tokens(), (B, c.num_prefix_tokens, c.embed_dim))
    if c.no_embed_class:
        h = np.concatenate([prefix, tokens + pos], axis=1)
    else:
        h = np.concatenate([prefix, tokens], axis=1) + pos
    N, H, Dh = h.shape[1], c.num_heads, c.head_dim
    for i in range(c.depth):
        b, n = w["blocks"][str(i)], f"blocks.{i}."
        h = at(n + "resid_pre", h)
        a = at(n + "ln1", layers.layer_norm(h, **b["norm1"], eps=c.layer_norm_eps))
        q, k, v = layers.linear(a, **b["attn"]["qkv"]).reshape(B, N, 3, H, Dh).transpose(2, 0, 3, 1, 4)
        q, k, v = at(n + "attn.q", q), at(n + "attn.k", k), at(n + "attn.v", v)
        scores = at(n + "attn.scores", (q * Dh ** -0.5) @ k.swapaxes(-1, -2))
        pattern = at(n + "attn.pattern", layers.softmax(scores))
        z = at(n + "attn.z", pattern @ v)
        a = layers.linear(layers.merge_heads(z), **b["attn"]["proj"])
        a = at(n + "attn_out", a * b["ls1"]["gamma"] if "ls1" in b else a)
        h = at(n + "resid_mid", h + a)
        m = at(n + "ln2", layers.layer_norm(h, **b["norm2"], eps=c.layer_norm_eps))
        pre = at(n + "mlp.pre", layers.linear(m, **b["mlp"]["fc1"]))
        post = at(n + "mlp.post", layers.gelu(pre, c.gelu))
        m = layers.linear(post, **b["mlp"]["fc2"])
        m = at(n + "mlp_out", m * b["ls2"]["gamma"] if "ls2" in b else m)
        h = at(n + "resid_post", h + m)
    if not c.use_fc_norm:
        h = at("norm", layers.layer_norm(h, **w["norm"], eps=c.layer_norm_eps))
    if not c.global_pool:
        return h
    pooled = h[:, 0] if c.global_pool == "token" else h[:, c.num_prefix_tokens:].mean(axis=1)
    if c.use_fc_norm:
        pooled = layers.layer_norm(pooled, **w["fc_norm"], eps=c.layer_norm_eps)
    out = pooled = at("pooled", pooled)
    if c.representation_size:
        out = at("pre_logits", np.tanh(layers.linear(pooled, **w["pre_logits"]["fc"])))
    if c.num_classes:
        logits = layers.linear(out, **w["head"])
        if c.distilled:
            logits = (logits + layers.linear(h[:, 1], **w["head_dist"])) / 2
        out = at("logits", logits)
    return out


def _unit(shape, rng):
    u = rng.standard_normal(shape)
    return u / np.linalg.norm(u)


def _directional_errors(f, grad, shape, rng):
    """(|finite difference - <grad, u>|, the scale |f| + ||grad||) along a random unit direction u."""
    u = _unit(shape, rng)
    fd = (f(_EPS * u) - f(-_EPS * u)) / (2 * _EPS)
    return abs(fd - np.sum(grad * u)), abs(f(0 * u)) + np.linalg.norm(grad)


def check_against_finite_differences(model, x, cotangent, grads, seed=3):
    """Every parameter, and every array of the trace: {name: error / scale} where it exceeds _TOL."""
    rng = np.random.default_rng(seed)
    bad = {}

    def objective(output):
        return float(np.sum(output * cotangent))

    for name, value in model.params.items():
        def f(step, name=name, value=value):
            perturbed = nv.ViT(model.config, {**model.params, name: value + step}, dtype=model.dtype)
            return objective(forward_perturbed(perturbed, x, {}))

        error, scale = _directional_errors(f, grads.params[name], value.shape, rng)
        if error > _TOL * scale:
            bad["params." + name] = error / scale
    for name in grads:
        def f(step, name=name):
            return objective(forward_perturbed(model, x, {name: step}))

        error, scale = _directional_errors(f, grads[name], grads[name].shape, rng)
        if error > _TOL * scale:
            bad[name] = error / scale
    return bad


# --- the gradients against finite differences, family by family ---------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_match_finite_differences(family):
    fields, size = FAMILIES[family]
    model = tiny_model(fields)
    x = random_input(model, size)
    trace = model.forward(x)
    cotangent = random_cotangent(model, trace)
    grads = model.backward(trace, cotangent)
    # every traced array has its gradient, of its shape and dtype, and every parameter
    assert sorted(grads) == sorted(trace)
    for name in trace:
        assert grads[name].shape == trace[name].shape and grads[name].dtype == trace[name].dtype, name
    assert list(grads.params) == list(model.params)
    for name, value in model.params.items():
        assert grads.params[name].shape == value.shape and grads.params[name].dtype == value.dtype, name
    assert check_against_finite_differences(model, x, cotangent, grads) == {}


@pytest.mark.parametrize("family", ["plain", "registers_layer_scale_no_embed_class", "headless_tokens",
                                    "resampled_bilinear_no_embed_class"])
def test_the_perturbed_forward_is_the_models_forward(family):
    """The oracle above computes what ViT.forward computes, and perturbs each array under the trace's name."""
    fields, size = FAMILIES[family]
    model = tiny_model(fields)
    x = random_input(model, size)
    trace = model.forward(x)
    visited = []
    out = forward_perturbed(model, x, {}, visited)
    assert sorted(visited) == sorted(trace)
    # the same functions on the same arrays: equal but for the BLAS calls, which may block differently
    np.testing.assert_allclose(out, trace[nv.grads.output_name(model.config)], rtol=0, atol=1e-12)


def test_the_check_catches_a_broken_backward(monkeypatch):
    """With the sign of one term flipped (softmax's row sum, layer norm's variance term), the check fails."""
    model = tiny_model({})
    x = random_input(model, (16, 24))
    trace = model.forward(x)
    cotangent = random_cotangent(model, trace)

    def broken_softmax_backward(dP, P):
        return P * (dP + np.sum(dP * P, axis=-1, keepdims=True))

    monkeypatch.setattr(layers, "softmax_backward", broken_softmax_backward)
    bad = check_against_finite_differences(model, x, cotangent, model.backward(trace, cotangent))
    assert "blocks.0.attn.scores" in bad and "params.blocks.0.attn.qkv.weight" in bad
    assert "blocks.1.attn.pattern" not in bad  # the pattern's gradient is upstream of the softmax: still right
    assert min(bad.values()) > 1e3 * _TOL  # wrong by far more than the tolerance

    monkeypatch.undo()
    original = layers.layer_norm_backward

    def layer_norm_backward_without_variance_term(dy, x, weight, bias, *, eps):
        dx, grads = original(dy, x, weight, bias, eps=eps)
        centred = x - x.mean(axis=-1, keepdims=True)
        inv_sigma = 1 / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)
        x_hat = centred * inv_sigma
        return dx + x_hat * np.mean(dy * weight * x_hat, axis=-1, keepdims=True) * inv_sigma, grads

    monkeypatch.setattr(layers, "layer_norm_backward", layer_norm_backward_without_variance_term)
    bad = check_against_finite_differences(model, x, cotangent, model.backward(trace, cotangent))
    assert "input" in bad and "params.blocks.0.norm1.weight" in bad


@pytest.mark.parametrize("dtype, tolerance", [
    (np.float32, 1e-6),  # a few float32 ulps of derivatives in [-0.17, 1.13]: erfc's 1.2e-7, a division, a sum
    (np.float64, 1e-14),  # the same in float64
])
def test_gelu_derivative_from_its_output(dtype, tolerance):
    """gelu_backward reads Phi(x) = y / x off the forward's output: it agrees with Phi(x) + x phi(x) computed
    from erfc in float64, at zero, subnormal, huge and ordinary x."""
    special = [0.0, -0.0, 1e-40, -1e-40, 1e-30, -1e-30, 0.5, -0.5, 5, -5, 9, -9, 13, -13, 20, -20, 1e4, -1e4]
    x = np.concatenate([special, np.random.default_rng(0).standard_normal(10_000) * 4]).astype(dtype)
    exact64 = x.astype(np.float64)
    exact = (0.5 * erfc(-exact64 / np.sqrt(2)) + exact64 * np.exp(-0.5 * exact64 ** 2) / np.sqrt(2 * np.pi))
    got = layers.gelu_backward(np.ones_like(x), x, layers.gelu(x))
    assert got.dtype == dtype and np.isfinite(got).all()
    np.testing.assert_allclose(got, exact, rtol=0, atol=tolerance)


# --- the targets --------------------------------------------------------------------------------------------

def _one_hot(classes, num_classes):
    out = np.zeros((len(classes), num_classes))
    out[np.arange(len(classes)), classes] = 1
    return out


def _assert_same_grads(a, b, rtol=1e-12):
    """Two backward passes of the same numbers (float64): the same BLAS calls, or ones that may sum in another
    order (a batch split in images), so equal within rounding of the gradients' scale."""
    assert sorted(a) == sorted(b) and list(a.params) == list(b.params)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=rtol * (np.abs(b[name]).max() + 1e-300),
                                   err_msg=name)
    for name in a.params:
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=0,
                                   atol=rtol * (np.abs(b.params[name]).max() + 1e-300), err_msg=name)


def test_every_target_form_is_its_cotangent():
    model = tiny_model(FAMILIES["distilled"][0])
    trace = model.forward(random_input(model, (16, 24), batch=3))
    by_int = model.backward(trace, 3)
    assert by_int.target_classes.tolist() == [3, 3, 3] and by_int.output == "logits"
    _assert_same_grads(by_int, model.backward(trace, _one_hot([3, 3, 3], 5)), rtol=0)
    by_list = model.backward(trace, [4, 0, 2])
    assert by_list.target_classes.tolist() == [4, 0, 2]
    np.testing.assert_array_equal(by_list["logits"], _one_hot([4, 0, 2], 5))
    _assert_same_grads(by_list, model.backward(trace, np.array([4, 0, 2])), rtol=0)
    _assert_same_grads(by_list, model.backward(trace, _one_hot([4, 0, 2], 5)), rtol=0)
    top = model.backward(trace, "top")
    expected = np.argmax(trace["logits"], axis=-1)
    assert top.target_classes.tolist() == expected.tolist()
    _assert_same_grads(top, model.backward(trace, expected.tolist()), rtol=0)
    by_array = model.backward(trace, _one_hot([1, 1, 1], 5) * 2.5)
    assert by_array.target_classes is None
    _assert_same_grads(by_array, _scaled(model.backward(trace, 1), 2.5))


def _scaled(grads, factor):
    for name in list(grads._arrays):
        grads._arrays[name] = grads._arrays[name] * factor
    grads.params = {name: value * factor for name, value in grads.params.items()}
    return grads


def test_batch_gradients_are_the_sum_of_each_images():
    model = tiny_model(FAMILIES["registers_layer_scale_no_embed_class"][0])
    x = random_input(model, (16, 24), batch=3)
    batch = model.backward(model.forward(x), [1, 4, 2])
    alone = [model.backward(model.forward(x[i:i + 1]), [c]) for i, c in enumerate([1, 4, 2])]
    for name, value in batch.params.items():
        total = sum(g.params[name] for g in alone)
        np.testing.assert_allclose(value, total, rtol=0, atol=1e-12 * np.abs(total).max(), err_msg=name)
    for i, g in enumerate(alone):  # and each image's arrays are its rows of the batch's
        np.testing.assert_allclose(batch["input"][i:i + 1], g["input"], rtol=0,
                                   atol=1e-12 * np.abs(g["input"]).max())


def test_the_speedups_trace_gives_the_same_gradients():
    model = tiny_model(FAMILIES["avg_fc_norm_class_token_tanh_gelu"][0])
    x = random_input(model, (16, 24), batch=3)
    reference = model.backward(model.forward(x), "top")
    model.speedups = True
    fast_trace = model.forward(x)
    # the two forwards differ by the rounding of their products (tests/README.md), which the backward carries
    _assert_same_grads(model.backward(fast_trace, "top"), reference, rtol=1e-10)


@pytest.mark.parametrize("dtype, tolerance", [
    (np.float64, 1e-12),  # another grouping of each weight's sum over images, and products blocked per shard
    (np.float32, 1e-5),  # the same in float32, as tests/test_fast.py's whole forward passes
])
@pytest.mark.parametrize("batch, threads", [(3, 2), (2, 3)])
def test_a_batch_in_shards_gives_the_reference_gradients(monkeypatch, batch, threads, dtype, tolerance):
    """fast.encoder_backward: one shard of images per thread, the shards' weight gradients summed."""
    model = tiny_model(FAMILIES["registers_layer_scale_no_embed_class"][0], dtype=dtype)
    x = random_input(model, (16, 24), batch=batch)
    monkeypatch.setattr(fast, "_num_threads", 1)
    trace = model.forward(x)
    reference = model.backward(trace, "top")
    calls = []
    monkeypatch.setattr(fast, "run_in_shard", lambda f, *a, _run=fast.run_in_shard, **k: calls.append(1) or
                        _run(f, *a, **k))
    monkeypatch.setattr(fast, "_num_threads", threads)
    sharded = model.backward(trace, "top")
    if fast.can_put_blas_on_one_thread():
        assert len(calls) == min(batch, threads)  # the shards really ran
    assert not fast.blas_is_held()
    for name in reference:
        assert sharded[name].dtype == dtype
    _assert_same_grads(sharded, reference, rtol=tolerance)


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_gradients_stay_float32_and_agree_with_float64(family):
    fields, size = FAMILIES[family]
    model64 = tiny_model(fields)
    model32 = model64.astype(np.float32)
    x = random_input(model64, size)
    target = [0, 3] if model64.config.num_classes else random_cotangent(model64, model64.forward(x))
    g64 = model64.backward(model64.forward(x), target)
    g32 = model32.backward(model32.forward(x.astype(np.float32)), target)
    for name in g32:
        assert g32[name].dtype == np.float32, name
        # float32 rounding (u = 6e-8) grown through two blocks of a tiny model: 1e-4 of the array's scale
        np.testing.assert_allclose(g32[name], g64[name], rtol=0, atol=1e-4 * np.abs(g64[name]).max(), err_msg=name)
    for name in g32.params:
        assert g32.params[name].dtype == np.float32, name
        np.testing.assert_allclose(g32.params[name], g64.params[name], rtol=0,
                                   atol=1e-4 * np.abs(g64.params[name]).max(), err_msg=name)


def test_backward_record_is_enough_and_keeps_the_same_gradients():
    model = tiny_model(FAMILIES["pre_logits"][0])
    x = random_input(model, (16, 24))
    full = model.backward(model.forward(x), "top")
    lean_trace = model.forward(x, record=nv.BACKWARD_RECORD)
    assert "blocks.0.attn.scores" not in lean_trace
    lean = model.backward(lean_trace, "top")
    assert "blocks.0.attn.scores" not in lean and "input" in lean
    for name in lean:
        np.testing.assert_array_equal(lean[name], full[name])
    for name in lean.params:
        np.testing.assert_array_equal(lean.params[name], full.params[name])


def test_keep_chooses_the_gradients_kept():
    model = tiny_model({})
    trace = model.forward(random_input(model, (16, 24)))
    full = model.backward(trace, 1)
    lean = model.backward(trace, 1, keep=["input", "blocks.*.attn.pattern"])
    assert sorted(lean) == ["blocks.0.attn.pattern", "blocks.1.attn.pattern", "input"]
    for name in lean:
        np.testing.assert_array_equal(lean[name], full[name])
    for name in full.params:
        np.testing.assert_array_equal(model.backward(trace, 1, keep=[]).params[name], full.params[name])
    assert len(model.backward(trace, 1, keep="input")) == 1
    with pytest.raises(ArgumentError, match="keep must be None, a glob"):
        model.backward(trace, 1, keep=3)
    with pytest.raises(KeyError, match="no gradient 'logits'.*keep=None"):
        lean["logits"]


# --- bad input gets a clear error -----------------------------------------------------------------------------

def test_a_trace_without_what_the_backward_reads_says_what_to_record():
    model = tiny_model({})
    trace = model.forward(random_input(model, (16, 24)), record=["blocks.*.attn.pattern", "logits"])
    with pytest.raises(ArgumentError, match=r"did not record: patches, blocks\.0\.resid_pre.*BACKWARD_RECORD"):
        model.backward(trace, 0)
    cotangent_only = model.forward(random_input(model, (16, 24)), record=[n for n in nv.BACKWARD_RECORD
                                                                          if n != "logits"])
    model.backward(cotangent_only, np.ones((2, 5)))  # a cotangent needs no logits
    with pytest.raises(ArgumentError, match="did not record: logits"):
        model.backward(cotangent_only, "top")


def test_a_trace_of_another_model_is_refused():
    model = tiny_model({})
    other = tiny_model({"depth": 3})
    with pytest.raises(ArgumentError, match="another config.*depth: 3 vs 2"):
        model.backward(other.forward(random_input(other, (16, 24))), 0)
    with pytest.raises(ArgumentError, match="a model with other weights"):
        model.backward(tiny_model({}, seed=5).forward(random_input(model, (16, 24))), 0)
    with pytest.raises(ArgumentError, match="computed in float32 but the model computes in float64"):
        model.backward(model.astype(np.float32).forward(random_input(model, (16, 24))), 0)
    with pytest.raises(ArgumentError, match="needs the Trace"):
        model.backward({"logits": np.zeros((1, 5))}, 0)


@pytest.mark.parametrize("target, message", [
    (5, "class 5 is out of range: this model has 5 classes, numbered 0..4"),
    (-1, "class -1 is out of range"),
    ([0, 1, 2], "one class per image: this trace holds 2 image"),
    ([0, 7], "class 7 is out of range"),
    ("largest", "'largest' is not understood"),
    (True, "not understood"),
    (None, "not understood"),
    (np.zeros((2, 4)), r"shape of trace\['logits'\], \(2, 5\); got \(2, 4\)"),
    (np.zeros((3, 5)), r"got \(3, 5\) \(the batch: this trace holds 2 image"),
    (np.zeros(5), r"got \(5,\)"),
    (np.array([[np.nan, 0, 0, 0, 0], [0] * 5]), "1 NaN or infinite"),
])
def test_bad_targets_are_named(target, message):
    model = tiny_model({})
    trace = model.forward(random_input(model, (16, 24)))
    with pytest.raises(ArgumentError, match=message):
        model.backward(trace, target)


def test_a_headless_model_takes_a_cotangent_of_its_features():
    model = tiny_model({"num_classes": 0})
    trace = model.forward(random_input(model, (16, 24)))
    for target in (0, [0, 1], "top"):
        with pytest.raises(ArgumentError, match=r"no classifier.*shape of trace\['pooled'\]"):
            model.backward(trace, target)
    grads = model.backward(trace, np.ones((2, 16)))
    assert grads.output == "pooled" and grads.target_classes is None
