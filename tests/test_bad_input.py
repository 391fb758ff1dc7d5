"""The catalogue of bad input: every wrong image, array, checkpoint, index, option and path a learner
may hand the tool meets a named error (ImageError, CheckpointError, ConfigError, ArgumentError, all ValueErrors)
whose message names the file, key, index or shape; every convertible image is converted correctly and says so
with an ImageConversionWarning; nothing is unpickled and nothing is downloaded unless asked for.

Each catalogue case asserts the exact error class AND a regular expression that must find the offending
thing (and, where there is one, the accepted range) in the message. Models are tiny and random.
"""
import io
import json
import os
import pickle
import re
import struct
import sys
import types
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import numpy_vit as nv
from numpy_vit import viz
from numpy_vit import weights
from bad_input_files import animated_gif, hf_arrays, pattern_image, safetensors_bytes, tiny_config, tiny_model
from numpy_vit import analysis, cli
from numpy_vit.errors import ArgumentError, CheckpointError, ConfigError, ImageError
from numpy_vit.image import ImageConversionWarning, load_image, to_rgb_array
from numpy_vit.viz.figures import make_figure
from numpy_vit.weights import files, hub, native

# 12 layers and 12 heads, so that "layer 12 of a 12-layer model" and "head 12 of 12" are the real questions;
# width 24 and a 2x2 grid keep it instant.
DEEP = dict(img_size=16, patch_size=8, embed_dim=24, depth=12, num_heads=12, num_classes=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files every case may use: images, a tiny model saved in each format, a 12-layer model and its trace."""
    root = tmp_path_factory.mktemp("world")
    small, deep = tiny_model(seed=1), nv.ViT(nv.ViTConfig(**DEEP), seed=2)
    Image.fromarray(pattern_image(20, 28)).save(root / "photo.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "noise.png")
    Image.fromarray(noise).save(root / "noise.jpg", quality=95)
    small.save(str(root / "small.npz"))
    deep.save(str(root / "deep.npz"))
    (root / "small.safetensors").write_bytes(safetensors_bytes(small.params))
    (root / "afile.txt").write_text("a file where a folder is expected")
    return types.SimpleNamespace(root=root, small=small, deep=deep,
                                 trace=deep.run(str(root / "photo.png")), path=lambda name: str(root / name))


# --- building bad files ---------------------------------------------------------------------------

def png_header_only(width, height):
    """A PNG signature, an IHDR chunk declaring ``width`` x ``height`` RGB, and IEND: a bomb costing 45 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def written(path, data):
    path.write_bytes(data)
    return str(path)


def safetensors_with_header(path, header: dict):
    """A .safetensors file whose JSON header is ``header`` exactly (and no data)."""
    text = json.dumps(header).encode()
    return written(path, struct.pack("<Q", len(text)) + text)


def truncated(source, destination, fraction=0.5):
    data = open(source, "rb").read()
    with open(destination, "wb") as f:
        f.write(data[:int(len(data) * fraction)])
    return destination


def rewrite_npz(source, destination, change):
    """Copy an .npz with ``change(arrays)`` applied to its {name: array}."""
    arrays = dict(np.load(source))
    change(arrays)
    with open(destination, "wb") as f:
        np.savez(f, **arrays)
    return destination


class RunsCode:
    """Unpickling this calls os.system(command): the marker file it creates proves that code ran."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def torch_zip_with(payload: bytes) -> bytes:
    """torch's zip serialization layout (``archive/data.pkl`` + ``archive/version``) holding any pickle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    return buffer.getvalue()


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
    Case("unknown GELU", ConfigError, r"gelu must be 'erf' or 'tanh', got 'relu'",
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


# --- convertible images: the right RGB, and a warning that says what was done ------------------------------

def _composite_on_white(rgb, alpha):
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb * a + 255 * (1 - a))


def _conversions():
    base = pattern_image(6, 10)                                               # [6, 10, 3]
    alpha = np.tile(np.array([0, 64, 128, 255, 200], np.uint8), (6, 2))      # [6, 10]
    grey = base[..., 0]
    palette = Image.fromarray(base).quantize(8)
    lut = np.array(palette.getpalette()[:8 * 3]).reshape(8, 3)
    cmyk = np.stack([base[..., 0], base[..., 1], base[..., 2], np.full((6, 10), 40, np.uint8)], -1)
    high = np.arange(60, dtype=np.uint16).reshape(6, 10) * 1110           # up to 65490
    bits = (np.arange(60).reshape(6, 10) % 3 == 0)
    return [
        ("RGBA", Image.frombytes("RGBA", (10, 6), np.dstack([base, alpha]).tobytes()), "PNG",
         r"mode RGBA with transparency; composited it on white", _composite_on_white(base, alpha)),
        ("LA", Image.frombytes("LA", (10, 6), np.dstack([grey, alpha]).tobytes()), "PNG", r"mode LA with transparency",
         _composite_on_white(np.repeat(grey[..., None], 3, -1), alpha)),
        ("P", palette, "PNG", r"mode palette \(P\); converted to RGB", lut[np.asarray(palette)]),
        ("L", Image.fromarray(grey), "PNG", r"mode L; converted to RGB", np.repeat(grey[..., None], 3, -1)),
        ("1", Image.fromarray(bits), "PNG", r"mode 1; converted to RGB", np.repeat(bits[..., None] * 255, 3, -1)),
        ("I;16", Image.fromarray(high), "PNG", r"mode I;16 \(high bit depth, scaled to 8 bits\)",
         np.repeat(np.round(high / 65535 * 255)[..., None], 3, -1)),
        ("CMYK", Image.frombytes("CMYK", (10, 6), cmyk.tobytes()), "TIFF", r"mode CMYK; converted to RGB",
         (255.0 - cmyk[..., :3]) * (255 - 40) / 255),                     # Pillow's cmyk2rgb
    ]


@pytest.mark.parametrize("mode, image, fmt, said, expected", _conversions(), ids=[c[0] for c in _conversions()])
def test_convertible_mode_gives_the_right_rgb_and_says_so(mode, image, fmt, said, expected, tmp_path):
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    assert Image.open(path).mode == mode                                  # the file really is in that mode
    with pytest.warns(ImageConversionWarning, match=said):
        rgb = to_rgb_array(path)
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    np.testing.assert_allclose(rgb, expected, atol=1)                     # 1 level: Pillow's integer rounding


@pytest.mark.parametrize("height, width, crop_pct, said", [
    (10, 10, 1.0, r"the image is 10x10 pixels, fewer than the model's 14x14 patches: it is upscaled 22\.4x to the "
                  r"224x224 input, so each patch holds less than one pixel of it; use a larger image"),
    (100, 300, 1.0, r"the image is 300x100 pixels and is upscaled 2\.2x to the model's 224x224 input, so its patches "
                    r"hold interpolated pixels; use a larger image, or run the model at a smaller size \(img_size=\)"),
    (112, 112, 0.875, r"is 112x112 pixels and is upscaled 2\.3x"),           # crop_pct: resized to 256, then cropped
])
def test_an_image_upscaled_past_2x_says_so_once(height, width, crop_pct, said):
    config = nv.ViTConfig(img_size=224, patch_size=16, crop_pct=crop_pct)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image(np.zeros((height, width, 3), np.uint8), config)
    assert [str(w.message) for w in caught if w.category is ImageConversionWarning] == \
        [m for m in [str(w.message) for w in caught] if re.search(said, m)] and len(caught) == 1


@pytest.mark.parametrize("height, width, img_size", [(112, 112, None), (224, 224, None), (600, 300, None),
                                                     (100, 100, 160)])
def test_an_image_upscaled_at_most_2x_is_quiet(height, width, img_size):
    config = nv.ViTConfig(img_size=224, patch_size=16, crop_pct=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(np.zeros((height, width, 3), np.uint8), config, img_size=img_size)


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                               (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_rotates_the_pixels(orientation, turn, tmp_path):
    """EXIF 6 = the camera was turned: the stored rows are the picture's right-hand column (rotate 90 clockwise)."""
    stored = pattern_image(6, 10)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "turned.png", exif=exif)
    with pytest.warns(ImageConversionWarning, match=f"EXIF orientation {orientation}; rotated/flipped it upright"):
        rgb = to_rgb_array(tmp_path / "turned.png")
    np.testing.assert_array_equal(rgb, turn(stored))
    if orientation in (6, 8):
        assert rgb.shape == (10, 6, 3)


def test_animated_gif_uses_the_first_frame_and_says_so(tmp_path):
    (tmp_path / "anim.gif").write_bytes(animated_gif(colours=((255, 0, 0), (0, 0, 255), (0, 255, 0))))
    with pytest.warns(ImageConversionWarning) as said:                    # animated, and palette (P) -> RGB
        rgb = to_rgb_array(tmp_path / "anim.gif")
    assert any(re.search(r"anim\.gif' is animated \(3 frames\); using the first frame", str(w.message)) for w in said)
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(rgb.reshape(-1, 3), np.tile([255, 0, 0], (256, 1)))


@pytest.mark.parametrize("array, said, expected", [
    (np.full((2, 2, 3), 0.5), r"float image in \[0, 1\] scaled to uint8", 128),
    (np.full((2, 2, 3), 65535, np.uint16), r"read as 16-bit and scaled to 8 bits", 255),
    (np.full((2, 2), 77, np.uint8), r"greyscale array repeated to 3 channels", 77),
    (np.ones((2, 2, 3), bool), r"boolean image mapped to black and white", 255),
    (np.dstack([np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8)]), r"RGBA array composited on white", 255),
], ids=["float01", "uint16", "greyscale", "bool", "transparent RGBA"])
def test_convertible_arrays_say_what_was_done(array, said, expected):
    with pytest.warns(ImageConversionWarning, match=said):
        rgb = to_rgb_array(array)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and (rgb == expected).all()


def test_a_converted_image_runs_and_its_overlay_is_rgb(world, tmp_path):
    Image.fromarray(pattern_image(20, 28)).convert("LA").save(tmp_path / "grey.png")
    with pytest.warns(ImageConversionWarning, match="mode LA"):
        batch, overlay = load_image(tmp_path / "grey.png", world.small.config)
    assert batch.shape == (1, 3, 16, 16) and overlay.shape == (16, 16, 3)
    assert np.allclose(overlay[..., 0], overlay[..., 1])                  # grey stayed grey


# --- security: nothing unpickled, nothing run, nothing downloaded unless asked ------------------------------

@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code_ran"
    yield path
    assert not path.exists(), "a checkpoint ran code on load"


def test_npz_with_pickled_objects_is_refused_and_runs_nothing(world, tmp_path, marker):
    arrays = dict(np.load(world.path("small.npz")))
    arrays["payload"] = np.array([RunsCode(f"touch {marker}")], dtype=object)  # np.savez pickles object arrays
    with open(tmp_path / "evil.npz", "wb") as f:
        np.savez(f, **arrays)
    for read in (weights.load_any, weights.load, native.open_npz):
        with pytest.raises(CheckpointError, match=r"evil\.npz: entry 'payload' holds Python objects .* refusing"):
            read(str(tmp_path / "evil.npz"))
    # the same bytes, unpickled without our guard, do run the command: the test would notice
    assert pickle.loads(pickle.dumps(RunsCode("true"))) == 0


@pytest.mark.parametrize("layout", ["zip (torch >= 1.6)", "bare pickle (legacy)"])
def test_pth_that_would_run_code_is_refused(layout, tmp_path, marker):
    payload = pickle.dumps({"patch_embed.proj.weight": RunsCode(f"touch {marker}")}, protocol=2)
    data = torch_zip_with(payload) if layout.startswith("zip") else payload
    (tmp_path / "evil.pth").write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        weights.load_any(str(tmp_path / "evil.pth"))
    message = str(caught.value)
    assert "evil.pth" in message
    # with torch: its weights_only unpickler names the global it refused; without: torch is required
    refused = r"weights_only=True\) could not read it .*(system|GLOBAL)|torch is not installed"
    assert re.search(refused, message), message


def test_torch_files_are_read_only_with_weights_only(tmp_path, monkeypatch):
    """Whatever torch is installed, read_torch calls ``torch.load(..., weights_only=True)`` (a stand-in torch
    records the call, so this holds without torch too)."""
    calls = []

    @contextmanager
    def safe_globals(allowed):
        yield

    fake = types.ModuleType("torch")
    fake.Tensor = type("Tensor", (), {})
    fake.serialization = types.SimpleNamespace(safe_globals=safe_globals)
    fake.load = lambda *args, **kwargs: calls.append(kwargs) or {"x": 1}
    monkeypatch.setitem(sys.modules, "torch", fake)
    (tmp_path / "w.pth").write_bytes(torch_zip_with(b"\x80\x02}q\x00."))
    assert files.read_torch(str(tmp_path / "w.pth")) == {"x": 1}
    assert calls == [{"map_location": "cpu", "weights_only": True}]


# training/ (not installed) reloads its own resume checkpoints; it is a script for the maintainers, not a code
# path that reads a user's file, so it is outside this rule (weights/MODEL_CARD.md describes it).
def test_no_pickle_on_any_loading_path():
    """No code that reads a user's file may unpickle: no pickle import, no allow_pickle=True, no
    weights_only=False (comments aside)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for package in ("numpy_vit", "weights", "viz"):
        for folder, _, names in os.walk(os.path.join(root, package)):
            for name in (n for n in names if n.endswith(".py")):
                relative = os.path.relpath(os.path.join(folder, name), root)
                for number, line in enumerate(open(os.path.join(folder, name), encoding="utf-8"), 1):
                    code = line.split("#")[0]
                    for bad in ("import pickle", "pickle.load", "allow_pickle=True", "weights_only=False"):
                        if bad in code:
                            offenders.append(f"{relative}:{number}: {bad}")
    assert not offenders, offenders


@pytest.fixture
def no_download(monkeypatch):
    """Every route to the network fails the test (an AssertionError is no NumpyViTError, so it is not caught)."""
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise AssertionError(f"a download was attempted for {args}")

    monkeypatch.setattr(hub, "fetch", refuse)
    monkeypatch.setattr(hub, "_download", refuse)
    try:
        import huggingface_hub
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    except ImportError:
        pass
    return tried


@pytest.mark.parametrize("name", ["missing.npz", "./missing", "/nonexistent/model.safetensors", "checkpoints/vit.pt",
                                  "runs/model.ckpt", "runs/model", "model", "~/weights/vit.pth"])
def test_a_missing_local_path_never_downloads(name, tmp_path, monkeypatch, no_download):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()                                           # "runs/model": a local folder's child
    with pytest.raises(CheckpointError, match=re.escape(name)):
        weights.load_any(name)
    assert no_download == []


def test_a_hub_name_is_the_only_thing_that_reaches_the_hub(tmp_path, monkeypatch, no_download):
    """The control for the test above: the stand-in does catch a real hub name."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="a download was attempted"):
        weights.load_any("google/vit-base-patch16-224")
    assert no_download == [("google/vit-base-patch16-224",)]


def test_no_default_model_never_downloads(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(weights.loader, "DEFAULT_PATH", str(tmp_path / "default.npz"))
    with pytest.raises(CheckpointError, match=r"no shipped default model yet: .*default\.npz does not exist"):
        nv.ViT.from_pretrained(None)
    assert no_download == []


# --- the command line: a bad argument is one line and exit code 2, never a traceback ------------------------

CLI_CASES = [
    (["show", "{photo}", "--model", "{deep}", "--layers", "12"], r"layer 12 is out of range: there are 12"),
    (["show", "{photo}", "--model", "{deep}", "--figure", "all_heads", "--layers", "-13"], r"--layers -13 is out"),
    (["show", "{photo}", "--model", "{deep}", "--head", "12"], r"--head 12 is out of range"),
    (["show", "{photo}", "--model", "{deep}", "--layers"], r"--layers: expected at least one argument"),
    (["show", "{photo}", "--model", "{deep}", "--figure", "heatmap"], r"unknown figure 'heatmap'; choose from"),
    (["show", "{photo}", "--model", "{deep}", "--query", "a,b"], r"--query 'a,b': use ROW,COL"),
    (["show", "{tmp}/nope.png", "--model", "{deep}"], r"image file not found: '.*nope\.png'"),
    (["show", "{photo}", "--model", "{tmp}/nope.npz"], r"nope\.npz: no such file or folder"),
    (["show", "{photo}", "--model", "random:resnet50"], r"unknown preset 'resnet50'"),
    (["show", "{photo}", "--model", "{deep}", "-o", "{afile}"], r"File exists: '.*afile\.txt'"),
    (["compare", "{photo}", "--after", "{deep}", "-o", "{afile}/x.png"], r"File exists|Not a directory"),
    (["predict", "{afile}", "--model", "{deep}"], r"afile\.txt' is not an image Pillow can read"),
    (["predict", "{photo}", "--model", "{deep}", "-k", "many"], r"-k/--top: invalid int value: 'many'"),
    (["convert", "{deep}", "-o", "{tmp}/missing_dir/out.npz"], r"folder .*missing_dir does not exist"),
    (["convert", "{deep}", "-o", "{tmp}"], r"that is a folder"),
    (["convert", "{deep}", "-o", "{tmp}/x.npz", "--arch", "vit_base_patch16_224"], r"not --arch vit_base_patch16_224 \(--arch vs file"),
    (["show", "{photo}", "--model", "{deep}", "--dpi", "3"], r"dpi must be a number from 10 to 1200, got 3"),
    (["demo", "--model", "{deep}", "--out", "{tmp}", "--dpi", "-5"], r"dpi must be a number from 10 to 1200, got -5"),
    (["explain", "{photo}"], r"invalid choice: 'explain'"),
    (["predict", "{photo}", "--model", "{deep}", "--img-size", "20"],
     r"--img-size 20 is not a multiple of this model's 8-pixel patches; use e\.g\. --img-size 16 or --img-size 24"),
    (["predict", "{photo}", "--img-size", "big"], r"argument --img-size: 'big': use one positive integer"),
    (["predict", "{photo}", "--model", "{bare}"], r"not the number of attention heads.*; pass --arch \(a preset"),
    (["predict", "{photo}", "--model", "{bare}", "--arch", "vit_gigantic"], r"--arch vit_gigantic is neither a preset"),
    (["predict", "{photo}", "--model", "random:vit_tiny_patch16_224", "--arch", "vit_tiny_patch16_224"],
     r"both name an architecture; give one"),
    (["compare", "{photo}", "--before", "{tmp}/nope.npz"], r"nope\.npz: no such file or folder"),
    (["convert", "random:resnet50", "-o", "{tmp}/x.npz"], r"unknown preset 'resnet50'"),
]


@pytest.mark.parametrize("argv, said", CLI_CASES, ids=[" ".join(a[:1] + a[2:]) for a, _ in CLI_CASES])
def test_cli_bad_argument_is_one_line_and_exit_code_2(argv, said, world, tmp_path, capsys):
    values = dict(photo=world.path("photo.png"), deep=world.path("deep.npz"), afile=world.path("afile.txt"),
                  bare=world.path("small.safetensors"), tmp=str(tmp_path))
    argv = [arg.format(**values) for arg in argv]
    try:
        code = cli.main(argv)
    except SystemExit as stop:                                            # argparse's own usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("numpy-vit") and "error:" in last and re.search(said, last), err
    assert not re.search(r"\barch=|ViTConfig|img_size|head_index|layer_idx", err), err   # flags, not Python names
