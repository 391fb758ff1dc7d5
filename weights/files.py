"""Reading tensors out of files, and telling file formats apart by their first bytes.

- ``.safetensors``: an 8-byte little-endian header length, a JSON header
  (name -> dtype, shape, byte offsets), then raw little-endian data
  (https://github.com/huggingface/safetensors#format). Read with
  ``safetensors.numpy`` when it is installed; a small reader of our own covers
  bfloat16 (which numpy lacks) and machines without the package.
- torch ``.pth`` / ``.bin``: a zip holding ``data.pkl`` (or an older bare
  pickle). Only ``torch.load(weights_only=True)`` may open it, and only when
  torch is installed.
- ``.npz``: a zip of ``.npy`` members (ours, or a Google JAX checkpoint).
"""
from __future__ import annotations

import json
import os
import struct
import zipfile

import numpy as np

from numpy_vit.errors import CheckpointError

# --- format detection -----------------------------------------------------------


def sniff(path: str) -> str:
    """What a path holds, from its contents: 'dir', 'npz', 'torch', 'safetensors', 'json' or 'unknown'."""
    if os.path.isdir(path):
        return "dir"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file or folder") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    if head.startswith(b"PK"):  # a zip: numpy .npz or torch's zip serialization
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except Exception as e:  # BadZipFile, but a corrupt directory also brings NotImplementedError, UnicodeDecodeError
            raise CheckpointError(f"{path}: a zip archive that cannot be opened (truncated?): "
                                  f"{type(e).__name__}: {e}") from None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "unknown"
    size = os.path.getsize(path)
    header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
    # safetensors first: a header of 128 + 256 k bytes makes the file's first byte 0x80, a pickle's opcode
    if head[8:9] == b"{" and 2 <= header_len <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80":  # a bare pickle: torch.save(..., _use_new_zipfile_serialization=False)
        return "torch"
    if head.lstrip()[:1] == b"{":
        return "json"
    if head[8:9] == b"{":
        raise CheckpointError(f"{path}: looks like .safetensors but its header claims {header_len} bytes and the "
                              f"file has {size}: truncated?")
    return "unknown"


# --- safetensors --------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?", "BF16": "<u2"}


def safetensors_header(path: str) -> dict:
    """The JSON header of a .safetensors file, checked against the file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: only {size} bytes, too short for a .safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: .safetensors header of {n} bytes but the file has {size}: truncated")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: the .safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the .safetensors header must be a JSON object, found {type(header).__name__}")
    for name, info in header.items():
        if name != "__metadata__":
            _check_header_entry(path, name, info)
    end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"], default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: tensors end at byte {8 + n + end} but the file has {size}: truncated")
    return header


def _check_header_entry(path: str, name: str, info) -> None:
    """One tensor's entry: ``{"dtype": str, "shape": [n >= 0, ...], "data_offsets": [begin, end]}``, begin <= end."""
    def counts(value, length=None):
        return isinstance(value, list) and (length is None or len(value) == length) and \
            all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)

    ok = isinstance(info, dict) and isinstance(info.get("dtype"), str) and counts(info.get("shape")) \
        and counts(info.get("data_offsets"), 2) and info["data_offsets"][0] <= info["data_offsets"][1]
    if not ok:
        raise CheckpointError(f"{path}: .safetensors header entry {name!r} is {str(info)[:120]}; each tensor needs "
                              f'{{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}} with 0 <= begin <= end')


def _read_safetensors_ourselves(path: str, header: dict) -> dict:
    """Every tensor as a numpy array; bfloat16 widened to float32 (its bits are float32's top half)."""
    (n,) = struct.unpack("<Q", open(path, "rb").read(8))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if os.path.getsize(path) > 8 + n else b""
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which this reader does not "
                                  f"know (known: {', '.join(_SAFETENSORS_DTYPES)})")
        begin, end = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        count = int(np.prod(info["shape"], dtype=np.int64))
        if end - begin != count * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {info['shape']} {info['dtype']} needs "
                                  f"{count * dtype.itemsize} bytes, the header gives it {end - begin}")
        a = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = np.array(a)
    return out


def read_safetensors(path: str) -> dict:
    """``{name: array}`` from a .safetensors file, without torch."""
    header = safetensors_header(path)
    has_bf16 = any(v.get("dtype") == "BF16" for k, v in header.items() if k != "__metadata__")
    try:
        import safetensors.numpy
    except ImportError:
        return _read_safetensors_ourselves(path, header)
    if has_bf16:  # numpy has no bfloat16, so safetensors.numpy cannot hand it over
        return _read_safetensors_ourselves(path, header)
    try:
        return safetensors.numpy.load_file(path)
    except Exception as e:  # SafetensorError is not exported under a stable name
        raise CheckpointError(f"{path}: safetensors could not read it: {e}") from None


# --- torch pickles ------------------------------------------------------------

def torch_to_safetensors_hint(path: str) -> str:
    return (f"convert it once on a machine with torch: python -c \"import torch, safetensors.torch as st; "
            f"sd = torch.load('{path}', map_location='cpu', weights_only=True); "
            f"st.save_file({{k: v.contiguous() for k, v in sd.items()}}, 'model.safetensors')\" "
            f"(for a checkpoint that nests its state dict, save that inner dict), then load the .safetensors")


def read_torch(path: str):
    """The object in a torch checkpoint, tensors turned into numpy arrays.

    Uses ``torch.load(weights_only=True)``: only tensors, containers and plain
    values are rebuilt, never arbitrary classes. ``argparse.Namespace`` is allowed
    too, because DINO and timm training checkpoints store their arguments in one.
    """
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a torch pickle (.pth / .bin) and torch is not installed. Install torch, "
                              f"or use a .safetensors file (read without torch); to " + torch_to_safetensors_hint(path)
                              ) from None
    import argparse
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (truncated zip), EOFError ...
        lines = [line for line in str(e).splitlines() if line.strip()]
        # torch's message opens with advice to retry with weights_only=False; the reason comes later
        detail = next((line for line in lines if "GLOBAL" in line or "nsupported" in line), lines[0] if lines else "")
        raise CheckpointError(f"{path}: torch.load(weights_only=True) could not read it ({type(e).__name__}: "
                              f"{detail.strip()}); numpy_vit does not unpickle arbitrary objects") from None
    return _tensors_to_numpy(obj, torch)


def _tensors_to_numpy(obj, torch):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return (t.float() if t.is_floating_point() else t).numpy()
    if isinstance(obj, dict):
        return {k: _tensors_to_numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_to_numpy(v, torch) for v in obj)
    return obj
