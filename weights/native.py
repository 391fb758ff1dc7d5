"""Our own checkpoint format: one ``.npz`` with the parameter arrays and the config as JSON.

Every array is stored under its timm name; the config travels as a 0-d numpy
unicode string under ``__config__`` and the format tag under ``__format__``, so
the file is read with ``np.load(allow_pickle=False)``: no pickle, nothing in it
can run code.
"""
from __future__ import annotations

import os

import numpy as np

from numpy_vit.config import ViTConfig, check_params
from numpy_vit.errors import CheckpointError, ConfigError

CONFIG_KEY = "__config__"
FORMAT_KEY = "__format__"
FORMAT_TAG = "numpy-vit/1"


def save(path, config: ViTConfig, params: dict) -> str:
    """Write ``config`` and ``params`` to ``path`` (a ``.npz``); return the path written.

    The params must be exactly the ones the config needs (``check_params``);
    they are stored as float32. The file is written next to its destination and
    renamed into place, so a crash never leaves half a checkpoint behind.
    """
    path = os.fspath(path)
    if not isinstance(config, ViTConfig):
        raise CheckpointError(f"save({path!r}): config must be a ViTConfig, got {type(config).__name__}")
    check_params(config, params, where=path)
    if any(k.startswith("__") for k in params):
        raise CheckpointError(f"save({path!r}): parameter names may not start with '__' (reserved for metadata)")
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    arrays[CONFIG_KEY] = np.array(config.to_json())
    arrays[FORMAT_KEY] = np.array(FORMAT_TAG)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"save({path!r}): folder {folder} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"save({path!r}): that is a folder; give a file name such as {os.path.join(path, 'model.npz')!r}")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:  # a file object, so numpy does not append a second ".npz"
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def open_npz(path) -> dict:
    """Read every array of an ``.npz`` without pickle: ``{name: array}``.

    A truncated or non-zip file, and an entry holding Python objects (which only
    pickle can read), raise CheckpointError naming the file and the entry.
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # zipfile, zlib and numpy's header parser each raise their own errors on corrupt bytes
        raise CheckpointError(f"{path}: not a readable .npz (truncated or not a zip archive): "
                              f"{type(e).__name__}: {e}") from None
    arrays = {}
    with archive:
        for name in archive.files:
            try:
                arrays[name] = archive[name]
            except ValueError as e:
                if "allow_pickle" not in str(e):  # not the refusal: a bad header, too little data ...
                    raise CheckpointError(f"{path}: entry {name!r} is truncated or corrupt: {e}") from None
                raise CheckpointError(f"{path}: entry {name!r} holds Python objects that only pickle can read; "
                                      f"refusing to unpickle (numpy said: {e})") from None
            except MemoryError:
                raise CheckpointError(f"{path}: entry {name!r} declares an array too large to allocate; "
                                      f"the file is corrupt") from None
            except Exception as e:  # BadZipFile (CRC), zlib.error, EOFError, tokenize errors in the .npy header ...
                raise CheckpointError(f"{path}: entry {name!r} is truncated or corrupt: "
                                      f"{type(e).__name__}: {e}") from None
    return arrays


def is_native(arrays: dict) -> bool:
    return CONFIG_KEY in arrays


def config_from_arrays(arrays: dict, where: str) -> ViTConfig:
    """The ViTConfig stored in a native ``.npz``."""
    raw = arrays[CONFIG_KEY]
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise CheckpointError(f"{where}: {CONFIG_KEY} must be a 0-d unicode string, got dtype {raw.dtype} "
                              f"shape {raw.shape}")
    try:
        return ViTConfig.from_json(str(raw))
    except ConfigError as e:
        raise CheckpointError(f"{where}: the stored config is not valid: {e}") from None


def read_native(arrays: dict, where: str):
    """(config, params) from the arrays of a native ``.npz``, checked against each other."""
    tag = str(arrays[FORMAT_KEY]) if FORMAT_KEY in arrays else FORMAT_TAG
    if tag != FORMAT_TAG:
        raise CheckpointError(f"{where}: format {tag!r} is not one this version reads ({FORMAT_TAG!r})")
    config = config_from_arrays(arrays, where)
    odd = [f"{k} ({v.dtype})" for k, v in arrays.items() if k not in (CONFIG_KEY, FORMAT_KEY) and v.dtype.kind != "f"]
    if odd:
        raise CheckpointError(f"{where}: parameters must be floating point arrays; these are not: {', '.join(odd[:8])}")
    params = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k not in (CONFIG_KEY, FORMAT_KEY)}
    check_params(config, params, where=where)
    return config, params


def load(path):
    """Read a checkpoint written by :func:`save`: ``(ViTConfig, {timm name: float32 array})``."""
    path = os.fspath(path)
    arrays = open_npz(path)
    if not is_native(arrays):
        raise CheckpointError(f"{path}: no {CONFIG_KEY} entry, so this is not a numpy-vit .npz; "
                              f"weights.load_any() reads other formats (timm, HF, JAX npz, DINO)")
    return read_native(arrays, path)
