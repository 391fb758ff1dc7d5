"""numpy_vit.analysis against small cases worked out by hand (the arithmetic is in the comments)."""
import numpy as np
import pytest

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

# Two layers of three tokens (token 0 = CLS, 1 and 2 = patches on a 1x2 grid), one head each.
# Every row of A + I sums to 2, so A_hat = (A + I) / 2.
A0 = np.array([[0, .5, .5],
               [0, 1., 0],
               [0, 0, 1.]])       # A_hat0 = [[1/2, 1/4, 1/4], [0, 1, 0], [0, 0, 1]]
A1 = np.array([[0, 1., 0],
               [1., 0, 0],
               [0, 0, 1.]])       # A_hat1 = [[1/2, 1/2, 0], [1/2, 1/2, 0], [0, 0, 1]]


def as_layer(matrix):            # [N, N] -> [B=1, H=1, N, N]
    return np.asarray(matrix)[None, None]


def test_rollout_two_layers_by_hand():
    rollout = analysis.attention_rollout([as_layer(A0), as_layer(A1)])
    # R = A_hat1 @ A_hat0; row 0 = 1/2 [1/2, 1/4, 1/4] + 1/2 [0, 1, 0] = [1/4, 5/8, 1/8]
    expected = np.array([[1 / 4, 5 / 8, 1 / 8],
                         [1 / 4, 5 / 8, 1 / 8],
                         [0, 0, 1]])
    np.testing.assert_allclose(rollout[0], expected, atol=1e-12)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(analysis.attention_to_grid(rollout[:, 0], (1, 2), 1), [[[5 / 8, 1 / 8]]])


def test_rollout_one_layer_is_a_hat_and_start_layer_skips():
    np.testing.assert_allclose(analysis.attention_rollout([as_layer(A0), as_layer(A1)], start_layer=1)[0],
                               (A1 + np.eye(3)) / 2, atol=1e-12)


def test_rollout_every_layer_is_the_rollout_through_each_layer():
    layers = [as_layer(A0), as_layer(A1), as_layer(A0)]
    steps = analysis.attention_rollout(layers, every_layer=True)
    assert steps.shape == (3, 1, 3, 3)
    for depth in range(1, 4):
        np.testing.assert_allclose(steps[depth - 1], analysis.attention_rollout(layers[:depth]), atol=1e-12)
    assert analysis.attention_rollout(layers, start_layer=1, every_layer=True).shape == (2, 1, 3, 3)


def test_head_fusion_mean_max_min():
    # two heads whose mean is A0's first row: [0, 1, 0] and [0, 0, 1]
    heads = np.stack([A1, np.array([[0, 0, 1.], [1., 0, 0], [0, 0, 1.]])])[None]  # [1, 2, 3, 3]
    np.testing.assert_allclose(analysis.fuse_heads(heads, "mean")[0, 0], [0, .5, .5])
    np.testing.assert_allclose(analysis.fuse_heads(heads, "max")[0, 0], [0, 1, 1])
    np.testing.assert_allclose(analysis.fuse_heads(heads, "min")[0, 0], [0, 0, 0])
    # max: row 0 of A + I = [1, 1, 1] -> A_hat row [1/3, 1/3, 1/3]
    rollout = analysis.attention_rollout([heads], head_fusion="max")
    np.testing.assert_allclose(rollout[0, 0], [1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ArgumentError, match="head_fusion"):
        analysis.attention_rollout([heads], head_fusion="median")


def test_rollout_rejects_a_matrix_that_is_not_row_stochastic():
    bad = A0.copy()
    bad[1] = [0.5, 1.5, -1.0]     # sums to 1 but has a negative entry
    with pytest.raises(ArgumentError, match="layer 1 is not row-stochastic"):
        analysis.attention_rollout([as_layer(A0), as_layer(bad)])


def test_discard_never_touches_the_cls_row():
    a = np.array([[.1, .1, .8],   # the CLS row holds the two smallest values of the matrix
                  [.2, .3, .5],
                  [.6, .25, .15]])[None]
    out = analysis.discard_lowest(a, 0.5, num_prefix_tokens=1)
    np.testing.assert_array_equal(out[0, 0], a[0, 0])
    # the 6 patch-row entries sorted: .15 .2 .25 .3 .5 .6; discarding half zeroes the lowest three
    np.testing.assert_allclose(out[0, 1:], [[0, .3, .5], [.6, 0, 0]])
    rollout = analysis.attention_rollout([a[:, None]], discard_ratio=0.5)
    np.testing.assert_allclose(rollout.sum(-1), 1.0)
    with pytest.raises(ArgumentError, match="discard_ratio"):
        analysis.discard_lowest(a, 1.0)


def test_attention_flow_two_layers_by_hand():
    # Output CLS (layer 2) -> layer 1 capacities [1/2, 1/2, 0]; layer 1 -> input A_hat0.
    # To input 1: via token 0 min(1/2, 1/4) + via token 1 min(1/2, 1) = 3/4  (rollout says 5/8)
    # To input 0: via token 0 min(1/2, 1/2) = 1/2; to input 2: via token 0 min(1/2, 1/4) = 1/4
    flow = analysis.attention_flow([as_layer(A0), as_layer(A1)], query=0)
    np.testing.assert_allclose(flow, [1 / 2, 3 / 4, 1 / 4], atol=1e-12)
    # one layer: a single edge per input token, so the flow is the A_hat row
    np.testing.assert_allclose(analysis.attention_flow([as_layer(A0)]), [1 / 2, 1 / 4, 1 / 4])


def one_hot_to_patch0(grid, num_prefix, cls_share=0.0):
    """Every query sends (1 - cls_share) to patch 0 and cls_share to the CLS token."""
    n = num_prefix + grid[0] * grid[1]
    a = np.zeros((1, 1, n, n))
    a[..., num_prefix] = 1.0 - cls_share
    a[..., 0] += cls_share
    return a


def test_mean_attention_distance_of_one_hot_attention():
    # 2x3 grid of 10 px patches, every patch attends only to patch 0 (top-left).
    # Grid offsets to (0, 0): (0,0) (0,1) (0,2) (1,0) (1,1) (1,2) -> 0, 10, 20, 10, 10*sqrt2, 10*sqrt5 px
    expected = (0 + 10 + 20 + 10 + 10 * np.sqrt(2) + 10 * np.sqrt(5)) / 6
    got = analysis.mean_attention_distance([one_hot_to_patch0((2, 3), 1)], (2, 3), 10, 1)
    assert got.shape == (1, 1)
    np.testing.assert_allclose(got[0, 0], expected)
    # half the mass on CLS: renormalising keeps the same distance; probing-vits' "drop" halves it
    half = [one_hot_to_patch0((2, 3), 1, cls_share=0.5)]
    np.testing.assert_allclose(analysis.mean_attention_distance(half, (2, 3), 10, 1), expected)
    np.testing.assert_allclose(analysis.mean_attention_distance(half, (2, 3), 10, 1, prefix="drop"), expected / 2)


def test_mean_attention_distance_self_attention_is_zero_and_per_head():
    n = 1 + 6
    a = np.zeros((2, 2, n, n))                # 2 images, 2 heads
    a[:, 0] = np.eye(n)                       # head 0 attends to itself: distance 0
    a[:, 1] = one_hot_to_patch0((3, 2), 1)[0, 0]
    got = analysis.mean_attention_distance([a, a], (3, 2), 16, 1)
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got[:, 0], 0.0)
    # 3x2 grid to (0, 0): 0, 1, 1, sqrt2, 2, sqrt5 patches of 16 px
    np.testing.assert_allclose(got[:, 1], 16 * (0 + 1 + 1 + np.sqrt(2) + 2 + np.sqrt(5)) / 6)


def test_uniform_attention_distance_matches_uniform_pattern():
    grid, n = (3, 4), 1 + 12
    a = np.full((1, 1, n, n), 1.0 / n)
    np.testing.assert_allclose(analysis.mean_attention_distance([a], grid, 16, 1)[0, 0],
                               analysis.uniform_attention_distance(grid, 16))


def test_position_embedding_similarity_of_constructed_embeddings():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    pos_embed = np.stack([[9., 9., 9.],            # the CLS row: must be excluded
                          e1, e2, e1 + e2, -e1])[None]  # [1, 5, 3], a 2x2 grid of patches
    sim = analysis.position_embedding_similarity(pos_embed, (2, 2), 1)
    assert sim.shape == (2, 2, 2, 2)
    flat = sim.reshape(4, 4)
    r = 1 / np.sqrt(2)
    expected = np.array([[1, 0, r, -1],
                         [0, 1, r, 0],
                         [r, r, 1, -r],
                         [-1, 0, -r, 1]])
    np.testing.assert_allclose(flat, expected, atol=1e-12)
    # the tile of patch (0, 1) is its similarity to every position, laid out on the grid
    np.testing.assert_allclose(sim[0, 1], [[0, 1], [r, 0]], atol=1e-12)
    # no_embed_class layout: patch rows only
    np.testing.assert_allclose(analysis.position_embedding_similarity(pos_embed[0, 1:], (2, 2), 1), sim)
    with pytest.raises(ArgumentError, match="pos_embed has 5 rows"):
        analysis.position_embedding_similarity(pos_embed, (3, 2), 1)


def test_dino_mask_keeps_sixty_percent_of_the_mass():
    values = np.array([[0.5, 0.25], [0.125, 0.125]])
    # sorted 0.5, 0.25, ...: 0.5 < 0.6, 0.75 >= 0.6 -> the two largest
    np.testing.assert_array_equal(analysis.dino_mask(values, 0.6), [[True, True], [False, False]])
    np.testing.assert_array_equal(analysis.dino_mask(values, 0.5), [[True, False], [False, False]])
    np.testing.assert_array_equal(analysis.dino_mask(values * 7, 0.8), [[True, True], [True, False]])
    assert analysis.dino_mask(values, 1.0).all()


def test_dino_mask_equals_the_dino_repository_rule_on_random_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 4, 6))
    for keep in (0.3, 0.6, 0.9):
        # Caron et al.'s code: sort ascending, normalise, cumsum, keep cumval > 1 - threshold
        flat = maps.reshape(5, -1)
        idx = np.argsort(flat, -1)
        val = np.take_along_axis(flat, idx, -1)
        cum = np.cumsum(val / val.sum(-1, keepdims=True), -1)
        reference = np.zeros_like(flat, dtype=bool)
        np.put_along_axis(reference, idx, cum > 1 - keep, -1)
        np.testing.assert_array_equal(analysis.dino_mask(maps, keep), reference.reshape(maps.shape))
        kept = (maps * analysis.dino_mask(maps, keep)).sum((1, 2)) / maps.sum((1, 2))
        assert np.all(kept >= keep)


def test_attention_map_non_square_grid_query_and_prefix():
    grid, prefix = (2, 3), ("cls", "dist")
    n = 2 + 6
    a = np.arange(2 * n * n, dtype=float).reshape(1, 2, n, n)
    a /= a.sum(-1, keepdims=True)
    cls_map = analysis.attention_map(a, grid, 2, head=1, prefix_names=prefix)
    np.testing.assert_allclose(cls_map[0], a[0, 1, 0, 2:].reshape(2, 3))
    dist_map = analysis.attention_map(a, grid, 2, head=0, query="dist", prefix_names=prefix)
    np.testing.assert_allclose(dist_map[0], a[0, 0, 1, 2:].reshape(2, 3))
    # patch (1, 2) is patch 5 = token 7
    patch_map = analysis.attention_map(a, grid, 2, head=0, query=(1, 2), prefix_names=prefix)
    np.testing.assert_allclose(patch_map[0], a[0, 0, 7, 2:].reshape(2, 3))
    np.testing.assert_allclose(analysis.attention_map(a, grid, 2, head="mean", query=5, prefix_names=prefix)[0],
                               a[0, :, 7, 2:].mean(0).reshape(2, 3))
    with pytest.raises(ArgumentError, match="head 2 is out of range"):
        analysis.attention_map(a, grid, 2, head=2)
    with pytest.raises(ArgumentError, match="query patch 6 is out of range"):
        analysis.attention_map(a, grid, 2, query=6)
    with pytest.raises(ArgumentError, match="needs 10"):
        analysis.attention_map(a, (2, 4), 2)


def test_query_defaults_to_mean_without_class_token():
    assert analysis.query_token_index(None, (2, 2), ()) == "mean"
    assert analysis.query_token_index(None, (2, 2), ("cls", "reg0")) == 0
    assert analysis.query_token_index("reg0", (2, 2), ("cls", "reg0")) == 1
    with pytest.raises(ArgumentError, match="not a token"):
        analysis.query_token_index("cls", (2, 2), ())


def test_upsample_nearest_and_bilinear():
    grid_map = np.array([[0.0, 1.0]])
    np.testing.assert_array_equal(analysis.upsample_grid(grid_map, (2, 4), "nearest"),
                                  [[0, 0, 1, 1], [0, 0, 1, 1]])
    # output centres in input coordinates: -0.25, 0.25, 0.75, 1.25 -> clamped 0, .25, .75, 1
    np.testing.assert_allclose(analysis.upsample_grid(grid_map, (1, 4), "bilinear"), [[0, .25, .75, 1]])
    with pytest.raises(ArgumentError, match="interpolation"):
        analysis.upsample_grid(grid_map, (1, 4), "bicubic")


def test_pca_recovers_a_line_and_matches_sklearn():
    direction = np.array([3.0, 4.0]) / 5
    x = np.linspace(-2, 2, 9)[:, None] * direction + 1.0
    scores, components, ratio = analysis.pca(x, 2)
    np.testing.assert_allclose(components[0], direction, atol=1e-12)
    np.testing.assert_allclose(ratio, [1, 0], atol=1e-12)
    np.testing.assert_allclose(scores[:, 0], np.linspace(-2, 2, 9), atol=1e-12)
    sklearn = pytest.importorskip("sklearn.decomposition")
    data = np.random.default_rng(1).normal(size=(20, 6))
    ours, _, ours_ratio = analysis.pca(data, 3)
    theirs = sklearn.PCA(3).fit(data)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs.transform(data)), atol=1e-10)
    np.testing.assert_allclose(ours_ratio, theirs.explained_variance_ratio_, atol=1e-12)


def test_token_trajectory_and_filters():
    residuals = [np.full((2, 3, 4), float(i)) for i in range(5)]
    residuals[2][1, 0] = 7.0
    path = analysis.token_trajectory(residuals, token=0, image=1)
    assert path.shape == (5, 4)
    np.testing.assert_array_equal(path[:, 0], [0, 1, 7, 3, 4])
    with pytest.raises(ArgumentError, match="image 2 is out of range"):
        analysis.token_trajectory(residuals, image=2)
    # D = 5 filters, all multiples of one RGB pattern: the first component is that pattern
    pattern = np.random.default_rng(2).random((3, 4, 4))
    weight = np.arange(1, 6)[:, None, None, None] * pattern
    images, ratio = analysis.patch_embedding_filters(weight, 2)
    assert images.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(ratio[0], 1.0, atol=1e-12)
    scaled = pattern.transpose(1, 2, 0)
    scaled = (scaled - scaled.min()) / (scaled.max() - scaled.min())
    np.testing.assert_allclose(images[0], scaled, atol=1e-10)


def test_bad_inputs_raise_argument_errors():
    with pytest.raises(ArgumentError, match="empty"):
        analysis.attention_rollout([])
    with pytest.raises(ArgumentError, match=r"\[B, H, N, N\]"):
        analysis.attention_rollout([np.zeros((3, 4))])
    with pytest.raises(ArgumentError, match="NaN"):
        analysis.attention_rollout([np.full((1, 1, 2, 2), np.nan)])
    with pytest.raises(ArgumentError, match="start_layer 2 is out of range"):
        analysis.attention_rollout([as_layer(A0), as_layer(A1)], start_layer=2)
    with pytest.raises(ArgumentError, match="grid"):
        analysis.mean_attention_distance([as_layer(A0)], (0, 2), 16, 1)
    with pytest.raises(ArgumentError, match="prefix"):
        analysis.mean_attention_distance([as_layer(A0)], (1, 2), 16, 1, prefix="keep")
