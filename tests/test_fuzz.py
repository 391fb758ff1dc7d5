"""Fuzzing, bounded and seeded: random and mutated byte strings through the image loader and every
checkpoint reader. Each case may succeed or raise one of our named errors (NumpyViTError subclasses);
anything else, or a case running past TIMEOUT_S, is an escape and fails the test with the case's
target, seed, mutation and the line it escaped from. Counts are printed per target.

Every case draws from ``np.random.default_rng([SEED, target, i])``, so a failing case can be replayed alone.
The budgets keep the whole module under a minute on a shared two-core machine.
"""
import json
import os
import signal
import time
import traceback
import warnings
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from numpy_vit import weights
from bad_input_files import (checkpoint_seeds, hf_arrays, hf_config, image_seeds, mutate, mutate_json,
                             random_bytes, safetensors_bytes, timm_config, tiny_config, tiny_model)
from numpy_vit.errors import NumpyViTError
from numpy_vit.image import load_image
from numpy_vit.weights import files, native
from numpy_vit.weights.read_jax import PREFIXES

SEED = int(os.environ.get("FUZZ_SEED", 7))  # fixed by default; set FUZZ_SEED to explore further
TIMEOUT_S = 10          # one case longer than this counts as an escape (a hang)
BUDGET = {"image loader": 3000, "load_any": 2000, "format readers": 1500, "state dicts": 600, "config.json": 600}
EXTENSIONS = (".npz", ".safetensors", ".pth", ".bin", ".pt", "")


class CaseTimeout(Exception):
    """Raised by the alarm inside a case that runs too long."""


class Tally:
    """Outcomes of one target's cases: successes, each named error class, and escapes with how to replay them."""

    def __init__(self, target):
        self.target, self.outcomes, self.escapes, self.start = target, Counter(), [], time.perf_counter()

    def run(self, index, label, call):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # conversion notes, Pillow's EXIF and bomb warnings: not errors
            if hasattr(signal, "setitimer"):
                signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
            try:
                call()
                self.outcomes["ok"] += 1
            except NumpyViTError as error:
                self.outcomes[type(error).__name__] += 1
            except Exception as error:  # noqa: BLE001 (the point: anything else is an escape)
                frames = traceback.extract_tb(error.__traceback__)
                ours = [f for f in frames if "site-packages" not in f.filename and f.filename != __file__]
                where = " <- ".join(f"{os.path.relpath(f.filename)}:{f.lineno}" for f in (frames[-1:] + ours[-1:]))
                self.outcomes["ESCAPED"] += 1
                self.escapes.append(f"{self.target} case {index} ({label}): {type(error).__name__}: "
                                    f"{str(error)[:160]} at {where}")
            finally:
                if hasattr(signal, "setitimer"):
                    signal.setitimer(signal.ITIMER_REAL, 0)

    def report(self, capsys):
        seconds = time.perf_counter() - self.start
        cases = sum(self.outcomes.values())
        detail = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        with capsys.disabled():
            print(f"\nfuzz {self.target}: {cases} cases in {seconds:.1f} s: {detail}")
        shown = self.escapes[:int(os.environ.get("FUZZ_SHOW", 15))]
        assert not self.escapes, f"{len(self.escapes)} case(s) escaped:\n" + "\n".join(shown)
        return cases


@pytest.fixture(autouse=True)
def alarm():
    """Turn SIGALRM into CaseTimeout for the duration of a test (restoring the old handler after)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"a case ran longer than {TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    yield
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Nothing here is a hub name; a download attempt would be a bug, so it fails loudly (not as a named error)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the fuzzer reached the hub with {args}")
    monkeypatch.setattr(weights.hub, "fetch", refuse)


def case_rng(target, index):
    return np.random.default_rng([SEED, sum(map(ord, target)), index])


def write(folder, name, data):
    path = folder / name
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    return {"images": image_seeds(), "checkpoints": checkpoint_seeds(folder)}


def test_fuzz_image_loader(seeds, tmp_path, monkeypatch, capsys):
    # A lower bomb limit keeps a mutated header from making Pillow decode 100-megapixel canvases;
    # the limit is the same code path as the default one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1 << 20)
    config = tiny_config(img_size=32, crop_pct=0.875)
    names, datas = list(seeds["images"]), list(seeds["images"].values())
    tally = Tally("image loader")
    for index in range(BUDGET["image loader"]):
        rng = case_rng("image", index)
        pick = int(rng.integers(len(names)))
        if rng.random() < 0.1:
            label, data = random_bytes(rng)
        else:
            label, data = mutate(datas[pick], rng, datas)
        path = write(tmp_path, "case" + os.path.splitext(names[pick])[1], data)
        tally.run(index, f"{label} of {names[pick]}", lambda: load_image(path, config))
    assert tally.report(capsys) == BUDGET["image loader"]
    assert tally.outcomes["ok"] > 100 and tally.outcomes["ImageError"] > 100  # both sides were exercised


def test_fuzz_load_any_every_extension(seeds, tmp_path, capsys):
    names, datas = list(seeds["checkpoints"]), list(seeds["checkpoints"].values())
    arch_choices = (None, tiny_config(), "vit_tiny_patch16_224")
    tally = Tally("load_any")
    for index in range(BUDGET["load_any"]):
        rng = case_rng("load_any", index)
        pick = int(rng.integers(len(names)))
        if rng.random() < 0.1:
            label, data = random_bytes(rng)
        else:
            label, data = mutate(datas[pick], rng, datas)
        own = os.path.splitext(names[pick])[1]
        extension = own if rng.random() < 0.7 else EXTENSIONS[int(rng.integers(len(EXTENSIONS)))]
        path = write(tmp_path, "checkpoint" + extension, data)
        arch = arch_choices[int(rng.integers(len(arch_choices)))]
        tally.run(index, f"{label} of {names[pick]} as {extension or 'no extension'}",
                  lambda: weights.load_any(path, arch=arch))
    tally.report(capsys)
    assert tally.outcomes["ok"] > 20 and tally.outcomes["CheckpointError"] > 200


def test_fuzz_format_readers(seeds, tmp_path, capsys):
    """The format-specific readers on their own format: native.load, open_npz, read_safetensors, read_torch, sniff."""
    checkpoints = seeds["checkpoints"]
    readers = [("native.load", "native.npz", native.load), ("open_npz", "jax.npz", native.open_npz),
               ("read_safetensors", "timm.safetensors", files.read_safetensors), ("sniff", "timm.npz", files.sniff)]
    if "timm.pth" in checkpoints:
        readers.append(("read_torch", "timm.pth", files.read_torch))
    datas = list(checkpoints.values())
    tally = Tally("format readers")
    for index in range(BUDGET["format readers"]):
        rng = case_rng("readers", index)
        name, seed_name, reader = readers[index % len(readers)]
        label, data = random_bytes(rng) if rng.random() < 0.1 else mutate(checkpoints[seed_name], rng, datas)
        path = write(tmp_path, seed_name, data)
        tally.run(index, f"{name}: {label} of {seed_name}", lambda: reader(path))
    tally.report(capsys)


# Keys a state dict may hold: every layout's real names (block 0 and 1), and some that no reader knows.
def _key_pool():
    model = tiny_model(depth=2)
    timm = list(model.params)
    hf = list(hf_arrays(model.params, model.config))
    jax = [prefix + key for prefix in ("",) + PREFIXES[:1]
           for key in ["embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
                       "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
                       "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", "head/kernel",
                       "Transformer/encoderblock/LayerNorm_0/scale", "pos_embedding", "params/img/embedding/kernel"]]
    junk = ["blocks.7.norm1.weight", "module.head.weight", "optimizer.state", "__config__", "__format__",
            "blocks.x.attn.qkv.weight", "reg_token", "dist_token", "head_dist.weight", "pre_logits.fc.weight",
            "fc_norm.weight", "blocks.0.ls1.gamma", "embeddings.mask_token", "teacher"]
    return timm, timm + hf + jax + junk


DTYPES = ("<f4", "<f4", "<f4", "<f8", "<f2", "<i4", "|u1", "|b1", "<c8", "<U3")


def _random_array(rng, shape_hint):
    if shape_hint is not None and rng.random() < 0.6:  # the right rank, one axis perhaps changed
        shape = list(shape_hint)
        if shape and rng.random() < 0.6:
            shape[int(rng.integers(len(shape)))] = int(rng.integers(0, 40))
    else:
        shape = [int(rng.integers(0, 10)) for _ in range(int(rng.integers(0, 5)))]
    dtype = np.dtype(DTYPES[int(rng.integers(len(DTYPES)))])
    if dtype.kind == "U":
        return np.full(shape, "abc", dtype)
    values = rng.standard_normal(shape) * (1e30 if rng.random() < 0.05 else 1)
    if rng.random() < 0.05 and values.size:
        values.flat[0] = np.nan
    with np.errstate(over="ignore", invalid="ignore"):  # 1e30 or NaN into float16 / integers: wanted here
        return values.astype(dtype)


def test_fuzz_state_dicts(tmp_path, capsys):
    """Structured cases: real and foreign key names, shapes off by one axis, odd dtypes, NaN, a stored config."""
    timm_keys, pool = _key_pool()
    shapes = {k: v.shape for k, v in tiny_model(depth=2).params.items()}
    valid = tiny_model(depth=2).params
    arch_choices = (None, tiny_config(depth=2), "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224")
    tally = Tally("state dicts")
    for index in range(BUDGET["state dicts"]):
        rng = case_rng("state dicts", index)
        if rng.random() < 0.5:  # a valid timm state dict with a few keys dropped, added or reshaped
            arrays = dict(valid)
            for _ in range(int(rng.integers(1, 4))):
                key = pool[int(rng.integers(len(pool)))]
                if key in arrays and rng.random() < 0.4:
                    del arrays[key]
                else:
                    arrays[key] = _random_array(rng, shapes.get(key))
        else:
            keys = rng.choice(pool, size=int(rng.integers(1, 12)), replace=False)
            arrays = {str(k): _random_array(rng, shapes.get(str(k))) for k in keys}
        if "__config__" in arrays:  # a native file whose stored config is mutated JSON
            arrays["__config__"] = np.array(json.dumps(mutate_json(tiny_config(depth=2).to_dict(), rng)))
        path = tmp_path / "state.npz"
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        arch = arch_choices[int(rng.integers(len(arch_choices)))]
        tally.run(index, f"{len(arrays)} arrays, arch={arch if isinstance(arch, str) else type(arch).__name__}",
                  lambda: weights.load_any(str(path), arch=arch))
    tally.report(capsys)


def test_fuzz_config_json_folders(tmp_path, capsys):
    """HF and timm folders whose config.json has a field replaced, deleted or added (or its text mutated)."""
    model = tiny_model(seed=2)
    layouts = {"hf": (safetensors_bytes(hf_arrays(model.params, model.config)), hf_config(model.config)),
               "timm": (safetensors_bytes(model.params), timm_config(model.config))}
    tally = Tally("config.json")
    for index in range(BUDGET["config.json"]):
        rng = case_rng("config.json", index)
        layout = ("hf", "timm")[index % 2]
        weights_bytes, config = layouts[layout]
        folder = tmp_path / layout
        folder.mkdir(exist_ok=True)
        (folder / "model.safetensors").write_bytes(weights_bytes)
        changed = mutate_json(config, rng)
        text = json.dumps(mutate_json(changed, rng) if rng.random() < 0.5 else changed)
        if rng.random() < 0.15:
            _, raw = mutate(text.encode(), rng, [text.encode()])
            (folder / "config.json").write_bytes(raw)
        else:
            (folder / "config.json").write_text(text)
        tally.run(index, f"{layout} folder, config.json {text[:200]}", lambda: weights.load_any(str(folder)))
    tally.report(capsys)
