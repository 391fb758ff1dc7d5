"""Gradient explanations (numpy_vit.analysis, "gradient explanations"), figure 8 and ``numpy-vit explain``, and the
two-object scenes they are checked on (training.synthetic_shapes.make_two_shapes)."""
import numpy as np
import pytest

from numpy_vit.errors import ArgumentError
from training.synthetic_shapes import CLASSES, make_two_shapes


# --- two-object scenes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two():
    return make_two_shapes(40, seed=3)


def test_two_shapes_shapes_and_distinct_classes(two):
    assert two["images"].shape == (40, 224, 224, 3) and two["images"].dtype == np.uint8
    assert two["masks"].shape == (40, 2, 224, 224) and two["masks"].dtype == bool
    assert two["labels"].shape == (40, 2) and tuple(two["classes"]) == CLASSES
    assert np.all(two["labels"][:, 0] != two["labels"][:, 1])
    assert np.all((two["labels"] >= 0) & (two["labels"] < len(CLASSES)))
    assert np.all(two["masks"].any(axis=(2, 3)))                               # both objects are drawn


def test_two_shapes_objects_are_a_patch_apart(two):
    # each object's 16 px patches, grown by one patch in all eight directions, never reach the other's patches
    cells = two["masks"].reshape(40, 2, 14, 16, 14, 16).any(axis=(3, 5))     # [n, 2, 14, 14] patches touched
    padded = np.pad(cells, ((0, 0), (0, 0), (1, 1), (1, 1)))
    grown = np.zeros_like(cells)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grown |= padded[:, :, dy:dy + 14, dx:dx + 14]
    assert not np.any(grown[:, 0] & cells[:, 1])
    assert not np.any(two["masks"][:, 0] & two["masks"][:, 1])


def test_two_shapes_are_deterministic_and_seeded():
    a, b = make_two_shapes(3, seed=9), make_two_shapes(3, seed=9)
    for key in ("images", "labels", "masks"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(make_two_shapes(2, seed=9)["images"], a["images"][:2])   # scene i from (seed, i)
    assert not np.array_equal(make_two_shapes(3, seed=10)["images"], a["images"])
    small = make_two_shapes(3, seed=9, img_size=112)
    np.testing.assert_array_equal(small["labels"], a["labels"])              # the same scenes at another size


@pytest.mark.parametrize("kwargs", [dict(n=-1, seed=0), dict(n=2, seed=-1), dict(n=2, seed=0, img_size=8)])
def test_two_shapes_bad_arguments(kwargs):
    with pytest.raises(ArgumentError, match="make_two_shapes"):
        make_two_shapes(**kwargs)


# --- the analysis functions on cases worked by hand -----------------------------------------------

from numpy_vit import analysis  # noqa: E402

# One layer, two heads, three tokens (the class token and a 1 x 2 grid of patches). Both heads' class-token rows
# read [0.5, 0.25, 0.25]; the gradients of the target make head 0 favour patch 0 and head 1 patch 1:
#   head 0: dA * A row 0 = [0, 4, -4] * [.5, .25, .25] = [0, 1, -1]
#   head 1: dA * A row 0 = [0, -2, 2] * [.5, .25, .25] = [0, -.5, .5]       (all other rows of dA are 0)
HAND_A = np.array([[[.5, .25, .25], [.2, .4, .4], [.1, .1, .8]],
                   [[.5, .25, .25], [.6, .2, .2], [.3, .3, .4]]])[None]           # [1, 2, 3, 3]
HAND_G = np.zeros_like(HAND_A)
HAND_G[0, 0, 0] = [0, 4, -4]
HAND_G[0, 1, 0] = [0, -2, 2]


def test_chefer_by_hand_relu_per_head_before_the_mean():
    # ReLU per head: [0, 1, 0] and [0, 0, .5]; mean: A_bar row 0 = [0, .5, .25], other rows 0
    # R = I + A_bar @ I: row 0 = [1, .5, .25]
    r = analysis.chefer_relevance([HAND_A], [HAND_G])
    np.testing.assert_allclose(r[0, 0], [1, .5, .25], rtol=0, atol=1e-15)   # exact in binary fractions
    np.testing.assert_allclose(r[0, 1:], np.eye(3)[1:], rtol=0, atol=0)
    # a second identical layer: R = R1 + A_bar @ R1, and rows 1, 2 of R1 are the identity's: row 0 = [1, 1, .5]
    r2 = analysis.chefer_relevance([HAND_A, HAND_A], [HAND_G, HAND_G])
    np.testing.assert_allclose(r2[0, 0], [1, 1, .5], rtol=0, atol=1e-15)
    # start_layer=1 skips the first layer: one layer's answer again
    np.testing.assert_allclose(analysis.chefer_relevance([HAND_A, HAND_A], [HAND_G, HAND_G], start_layer=1), r,
                               rtol=0, atol=0)


def test_gradient_rollout_by_hand_mean_over_heads_before_the_clamp():
    # mean first: [0, .25, -.25], clamp: [0, .25, 0]; + I: [1, .25, 0], row sum 1.25: [.8, .2, 0]; rows 1, 2 of
    # the fused matrix are 0, so they become the identity's rows. Patch 1 gets nothing (Chefer gives it .25).
    r = analysis.gradient_rollout([HAND_A], [HAND_G])
    np.testing.assert_allclose(r[0, 0], [.8, .2, 0], rtol=0, atol=1e-15)   # rounding of 0.25 / 1.25 only
    np.testing.assert_allclose(r[0, 1:], np.eye(3)[1:], rtol=0, atol=0)
    # two layers: R = A_hat @ A_hat, row 0 = .8 * [.8, .2, 0] + .2 * [0, 1, 0] = [.64, .36, 0]
    r2 = analysis.gradient_rollout([HAND_A, HAND_A], [HAND_G, HAND_G])
    np.testing.assert_allclose(r2[0, 0], [.64, .36, 0], rtol=0, atol=1e-15)


def test_grad_cam_by_hand():
    # patches p0 = [1, 2], p1 = [3, -1]; their gradients [1, -2] and [1, 0] pool to alpha = [1, -1];
    # p0: 1 - 2 = -1 -> ReLU 0;  p1: 3 + 1 = 4. The class token's value and gradient are not part of either.
    tokens = np.array([[[50., 50.], [1, 2], [3, -1]]])                    # [1, 3, 2]
    grads = np.array([[[100., 100.], [1, -2], [1, 0]]])
    np.testing.assert_array_equal(analysis.grad_cam(tokens, grads, (1, 2), 1), [[[0., 4.]]])


def test_input_times_gradient_and_sum_per_patch_by_hand():
    x = np.arange(2 * 4 * 4, dtype=float).reshape(1, 2, 4, 4)            # two channels, 4 x 4 pixels
    g = np.ones_like(x)
    g[:, 1] = -1                                                          # channel 1 counts against
    pixels = analysis.input_times_gradient(x, g)                          # x[0] - x[1] = -16 everywhere
    np.testing.assert_array_equal(pixels, np.full((1, 4, 4), -16.0))
    np.testing.assert_array_equal(analysis.sum_per_patch(pixels, 2), np.full((1, 2, 2), -64.0))
    ramp = np.arange(16, dtype=float).reshape(1, 4, 4)                    # patch (0, 0) holds 0 + 1 + 4 + 5
    np.testing.assert_array_equal(analysis.sum_per_patch(ramp, 2), [[[10, 18], [42, 50]]])


def test_integrated_gradients_by_hand():
    rng = np.random.default_rng(0)
    x, x0 = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    # F = sum(x^3) / 3, dF/dx = x^2. One midpoint step: (x - x0) * ((x + x0) / 2)^2
    one = analysis.integrated_gradients(x, lambda z: z ** 2, x0, steps=1)
    np.testing.assert_allclose(one, (x - x0) * ((x + x0) / 2) ** 2, rtol=1e-12)   # float64 rounding only
    # one trapezoid step: (x - x0) * (x0^2 + x^2) / 2
    trap = analysis.integrated_gradients(x, lambda z: z ** 2, x0, steps=1, rule="trapezoid")
    np.testing.assert_allclose(trap, (x - x0) * (x0 ** 2 + x ** 2) / 2, rtol=1e-12)
    # the exact integral is (x^3 - x0^3) / 3 per input; the midpoint rule's error falls as 1 / S^2:
    # for S steps it is -(x - x0)^3 / (12 S^2) per input (the second derivative of the integrand is 2 (x - x0)^2)
    exact = (x ** 3 - x0 ** 3) / 3
    many = analysis.integrated_gradients(x, lambda z: z ** 2, x0, steps=10)
    np.testing.assert_allclose(many - exact, -(x - x0) ** 3 / 1200, atol=1e-12)
    # completeness (Proposition 1) for a quadratic F = sum(x^2) / 2: the midpoint rule is exact
    ig = analysis.integrated_gradients(x, lambda z: z, x0, steps=3)
    np.testing.assert_allclose(ig.sum(), ((x ** 2).sum() - (x0 ** 2).sum()) / 2, rtol=1e-12)


def test_baselines():
    x = np.random.default_rng(1).uniform(-1, 1, size=(1, 3, 20, 20))
    np.testing.assert_allclose(analysis.black_baseline(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), -1.0)
    flat = np.full((1, 3, 20, 20), 0.3)
    np.testing.assert_allclose(analysis.blurred_baseline(flat, 2.0), flat, rtol=1e-12)  # a blur keeps a flat image
    blurred = analysis.blurred_baseline(x, 2.0)
    assert blurred.std() < 0.5 * x.std()                                  # noise of std .58 is smoothed away
    np.testing.assert_allclose(blurred.mean(), x.mean(), atol=0.02)       # mirrored edges keep the mean closely


# --- against the reference implementations' formulas, written in their own form -------------------

def _random_layers(seed, layers=4, heads=3, tokens=5, batch=1):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(layers, batch, heads, tokens, tokens))
    attentions = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    return list(attentions), list(rng.normal(size=attentions.shape))


# The reference loops are transcribed from torch to NumPy (tests need no torch): clamp(min=0) -> clip(min=0),
# torch.matmul -> np.matmul, dim= -> axis=.

def test_chefer_matches_transformer_mm_explainability_loop():
    attentions, gradients = _random_layers(0)

    # hila-chefer/Transformer-MM-Explainability, ViT notebook: avg_heads (rule 5), then R += cam @ R (rule 6)
    def avg_heads(cam, grad):
        cam = cam.reshape(-1, cam.shape[-2], cam.shape[-1])
        grad = grad.reshape(-1, grad.shape[-2], grad.shape[-1])
        return (grad * cam).clip(min=0).mean(axis=0)

    R = np.eye(5)
    for a, g in zip(attentions, gradients):
        R = R + np.matmul(avg_heads(a[0], g[0]), R)
    theirs = R[0, 1:]

    ours = analysis.chefer_relevance(attentions, gradients)[0, 0, 1:]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)   # float64 on both sides; products summed in other orders


def test_gradient_rollout_matches_vit_explain_loop():
    attentions, gradients = _random_layers(1)

    # jacobgil/vit-explain, vit_grad_rollout.grad_rollout with discard_ratio 0, one change: the row sums keep
    # their axis (their ``a / a.sum(dim=-1)`` divides columns for a batch of one: vit-explain issue #16)
    result = np.eye(5)
    for attention, grad in zip(attentions, gradients):
        fused = (attention * grad).mean(axis=1)
        fused[fused < 0] = 0
        a = (fused + 1.0 * np.eye(5)) / 2
        a = a / a.sum(axis=-1, keepdims=True)
        result = np.matmul(a, result)
    mask = result[0, 0, 1:]
    theirs = mask / mask.max()

    ours = analysis.gradient_rollout(attentions, gradients)[0, 0, 1:]
    np.testing.assert_allclose(ours / ours.max(), theirs, rtol=1e-12)   # float64 both sides, same products


def test_grad_cam_matches_pytorch_grad_cam_recipe():
    rng = np.random.default_rng(2)
    tokens, grads = rng.normal(size=(2, 1 + 6, 4)), rng.normal(size=(2, 1 + 6, 4))   # 2 images, 2 x 3 grid, D = 4

    # jacobgil/pytorch-grad-cam: reshape_transform drops the class token and moves channels first; GradCAM's
    # weights are the gradients' spatial mean; the cam is the weighted sum over channels, then ReLU
    def reshape_transform(t, height=2, width=3):
        return t[:, 1:, :].reshape(t.shape[0], height, width, t.shape[2]).transpose(0, 3, 1, 2)

    activations, gradients = reshape_transform(tokens), reshape_transform(grads)
    weights = np.mean(gradients, axis=(2, 3))
    theirs = np.maximum((weights[:, :, None, None] * activations).sum(axis=1), 0)

    np.testing.assert_allclose(analysis.grad_cam(tokens, grads, (2, 3), 1), theirs, rtol=1e-12)  # summation order


# --- explanation_map reads the right arrays off a Trace --------------------------------------------

@pytest.fixture(scope="module")
def tiny_run():
    import numpy_vit as nv

    model = nv.ViT(nv.ViTConfig(img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=2, num_heads=2), seed=0)
    trace = model.run(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    rng = np.random.default_rng(1)
    fake_grads = {name: rng.normal(size=np.shape(array)) for name, array in trace.items()}  # any numbers will do:
    return trace, fake_grads                                  # this checks which arrays each method reads


def test_explanation_map_dispatches_to_the_array_functions(tiny_run):
    trace, grads = tiny_run
    patterns = [f"blocks.{i}.attn.pattern" for i in range(2)]
    chefer = analysis.chefer_relevance([trace[k] for k in patterns], [grads[k] for k in patterns])
    np.testing.assert_array_equal(analysis.explanation_map(trace, grads, "chefer"), chefer[:, 0, 1:].reshape(2, 4, 4))
    rollout = analysis.gradient_rollout([trace[k] for k in patterns], [grads[k] for k in patterns])
    np.testing.assert_array_equal(analysis.explanation_map(trace, grads, "grad_rollout"),
                                  rollout[:, 0, 1:].reshape(2, 4, 4))
    cam = analysis.grad_cam(trace["blocks.1.ln1"], grads["blocks.1.ln1"], (4, 4), 1)
    np.testing.assert_array_equal(analysis.explanation_map(trace, grads, "grad_cam"), cam)
    pixels = (trace["input"] * grads["input"]).sum(1)
    np.testing.assert_allclose(analysis.explanation_map(trace, grads, "input_x_grad"),
                               pixels.reshape(2, 4, 8, 4, 8).sum((2, 4)), rtol=1e-12)  # summation order only
    plain = analysis.attention_rollout(trace.attention)
    np.testing.assert_array_equal(analysis.explanation_map(trace, None, "rollout"), plain[:, 0, 1:].reshape(2, 4, 4))
    for method in ("chefer", "grad_rollout", "grad_cam", "input_x_grad"):
        assert analysis.explanation_map(trace, grads, method).shape == (2, 4, 4)


@pytest.mark.parametrize("call, message", [
    (lambda t, g: analysis.explanation_map(t, g, "lime"), "method must be one of"),
    (lambda t, g: analysis.explanation_map(t, g, "chefer", discard_ratio=0.5), "takes the options"),
    (lambda t, g: analysis.explanation_map(t, None, "chefer"), "needs gradients"),
    (lambda t, g: analysis.chefer_relevance(t.attention, t.attention[:1]), "gradients has 1 layers"),
    (lambda t, g: analysis.grad_cam(t["blocks.1.ln1"], g["blocks.1.ln1"][:, 1:], (4, 4), 1), "one shape"),
    (lambda t, g: analysis.integrated_gradients(t["input"], lambda z: z, 0.0, steps=0), "steps"),
    (lambda t, g: analysis.integrated_gradients(t["input"], lambda z: z, 0.0, rule="simpson"), "rule"),
    (lambda t, g: analysis.integrated_gradients(t["input"], lambda z: z[:, :1], 0.0), "gradient_of returned"),
])
def test_bad_arguments_are_named(tiny_run, call, message):
    trace, grads = tiny_run
    with pytest.raises(ArgumentError, match=message):
        call(trace, grads)


def test_integrated_gradients_in_chunks_of_steps_is_the_same_sum():
    rng = np.random.default_rng(3)
    x, x0 = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    calls = []

    def gradient_of(z):
        calls.append(len(z))
        return z ** 2
    one = analysis.integrated_gradients(x, gradient_of, x0, steps=7)
    chunked = analysis.integrated_gradients(x, gradient_of, x0, steps=7, steps_per_call=3)
    assert calls == [2] * 7 + [6, 6, 2]                                    # 7 points: 3 + 3 + 1, two images each
    np.testing.assert_allclose(chunked, one, rtol=1e-12)                   # the same terms, summed in another order


# --- the shipped two-object scene and the shipped model ------------------------------------------------

import os  # noqa: E402

from PIL import Image  # noqa: E402

from numpy_vit import cli  # noqa: E402
from numpy_vit.viz import explanations  # noqa: E402
from numpy_vit.viz.demo import TWO_SHAPES  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    """The shipped model on viz/assets/two_shapes.png (scene 91 of make_two_shapes(92, seed=0)), run once."""
    import numpy_vit as nv

    model = nv.ViT.from_pretrained()
    scene = make_two_shapes(92, seed=0)
    trace = model.run(TWO_SHAPES)
    cells = scene["masks"][91].reshape(2, 14, 16, 14, 16).any(axis=(2, 4))   # [2, gh, gw] patches each object touches
    return model, trace, scene["labels"][91], cells, scene["images"][91]


@pytest.fixture(scope="module")
def shipped_grads(shipped):
    """d logit / d every trace array for the two objects' classes (cross, star), one backward pass each."""
    model, trace, labels, _, _ = shipped
    return [model.backward(trace, int(c)) for c in labels]


def test_the_shipped_scene_is_what_make_two_shapes_draws_and_the_model_ranks_both_first(shipped):
    model, trace, labels, cells, image = shipped
    np.testing.assert_array_equal(np.asarray(Image.open(TWO_SHAPES)), image)
    assert [CLASSES[c] for c in labels] == ["cross", "star"]
    assert set(np.argsort(-trace.probabilities()[0])[:2]) == set(labels)   # the model's top two are the objects
    assert not np.any(cells[0] & cells[1])


def _positive_share_on(grid_map, cells):
    positive = np.maximum(grid_map, 0.0)
    return positive[cells].sum() / positive.sum()


@pytest.mark.parametrize("method", ["chefer", "grad_rollout", "grad_cam"])
def test_each_class_map_is_heavier_on_its_own_object(shipped, shipped_grads, method):
    """The class-specific methods that separate the star from the cross on the shipped scene: each class's map holds
    more of its (positive) mass on the patches of its own object than on the other object's. Gradient x input
    does not (the star's map sits more on the cross); README, figure 8, says so."""
    model, trace, labels, cells, _ = shipped
    maps = [analysis.explanation_map(trace, grads, method)[0] for grads in shipped_grads]
    for k in (0, 1):
        own, other = _positive_share_on(maps[k], cells[k]), _positive_share_on(maps[k], cells[1 - k])
        assert own > other, (method, CLASSES[labels[k]], own, other)
    assert not np.allclose(maps[0], maps[1])


def test_explain_command_writes_the_figure(shipped, tmp_path, capsys):
    out = tmp_path / "figures" / "explained.png"                          # the folder is created
    assert cli.main(["explain", TWO_SHAPES, "--target", "star", "--target", "5", "--method", "chefer",
                     "--method", "ig_blur", "--steps", "1", "-o", str(out), "--dpi", "40"]) == 0
    printed = capsys.readouterr().out
    assert "'star': p = 47.9%" in printed and "'cross': p = 40.7%" in printed and str(out) in printed
    width, height = Image.open(out).size
    assert width > 300 and height > 150                                   # 4 columns x 2 rows at 40 dpi


def test_explain_command_errors(shipped, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert cli.main(["explain", TWO_SHAPES, "--target", "dog", "-o", out]) == 2
    said = capsys.readouterr().err
    assert "unknown class 'dog'" in said and "circle, square, triangle" in said and "heart" in said
    assert cli.main(["explain", TWO_SHAPES, "--target", "12", "-o", out]) == 2
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["explain", TWO_SHAPES, "--method", "lime", "-o", out])
    assert "invalid choice: 'lime'" in capsys.readouterr().err
    assert cli.main(["explain", TWO_SHAPES, "--method", "ig_blur", "--steps", "0", "-o", out]) == 2
    assert "--steps must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_class_index_reads_names_indices_and_top():
    labels = ("circle", "square", "triangle")
    assert explanations.class_index("square", labels) == 1
    assert explanations.class_index(2, labels) == 2 and explanations.class_index("2", labels) == 2
    assert explanations.class_index("top", labels, np.array([0.1, 0.2, 0.7])) == 2
    for bad, message in [("dog", "one of: circle, square, triangle"), (3, "out of range"), (1.5, "class name"),
                         ("top", "probabilities")]:
        with pytest.raises(ArgumentError, match=message):
            explanations.class_index(bad, labels)


def test_integrated_gradients_separate_the_objects_and_add_up_to_the_logit_gap(shipped):
    """Integrated gradients from the blurred image, 8 midpoint steps: each class's map holds more of its positive
    mass on its own object (cross 0.64 vs 0.30, star 0.54 vs 0.43, measured), and completeness (Sundararajan et
    al. 2017, Proposition 1): the cross's attributions sum to F(x) - F(x') within 1% (2.310 of 2.325; the star's
    1.79 of 1.90 converges more slowly). From the black image the path is much less smooth: 16 steps give -0.22 for
    the star's gap of 1.16 and 128 steps 1.14, which is why figure 8 prints both numbers under the panel."""
    model, trace, labels, cells, _ = shipped
    explained = explanations.explanation_maps(model, trace, [int(c) for c in labels], ["ig_blur"], steps=8)
    for k, grid_map in enumerate(explained.maps["ig_blur"]):
        own, other = _positive_share_on(grid_map, cells[k]), _positive_share_on(grid_map, cells[1 - k])
        assert own > other, (CLASSES[labels[k]], own, other)
    (total, gap), _ = explained.completeness["ig_blur"]                  # the cross, class 5, is row 0
    assert abs(total - gap) < 0.03 * abs(gap), (total, gap)   # midpoint error measured 0.6%; float32 adds ~1e-6
    np.testing.assert_allclose(explained.maps["ig_blur"][0].sum(), total, rtol=1e-9)   # the map is what was summed


def test_the_command_lists_the_figures_methods():
    # the command line keeps its own copy so that --help never imports matplotlib
    assert cli.EXPLAIN_METHODS == tuple(explanations.METHODS)
    assert cli.EXPLAIN_DEFAULT == explanations.DEFAULT_METHODS
