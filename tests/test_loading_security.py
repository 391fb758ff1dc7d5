"""Loading is safe: nothing is unpickled, no code a file carries runs, and nothing is downloaded unless a hub
name asks for it.
"""
import os
import pickle
import re
import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest

import numpy_vit as nv
from numpy_vit import weights
from bad_input_files import RunsCode, torch_zip_with
from numpy_vit.errors import CheckpointError
from numpy_vit.weights import files, hub, native


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


