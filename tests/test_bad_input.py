"""The catalogue of bad input: every wrong image, array, checkpoint, index and config a learner may hand the
tool meets a named error (ImageError, CheckpointError, ConfigError, ArgumentError, all ValueErrors) whose message
names the file, key, index or shape.

Each catalogue case asserts the exact error class AND a regular expression that must find the offending
thing (and, where there is one, the accepted range) in the message. Models are tiny and random.
"""
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import numpy_vit as nv
from numpy_vit import viz
from numpy_vit import weights
from bad_input_files import (hf_arrays, png_header_only, rewrite_npz, safetensors_bytes, safetensors_with_header,
                             tiny_config, truncated, written)
from numpy_vit import analysis
from numpy_vit.errors import ArgumentError, CheckpointError, ConfigError, ImageError
from numpy_vit.image import ImageConversionWarning, load_image, to_rgb_array
from numpy_vit.viz.figures import make_figure
from numpy_vit.weights import files


# --- the catalogue ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    error: type
    pattern: str                       # re.search in the message: names the offending thing (and the range)
    call: Callable                     # call(world, tmp_path) raises


def _set(arrays, key, value):
    arrays[key] = value


def _drop(arrays, key):
    del arrays[key]


IMAGE_FILES = [
    Case("missing path", ImageError, r"image file not found: '.*nope\.png'",
         lambda w, t: to_rgb_array(t / "nope.png")),
    Case("a directory", ImageError, r"is a directory, not an image file",
         lambda w, t: to_rgb_array(t)),
    Case("an empty file", ImageError, r"empty\.png' is empty \(0 bytes\)",
         lambda w, t: to_rgb_array(written(t / "empty.png", b""))),
    Case("random bytes", ImageError, r"random\.jpg' is not an image Pillow can read \(PNG, JPEG",
         lambda w, t: to_rgb_array(written(t / "random.jpg", np.random.default_rng(1).bytes(500)))),
    Case("a text file named .png", ImageError, r"afile\.txt' is not an image Pillow can read",
         lambda w, t: to_rgb_array(w.path("afile.txt"))),
    Case("truncated PNG", ImageError, r"half\.png' could not be decoded, it may be truncated",
         lambda w, t: to_rgb_array(truncated(w.path("noise.png"), t / "half.png"))),
    Case("truncated JPEG", ImageError, r"half\.jpg' could not be decoded, it may be truncated",
         lambda w, t: to_rgb_array(truncated(w.path("noise.jpg"), t / "half.jpg"))),
    Case("huge image (PNG header claiming 100000 x 100000)", ImageError, r"bomb\.png' is too large to decode safely",
         lambda w, t: to_rgb_array(written(t / "bomb.png", png_header_only(100_000, 100_000)))),
    Case("a truncated file as a PIL image", ImageError, r"PIL image could not be decoded, it may be truncated",
         lambda w, t: to_rgb_array(Image.open(truncated(w.path("noise.png"), t / "lazy.png")))),
    Case("a path through model.run", ImageError, r"image file not found: '.*ghost\.png'",
         lambda w, t: w.small.run(str(t / "ghost.png"))),
]

ARRAYS = [
    Case("string dtype", ImageError, r"must hold real numbers .* got dtype <U1",
         lambda w, t: to_rgb_array(np.full((16, 16, 3), "a"))),
    Case("complex dtype", ImageError, r"got dtype complex128",
         lambda w, t: to_rgb_array(np.zeros((16, 16, 3), complex))),
    Case("object dtype", ImageError, r"got dtype object",
         lambda w, t: to_rgb_array(np.full((4, 4, 3), None))),
    Case("rank 1", ImageError, r"HxW or HxWx3 \(got shape \(48,\)\)",
         lambda w, t: to_rgb_array(np.zeros(48, np.uint8))),
    Case("rank 5", ImageError, r"got shape \(1, 1, 3, 16, 16\)",
         lambda w, t: w.small.run(np.zeros((1, 1, 3, 16, 16), np.float32))),
    Case("2 channels", ImageError, r"1, 3 or 4 channels in its last axis, got shape \(16, 16, 2\)",
         lambda w, t: to_rgb_array(np.zeros((16, 16, 2), np.uint8))),
    Case("5 channels", ImageError, r"got shape \(16, 16, 5\)",
         lambda w, t: to_rgb_array(np.zeros((16, 16, 5), np.uint8))),
    Case("CHW instead of HWC", ImageError, r"channels-first \(shape \(3, 20, 24\)\).*transpose\(1, 2, 0\)",
         lambda w, t: to_rgb_array(np.zeros((3, 20, 24), np.uint8))),
    Case("batch channels-last", ImageError, r"\[B, 3, H, W\].*shape \(1, 16, 16, 3\).*transpose\(0, 3, 1, 2\)",
         lambda w, t: w.small.run(np.zeros((1, 16, 16, 3), np.float32))),
    Case("uint8 batch", ImageError, r"normalised floats, got dtype uint8",
         lambda w, t: w.small.run(np.zeros((2, 3, 16, 16), np.uint8))),
    Case("NaN in an HWC float image", ImageError, r"holds 1 NaN or infinite values",
         lambda w, t: to_rgb_array(np.where(np.arange(48).reshape(4, 4, 3) == 5, np.nan, 0.5))),
    Case("inf in a batch", ImageError, r"input holds 2 NaN or infinite values",
         lambda w, t: w.small.run(np.where(np.arange(768).reshape(1, 3, 16, 16) % 400 == 1, np.inf, 0.0))),
    Case("float image outside [0, 1]", ImageError, r"must lie in \[0, 1\], got values in \[0, 255\]",
         lambda w, t: to_rgb_array(np.linspace(0, 255, 48).reshape(4, 4, 3))),
    Case("negative integers", ImageError, r"must lie in 0\.\.255 \(or 0\.\.65535\), got \[-3, 0\]",
         lambda w, t: to_rgb_array(np.array([[[-3, 0, 0]]]))),
    Case("an empty batch", ImageError, r"batch is empty \(shape \(0, 3, 16, 16\)\)",
         lambda w, t: w.small.run(np.zeros((0, 3, 16, 16), np.float32))),
    Case("a ragged nested list", ImageError, r"not a rectangular HxW or HxWx3 array",
         lambda w, t: to_rgb_array([[1, 2, 3], [4, 5]])),
    Case("None", ImageError, r"cannot read an image from a NoneType",
         lambda w, t: w.small.run(None)),
    Case("batch size not divisible by the patch size", ImageError,
         r"input size 20x20 is not a multiple of the patch size 8; crop or resize to e\.g\. 16x16",
         lambda w, t: w.small.run(np.zeros((1, 3, 20, 20), np.float32))),
    Case("img_size not divisible by the patch size", ImageError,
         r"img_size 20x20 is not a multiple of the patch size 8; use e\.g\. 16x16",
         lambda w, t: w.small.run(w.path("photo.png"), img_size=20)),
]

CHECKPOINTS = [
    Case("missing key", CheckpointError, r"missing keys: blocks\.0\.attn\.qkv\.weight",
         lambda w, t: weights.load_any(rewrite_npz(w.path("small.npz"), t / "m.npz",
                                                   lambda a: _drop(a, "blocks.0.attn.qkv.weight")))),
    Case("extra key", CheckpointError, r"unexpected keys: blocks\.0\.attn\.q_norm\.weight",
         lambda w, t: weights.load_any(rewrite_npz(w.path("small.npz"), t / "m.npz", lambda a: _set(
             a, "blocks.0.attn.q_norm.weight", np.ones(8, np.float32))))),
    Case("wrong shape", CheckpointError, r"head\.weight has shape \(7, 8\) but the config needs \(3, 8\)",
         lambda w, t: weights.load_any(rewrite_npz(w.path("small.npz"), t / "m.npz", lambda a: _set(
             a, "head.weight", np.zeros((7, 8), np.float32))))),
    Case("NaN weights", CheckpointError, r"norm\.weight holds 8 NaN or infinite values",
         lambda w, t: weights.load_any(rewrite_npz(w.path("small.npz"), t / "m.npz", lambda a: _set(
             a, "norm.weight", np.full(8, np.nan, np.float32))))),
    Case("string weights", CheckpointError, r"must be floating point arrays; these are not: head\.bias \(<U1\)",
         lambda w, t: weights.load_any(rewrite_npz(w.path("small.npz"), t / "m.npz", lambda a: _set(
             a, "head.bias", np.array(["a", "b", "c"]))))),
    Case("truncated .npz", CheckpointError, r"cut\.npz.*(truncated|cannot be opened)",
         lambda w, t: weights.load_any(truncated(w.path("small.npz"), t / "cut.npz", 0.6))),
    Case("truncated .safetensors", CheckpointError, r"cut\.safetensors.*truncated",
         lambda w, t: weights.load_any(truncated(w.path("small.safetensors"), t / "cut.safetensors", 0.9))),
    Case("another architecture (our .npz, arch= another preset)", CheckpointError,
         r"not arch='vit_base_patch16_224' \(arch vs file: embed_dim 768 vs 8, depth 12 vs 1",
         lambda w, t: weights.load_any(w.path("small.npz"), arch="vit_base_patch16_224")),
    Case("another architecture (timm .safetensors)", CheckpointError,
         r"does not have the architecture of vit_small_patch16_224 .*embed_dim 384 vs 8",
         lambda w, t: weights.load_any(w.path("small.safetensors"), arch="vit_small_patch16_224")),
    Case("no heads in a bare state dict", CheckpointError, r"not the number of attention heads.*pass arch=",
         lambda w, t: weights.load_any(w.path("small.safetensors"))),
    Case("unknown arch name", CheckpointError, r"arch='vit_gigantic_patch16_224' is neither a preset",
         lambda w, t: weights.load_any(w.path("small.safetensors"), arch="vit_gigantic_patch16_224")),
    Case("missing checkpoint path", CheckpointError, r"nope\.npz: no such file or folder, and not a hub name",
         lambda w, t: weights.load_any(str(t / "nope.npz"))),
    Case("empty checkpoint", CheckpointError, r"empty\.safetensors: unknown format",
         lambda w, t: weights.load_any(written(t / "empty.safetensors", b""))),
    Case("safetensors header entry without data_offsets", CheckpointError,
         r"header entry 'cls_token' is \{'dtype': 'F32', 'shape': \[1, 1, 8\]\}",
         lambda w, t: files.read_safetensors(safetensors_with_header(
             t / "h.safetensors", {"cls_token": {"dtype": "F32", "shape": [1, 1, 8]}}))),
    Case("HF weights without their config.json", CheckpointError, r"HF transformers weights; their config\.json",
         lambda w, t: weights.load_any(written(t / "hf.safetensors",
                                               safetensors_bytes(hf_arrays(w.small.params, w.small.config))))),
    Case("stored config that is no ViT", CheckpointError, r"stored config is not valid: depth must be a positive "
                                                          r"integer, got 'x'",
         lambda w, t: weights.load_any(rewrite_npz(w.path("small.npz"), t / "m.npz", lambda a: _set(
             a, "__config__", np.array(tiny_config().to_json().replace('"depth": 1', '"depth": "x"')))))),
    Case("params that do not fit the config", CheckpointError, r"missing keys: .*blocks\.1\.norm1\.weight",
         lambda w, t: nv.ViT(tiny_config(depth=2), params=w.small.params)),
    Case("save into a missing folder", CheckpointError, r"folder .*no_such_dir does not exist",
         lambda w, t: w.small.save(str(t / "no_such_dir" / "m.npz"))),
    Case("save onto a folder", CheckpointError, r"that is a folder; give a file name such as",
         lambda w, t: w.small.save(str(t))),
    Case("a non-path checkpoint", CheckpointError, r"a path or a hub name, got int 5",
         lambda w, t: nv.ViT.from_pretrained(5)),
]

INDICES = [
    Case("layer 12 of a 12-layer model", ArgumentError,
         r"layer index 12 is out of range: this model has 12 layers, numbered 0\.\.11",
         lambda w, t: w.trace.layer(12)),
    Case("layer -13 of 12", ArgumentError, r"layer index -13 is out of range.*or -12\.\.-1 from the end",
         lambda w, t: w.deep.layer_attention(-13)),
    Case("figure layer 12", ArgumentError, r"layer 12 is out of range: there are 12 \(valid: 0\.\.11",
         lambda w, t: viz.visualize_attention_map(w.trace, layer_indices=[0, 12])),
    Case("figure layer -13", ArgumentError, r"layer -13 is out of range",
         lambda w, t: viz.visualize_attention_map(w.trace, layer_indices=[-13])),
    Case("an empty layer list", ArgumentError, r"layer_indices is empty; pick layers from 0\.\.11",
         lambda w, t: viz.visualize_attention_map(w.trace, layer_indices=[])),
    Case("head 12 of 12", ArgumentError, r"head_index 12 is out of range: there are 12 \(valid: 0\.\.11",
         lambda w, t: viz.visualize_attention_map(w.trace, layer_indices=[0], head_index=12)),
    Case("all heads of layer 12", ArgumentError, r"layer_idx 12 is out of range: there are 12",
         lambda w, t: viz.visualize_all_heads(w.trace, layer_idx=12)),
    Case("head 12 in analysis.attention_map", ArgumentError, r"head 12 is out of range",
         lambda w, t: analysis.attention_map(w.trace["blocks.0.attn.pattern"], (2, 2), 1, head=12)),
    Case("a fractional layer", ArgumentError, r"layer index 1\.5 is out of range",
         lambda w, t: w.trace.layer(1.5)),
    Case("query patch 99 of a 2x2 grid", ArgumentError, r"query patch 99 is out of range: the 2x2 grid has "
                                                        r"patches 0\.\.3",
         lambda w, t: viz.visualize_attention_map(w.trace, layer_indices=[0], query=99)),
    Case("image 3 of a batch of 1", ArgumentError, r"image index 3 is out of range: this trace holds 1 image",
         lambda w, t: w.trace.top_k(3, image=3)),
    Case("a figure at 0 dpi", ArgumentError, r"dpi must be a number from 10 to 1200, got 0",
         lambda w, t: make_figure("patch_grid", w.trace, save_path=str(t / "a.png"), dpi=0)),
    Case("record that is no glob", ArgumentError, r"record must be None, a glob .* got 5",
         lambda w, t: w.small.run(w.path("photo.png"), record=5)),
    Case("figure save_path in a missing folder", ArgumentError, r"cannot save to '.*missing_dir/a\.png': the folder "
                                                                r"'.*missing_dir' does not exist",
         lambda w, t: viz.visualize_attention_map(w.trace, layer_indices=[0],
                                                                save_path=str(t / "missing_dir" / "a.png"))),
    Case("figure save_path of an unknown type", ArgumentError, r"unknown file type 'xyz'; use one of .*png",
         lambda w, t: viz.visualize_attention_map(w.trace, layer_indices=[0],
                                                                save_path=str(t / "a.xyz"))),
]

CONFIGS = [
    Case("width not divisible by heads", ConfigError, r"embed_dim \(30\) must be divisible by num_heads \(4\)",
         lambda w, t: nv.ViTConfig(embed_dim=30, num_heads=4)),
    Case("image size not divisible by the patch size", ConfigError,
         r"img_size \(30, 30\) must be a multiple of patch_size \(16\) .* try \(16, 16\)",
         lambda w, t: nv.ViTConfig(img_size=30)),
    Case("patch size 0", ConfigError, r"patch_size must be a positive integer, got 0",
         lambda w, t: nv.ViTConfig(patch_size=0)),
    Case("negative depth", ConfigError, r"depth must be a positive integer, got -1",
         lambda w, t: nv.ViTConfig(depth=-1)),
    Case("unknown GELU", ConfigError, r"gelu must be 'erf', 'tanh' or 'quick' \(OpenAI CLIP's x \* sigmoid\(1\.702 x\)\), got 'relu'",
         lambda w, t: nv.ViTConfig(gelu="relu")),
    Case("crop_pct above 1", ConfigError, r"crop_pct must be in \(0, 1\], got 1\.5",
         lambda w, t: nv.ViTConfig(crop_pct=1.5)),
    Case("two-channel mean", ConfigError, r"mean and std need 3 values each",
         lambda w, t: nv.ViTConfig(mean=(0.5, 0.5))),
    Case("labels of another head", ConfigError, r"labels has 2 names but the model has num_classes=3",
         lambda w, t: tiny_config(labels=("a", "b"))),
    Case("a string where a number goes", ConfigError, r"mlp_ratio must be a number, got '4'",
         lambda w, t: nv.ViTConfig(mlp_ratio="4")),
    Case("an unknown field", ConfigError, r"unknown config field\(s\) \['depht'\]",
         lambda w, t: tiny_config().replace(depht=2)),
    Case("unknown preset", ConfigError, r"unknown preset 'vit_gigantic_patch16_224'; known presets: .*"
                                        r"vit_base_patch16_224",
         lambda w, t: nv.ViTConfig.preset("vit_gigantic_patch16_224")),
    Case("unknown preset through ViT.from_preset", ConfigError, r"unknown preset 'resnet50'",
         lambda w, t: nv.ViT.from_preset("resnet50")),
    Case("config that is no JSON", ConfigError, r"config is not valid JSON",
         lambda w, t: nv.ViTConfig.from_json("{depth: 12")),
    Case("a model in int32", ConfigError, r"dtype must be float32 or float64, got int32",
         lambda w, t: nv.ViT(tiny_config(), dtype=np.int32)),
]

CATALOGUE = IMAGE_FILES + ARRAYS + CHECKPOINTS + INDICES + CONFIGS


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_input_meets_a_named_error(case, world, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageConversionWarning)
        with pytest.raises(nv.NumpyViTError) as caught:
            case.call(world, tmp_path)
    assert caught.type is case.error, f"{case.name}: {caught.type.__name__} instead of {case.error.__name__}"
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert re.search(case.pattern, message), f"{case.name}: {case.pattern!r} not found in {message!r}"


def test_a_thin_strip_is_refused_before_it_is_resized_past_the_pixel_limit(world, monkeypatch):
    """A 1x600 strip would become 18x10800 before the centre crop (short side to 16 / 0.875)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(ImageError, match=r"image of 600x1 pixels would be resized to 10800x18 .* crop it closer"):
        load_image(np.zeros((1, 600, 3), np.uint8), tiny_config(crop_pct=0.875))


def test_bomb_limit_is_pillows_own(tmp_path, monkeypatch):
    """An ordinary 64x64 file refused once Pillow's limit is set below it: the limit is not ours to bypass."""
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)                      # 4096 px > 2 x 1000 px
    with pytest.raises(ImageError, match=r"small\.png' is too large to decode safely"):
        to_rgb_array(tmp_path / "small.png")


