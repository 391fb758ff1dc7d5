"""numpy_vit.faithfulness: every score on a case worked by hand, the random baseline at its theoretical chance,
the oracle's perturbation curve, the method registry on a small model, and bench/explanations.py end to end."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numpy_vit as nv
from numpy_vit import analysis
from numpy_vit import faithfulness as F
from numpy_vit.errors import ArgumentError
from training.evaluate import rollout_object_ratio

ROOT = Path(__file__).resolve().parent.parent


def one(values, truth):
    """A single image's map [1, 1, P] and its mask, from flat lists."""
    return (np.asarray(values, dtype=float).reshape(1, 1, -1), np.asarray(truth, dtype=bool).reshape(1, 1, -1))


# --- ground truth on the patch grid ---------------------------------------------------------------

def test_patch_coverage_and_mask_by_hand():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, :2, :2] = [[1, 1], [1, 0]]                  # 3 of the top-left patch's 4 pixels
    masks[0, 2, 3] = True                                # 1 of the bottom-right patch's 4
    np.testing.assert_array_equal(F.patch_coverage(masks, (2, 2)), [[[0.75, 0.0], [0.0, 0.25]]])
    np.testing.assert_array_equal(F.patch_mask(masks, (2, 2)), [[[True, False], [False, False]]])
    np.testing.assert_array_equal(F.patch_mask(masks, (2, 2), cover=0.25), [[[True, False], [False, True]]])


# --- segmentation scores ---------------------------------------------------------------------------

def test_average_precision_by_hand():
    # ranks 1..4 hold object, background, object, background: precision 1/1 and 2/3 at the two hits
    assert F.average_precision(*one([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]))[0] == pytest.approx((1 + 2 / 3) / 2)
    # a tie of an object and a background patch at the top is one threshold: precision 1/2 at recall 1
    assert F.average_precision(*one([1.0, 1.0, 0.0, 0.0], [1, 0, 0, 0]))[0] == pytest.approx(0.5)
    assert F.average_precision(*one([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]))[0] == 1.0      # a perfect ranking
    assert np.isnan(F.average_precision(*one([0.1, 0.2], [0, 0]))[0])                # no object patch


def test_average_precision_agrees_with_scikit_learn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    maps = np.round(rng.random((20, 4, 5)), 1)           # rounded: many ties
    truth = rng.random((20, 4, 5)) < 0.3
    truth[:, 0, 0] = True
    ours = F.average_precision(maps, truth)
    theirs = [average_precision_score(t.ravel(), m.ravel()) for m, t in zip(maps, truth)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)   # the same sums in another order: rounding only


def test_best_iou_by_hand():
    # top-1: 1/2, top-2: 1/3, top-3: 2/3, all four: 2/4
    assert F.best_iou(*one([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]))[0] == pytest.approx(2 / 3)
    assert F.best_iou(*one([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]))[0] == 1.0


def test_pointing_game_by_hand():
    assert F.pointing_game(*one([0.1, 0.9, 0.3], [0, 1, 0]))[0] == 1.0
    assert F.pointing_game(*one([0.9, 0.1, 0.3], [0, 1, 0]))[0] == 0.0
    assert F.pointing_game(*one([0.9, 0.9, 0.3], [0, 1, 0]))[0] == 0.5           # a tie: the expected hit


def test_object_mass_ratio_by_hand_and_as_evaluate_measures_it():
    truth = [1, 0, 0, 0]                                   # the object is a quarter of the patches
    assert F.object_mass_ratio(*one([1, 1, 1, 1], truth))[0] == pytest.approx(1.0)  # blind to the object
    assert F.object_mass_ratio(*one([5, 0, 0, 0], truth))[0] == pytest.approx(4.0)  # all on it: 1 / share
    assert F.object_mass_ratio(*one([2, -3, 1, 1], truth))[0] == pytest.approx(2.0)  # negative values: no mass
    rng = np.random.default_rng(1)
    maps, masks = rng.random((6, 3, 3)), rng.random((6, 3, 3)) < 0.4
    masks[:, 0, 0] = True
    np.testing.assert_allclose(F.object_mass_ratio(maps, masks),
                               rollout_object_ratio(maps.reshape(6, 9), masks.reshape(6, 9)), rtol=1e-12)


def test_class_share_by_hand_and_class_agnostic_maps_average_one_half():
    own, other = [1, 1, 0, 0], [0, 0, 1, 0]
    maps, a = one([2, 1, 1, 9], own)
    _, b = one([0], [0])
    b = np.asarray(other, bool).reshape(1, 1, -1)
    assert F.class_share(maps, a, b)[0] == pytest.approx(3 / 4)   # 3 on its object, 1 on the other, 9 on neither
    # one map for both classes: the two shares add to 1 on every image, so they average 0.5
    rng = np.random.default_rng(2)
    maps = rng.random((50, 4, 4))
    first = np.zeros((50, 4, 4), bool)
    second = np.zeros((50, 4, 4), bool)
    first[:, :2, :2], second[:, 3, :] = True, True
    np.testing.assert_allclose(F.class_share(maps, first, second) + F.class_share(maps, second, first), 1.0)
    with pytest.raises(ArgumentError, match="overlap"):
        F.class_share(maps, first, first)


# --- the random baseline scores what theory says ----------------------------------------------------------

def test_random_ap_expectation_is_exact_on_every_ranking_of_a_small_case():
    truth = np.array([1, 1, 0, 0, 0], bool)
    aps = [F.average_precision(*one(np.argsort(order), truth))[0] for order in itertools.permutations(range(5))]
    assert np.mean(aps) == pytest.approx(F.random_ap_expectation(2, 5), rel=1e-12)
    assert F.random_ap_expectation(5, 5) == pytest.approx(1.0)    # every patch on the object


def test_random_maps_score_chance():
    rng = np.random.default_rng(3)
    count, positives = 4000, 12
    maps = rng.random((count, 14, 14))
    truth = np.zeros((count, 196), bool)
    truth[:, :positives] = True
    truth = truth.reshape(count, 14, 14)
    ap = F.average_precision(maps, truth)
    # 5 standard errors of the mean over 4000 independent maps: fails by chance about once in 3 million runs
    assert abs(ap.mean() - F.random_ap_expectation(positives, 196)) < 5 * ap.std() / np.sqrt(count)
    pointing = F.pointing_game(maps, truth)
    share = positives / 196
    assert abs(pointing.mean() - share) < 5 * np.sqrt(share * (1 - share) / count)
    ratio = F.object_mass_ratio(maps, truth)
    assert abs(ratio.mean() - 1.0) < 5 * ratio.std() / np.sqrt(count)
    other = np.roll(truth, 5, axis=1)                     # a second object of the same size, rows 5.. of the grid
    shares = (F.class_share(maps, truth, other) + F.class_share(rng.random((count, 14, 14)), other, truth)) / 2
    assert abs(shares.mean() - 0.5) < 5 * shares.std() / np.sqrt(count)


# --- perturbation -----------------------------------------------------------------------------------------------

def test_removal_order_breaks_ties_at_random_and_follows_the_map():
    maps = np.array([[[0.5, 0.9], [0.1, 0.5]]])
    first = F.removal_order(maps, True, rng=0)[0]
    assert first[0] == 1 and first[-1] == 2 and set(first[1:3]) == {0, 3}
    assert list(F.removal_order(maps, False, rng=0)[0][[0, 3]]) == [2, 1]
    flat = np.zeros((1, 4, 4))
    orders = {tuple(F.removal_order(flat, True, rng=seed)[0]) for seed in range(5)}
    assert len(orders) > 1                                # a flat map: a new order for each draw


def test_remove_patches_paints_the_mean_colour_by_hand():
    images = np.arange(2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    order = np.array([[3, 0, 1, 2], [0, 1, 2, 3]])
    out = F.remove_patches(images, order, 1, patch_size=2)
    np.testing.assert_array_equal(out[0, 0, 2:, 2:], images[0].mean())     # image 0: its bottom-right patch
    np.testing.assert_array_equal(out[1, 0, :2, :2], images[1].mean())     # image 1: its top-left patch
    untouched = np.ones((2, 1, 4, 4), bool)
    untouched[0, 0, 2:, 2:] = untouched[1, 0, :2, :2] = False
    np.testing.assert_array_equal(out[untouched], images[untouched])
    np.testing.assert_array_equal(F.remove_patches(images, order, 0, 2), images)


def test_oracle_perturbation_curves_are_monotone_and_as_worked_by_hand():
    # a "model" that is right while any object pixel keeps its colour: 16 patches, the object on 3 of them
    rng = np.random.default_rng(4)
    images = rng.random((5, 1, 8, 8)) + 10.0
    masks = np.zeros((5, 8, 8), bool)
    masks[:, 2:6, 2:4] = True                              # 2 whole patches ...
    masks[:, 0, 0] = True                                  # ... and one pixel of a third
    labels = np.arange(5)

    def predict(x):
        kept = (x[:, 0] == images[:, 0]) & masks           # object pixels still as drawn
        return np.where(kept.any(axis=(1, 2)), labels, -1)

    oracle = F.patch_coverage(masks, (4, 4))
    levels = (0.1, 0.2, 0.3, 0.5, 0.9, 1.0)
    positive = F.perturbation_correct(images, labels, oracle, predict, 2, levels, True, rng=0).mean(axis=0)
    negative = F.perturbation_correct(images, labels, oracle, predict, 2, levels, False, rng=0).mean(axis=0)
    # removing round(f * 16) = 2, 3, 5, 8, 14, 16 patches. Most covered first: the two whole object patches go
    # first, the one holding a single object pixel third, so the object is gone from 3 patches removed on
    np.testing.assert_array_equal(positive, [1, 0, 0, 0, 0, 0])
    # least covered first: the 13 empty patches, then the one-pixel patch; the whole ones go only at 16
    np.testing.assert_array_equal(negative, [1, 1, 1, 1, 1, 0])
    assert np.all(np.diff(positive) <= 0) and np.all(np.diff(negative) <= 0)
    assert F.curve_auc(positive, levels) < F.curve_auc(negative, levels)


def test_curve_auc_by_hand():
    assert F.curve_auc([1.0, 1.0, 0.0], [0.1, 0.5, 0.9]) == pytest.approx((0.4 + 0.2) / 0.8)
    np.testing.assert_allclose(F.curve_auc(np.ones((3, 9))), 1.0)
    with pytest.raises(ArgumentError, match="one entry per level"):
        F.curve_auc([1.0, 0.0])


def test_mean_interval():
    constant = F.mean_interval([0.5] * 10)
    assert constant["mean"] == constant["low"] == constant["high"] == 0.5 and constant["n"] == 10
    values = np.r_[np.random.default_rng(5).normal(2.0, 1.0, 400), np.nan]
    summary = F.mean_interval(values)
    assert summary["undefined"] == 1 and summary["n"] == 400
    assert summary["low"] < summary["mean"] < summary["high"]
    # the bootstrap interval of a mean is about +-1.96 standard errors (0.05 each way here)
    assert summary["high"] - summary["low"] == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.2)


def test_scores_reject_bad_input():
    with pytest.raises(ArgumentError, match="same|one shape"):
        F.average_precision(np.zeros((1, 2, 2)), np.zeros((1, 2, 3), bool))
    with pytest.raises(ArgumentError, match="bool"):
        F.best_iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
    with pytest.raises(ArgumentError, match="NaN"):
        F.pointing_game(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2), bool))
    with pytest.raises(ArgumentError, match="cover"):
        F.patch_mask(np.zeros((1, 4, 4), bool), (2, 2), cover=0)


# --- the methods ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    """A small random model (8 px patches of a 32 px image: a 4 x 4 grid, 2 layers) and its trace of two images."""
    model = nv.ViT(nv.ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3),
                   seed=0, dtype=np.float64)
    images = np.random.default_rng(6).standard_normal((2, 3, 32, 32))
    return model, model.forward(images)


def test_every_method_gives_one_finite_value_per_patch(small):
    model, trace = small
    grads = model.backward(trace, [0, 2])
    coverage = np.random.default_rng(7).random((2, 4, 4))
    context = dict(rng=np.random.default_rng(0), coverage=coverage, model=model, target=np.array([0, 2]), steps=2)
    for name in F.METHODS:
        values = F.explain(name, trace, grads, **context)
        assert values.shape == (2, 4, 4) and np.all(np.isfinite(values)), name
    np.testing.assert_array_equal(F.explain("oracle", trace, coverage=coverage), coverage)
    centre = F.explain("centre", trace)
    top = centre[0] == centre[0].max()
    assert top[1:3, 1:3].all() and top.sum() == 4        # the four middle patches are the top of the bump
    with pytest.raises(ArgumentError, match="unknown explanation method"):
        F.explain("saliency", trace)
    with pytest.raises(ArgumentError, match="needs gradients"):
        F.explain("chefer", trace)


def test_attention_maps_read_the_trace_as_the_analysis_functions_do(small):
    model, trace = small
    layers = trace.attention
    np.testing.assert_allclose(F.explain("attention", trace),
                               layers[-1].mean(axis=1)[:, 0, 1:].reshape(2, 4, 4), rtol=1e-12)
    full = analysis.attention_rollout(layers, "max", start_layer=1)          # [B, N, N]
    np.testing.assert_allclose(F.explain("rollout_late", trace),
                               analysis.attention_rollout(layers, "mean", start_layer=1)[:, 0, 1:].reshape(2, 4, 4),
                               rtol=1e-10)
    np.testing.assert_allclose(analysis.rollout_map(trace, "max", 1), full[:, 0, 1:].reshape(2, 4, 4), rtol=1e-10)
    # flow by the default exact solver against analysis.attention_flow, the token-by-token original
    flow = F.explain("flow", trace)
    np.testing.assert_allclose(flow[1].ravel(), analysis.attention_flow(layers, 0, image=1)[1:], atol=1e-9)


def test_class_agnostic_maps_do_not_depend_on_the_class(small):
    model, trace = small
    for name in ("attention", "rollout", "rollout_min", "flow", "centre"):
        assert not F.METHODS[name].class_specific
        np.testing.assert_array_equal(F.explain(name, trace, model.backward(trace, 0)),
                                      F.explain(name, trace, model.backward(trace, 1)))
    chefer = [F.explain("chefer", trace, model.backward(trace, c)) for c in (0, 1)]
    assert not np.allclose(chefer[0], chefer[1])          # a class-specific map moves with the class


# --- the command, end to end -------------------------------------------------------------------------------------

def test_bench_command_end_to_end(tmp_path):
    # a small random model at 112 px with 8 px patches: the scenes' 14 x 14 grid, so the two objects stay apart
    config = nv.ViTConfig(img_size=112, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=10,
                          mean=(0.5,) * 3, std=(0.5,) * 3)
    nv.ViT(config, seed=0).save(tmp_path / "small.npz")
    command = [sys.executable, str(ROOT / "bench" / "explanations.py"), "--model", str(tmp_path / "small.npz"),
               "--images", "4", "--pairs", "3", "--grad-images", "2", "--subset", "2", "--ig-steps", "2",
               "--out", str(tmp_path), "--figures", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "explanations.json").read_text())
    assert set(result["methods"]) == set(F.METHODS)
    assert result["methods"]["rollout"]["average_precision"]["n"] == 4
    assert result["methods"]["chefer"]["average_precision"]["n"] == 2
    assert result["methods"]["flow"]["perturbation"]["positive"]["images"] == 2
    assert len(result["methods"]["oracle"]["perturbation"]["negative"]["accuracy"]) == 9
    assert result["methods"]["oracle"]["average_precision"]["mean"] == 1.0
    assert result["methods"]["rollout"]["class_sensitivity"]["mean"] == pytest.approx(0.5)
    assert "| method |" in done.stdout and "single-object scenes" in done.stderr
    assert (tmp_path / "explanations.png").stat().st_size > 10_000
    assert (tmp_path / "explanations_disagree.png").stat().st_size > 5_000
