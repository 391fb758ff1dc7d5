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
