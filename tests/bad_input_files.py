"""Small valid files (images, checkpoints), bad ones, and byte-string mutations, shared by the bad-input tests
(test_bad_input.py, test_image_conversion.py, test_loading_security.py, test_cli_errors.py) and test_fuzz.py.

Everything here is tiny on purpose (16x16 images, a one-block model of width 8), so that a mutation
has a fair chance of hitting a header, a length field or a zip directory instead of pixel data.
"""
import io
import json
import os
import struct
import types
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

import numpy_vit as nv

TINY = dict(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, num_classes=3)


def tiny_config(**overrides):
    return nv.ViTConfig(**{**TINY, **overrides})


def tiny_model(seed=0, **overrides):
    return nv.ViT(tiny_config(**overrides), seed=seed)


def pattern_image(height=16, width=16):
    """An RGB image whose every pixel differs from its neighbours, so a rotation or a flip shows."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 255 // max(height - 1, 1), cols * 255 // max(width - 1, 1),
                     (rows * 7 + cols * 13) % 256], axis=-1).astype(np.uint8)  # [H, W, 3]


# --- images --------------------------------------------------------------------------------------

def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def animated_gif(colours=((255, 0, 0), (0, 0, 255)), size=(16, 16)):
    frames = [Image.new("RGB", size, colour) for colour in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def image_seeds():
    """{name: bytes} of valid small images in the formats the fuzzer mutates."""
    rgb = Image.fromarray(pattern_image())
    return {
        "rgb.png": encode(rgb, "PNG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "p.png": encode(rgb.convert("P"), "PNG"),
        "i16.png": encode(Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200), "PNG"),
        "rgb.jpg": encode(rgb, "JPEG", quality=90),
        "grey.jpg": encode(rgb.convert("L"), "JPEG", quality=90),
        "anim.gif": animated_gif(),
        "rgb.bmp": encode(rgb, "BMP"),
        "cmyk.tif": encode(rgb.convert("CMYK"), "TIFF"),
    }


# --- checkpoints -----------------------------------------------------------------------------------

def npz_bytes(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def safetensors_bytes(arrays):
    """The .safetensors layout written by hand (8-byte header length, JSON header, raw data), no package needed."""
    header, chunks, offset = {}, [], 0
    for name, array in arrays.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def jax_arrays(params, config):
    """A timm params dict written in the Google JAX / Flax ViT layout (the inverse of weights.read_jax)."""
    D, H = config.embed_dim, config.num_heads
    out = {"embedding/kernel": params["patch_embed.proj.weight"].transpose(2, 3, 1, 0),   # [D, C, p, p] -> [p, p, C, D]
           "embedding/bias": params["patch_embed.proj.bias"], "cls": params["cls_token"],
           "Transformer/posembed_input/pos_embedding": params["pos_embed"],
           "Transformer/encoder_norm/scale": params["norm.weight"],
           "Transformer/encoder_norm/bias": params["norm.bias"],
           "head/kernel": params["head.weight"].T, "head/bias": params["head.bias"]}
    for i in range(config.depth):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        attn = b + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = params[t + "attn.qkv.weight"], params[t + "attn.qkv.bias"]
        for part, name in enumerate(("query", "key", "value")):
            out[attn + name + "/kernel"] = qkv_w[part * D:(part + 1) * D].T.reshape(D, H, D // H)  # [D, H, Dh]
            out[attn + name + "/bias"] = qkv_b[part * D:(part + 1) * D].reshape(H, D // H)
        out[attn + "out/kernel"] = params[t + "attn.proj.weight"].T.reshape(H, D // H, D)        # [H, Dh, D]
        out[attn + "out/bias"] = params[t + "attn.proj.bias"]
        for flax, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[b + flax + "/scale"], out[b + flax + "/bias"] = params[t + ours + ".weight"], params[t + ours + ".bias"]
        for dense, ours in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            out[b + "MlpBlock_3/" + dense + "/kernel"] = params[t + "mlp." + ours + ".weight"].T
            out[b + "MlpBlock_3/" + dense + "/bias"] = params[t + "mlp." + ours + ".bias"]
    return out


def torch_bytes(state_dict):
    """A torch .pth (zip serialization) of a state dict, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


def checkpoint_seeds(tmp_folder):
    """{file name: bytes} of valid checkpoints of one tiny model in every format load_any reads from one file."""
    model = tiny_model(seed=1)
    native_path = tmp_folder / "native.npz"
    model.save(str(native_path))
    seeds = {
        "native.npz": native_path.read_bytes(),
        "timm.npz": npz_bytes(model.params),
        "jax.npz": npz_bytes(jax_arrays(model.params, model.config)),
        "timm.safetensors": safetensors_bytes(model.params),
    }
    pth = torch_bytes(model.params)
    if pth is not None:
        seeds["timm.pth"] = pth
    return seeds


# --- mutations -------------------------------------------------------------------------------------

INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f")
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"PK\x03\x04", b"\x80\x02",
         b"\x93NUMPY", b"{", b"RIFF")


def _position(data, rng):
    """A byte offset; half the time within 512 bytes of either end, where the headers and zip directories live."""
    if rng.random() < 0.5:
        return int(rng.integers(len(data)))
    near = int(rng.integers(min(len(data), 512)))
    return near if rng.random() < 0.5 else len(data) - 1 - near


def bit_flips(data, rng):
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        out[_position(out, rng)] ^= 1 << int(rng.integers(8))
    return bytes(out)


def overwrite(data, rng):
    out = bytearray(data)
    value = INTERESTING[int(rng.integers(len(INTERESTING)))]
    position = _position(out, rng)
    out[position:position + len(value)] = value
    return bytes(out[:max(len(data), position + len(value))])


def truncate(data, rng):
    return data[:int(rng.integers(len(data)))]


def splice(data, rng, other):
    return data[:int(rng.integers(len(data) + 1))] + other[int(rng.integers(len(other) + 1)):]


def insert_or_delete(data, rng):
    position = int(rng.integers(len(data) + 1))
    if rng.random() < 0.5:
        return data[:position] + rng.bytes(int(rng.integers(1, 64))) + data[position:]
    return data[:position] + data[position + int(rng.integers(1, 64)):]


def mutate(data, rng, others):
    """One random mutation of ``data``: bit flips, an interesting value, truncation, a splice or an insert/delete."""
    kind = int(rng.integers(5))
    if kind == 0:
        return "flip", bit_flips(data, rng)
    if kind == 1:
        return "overwrite", overwrite(data, rng)
    if kind == 2:
        return "truncate", truncate(data, rng)
    if kind == 3:
        return "splice", splice(data, rng, others[int(rng.integers(len(others)))])
    return "insert/delete", insert_or_delete(data, rng)


def random_bytes(rng):
    """Random bytes, half of them behind a real format's magic number."""
    body = rng.bytes(int(rng.integers(0, 600)))
    if rng.random() < 0.5:
        return "random after magic", MAGIC[int(rng.integers(len(MAGIC)))] + body
    return "random", body


def zip_with(members):
    """A zip archive holding ``{name: bytes}``, stored uncompressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def hf_arrays(params, config):
    """A timm params dict in HF transformers' ViTForImageClassification names (the inverse of weights.read_hf)."""
    D = config.embed_dim
    out = {"vit.embeddings.cls_token": params["cls_token"], "vit.embeddings.position_embeddings": params["pos_embed"],
           "vit.embeddings.patch_embeddings.projection.weight": params["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": params["patch_embed.proj.bias"],
           "vit.layernorm.weight": params["norm.weight"], "vit.layernorm.bias": params["norm.bias"],
           "classifier.weight": params["head.weight"], "classifier.bias": params["head.bias"]}
    for i in range(config.depth):
        layer, t = f"vit.encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            qkv = params[t + "attn.qkv." + part]
            for index, name in enumerate(("query", "key", "value")):
                out[layer + "attention.attention." + name + "." + part] = qkv[index * D:(index + 1) * D]
            for hf, ours in (("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
                             ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                             ("output.dense", "mlp.fc2")):
                out[layer + hf + "." + part] = params[t + ours + "." + part]
    return out


def hf_config(config, labels=("a", "b", "c")):
    """HF's config.json for a tiny model with the given class names."""
    return {"model_type": "vit", "hidden_size": config.embed_dim, "num_hidden_layers": config.depth,
            "num_attention_heads": config.num_heads, "intermediate_size": config.mlp_dim,
            "image_size": config.img_size[0], "patch_size": config.patch_size, "num_channels": 3,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True,
            "id2label": {str(i): name for i, name in enumerate(labels)}}


def timm_config(config):
    """timm's hub config.json for a tiny model."""
    return {"architecture": "vit_tiny_patch16_224",
            "model_args": {"img_size": config.img_size[0], "patch_size": config.patch_size,
                           "embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads},
            "num_classes": config.num_classes,
            "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9,
                               "input_size": [3, config.img_size[0], config.img_size[1]]}}


JSON_VALUES = (None, True, False, -1, 0, 1, 3, 7, 1e308, -0.5, float("nan"), "x", "", "vit", "gelu_new", "avg",
               [], [1], [1, 2, 3], [3, 16, 16], {}, {"a": 1}, {"0": "a"}, 2 ** 64, "16")


def mutate_json(value, rng, depth=0):
    """Replace, delete or add a field somewhere in a JSON object tree (a copy)."""
    if isinstance(value, dict) and value and (depth == 0 or rng.random() < 0.7):
        out = dict(value)
        key = list(out)[int(rng.integers(len(out)))]
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out["extra_" + str(int(rng.integers(100)))] = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]
        elif isinstance(out[key], (dict, list)) and rng.random() < 0.5:
            out[key] = mutate_json(out[key], rng, depth + 1)
        else:
            out[key] = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]
        return out
    if isinstance(value, list) and value:
        out = list(value)
        out[int(rng.integers(len(out)))] = JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]
        return out
    return JSON_VALUES[int(rng.integers(len(JSON_VALUES)))]


# --- a small model's checkpoint, for the weights tests ------------------------------------------------------

SMALL = nv.ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                     labels=("a", "b", "c", "d", "e"), name="small")


def random_params(config, seed=0):
    """{name: float32 array} of random normal values, every parameter of ``config``."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in nv.param_shapes(config).items()}


def write_timm_safetensors(path, config, seed=0):
    """A timm state dict of random weights as .safetensors (written without torch); returns the params."""
    from safetensors.numpy import save_file
    params = random_params(config, seed)
    save_file(params, str(path))
    return params


# --- the world of files the bad-input tests share, and bad files built from them ---------------------------

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
