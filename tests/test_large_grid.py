"""Figures at a 37 x 37 grid (DINOv2's 518 px at 14 px patches), a resampled position embedding, and the cost of
drawing from (model, image): legible labels, stated steps and resampling, and only what a figure draws recorded."""
import numpy as np
import pytest

from constructed_models import constructed_vit, object_image
from numpy_vit import analysis, cli, viz
from numpy_vit.viz.figures import make_figure, record_for
from numpy_vit.weights.named_models import at_img_size

GRID = (37, 37)


def all_text(fig):
    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(lambda a: hasattr(a, "get_text")))


@pytest.fixture(scope="module")
def model():
    """37 x 37 patches of 14 px, 4 registers; layer 0 head 0 a sink at (30, 5), reg0 read by layer 1 head 1."""
    return constructed_vit(grid=GRID, patch=14, width=32, depth=3, heads=2, sink=(30, 5), registers=4,
                           register_sink_layer=1, name="vit_small_patch14_reg4_dinov2")


@pytest.fixture(scope="module")
def image():
    return object_image(GRID, 14, (4, 20), (18, 34))


def test_the_patch_grid_labels_every_kth_patch_and_says_so(model, image):
    trace = model.run(image, record=[])
    fig = make_figure("patch_grid", trace)
    labels = [t for t in fig.axes[0].texts]
    assert len(labels) == 13 * 13                                 # rows and columns 0, 3, ..., 36 of 37
    assert {t.get_text() for t in labels} >= {"0", "3", "111", "1368"}
    assert "token index on rows and columns 0, 3, 6, ..." in fig.axes[0].get_title()


def test_the_tile_grid_is_subsampled_above_20_positions(model, image):
    trace = model.run(image, record=["pos_embed"])
    fig = make_figure("position_embedding", trace)
    tiles = [ax for ax in fig.get_axes() if ax.get_title().startswith("(d)")][0]
    assert len(tiles.get_xticks()) == len(tiles.get_yticks()) == 19            # 0, 2, ..., 36
    assert "rows and columns 0, 2, 4, ... of the 37x37 positions" in tiles.get_title()
    assert "(0 prefix token row(s) excluded)" in all_text(fig)                 # registers carry no position


def test_a_resampled_position_embedding_is_said_on_every_figure(model):
    small = at_img_size(model, (224, 224))                        # 16 x 16 patches from the 37 x 37 embedding
    assert small.config.pos_embed_grid == GRID
    note = "position embedding resampled from 37x37 (bicubic, antialiased) to this 16x16 grid"
    trace = small.run(object_image((16, 16), 14, (2, 9), (8, 15)))
    for name in ("patch_grid", "position_embedding", "attention_layers", "attention_rollout", "attention_budget"):
        assert note in all_text(make_figure(name, trace)), name
    # the same when the model is run at another size directly
    trace = model.run(object_image((16, 16), 14, (2, 9), (8, 15)), img_size=224, record=["blocks.*.attn.pattern"])
    assert note in all_text(make_figure("attention_distance", trace))
    assert note not in all_text(make_figure("attention_distance", model.run(object_image(GRID, 14),
                                                                               record=["blocks.*.attn.pattern"])))


def test_distances_are_given_in_patches_too(model, image):
    fig = make_figure("attention_distance", model.run(image, record=["blocks.*.attn.pattern"]))
    assert "in patches (14 px each)" in all_text(fig)


def test_a_figure_from_model_and_image_records_what_it_draws_and_reuses_the_trace(model, image):
    viz.visualize_attention_map(model, image, layer_indices=[0])
    first = model.last_trace
    assert "blocks.0.attn.pattern" in first and "blocks.0.mlp.pre" not in first and "blocks.0.resid_post" not in first
    viz.visualize_all_heads(model, image, layer_idx=0)            # same model and image: no second run
    assert model.last_trace is first
    viz.visualize_cls_token_evolution(model, image)               # needs the residual stream: runs again
    assert model.last_trace is not first and "blocks.0.resid_pre" in model.last_trace
    viz.visualize_attention_map(model, image[::-1].copy(), layer_indices=[0])   # another image
    assert model.last_trace is not first
    assert record_for(["patch_grid"]) == ["logits", "pooled"]


def test_the_bare_model_path_reads_patch_size_from_the_model(model, image):
    model.run(image, img_size=224, record=["blocks.*.attn.pattern"])   # a grid unlike the config's
    model.last_trace = None                                            # only model.attention_maps is left
    fig = viz.visualize_attention_distance(model)
    assert "16 px patches" not in all_text(fig) and "in patches (14 px each)" in all_text(fig)


def test_the_bare_attention_maps_list_reads_patch_size_grid_and_image_from_its_run(model, image):
    model.run(image, img_size=224, record=["blocks.*.attn.pattern"])   # 16 x 16 patches of 14 px, 4 registers
    maps = model.attention_maps
    assert isinstance(maps, list) and len(maps) == 3 and maps.trace is model.last_trace
    fig = viz.visualize_attention_distance(maps)
    assert "16 px patches" not in all_text(fig) and "in patches (14 px each)" in all_text(fig)
    assert "guessed" not in all_text(fig)
    fig = viz.visualize_attention_rollout(maps)
    assert "16 px" not in all_text(fig) and "guessed" not in all_text(fig)
    assert any(len(ax.images) == 2 for ax in fig.get_axes())     # the run's image in grey under the map
    fig = viz.visualize_attention_map(maps, layer_indices=[0])   # a figure that needs the image takes it too
    assert any(len(ax.images) == 2 for ax in fig.get_axes())
    # a slice is a plain list: it knows nothing of the run, and the figure says what it had to assume
    bare = maps[:]
    assert type(bare) is list
    with pytest.raises(Exception, match="cannot tell the patch grid"):   # 4 registers + 16x16 is no 1 + square
        viz.visualize_attention_distance(bare)


def test_the_rollout_row_matches_the_full_matrix_at_37x37(model, image):
    trace = model.run(image, record=["blocks.*.attn.pattern"])
    layers = analysis.trace_layers(trace)
    row = analysis.attention_rollout_row(layers, 0, num_prefix_tokens=5, exclude_heads=[(0, 0)])
    full = analysis.attention_rollout(layers, num_prefix_tokens=5, exclude_heads=[(0, 0)])[0, 0]
    np.testing.assert_allclose(row, full, rtol=0, atol=1e-12)   # float64 sums of 1,374 terms in another order


def test_show_takes_start_layer_and_exclusions(model, image, tmp_path, capsys):
    from PIL import Image

    model.save(tmp_path / "m.npz")
    Image.fromarray(image).save(tmp_path / "scene.png")
    argv = ["show", str(tmp_path / "scene.png"), "--model", str(tmp_path / "m.npz"), "--figure", "rollout",
            "-o", str(tmp_path / "out"), "--exclude-heads", "0.0", "--start-layer", "0", "--exclude-layers", "2"]
    assert cli.main(argv) == 0
    assert (tmp_path / "out" / "scene_attention_rollout.png").is_file()
    assert cli.main(argv[:-6] + ["--exclude-heads", "zero"]) == 2
    assert "give each head as LAYER.HEAD" in capsys.readouterr().err
