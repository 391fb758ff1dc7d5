"""The numpy-vit command and python -m numpy_vit.viz.demo, end to end on a small random model saved to disk."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from numpy_vit import ImageConversionWarning, ViT, ViTConfig, cli
from numpy_vit.viz.demo import SAMPLE_IMAGE
from numpy_vit.viz.figures import FIGURES

GUIDE_FILES = ["vis_1_patch_grid.png", "vis_2_position_embedding.png", "vis_3_attention_layers.png",
               "vis_4_all_heads.png", "vis_5_attention_distance.png", "vis_6_cls_evolution.png",
               "vis_7_attention_rollout.png"]
LABELS = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """A depth-2, width-32 model with named classes, written in our .npz format."""
    path = tmp_path_factory.mktemp("model") / "small.npz"
    config = ViTConfig(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                       labels=LABELS, crop_pct=1.0)
    ViT(config, seed=3).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, mode in enumerate(("RGB", "L")):             # a greyscale file is converted, with a warning
        pixels = np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).convert(mode).save(path)
        paths.append(str(path))
    return paths


def test_demo_writes_the_guides_seven_files(small_npz, tmp_path, capsys):
    out = tmp_path / "figures"                            # created by the demo
    assert cli.main(["demo", "--out", str(out), "--model", small_npz, "--dpi", "40"]) == 0
    assert sorted(os.listdir(out)) == GUIDE_FILES
    for name in GUIDE_FILES:
        assert Image.open(out / name).size[0] > 250          # figures are 7 to 17 inches wide
    printed = capsys.readouterr().out
    assert "prediction:" in printed and any(label in printed for label in LABELS)
    assert str(out.resolve()) in printed and "vis_7_attention_rollout.png" in printed
    assert os.path.isfile(SAMPLE_IMAGE)


def test_python_m_viz_demo_runs_as_a_script(small_npz, tmp_path):
    result = subprocess.run([sys.executable, "-m", "viz.demo", "--out", str(tmp_path), "--model", small_npz,
                             "--image", SAMPLE_IMAGE, "--dpi", "30"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == GUIDE_FILES


def test_show_one_figure_per_image_with_progress(small_npz, images, tmp_path, capsys):
    with pytest.warns(ImageConversionWarning, match="mode L"):       # img1 is greyscale
        code = cli.main(["show", *images, "--figure", "attention_map", "--layers", "0", "1", "--head", "1",
                         "--interpolation", "nearest", "--dino-mask", "--model", small_npz, "-o", str(tmp_path),
                         "--dpi", "40"])
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ["img0_attention_layers.png", "img1_attention_layers.png"]
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "wrote 2 figure(s)" in captured.out


def test_show_all_figures_and_a_patch_query(small_npz, images, tmp_path):
    assert cli.main(["show", images[0], "--figure", "all", "--query", "1,2", "--model", small_npz,
                     "-o", str(tmp_path), "--dpi", "40"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(f"img0_{name}.png" for name in FIGURES)


def test_predict_prints_top_k(small_npz, images, capsys):
    assert cli.main(["predict", images[0], "--model", small_npz, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{images[0]}:"
    ranked = [line.split() for line in lines[1:]]
    assert [r[0] for r in ranked] == ["1.", "2.", "3."]
    assert sorted(r[1] for r in ranked) == sorted(LABELS)
    probs = [float(r[2].rstrip("%")) for r in ranked]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 100) < 0.05


def test_compare_before_and_after(small_npz, images, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert cli.main(["compare", images[0], "--before", "random", "--after", small_npz, "--figure", "rollout",
                     "-o", str(out), "--dpi", "40"]) == 0
    assert out.is_file()
    printed = capsys.readouterr().out
    assert "Before: random init" in printed and "After: small.npz" in printed


def test_convert_round_trip(small_npz, tmp_path, capsys):
    out = tmp_path / "copy.npz"
    assert cli.main(["convert", small_npz, "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    a, b = ViT.from_pretrained(small_npz), ViT.from_pretrained(str(out))
    assert a.config == b.config
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_errors_exit_2_with_a_message(small_npz, images, tmp_path, capsys):
    assert cli.main(["show", images[0], "--figure", "heatmap", "--model", small_npz, "-o", str(tmp_path)]) == 2
    assert "unknown figure 'heatmap'" in capsys.readouterr().err
    assert cli.main(["show", images[0], "--layers", "5", "--model", small_npz, "-o", str(tmp_path)]) == 2
    assert "layer 5 is out of range" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "nope.jpg"), "--model", small_npz]) == 2
    assert "nope.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["show"])                                 # argparse: IMAGE is required


def test_missing_default_model_falls_back_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(cli, "default_model_exists", lambda: False)
    model = cli.load_model(None)
    assert "no trained default model" in capsys.readouterr().err
    assert model.config.depth == 12 and model.config.grid_size == (14, 14)
    random_like = cli.load_model("random", like=ViT(ViTConfig(img_size=32, depth=1, embed_dim=16, num_heads=2)))
    assert random_like.config.depth == 1


def test_light_commands_never_import_matplotlib(small_npz, images):
    code = ("import sys; from numpy_vit import cli; "
            f"assert cli.main(['predict', {images[0]!r}, '--model', {small_npz!r}]) == 0; "
            "assert 'matplotlib' not in sys.modules, 'predict imported matplotlib'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_help_explains_each_command(capsys):
    for command in ("demo", "show", "predict", "compare", "convert"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert len(capsys.readouterr().out.splitlines()) > 5


def test_demo_pools_the_sample_scenes_for_attention_distance(small_npz, tmp_path, monkeypatch):
    from numpy_vit.viz import figures
    from numpy_vit.viz import demo

    drawn = {}

    def record(name, trace, save_path=None, **options):
        drawn[name] = trace["blocks.0.attn.pattern"].shape[0]           # images in the trace it was given

    monkeypatch.setattr(figures, "make_figure", record)
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 1)               # in this process, so the record is kept
    demo.run_demo(str(tmp_path), model=small_npz, echo=lambda *a: None)
    assert drawn.pop("attention_distance") == 8                           # make_shapes(8, seed=7), the sample's set
    assert set(drawn.values()) == {1} and len(drawn) == 6
    scenes = demo.sample_scenes()
    np.testing.assert_array_equal(scenes[6], np.asarray(Image.open(SAMPLE_IMAGE)))   # the sample is scene 6
