"""The seven figures: drawn with the expected panels, not blank, from (model, image) or a Trace,
on non-square grids and with extra prefix tokens; bad arguments are ArgumentErrors."""
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from numpy_vit import viz
from numpy_vit import ViT, ViTConfig, analysis
from numpy_vit.errors import ArgumentError
from numpy_vit.viz._common import HEAT_CMAP, SIMILARITY_CMAP
from numpy_vit.viz.figures import FIGURES, compare_figure, figure_name, make_figure

DEPTH, HEADS = 3, 4


def small_model(**fields):
    """A 3-layer, 4-head, width-32 ViT on a non-square 48x80 image (a 3x5 grid): fast, and never square."""
    config = dict(img_size=(48, 80), patch_size=16, embed_dim=32, depth=DEPTH, num_heads=HEADS, num_classes=3,
                  labels=("a", "b", "c"), crop_pct=1.0)
    return ViT(ViTConfig(**{**config, **fields}), seed=1)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    pixels[10:30, 40:70] = (255, 40, 40)         # a red block, so the image has structure
    return pixels


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def trace(model, image):
    return model.run(image)


def rendered(fig, path, min_ink=0.25):
    """Save, read back, and check the PNG is not blank: many colours, and at least ``min_ink`` of the
    pixels not white (image panels cover a quarter or more; line plots leave most of the canvas white,
    and their axes and text alone cover about 2%)."""
    fig.savefig(path, dpi=50)                                # half the default resolution keeps the tests quick
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(float)
    not_white = (pixels.min(-1) < 245).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert not_white > min_ink, f"{path.name} is {1 - not_white:.0%} white"
    assert colours > 100, f"{path.name} has only {colours} colours"
    return pixels


LINE_PLOTS = {"attention_distance": 0.04, "cls_evolution": 0.04}


def titled_axes(fig):
    """Visible axes that carry a title (the panels; colour bars have none)."""
    return [ax for ax in fig.get_axes() if ax.get_visible() and ax.get_title()]


def all_text(fig):
    """Every text on the figure, wrapped lines joined by single spaces."""
    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_patch_grid_labels_every_patch(trace, image, tmp_path):
    fig = viz.visualize_patch_grid(trace, save_path=tmp_path / "grid.png")
    assert isinstance(fig, Figure) and (tmp_path / "grid.png").exists()
    (ax,) = titled_axes(fig)
    labels = sorted(int(t.get_text()) for t in ax.texts)
    assert labels == list(range(15))                          # a 3x5 grid: patches 0..14
    title = ax.get_title()
    assert "80x48 px model input → 3 rows x 5 columns = 15 patches of 16x16 px" in title   # width x height
    assert "original 80x48 px image, used as it is" in title  # model.run records the array's own size
    rendered(fig, tmp_path / "grid2.png")
    # from a raw image and a config, the same grid, and the image's own size
    fig = viz.visualize_patch_grid(image, config=trace.config)
    assert len(titled_axes(fig)[0].texts) == 15
    assert "original 80x48 px image, used as it is" in titled_axes(fig)[0].get_title()


def test_patch_grid_says_what_was_done_to_the_original_image(model, tmp_path):
    tall = np.full((100, 60, 3), 200, dtype=np.uint8)
    fig = viz.visualize_patch_grid(tall, config=model.config)   # a 48x80 (h x w) input: each side resized
    assert "original 60x100 px image, resized to 80x48 (stretched)" in titled_axes(fig)[0].get_title()
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((480, 640, 3), dtype=np.uint8)).save(path)
    fig = viz.visualize_patch_grid(str(path))                  # the default config: 224x224, crop_pct 0.875
    assert titled_axes(fig)[0].get_title().split("\n") == [
        "224x224 px model input → 14 rows x 14 columns = 196 patches of 16x16 px",
        "original 640x480 px image, resized to 341x256 and centre-cropped to 224x224"]   # crop_pct 0.875
    # a model run through a figure function records the size; make_figure then reads it from the Trace
    viz.visualize_attention_map(model, tall, layer_indices=[0])
    assert model.last_trace.source_size == (100, 60)
    fig = make_figure("patch_grid", model.last_trace)
    assert "original 60x100 px image" in titled_axes(fig)[0].get_title()
    batch = model.run(tall, record=["input"])["input"]                  # (figures record only what they draw)
    assert model.run(batch).source_size is None                         # a normalised batch has no other size


def test_preprocessing_note_follows_the_loader():
    """numpy_vit.image.resized_size is resize_and_crop's arithmetic (short side to size / crop_pct, then the
    crop), which the note reads."""
    from numpy_vit.image import resized_size
    from numpy_vit.viz._common import preprocessing_note

    assert resized_size(480, 640, (224, 224)) == (224, 298)
    assert resized_size(640, 480, (224, 224), crop_pct=0.875) == (341, 256)
    assert resized_size(100, 60, (48, 80)) == (48, 80)
    assert preprocessing_note((224, 224), (224, 224)) == "original 224x224 px image, used as it is"
    assert preprocessing_note((300, 300), (224, 224)) == "original 300x300 px image, resized to 224x224"
    assert preprocessing_note(None, (224, 224)) == "original size not recorded"


def test_attention_map_panels_titles_and_values(model, image, tmp_path):
    fig = viz.visualize_attention_map(model, image, layer_indices=[0, 2],
                                      head_index=1, interpolation="nearest")
    panels = titled_axes(fig)
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["Input image", "Layer 0 · head 1",
                                                                "Layer 2 · head 1"]
    assert len(fig.get_axes()) == 5                           # + two colour bars
    # the drawn heat map is exactly the CLS row of head 1, patch columns, repeated over 16x16 pixels
    expected = model.last_trace["blocks.2.attn.pattern"][0, 1, 0, 1:].reshape(3, 5)
    heat = panels[2].images[1].get_array()
    np.testing.assert_allclose(heat, np.repeat(np.repeat(expected, 16, 0), 16, 1), rtol=1e-6)
    assert f"patches hold {expected.sum():.0%}" in panels[2].get_title()
    rendered(fig, tmp_path / "a.png")


def test_attention_map_default_layers_query_patch_and_dino_mask(trace, tmp_path):
    fig = viz.visualize_attention_map(trace, query=(1, 3), dino_mask=True)
    panels = titled_axes(fig)
    assert len(panels) == 1 + len(set([0, 1, 2]))             # default: four layers spread over 3 -> 0, 1, 2
    assert "patch 8 (row 1, col 3)" in fig._suptitle.get_text()
    expected = trace["blocks.1.attn.pattern"][0, 0, 1 + 8, 1:].reshape(3, 5)
    np.testing.assert_allclose(panels[2].images[1].get_array(),
                               analysis.upsample_grid(expected, (48, 80), "bilinear"), rtol=1e-6)
    assert all(ax.collections for ax in panels[1:])           # the 60% outline is drawn
    assert all(ax.patches for ax in panels[1:])               # the query patch is marked
    rendered(fig, tmp_path / "q.png")


def test_all_heads_one_panel_per_head(model, image, tmp_path):
    fig = viz.visualize_all_heads(model, image, layer_idx=2)
    titles = [ax.get_title() for ax in titled_axes(fig)]
    assert [t.split(" ·")[0] for t in titles] == [f"head {h}" for h in range(HEADS)]
    assert "layer 2" in fig._suptitle.get_text()
    rendered(fig, tmp_path / "h.png")


def test_position_embedding_four_panels(model, tmp_path):
    fig = viz.visualize_position_embedding(model)
    titles = [ax.get_title() for ax in titled_axes(fig)]
    assert [t[:3] for t in titles] == ["(a)", "(b)", "(c)", "(d)"]
    matrix = titled_axes(fig)[0].images[0].get_array()
    assert matrix.shape == (15, 15)                           # patches only, the CLS row excluded
    sim = analysis.position_embedding_similarity(model.params["pos_embed"], (3, 5), 1).reshape(15, 15)
    np.testing.assert_allclose(matrix, sim, rtol=1e-6)
    rendered(fig, tmp_path / "p.png")


def test_attention_distance_numbers_and_prefix_note(trace, tmp_path):
    fig = viz.visualize_attention_distance(trace)
    curve, bars, heads = titled_axes(fig)
    distance = analysis.mean_attention_distance(trace.attention, (3, 5), 16, 1)     # [L, H]
    np.testing.assert_allclose(curve.lines[0].get_ydata(), distance.mean(1))
    assert len(bars.patches) == 3                              # shallow, middle, deep
    assert len(heads.collections) == HEADS
    text = all_text(fig)
    assert "renormalised" in text and "pixels" in text
    rendered(fig, tmp_path / "d.png", min_ink=LINE_PLOTS["attention_distance"])


def test_attention_distance_from_the_guides_list_and_pooled_traces(model, image):
    square = ViT(ViTConfig(img_size=48, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=3), seed=0)
    square.run(image)
    fig = viz.visualize_attention_distance(list(square.attention_maps))    # bare list: guessed 1 + 3x3
    assert "guessed" in all_text(fig) and "16 px" in all_text(fig)
    fig = viz.visualize_attention_distance(square)            # a model that has run: its own layout
    assert "guessed" not in all_text(fig)
    with pytest.raises(ArgumentError, match="cannot tell the patch grid"):
        viz.visualize_attention_distance(list(model.run(image).attention))  # 16 tokens: 1 + 3x5 is no square
    fig = viz.visualize_attention_distance(list(model.run(image).attention), grid=(3, 5), num_prefix_tokens=1,
                                           patch_size=16)
    assert "guessed" not in all_text(fig)
    traces = [model.run(image), model.run(image[:, ::-1].copy())]
    fig = viz.visualize_attention_distance(traces)
    assert "2 image(s)" in all_text(fig)


def test_cls_evolution_start_square_end_star(model, image, tmp_path):
    fig = viz.visualize_cls_token_evolution(model, image)
    path_ax, norm_ax = titled_axes(fig)
    legend = [t.get_text() for t in path_ax.get_legend().get_texts()]
    assert legend == ["in: input to layer 0 (embedding + position)", f"{DEPTH - 1}: output of layer {DEPTH - 1}, the last"]
    # the points are labelled as the legend names them: "in", then the layer whose output each one is
    assert [t.get_text() for t in path_ax.texts] == ["in"] + [str(layer) for layer in range(DEPTH)]
    assert [t.get_text() for t in norm_ax.get_xticklabels()] == ["in"] + [str(layer) for layer in range(DEPTH)]
    assert "depth" not in all_text(fig)
    markers = [c for c in path_ax.collections if len(c.get_offsets()) == 1]
    assert len(markers) == 2
    stream = [model.last_trace[f"blocks.{i}.resid_pre"] for i in range(DEPTH)] + \
        [model.last_trace[f"blocks.{DEPTH - 1}.resid_post"]]
    np.testing.assert_allclose(norm_ax.lines[0].get_ydata(), [np.linalg.norm(r[0, 0]) for r in stream], rtol=1e-5)
    rendered(fig, tmp_path / "c.png", min_ink=LINE_PLOTS["cls_evolution"])


def test_rollout_panels_per_fusion(trace, tmp_path):
    fig = viz.visualize_attention_rollout(trace, discard_ratio=0.5)
    titles = [ax.get_title() for ax in titled_axes(fig)]
    assert titles[0] == "Input image" and titles[1].startswith(f"Last layer ({DEPTH - 1}) alone")
    assert [t.split("fusion: ")[1] for t in titles[2:]] == ["mean", "max", "min"]
    rollout = analysis.attention_rollout(trace.attention, "max", discard_ratio=0.5)[0, 0, 1:].reshape(3, 5)
    np.testing.assert_allclose(titled_axes(fig)[3].images[1].get_array(),
                               analysis.upsample_grid(rollout, (48, 80), "bilinear"), rtol=1e-6)
    assert "50% of patch-row weights discarded" in all_text(fig)
    rendered(fig, tmp_path / "r.png")
    fig = viz.visualize_attention_rollout(trace.attention, grid=(3, 5), num_prefix_tokens=1,
                                          head_fusions=["min"])  # the guide's bare list: maps without an image
    assert len(titled_axes(fig)) == 2


def test_prefix_tokens_dist_and_registers(image, tmp_path):
    model = small_model(distilled=True, num_reg_tokens=2)    # cls, dist, reg0, reg1
    trace = model.run(image)
    fig = viz.visualize_attention_map(trace, layer_indices=[1], query="reg1")
    expected = trace["blocks.1.attn.pattern"][0, 0, 3, 4:].reshape(3, 5)
    np.testing.assert_allclose(titled_axes(fig)[1].images[1].get_array(),
                               analysis.upsample_grid(expected, (48, 80), "bilinear"), rtol=1e-6)
    for name in FIGURES:
        rendered(make_figure(name, trace), tmp_path / f"{name}.png", min_ink=LINE_PLOTS.get(name, 0.25))


def test_figures_registry_and_compare(model, image, tmp_path):
    filenames = [spec.filename for spec in FIGURES.values()]
    assert filenames[:7] == [                                       # the guide's seven, in its order
        "vis_1_patch_grid.png", "vis_2_position_embedding.png", "vis_3_attention_layers.png", "vis_4_all_heads.png",
        "vis_5_attention_distance.png", "vis_6_cls_evolution.png", "vis_7_attention_rollout.png"]
    assert "vis_9_attention_budget.png" in filenames
    assert figure_name("attention_map") == "attention_layers" == figure_name("vis_3_attention_layers")
    before, after = ViT(model.config, seed=5).run(image), model.run(image)
    fig = compare_figure("attention_rollout", [before, after], ["before", "after"])
    assert [sub._suptitle.get_text().split("\n")[0] for sub in fig.subfigs] == ["before", "after"]
    rendered(fig, tmp_path / "cmp.png")


def text_fits(fig, text):
    """Whether a drawn text lies inside the figure (a clipped title does not)."""
    fig.canvas.draw()
    box = text.get_window_extent()
    return box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y0 >= 0 and box.y1 <= fig.bbox.height


def test_compare_position_embedding_one_colour_map_one_scale_titles_that_fit(model, image):
    random_like = ViT(model.config, seed=5)
    random_like.params["pos_embed"] = random_like.params["pos_embed"] * 0 + np.random.default_rng(0).normal(
        size=random_like.params["pos_embed"].shape)          # plenty of negative similarities
    traces = [random_like.run(image), model.run(image)]
    labels = ["Before: random init (untrained)", "After: trained default model (numpy_vit_shapes_patch16_224)"]
    fig = compare_figure("position_embedding", traces, labels)
    images = [im for ax in fig.get_axes() for im in ax.get_images()]
    assert {im.get_cmap().name for im in images} == {SIMILARITY_CMAP}
    assert len({(im.norm.vmin, im.norm.vmax) for im in images}) == 1      # one scale for both rows
    lowest = min(analysis.position_embedding_similarity(t["pos_embed"], (3, 5), 1).min() for t in traces)
    assert images[0].norm.vmin == pytest.approx(lowest)
    for sub, label in zip(fig.subfigs, labels):
        title = sub._suptitle
        assert title.get_text().split("\n")[0] == label
        assert "learned" not in title.get_text()
        assert text_fits(fig, title), title.get_text()
    assert "not how it was made" in all_text(fig) and "sine-cosine" in all_text(fig)


def test_position_embedding_title_says_what_is_shown_and_counts_from_0(model):
    fig = viz.visualize_position_embedding(model)
    assert fig._suptitle.get_text() == "Position embeddings: cosine similarity between positions"
    tiles = titled_axes(fig)[3]
    assert [t.get_text() for t in tiles.get_xticklabels()] == ["0", "1", "2", "3", "4"]   # 5 columns
    assert [t.get_text() for t in tiles.get_yticklabels()] == ["0", "1", "2"]             # 3 rows
    assert {ax.images[0].get_cmap().name for ax in titled_axes(fig)[:4] if ax.images} == {SIMILARITY_CMAP}


def test_heat_maps_stay_legible_on_a_red_image(model):
    red = np.zeros((48, 80, 3), dtype=np.uint8)
    red[..., 0] = 220
    red[12:36, 20:60] = (255, 90, 60)
    fig = viz.visualize_attention_map(model, red, layer_indices=[0])
    underlay, heat = titled_axes(fig)[1].images
    grey = np.asarray(underlay.get_array())
    np.testing.assert_allclose(grey[..., 0], grey[..., 1])            # the image is grey under the map,
    np.testing.assert_allclose(grey[..., 0], grey[..., 2])            # so none of its red shows through
    assert np.ptp(grey[..., 0]) > 0.05                                  # ... and its shapes still do
    assert heat.get_cmap().name == HEAT_CMAP
    colours = heat.get_cmap()(np.linspace(0, 1, 256))[:, :3]
    reddish = (colours[:, 0] > colours[:, 1] + 0.25) & (colours[:, 0] > colours[:, 2] + 0.25)
    assert not reddish.any(), "the heat map's colours include reds that blend into a red image"


def test_attention_distance_explains_every_mark_and_counts_images(model, image, trace):
    fig = viz.visualize_attention_distance(trace)
    assert "(averaged over 1 image)" in fig._suptitle.get_text()
    curve, bars, heads = titled_axes(fig)
    for ax in (curve, bars, heads):
        legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
        assert "uniform attention" in legend                             # the dashed line, on every panel
    assert "standard deviation" in " ".join(t.get_text() for t in bars.get_legend().get_texts())
    assert "one head" in " ".join(t.get_text() for t in heads.get_legend().get_texts())
    fig = viz.visualize_attention_distance([trace, model.run(image[::-1].copy())])
    assert "(averaged over 2 images)" in fig._suptitle.get_text()


def test_bad_arguments_are_argument_errors(model, image, trace, tmp_path):
    with pytest.raises(ArgumentError, match="layer 3 is out of range"):
        viz.visualize_attention_map(trace, layer_indices=[0, 3])
    with pytest.raises(ArgumentError, match="empty"):
        viz.visualize_attention_map(trace, layer_indices=[])
    with pytest.raises(ArgumentError, match="head_index 4 is out of range"):
        viz.visualize_attention_map(trace, head_index=4)
    with pytest.raises(ArgumentError, match="layer_idx 7 is out of range"):
        viz.visualize_all_heads(trace, layer_idx=7)
    with pytest.raises(ArgumentError, match="query patch 15 is out of range"):
        viz.visualize_attention_map(trace, query=15)
    with pytest.raises(ArgumentError, match="a Trace and an image"):
        viz.visualize_attention_map(trace, image)
    with pytest.raises(ArgumentError, match="needs an image"):
        viz.visualize_attention_map(model)
    with pytest.raises(ArgumentError, match="interpolation"):
        viz.visualize_attention_map(trace, interpolation="cubic")
    with pytest.raises(ArgumentError, match="head_fusions"):
        viz.visualize_attention_rollout(trace, head_fusions=["median"])
    with pytest.raises(ArgumentError, match="does not exist"):
        viz.visualize_patch_grid(trace, save_path=tmp_path / "missing" / "x.png")
    with pytest.raises(ArgumentError, match="unknown file type"):
        viz.visualize_patch_grid(trace, save_path=tmp_path / "x.docx")
    with pytest.raises(ArgumentError, match="run the model on an image first"):
        viz.visualize_attention_distance([])
    with pytest.raises(ArgumentError, match="unknown figure"):
        figure_name("attention_mpa")
    with pytest.raises(ArgumentError, match="recorded no residual stream"):
        viz.visualize_cls_token_evolution(model.run(image, record=["blocks.*.attn.pattern"]))


def test_patch_embedding_filters_one_panel_per_component(model, tmp_path):
    fig = viz.visualize_patch_embedding_filters(model, n_components=6)
    titles = [ax.get_title() for ax in titled_axes(fig)]
    assert [t.split(" ·")[0] for t in titles] == [f"PC{i}" for i in range(1, 7)]
    assert titled_axes(fig)[0].images[0].get_array().shape == (16, 16, 3)
    rendered(fig, tmp_path / "f.png", min_ink=0.05)


def test_the_guides_calls_verbatim(tmp_path):
    """The guide's code, as written there (a smaller width so the test stays fast)."""
    from numpy_vit.viz.visualize_advanced import (visualize_attention_distance, visualize_attention_rollout,
                                        visualize_cls_token_evolution, visualize_position_embedding)
    from numpy_vit.viz.visualize_attention import (ViTWithAttention, visualize_all_heads, visualize_attention_map,
                                         visualize_patch_grid)

    image = str(tmp_path / "image.jpg")
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(image)
    model = ViTWithAttention(img_size=224, patch_size=16, num_classes=10, embed_dim=48, depth=12, num_heads=12)
    visualize_patch_grid(image, save_path=str(tmp_path / "patch_grid.png"))
    visualize_attention_map(model, image, save_path=str(tmp_path / "attention_map.png"),
                            layer_indices=[0, 3, 6, 11], head_index=0)
    visualize_all_heads(model, image, layer_idx=5)
    visualize_position_embedding(model, save_path=str(tmp_path / "pos_embed.png"))
    fig = visualize_attention_distance(model.attention_maps, save_path=str(tmp_path / "attention_distance.png"))
    assert "14x14" in all_text(fig)                          # the guide's 197 tokens read as CLS + 14x14
    img_tensor = model.last_trace["input"]                    # a [1, 3, 224, 224] normalised batch
    visualize_cls_token_evolution(model, img_tensor, save_path=str(tmp_path / "cls_evolution.png"))
    visualize_attention_rollout(model.attention_maps, save_path=str(tmp_path / "attention_rollout.png"))
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_second_image_of_a_batch(model, image, tmp_path):
    flipped = image[::-1].copy()
    trace = model.run([image, flipped])
    fig = viz.visualize_attention_map(trace, layer_indices=[2], image_index=1)
    underlay, heat = titled_axes(fig)[0].images[0].get_array(), titled_axes(fig)[1].images[1].get_array()
    np.testing.assert_allclose(underlay, flipped / 255.0, atol=1e-6)    # the second image, not the first
    expected = trace["blocks.2.attn.pattern"][1, 0, 0, 1:].reshape(3, 5)
    np.testing.assert_allclose(heat, analysis.upsample_grid(expected, (48, 80), "bilinear"), rtol=1e-6)
    with pytest.raises(ArgumentError, match="image_index 2 is out of range"):
        viz.visualize_attention_map(trace, image_index=2)
