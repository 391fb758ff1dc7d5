"""numpy_vit.weights without torch: the parameter list, our .npz round trip and the errors of bad files, the
ImageNet labels and the converter.

Every file here is written by numpy or safetensors.numpy; parity_tests/test_weights_parity.py checks the
readers against files written by timm, HF transformers and torch.
"""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from bad_input_files import SMALL, random_params, write_timm_safetensors
from numpy_vit import weights
from numpy_vit.config import ViTConfig
from numpy_vit.errors import CheckpointError
from numpy_vit.weights import loader
from numpy_vit.weights.labels import imagenet_labels, labels_from_synsets


# --- param_shapes --------------------------------------------------------------------------------------

def test_param_count_of_vit_base_is_the_papers_86m():
    # timm's vit_base_patch16_224 has 86,567,656 parameters (ViT paper Table 1: "86M").
    params = {k: np.empty(s, np.float32) for k, s in weights.param_shapes(ViTConfig.preset("vit_base_patch16_224")).items()}
    assert weights.count_params(params) == 86_567_656


def test_param_shapes_follow_the_config_switches():
    base = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=3)
    plain = weights.param_shapes(ViTConfig(**base))
    assert plain["pos_embed"] == (1, 1 + 16, 32) and plain["head.weight"] == (3, 32) and "norm.weight" in plain
    deit = weights.param_shapes(ViTConfig(**base, distilled=True))
    assert deit["pos_embed"] == (1, 2 + 16, 32) and deit["head_dist.weight"] == (3, 32) and "dist_token" in deit
    reg = weights.param_shapes(ViTConfig(**base, num_reg_tokens=4, no_embed_class=True, init_values=1e-5))
    assert reg["reg_token"] == (1, 4, 32) and reg["pos_embed"] == (1, 16, 32)
    assert reg["blocks.0.ls1.gamma"] == (32,) and reg["blocks.0.ls2.gamma"] == (32,)
    avg = weights.param_shapes(ViTConfig(**base, global_pool="avg"))
    assert "fc_norm.weight" in avg and "norm.weight" not in avg
    pre = weights.param_shapes(ViTConfig(**base, representation_size=48))
    assert pre["pre_logits.fc.weight"] == (48, 32) and pre["head.weight"] == (3, 48)
    nobias = weights.param_shapes(ViTConfig(**{**base, "num_classes": 0}, qkv_bias=False))
    assert "blocks.0.attn.qkv.bias" not in nobias and "head.weight" not in nobias


# --- our .npz ------------------------------------------------------------------------------------------

def test_npz_round_trip_is_exact(tmp_path):
    params = random_params(SMALL)
    path = weights.save(tmp_path / "small.npz", SMALL, params)
    config, loaded = weights.load(path)
    assert config == SMALL and config.labels == SMALL.labels
    assert loaded.keys() == params.keys()
    for k in params:
        assert loaded[k].dtype == np.float32 and np.array_equal(loaded[k], params[k]), k
    # the same through load_any, and the file needs no pickle
    config2, loaded2 = weights.load_any(str(path))
    assert config2 == SMALL and all(np.array_equal(loaded2[k], params[k]) for k in params)
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["__config__"]))["embed_dim"] == 32


def test_save_keeps_a_name_without_npz_extension(tmp_path):
    path = weights.save(tmp_path / "model.weights", SMALL, random_params(SMALL))
    assert os.path.basename(path) == "model.weights" and os.listdir(tmp_path) == ["model.weights"]
    assert weights.load(path)[0] == SMALL


def test_save_refuses_params_that_do_not_fit(tmp_path):
    params = random_params(SMALL)
    del params["blocks.1.norm2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.norm2\.bias"):
        weights.save(tmp_path / "x.npz", SMALL, params)
    assert not (tmp_path / "x.npz").exists()


def _rewrite(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_missing_key_is_named(tmp_path):
    path = weights.save(tmp_path / "m.npz", SMALL, random_params(SMALL))
    arrays = dict(np.load(path))
    del arrays["blocks.0.attn.qkv.weight"]
    _rewrite(path, arrays)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.0\.attn\.qkv\.weight"):
        weights.load(path)


def test_extra_key_is_named(tmp_path):
    path = weights.save(tmp_path / "m.npz", SMALL, random_params(SMALL))
    arrays = dict(np.load(path))
    arrays["blocks.0.attn.q_norm.weight"] = np.ones(8, np.float32)
    _rewrite(path, arrays)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.0\.attn\.q_norm\.weight"):
        weights.load(path)


def test_wrong_shape_names_both_shapes(tmp_path):
    path = weights.save(tmp_path / "m.npz", SMALL, random_params(SMALL))
    arrays = dict(np.load(path))
    arrays["head.weight"] = np.zeros((7, 32), np.float32)
    _rewrite(path, arrays)
    with pytest.raises(CheckpointError, match=r"head\.weight has shape \(7, 32\) but the config needs \(5, 32\)"):
        weights.load(path)


def test_truncated_npz(tmp_path):
    path = weights.save(tmp_path / "m.npz", SMALL, random_params(SMALL))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.npz.*(truncated|cannot be opened)"):
        weights.load_any(path)
    with pytest.raises(CheckpointError, match="truncated"):
        weights.load(path)


def test_pickle_bearing_npz_is_refused(tmp_path):
    path = weights.save(tmp_path / "m.npz", SMALL, random_params(SMALL))
    arrays = dict(np.load(path))
    arrays["payload"] = np.array([{"run": "code"}], dtype=object)  # np.save pickles object arrays
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match=r"'payload' holds Python objects.*refusing to unpickle"):
        weights.load_any(path)


def test_bad_stored_config(tmp_path):
    path = weights.save(tmp_path / "m.npz", SMALL, random_params(SMALL))
    arrays = dict(np.load(path))
    arrays["__config__"] = np.array('{"embed_dim": 32, "depth": 2, "num_heads": 5}')
    _rewrite(path, arrays)
    with pytest.raises(CheckpointError, match="stored config is not valid.*divisible"):
        weights.load(path)


def test_unknown_format_and_missing_files(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\x00\x01garbage that is no checkpoint at all")
    with pytest.raises(CheckpointError, match="unknown format.*accepted"):
        weights.load_any(junk)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        weights.load_any(tmp_path / "nope.npz")
    other_zip = tmp_path / "other.npz"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="unknown format"):
        weights.load_any(other_zip)
    unknown_keys = tmp_path / "keys.npz"
    np.savez(unknown_keys, **{"encoder.weight": np.zeros(3)})
    with pytest.raises(CheckpointError, match="none of the known layouts.*encoder.weight"):
        weights.load_any(unknown_keys)
    with pytest.raises(CheckpointError, match="load_any"):
        weights.load(unknown_keys)  # load() reads only our own format


def test_no_default_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "DEFAULT_PATH", str(tmp_path / "default.npz"))
    with pytest.raises(CheckpointError, match="no shipped default model yet.*default.npz does not exist"):
        weights.load_any()
    weights.save(tmp_path / "default.npz", SMALL, random_params(SMALL))
    assert weights.load_any()[0] == SMALL


# --- labels and the converter ------------------------------------------------------------------------------

def test_imagenet_labels():
    names = imagenet_labels()
    assert len(names) == 1000
    assert (names[0], names[1], names[207], names[281], names[999]) == \
        ("tench", "goldfish", "golden retriever", "tabby", "toilet tissue")
    assert labels_from_synsets(["n01440764", "n02123045", "other"]) == ("tench", "tabby", "other")


def test_convert_module_and_report(tmp_path):
    write_timm_safetensors(tmp_path / "m.safetensors", SMALL.replace(labels=(), name=""))
    out = tmp_path / "out.npz"
    result = subprocess.run([sys.executable, "-m", "weights.convert", str(tmp_path / "m.safetensors"), "-o", str(out),
                             "--arch", "vit_base_patch16_224"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error:" in result.stderr and "not have the architecture" in result.stderr
    from numpy_vit.weights.convert import convert
    report = convert(tmp_path / "m.safetensors", out, arch=SMALL.replace(labels=(), name=""))
    assert "timm state dict (.safetensors)" in report
    n = weights.count_params(random_params(SMALL))
    assert f"params    {n:,}" in report and "depth 2, width 32, 4 heads" in report
    config, params = weights.load(out)
    assert config.num_heads == 4 and weights.count_params(params) == n
