"""training.evaluate: the measures behind the shipped model's targets (weights/MODEL_CARD.md), on hand-made inputs
and on a tiny random model (no torch)."""
import numpy as np
import pytest

import numpy_vit as nv
from training import evaluate as E
from training.synthetic_shapes import CLASSES


def test_patches_on_object_marks_any_patch_the_mask_touches():
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 15, 15] = True            # one pixel, top-left patch
    masks[0, 20:22, 30] = True         # two pixels, bottom-right patch
    assert E.patches_on_object(masks, (2, 2)).tolist() == [[True, False, False, True]]


def test_rollout_object_ratio_is_1_for_a_blind_map_and_1_over_fraction_on_the_object():
    on = np.array([[True, False, False, False], [True, True, False, False]])
    uniform = np.full((2, 4), 0.25)
    np.testing.assert_allclose(E.rollout_object_ratio(uniform, on), [1.0, 1.0])
    focused = np.array([[3.0, 0, 0, 0], [1.0, 1.0, 0, 0]])            # all mass on the object, unnormalised
    np.testing.assert_allclose(E.rollout_object_ratio(focused, on), [4.0, 2.0])
    away = np.array([[0, 1.0, 1.0, 1.0], [0, 0, 1.0, 1.0]])
    np.testing.assert_allclose(E.rollout_object_ratio(away, on), [0.0, 0.0])


def test_position_embedding_spearman_reads_the_grid():
    gh = gw = 4
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    centres = np.stack([rows.ravel(), cols.ravel()], 1) * 0.5                   # [P, 2]
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles)], 1)                   # [64, 2]
    phase = centres @ directions.T                                               # [P, 64]
    # cos(similarity) of two rows = mean over directions of cos(projected distance): falls with the distance
    # (a Bessel J0, monotone up to 2.4; the farthest pair here is 2.1 apart)
    smooth = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)             # [P, 128]
    table = np.concatenate([np.zeros((1, 128)), smooth])[None]                  # [1, 1 + P, 128]
    assert E.position_embedding_spearman(table, (gh, gw), 1) > 0.95
    noise = np.random.default_rng(0).normal(size=(1, 1 + gh * gw, 64))
    assert abs(E.position_embedding_spearman(noise, (gh, gw), 1)) < 0.3


@pytest.fixture(scope="module")
def tiny_result():
    config = nv.ViTConfig(name="tiny", img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                          num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, labels=CLASSES)
    return E.evaluate(nv.ViT(config, seed=0), seed=5, n_accuracy=30, n_attention=6)


def test_evaluate_reports_every_measure_per_layer(tiny_result):
    r = tiny_result
    assert 0 <= r["accuracy"] <= 1 and r["n_accuracy"] == 30 and r["n_attention"] == 6
    assert len(r["mean_attention_distance_px"]) == 3
    assert len(r["cls_attention_object_ratio_per_layer"]) == 3 and len(r["rollout_object_ratio_through_layer"]) == 3
    # the rollout through all layers is the rollout: the last partial ratio is the reported one
    assert r["rollout_object_ratio_through_layer"][-1] == pytest.approx(r["rollout_object_ratio"], abs=0.005)
    # through layer 0 alone, the rollout is layer 0's attention plus the identity: its CLS row over the patches
    # is layer 0's own CLS attention, renormalised, so both ratios agree
    assert r["rollout_object_ratio_through_layer"][0] == pytest.approx(r["cls_attention_object_ratio_per_layer"][0],
                                                                       abs=0.01)
    text = E.report(r)
    assert "rollout through layers 0..l" in text and "accuracy" in text and "layer  2" in text
