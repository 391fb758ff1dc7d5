"""The numpy-vit command and python -m numpy_vit.viz.demo, end to end on small random models saved to disk."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bad_input_files import safetensors_bytes
from numpy_vit import ViT, ViTConfig, cli
from numpy_vit.viz.demo import SAMPLE_IMAGE
from numpy_vit.viz.figures import FIGURES
from numpy_vit.weights import named_models
from numpy_vit.weights.labels import SHAPE_CLASSES as CLASSES

GUIDE_FILES = ["vis_1_patch_grid.png", "vis_2_position_embedding.png", "vis_3_attention_layers.png",
               "vis_4_all_heads.png", "vis_5_attention_distance.png", "vis_6_cls_evolution.png",
               "vis_7_attention_rollout.png"]
LABELS = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """A depth-2, width-32 model with named classes, written in our .npz format."""
    path = tmp_path_factory.mktemp("model") / "small.npz"
    config = ViTConfig(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                       labels=LABELS, crop_pct=1.0, name="small_npz_model")
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
    written = os.listdir(out)
    assert set(GUIDE_FILES) <= set(written) and "vis_9_attention_budget.png" in written   # and the figures after 7
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
    assert set(GUIDE_FILES) <= set(os.listdir(tmp_path))


def test_show_one_figure_per_image_with_progress(small_npz, images, tmp_path, capsys):
    code = cli.main(["show", *images, "--figure", "attention_map", "--layers", "0", "1", "--head", "1",
                     "--interpolation", "nearest", "--dino-mask", "--model", small_npz, "-o", str(tmp_path),
                     "--dpi", "40"])
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ["img0_attention_layers.png", "img1_attention_layers.png"]
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "wrote 2 figure(s)" in captured.out
    warned = [line for line in captured.err.splitlines() if "warning" in line]      # img1 is greyscale
    assert warned == [f"numpy-vit: warning: {images[1]!r} had mode L; converted to RGB"]


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


def test_compare_figure_all_writes_every_figure(small_npz, images, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert cli.main(["compare", images[0], "--before", "random", "--after", small_npz, "--figure", "all",
                     "-o", str(out), "--dpi", "20"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(f"cmp_{name}.png" for name in FIGURES)
    printed = capsys.readouterr().out
    assert printed.count("wrote ") == len(FIGURES)
    assert "Before: random init" in printed and "After: small.npz" in printed


def test_compare_one_figure_to_the_named_file(small_npz, images, tmp_path, monkeypatch):
    from numpy_vit.viz import figures

    drawn = []
    monkeypatch.setattr(figures, "compare_figure", lambda name, traces, labels, save_path, **options:
                        drawn.append((name, save_path)))
    assert cli.main(["compare", images[0], "--after", small_npz, "--figure", "rollout", "-o",
                     str(tmp_path / "cmp.png")]) == 0
    assert drawn == [("attention_rollout", str(tmp_path / "cmp.png"))]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", images[0], "--after", small_npz, "--figure", "ALL"]) == 0
    assert [path for _, path in drawn[1:]] == [f"compare_{name}.png" for name in FIGURES]


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
    monkeypatch.setattr(named_models, "default_model_exists", lambda: False)
    model = named_models.load_model(None)
    assert "no trained default model" in capsys.readouterr().err
    assert model.config.depth == 12 and model.config.grid_size == (14, 14)
    tiny = ViT(ViTConfig(img_size=32, depth=1, embed_dim=16, num_heads=2))
    random_like = named_models.load_model("random", like=tiny)
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
        text = " ".join(capsys.readouterr().out.split())             # argparse wraps lines anywhere
        assert "--arch NAME" in text and "--img-size N|H,W" in text, command
        for source in ("default", "random", "random:PRESET", "FILE", "FOLDER", "OWNER/NAME", "$NUMPY_VIT_CACHE"):
            assert source in text, (command, source)


def test_demo_pools_the_sample_scenes_for_attention_distance(small_npz, tmp_path, monkeypatch):
    from numpy_vit.viz import figures
    from numpy_vit.viz import demo

    drawn = {}

    def record(name, trace, save_path=None, **options):
        drawn[name] = trace["blocks.0.attn.pattern"].shape[0]           # images in the trace it was given

    monkeypatch.setattr(figures, "make_figure", record)
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 1)               # in this process, so the record is kept
    demo.run_demo(str(tmp_path), model=small_npz, echo=lambda *a: None)
    assert drawn.pop("attention_distance") == 8                           # the eight sample scenes
    assert set(drawn.values()) == {1} and len(drawn) == len(figures.FIGURES) - 1   # every other figure: the sample
    scenes = demo.sample_scenes()
    np.testing.assert_array_equal(scenes[6], np.asarray(Image.open(SAMPLE_IMAGE)))   # the sample is scene 6


# --- every command with every model source -----------------------------------------------------------------

FOLDER_LABELS = ("apple", "pear", "plum")


def write_timm_folder(folder, seed=5):
    """A timm hub folder (config.json + model.safetensors) of a depth-2, width-32 model, written without torch."""
    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig.preset("vit_tiny_patch16_224", embed_dim=32, depth=2, num_heads=2, img_size=64,
                              num_classes=3)
    (folder / "model.safetensors").write_bytes(safetensors_bytes(ViT(config, seed=seed).params))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 3, "label_names": list(FOLDER_LABELS),
        "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 64},
        "pretrained_cfg": {"input_size": [3, 64, 64], "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}}))
    return str(folder)


@pytest.fixture(scope="module")
def sources(small_npz, tmp_path_factory):
    """--model value -> (config name, class names) of the model it must load. The hub name's files sit in
    $NUMPY_VIT_CACHE, where a machine without network is given them by hand."""
    root = tmp_path_factory.mktemp("sources")
    write_timm_folder(root / "cache" / "someone--tiny-vit", seed=6)
    return {
        "default": ("numpy_vit_shapes_patch16_224", CLASSES),
        "random": ("numpy_vit_shapes_patch16_224", CLASSES),
        "npz": (small_npz, ("small_npz_model", LABELS)),
        "folder": (write_timm_folder(root / "timm_folder"), ("vit_tiny_patch16_224", FOLDER_LABELS)),
        "hub": ("someone/tiny-vit", ("vit_tiny_patch16_224", FOLDER_LABELS)),
        "cache": str(root / "cache"),
    }


def command_line(command, model, image, out):
    """argv running ``command`` on ``model`` at 48 px (--img-size: the default model's 224 px would be slow)."""
    size = ["--img-size", "48"]
    return {
        "demo": ["demo", "--model", model, "--image", image, "--out", out, *size],
        "show": ["show", image, "--model", model, "--figure", "patch_grid", "-o", out, "--dpi", "20", *size],
        "predict": ["predict", image, "--model", model, "-k", "3", *size],
        "compare-before": ["compare", image, "--before", model, "--after", "default",
                           "--figure", "grid", "-o", os.path.join(out, "c.png"), "--dpi", "20", *size],
        "compare-after": ["compare", image, "--after", model, "--figure", "grid",
                          "-o", os.path.join(out, "c.png"), "--dpi", "20", *size],
        "convert": ["convert", model, "-o", os.path.join(out, "converted.npz"), *size],
    }[command]


@pytest.mark.parametrize("source", ["default", "random", "npz", "folder", "hub"])
@pytest.mark.parametrize("command", ["demo", "show", "predict", "compare-before", "compare-after", "convert"])
def test_every_command_loads_every_model_source(command, source, sources, images, tmp_path, monkeypatch, capsys):
    from numpy_vit.viz import demo, figures

    monkeypatch.setenv("NUMPY_VIT_CACHE", sources["cache"])
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)        # the hub name is read from the cache
    monkeypatch.setattr(demo, "draw_in_parallel", lambda *args, **kwargs: None)  # figures: drawn by the tests above
    monkeypatch.setattr(figures, "make_figure", lambda *args, **kwargs: None)
    monkeypatch.setattr(figures, "compare_figure", lambda *args, **kwargs: None)
    loaded = []
    at_img_size = named_models.at_img_size
    monkeypatch.setattr(named_models, "at_img_size",
                        lambda model, size: loaded.append(at_img_size(model, size)) or loaded[-1])
    model = sources[source][0] if source in ("npz", "folder", "hub") else source
    name, labels = sources[source][1] if source in ("npz", "folder", "hub") else sources[source]

    assert cli.main(command_line(command, model, images[0], str(tmp_path))) == 0, capsys.readouterr().err
    ours = loaded[0] if command != "compare-before" else loaded[-1]   # --after loads first, --before like it
    assert ours.config.name == name and tuple(ours.config.labels) == labels
    assert ours.config.img_size == (48, 48) and ours.run(images[0], record=["logits"]).grid == (3, 3)
    if source == "random":                                           # the default's architecture, other weights
        default = ViT.from_pretrained(None)
        assert not np.array_equal(ours.params["head.weight"], default.params["head.weight"])
    if command == "convert":
        written = ViT.from_pretrained(str(tmp_path / "converted.npz"))
        assert written.config == ours.config
        assert all(np.array_equal(written.params[k], ours.params[k]) for k in ours.params)
    if command == "predict":
        assert {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]} <= set(labels)


def test_predict_with_the_shapes_model_says_what_it_knows(small_npz, images, capsys):
    assert cli.main(["predict", images[0], "--img-size", "48"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note" in line]
    assert len(notes) == 1
    assert notes[0].startswith("numpy-vit: note: this model classifies ten synthetic shapes (circle, square, ")
    assert "not photos" in notes[0]
    assert cli.main(["predict", images[0], "--model", small_npz]) == 0    # other models: no note
    assert "note" not in capsys.readouterr().err


def test_img_size_runs_the_model_at_that_size(small_npz, images, capsys):
    for text, size in (("96", (96, 96)), ("32,96", (32, 96)), ("96x32", (96, 32))):
        model = named_models.load_model(small_npz, img_size=cli.parse_img_size(text))
        trace = model.run(images[0])
        assert model.config.img_size == size and trace.grid == (size[0] // 16, size[1] // 16)
        assert trace["input"].shape[2:] == size
    original = ViT.from_pretrained(small_npz)
    resampled = named_models.load_model(small_npz, img_size=(96, 96))
    expected = original.run(images[0], img_size=96, record=["logits"]).logits     # ViT.run's own resampling
    np.testing.assert_allclose(resampled.run(images[0], record=["logits"]).logits, expected, rtol=1e-5, atol=1e-6)
    assert cli.main(["predict", images[0], "--model", small_npz, "--img-size", "50"]) == 2
    assert ("error: --img-size 50 is not a multiple of this model's 16-pixel patches; use e.g. --img-size 48 or "
            "--img-size 64") in capsys.readouterr().err
    assert cli.main(["predict", images[0], "--model", small_npz, "--img-size", "64x40"]) == 2
    assert "--img-size 64,40 is not a multiple" in capsys.readouterr().err
    for bad in ("0", "a", "1,2,3", "-16"):
        with pytest.raises(SystemExit):
            cli.main(["predict", images[0], "--img-size", bad])
        assert "argument --img-size:" in capsys.readouterr().err


def test_arch_completes_a_bare_state_dict(images, tmp_path, capsys):
    """A timm .safetensors has no head count: the error names --arch (never arch= or ViTConfig), and --arch works."""
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(safetensors_bytes(ViT(ViTConfig.preset("vit_tiny_patch16_224"), seed=0).params))
    assert cli.main(["predict", images[0], "--model", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "not the number of attention heads" in err and "pass --arch (a preset or timm architecture name)" in err
    assert "arch=" not in err and "ViTConfig" not in err
    assert cli.main(["predict", images[0], "--model", str(bare), "--arch", "vit_tiny_patch16_224",
                     "--img-size", "32"]) == 0
    assert cli.main(["convert", str(bare), "--arch", "vit_tiny_patch16_224", "-o", str(tmp_path / "o.npz")]) == 0
    assert ViT.from_pretrained(str(tmp_path / "o.npz")).config.num_heads == 3


def test_random_takes_arch_or_a_preset_once(images, capsys):
    assert named_models.load_model("random", arch="vit_tiny_patch16_224").config.name == "vit_tiny_patch16_224"
    assert named_models.load_model("random:vit_tiny_patch16_224").config.name == "vit_tiny_patch16_224"
    assert cli.main(["predict", images[0], "--model", "random:vit_tiny_patch16_224", "--arch",
                     "vit_small_patch16_224"]) == 2
    assert "both name an architecture; give one" in capsys.readouterr().err


LIBRARY_MESSAGES = [   # (what numpy_vit.weights says, what the command line prints)
    ("x: the shapes say depth 1, width 8, patch 4, but not the number of attention heads, and nothing else in the "
     "file does; pass arch= (a preset or timm architecture name, or a ViTConfig), e.g. arch='vit_tiny_patch16_224'",
     "x: the shapes say depth 1, width 8, patch 4, but not the number of attention heads, and nothing else in the "
     "file does; pass --arch (a preset or timm architecture name), e.g. --arch vit_tiny_patch16_224"),
    ("m.npz: the file stores its own config, which is not arch='vit_base_patch16_224' (arch vs file: depth 12 vs 1)",
     "m.npz: the file stores its own config, which is not --arch vit_base_patch16_224 (--arch vs file: depth 12 vs 1)"),
    ("arch='vit_gigantic' is neither a preset", "--arch vit_gigantic is neither a preset"),
    ("x: timm config.json without an 'architecture' field; pass arch=",
     "x: timm config.json without an 'architecture' field; pass --arch "),
    ("x: pos_embed has 19 rows (1 prefix tokens), which is no square grid of patches; pass arch= with the image "
     "size (a ViTConfig with img_size=(H, W))",
     "x: pos_embed has 19 rows (1 prefix tokens), which is no square grid of patches; put a timm config.json "
     'beside the weights whose "model_args" give "img_size": [H, W]'),
    ("use a larger image, or run the model at a smaller size (img_size=)",
     "use a larger image, or run the model at a smaller size (--img-size)"),
    ("head_index 12 is out of range", "--head 12 is out of range"),
    ("layer_idx -13 is out of range", "--layers -13 is out of range"),
]


@pytest.mark.parametrize("said, printed", LIBRARY_MESSAGES)
def test_messages_name_command_line_flags(said, printed):
    assert cli.cli_words(said) == printed
    assert not re.search(r"\barch=|ViTConfig|img_size=|head_index|layer_idx", printed)


def test_a_tiny_image_is_upscaled_with_one_warning_line(tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(tiny)
    assert cli.main(["predict", str(tiny), "-k", "1"]) == 0                   # the default model: 224 px
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [f"numpy-vit: warning: {str(tiny)!r} is 10x10 pixels, fewer than the model's 14x14 patches: "
                      f"it is upscaled 22.4x to the 224x224 input, so each patch holds less than one pixel of it; "
                      f"use a larger image"]


def test_compare_accepts_default_on_either_side(images, tmp_path, capsys):
    assert cli.main(["compare", images[0], "--before", "default", "--after", "random", "--figure", "grid",
                     "--img-size", "32", "-o", str(tmp_path / "c.png"), "--dpi", "20"]) == 0
    printed = capsys.readouterr().out
    assert "Before: trained default model" in printed and "After: random init" in printed
