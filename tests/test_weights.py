"""weights/ without torch: our .npz round trip, the errors of bad files, format sniffing, the JAX
layout transforms on hand-worked arrays, hub names, and loading a timm .safetensors with torch hidden.

Every file here is written by numpy or safetensors.numpy; parity_tests/test_weights_parity.py checks the
readers against files written by timm, HF transformers and torch.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import numpy as np
import pytest

from numpy_vit import weights
from numpy_vit.config import ViTConfig
from numpy_vit.errors import CheckpointError
from numpy_vit.weights import hub, loader
from numpy_vit.weights.files import read_safetensors, sniff
from numpy_vit.weights.labels import imagenet_labels, labels_from_synsets
from numpy_vit.weights.read_jax import out_from_heads, qkv_bias_from_heads, qkv_from_heads

SMALL = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                  labels=("a", "b", "c", "d", "e"), name="small")


def random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in weights.param_shapes(config).items()}


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


# --- timm state dicts in .safetensors, read without torch ----------------------------------------------

def write_timm_safetensors(path, config, seed=0):
    from safetensors.numpy import save_file
    params = random_params(config, seed)
    save_file(params, str(path))
    return params


def test_timm_safetensors_needs_heads_from_arch(tmp_path):
    config = ViTConfig.preset("vit_small_patch16_224", depth=2, img_size=32)  # width 384, 6 heads
    params = write_timm_safetensors(tmp_path / "m.safetensors", config)
    with pytest.raises(CheckpointError, match=r"depth 2, width 384, patch 16.*number of attention heads.*pass arch="):
        weights.load_any(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="not have the architecture of vit_small_patch16_224.*depth 12 vs 2"):
        weights.load_any(tmp_path / "m.safetensors", arch="vit_small_patch16_224")
    loaded_config, loaded = weights.load_any(tmp_path / "m.safetensors", arch=config)
    assert loaded_config.num_heads == 6 and loaded_config.depth == 2 and loaded_config.img_size == (32, 32)
    assert loaded_config.labels == imagenet_labels()  # a 1000-class timm classifier gets ImageNet's names
    assert all(np.array_equal(loaded[k], params[k]) for k in params) and loaded.keys() == params.keys()


def test_arch_of_another_width_is_refused(tmp_path):
    write_timm_safetensors(tmp_path / "m.safetensors", ViTConfig.preset("vit_small_patch16_224", depth=2))
    with pytest.raises(CheckpointError, match=r"not have the architecture of vit_base_patch16_224.*embed_dim 768 vs 384"):
        weights.load_any(tmp_path / "m.safetensors", arch="vit_base_patch16_224")
    with pytest.raises(CheckpointError, match="is neither a preset"):
        weights.load_any(tmp_path / "m.safetensors", arch="resnet50")


def test_timm_safetensors_infers_the_geometry(tmp_path):
    # registers, patch-only position embedding, layer scale, average pooling with fc_norm, no qkv bias
    config = ViTConfig(img_size=(32, 48), patch_size=8, embed_dim=32, depth=3, num_heads=2, num_reg_tokens=2,
                       no_embed_class=True, init_values=1e-5, global_pool="avg", qkv_bias=False, num_classes=7)
    params = write_timm_safetensors(tmp_path / "m.safetensors", config)
    # the arch gives the heads; tokens, grid, head, qkv bias and fc_norm come from the shapes
    arch = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, global_pool="avg", fc_norm=False)
    with pytest.raises(CheckpointError, match="pos_embed has 24 rows .3 prefix tokens., which is no square grid"):
        weights.load_any(tmp_path / "m.safetensors", arch=arch)  # a 4x6 grid: only the arch can say so
    arch = arch.replace(img_size=(32, 48))
    loaded_config, loaded = weights.load_any(tmp_path / "m.safetensors", arch=arch)
    assert loaded_config == config.replace(fc_norm=True, name="m")  # fc_norm explicit, the name from the file
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_timm_safetensors_wrong_shape_names_both(tmp_path):
    from safetensors.numpy import save_file
    params = random_params(SMALL)
    params["blocks.1.mlp.fc2.weight"] = np.zeros((32, 100), np.float32)
    save_file(params, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc2\.weight has shape \(32, 100\) but the config needs \(32, 128\)"):
        weights.load_any(tmp_path / "m.safetensors", arch=SMALL)


def test_timm_safetensors_unknown_key_is_named(tmp_path):
    from safetensors.numpy import save_file
    params = random_params(SMALL)
    params["blocks.0.attn.q_norm.weight"] = np.ones(8, np.float32)
    save_file(params, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys that no rule of this reader maps: blocks\.0\.attn\.q_norm"):
        weights.load_any(tmp_path / "m.safetensors", arch=SMALL)


def test_truncated_safetensors(tmp_path):
    write_timm_safetensors(tmp_path / "m.safetensors", SMALL)
    data = open(tmp_path / "m.safetensors", "rb").read()
    open(tmp_path / "m.safetensors", "wb").write(data[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        weights.load_any(tmp_path / "m.safetensors", arch=SMALL)


def _write_safetensors_by_hand(path, tensors):
    """name -> (dtype tag, shape, raw bytes): the format spelled out, so our reader is checked against it."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_bfloat16_and_float16_are_widened(tmp_path):
    values = np.array([[1.0, -2.5, 3.140625], [0.0, 1e-3, -65504.0]], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")  # truncation to bfloat16: the top 16 bits
    _write_safetensors_by_hand(tmp_path / "t.safetensors", {
        "a": ("BF16", values.shape, bf16.tobytes()), "b": ("F16", values.shape, values.astype("<f2").tobytes()),
        "c": ("F32", values.shape, values.astype("<f4").tobytes())})
    out = read_safetensors(str(tmp_path / "t.safetensors"))
    assert out["a"].dtype == np.float32
    np.testing.assert_array_equal(out["a"], (bf16.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_allclose(out["a"], values, rtol=2 ** -8)  # bfloat16 keeps 8 significant bits
    np.testing.assert_array_equal(out["b"], values.astype(np.float16))
    np.testing.assert_array_equal(out["c"], values)


def test_torch_file_without_torch_names_the_safetensors_route(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as z:  # the layout of torch.save: archive/data.pkl + storages
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    assert sniff(str(path)) == "torch"
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(CheckpointError, match=r"torch pickle.*torch is not installed.*\.safetensors"):
        weights.load_any(path)


def test_sniff_reads_contents_not_extensions(tmp_path):
    with open(tmp_path / "a.safetensors", "wb") as f:
        np.savez(f, x=np.zeros(2))
    write_timm_safetensors(tmp_path / "b.npz", SMALL)
    (tmp_path / "c.pth").write_text('{"architecture": "vit_base_patch16_224"}')
    assert sniff(str(tmp_path / "a.safetensors")) == "npz"
    assert sniff(str(tmp_path / "b.npz")) == "safetensors"
    assert sniff(str(tmp_path / "c.pth")) == "json"
    assert sniff(str(tmp_path)) == "dir"
    assert weights.load_any(tmp_path / "b.npz", arch=SMALL)[0].num_heads == 4  # a safetensors named .npz


def test_import_without_torch_loads_a_timm_safetensors(tmp_path):
    params = write_timm_safetensors(tmp_path / "m.safetensors", SMALL)
    np.save(tmp_path / "expected.npy", params["blocks.1.attn.qkv.weight"])
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # torch hidden: any import of it fails
        import numpy as np, numpy_vit, weights
        config, params = weights.load_any({str(tmp_path / 'm.safetensors')!r}, arch="vit_base_patch16_224")
        assert config.num_heads == 12
        """)
    # a 32-wide checkpoint with a 768-wide arch must fail; the same file with the right arch must load
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "not have the architecture" in result.stderr
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import numpy as np, numpy_vit, weights
        from numpy_vit.config import ViTConfig
        arch = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
        config, params = weights.load_any({str(tmp_path / 'm.safetensors')!r}, arch=arch)
        assert np.array_equal(params["blocks.1.attn.qkv.weight"], np.load({str(tmp_path / 'expected.npy')!r}))
        model = numpy_vit.ViT(config, params)
        logits = model.forward(np.zeros((1, 3, 32, 32), np.float32)).logits
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "transformers", "matplotlib"))
        print("ok", logits.shape, loaded)
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok (1, 5) ['torch']", result.stdout  # 'torch' is only our None entry


# --- the JAX layout, on arrays small enough to check by hand -------------------------------------------

def test_jax_attention_kernels_map_to_timm_rows():
    D, H, Dh = 4, 2, 2
    q = np.arange(D * H * Dh, dtype=np.float32).reshape(D, H, Dh)  # q[d_in, h, j]
    k, v = q + 100, q + 200
    qkv = qkv_from_heads(q, k, v)
    assert qkv.shape == (3 * D, D)
    # timm row (part, h, j) = part * D + h * Dh + j, column = input feature; Flax kernel[d_in, h, j]
    for part, kernel in enumerate((q, k, v)):
        for h in range(H):
            for j in range(Dh):
                np.testing.assert_array_equal(qkv[part * D + h * Dh + j], kernel[:, h, j])
    b = np.arange(H * Dh, dtype=np.float32).reshape(H, Dh)
    np.testing.assert_array_equal(qkv_bias_from_heads(b, b + 10, b + 20)[D + 3], b[1, 1] + 10)
    out = np.arange(H * Dh * D, dtype=np.float32).reshape(H, Dh, D)  # out[h, j, d_out]
    proj = out_from_heads(out)  # torch [d_out, h * Dh + j]
    assert proj.shape == (D, D) and proj[3, 1 * Dh + 0] == out[1, 0, 3]


def test_jax_npz_of_wrong_rank_is_named(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "jax.npz", **{"embedding/kernel": rng.standard_normal((8, 8, 3, 32)),
                                      "embedding/bias": np.zeros(32), "cls": np.zeros((1, 1, 32)),
                                      "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel":
                                          np.zeros((32, 32)),
                                      "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel":
                                          np.zeros((32, 32)),
                                      "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/value/kernel":
                                          np.zeros((32, 32))})
    with pytest.raises(CheckpointError, match=r"query/kernel \(32, 32\).*expected 3 axes \[D, H, Dh\]"):
        weights.load_any(tmp_path / "jax.npz")


# --- hub names -----------------------------------------------------------------------------------------

def test_hub_name_parsing():
    assert hub.parse_name("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k") == \
        hub.HubName("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "main")
    assert hub.parse_name("hf-hub:google/vit-base-patch16-224@v1.0") == hub.HubName("google/vit-base-patch16-224", "v1.0")
    assert hub.parse_name("google/vit-base-patch16-224").folder_name == "google--vit-base-patch16-224"
    for not_a_name in ("model.npz", "dir/model.safetensors", "/abs/path", "a/b/c", "vit_base_patch16_224", "", None):
        assert hub.parse_name(not_a_name) is None, not_a_name


def test_hub_without_the_extra_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError) as err:
        weights.load_any("google/vit-base-patch16-224")
    message = str(err.value)
    assert "huggingface_hub is not installed" in message
    assert "https://huggingface.co/google/vit-base-patch16-224/resolve/main/model.safetensors" in message
    assert "https://huggingface.co/google/vit-base-patch16-224/resolve/main/config.json" in message
    assert str(tmp_path / "google--vit-base-patch16-224") in message


def test_hub_download_failure_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))

    def offline(name):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(hub, "_download", offline)
    monkeypatch.setattr(hub, "offline_reason", lambda: None)      # the network answers, the download fails
    with pytest.raises(CheckpointError, match=r"download failed \(OSError: Network is unreachable\).*"
                                              r"timm/vit_base_patch16_224\.augreg2_in21k_ft_in1k/resolve/main/"
                                              r"model\.safetensors.*timm--vit_base_patch16_224\.augreg2_in21k_ft_in1k"):
        weights.load_any("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")


def test_hub_download_through_huggingface_hub(tmp_path, monkeypatch):
    """_download's own logic against a stand-in for hf_hub_download serving a repository from a folder."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    errors = pytest.importorskip("huggingface_hub.errors")
    from safetensors.numpy import save_file
    repo = tmp_path / "repo"
    repo.mkdir()
    params = random_params(SMALL)
    save_file(params, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 5,
                                                  "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 4,
                                                                 "patch_size": 8, "img_size": 32}}))
    snapshot, asked = tmp_path / "hf-cache" / "snapshots" / "0123abc", []

    def fake_hf_hub_download(repo_id, filename, revision=None, **kwargs):
        asked.append((repo_id, filename, revision))
        if not (repo / filename).exists():
            # the "not in the repository" error: RemoteEntryNotFoundError from huggingface_hub 1.0 on
            not_found = getattr(errors, "RemoteEntryNotFoundError", None) or huggingface_hub.utils.EntryNotFoundError
            missing = not_found.__new__(not_found)
            Exception.__init__(missing, f"404: {filename}")
            raise missing
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / filename).write_bytes((repo / filename).read_bytes())
        return str(snapshot / filename)

    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path / "ours"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(hub, "offline_reason", lambda: None)      # a network to download from
    config, loaded = weights.load_any("someone/tiny-vit@v2")
    assert asked == [("someone/tiny-vit", "config.json", "v2"), ("someone/tiny-vit", "model.safetensors", "v2"),
                     ("someone/tiny-vit", "preprocessor_config.json", "v2")]
    assert config.num_heads == 4 and config.name == "vit_base_patch16_224"
    assert all(np.array_equal(loaded[k], params[k]) for k in params)
    (repo / "model.safetensors").unlink()
    import shutil
    shutil.rmtree(snapshot)
    with pytest.raises(CheckpointError, match="the repository has none of model.safetensors, pytorch_model.bin"):
        weights.load_any("someone/tiny-vit")


@pytest.fixture
def downloads(monkeypatch):
    """hf_hub_download replaced: a download is an AssertionError; a look into its cache finds nothing."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    errors = pytest.importorskip("huggingface_hub.errors")
    asked = []

    def fake_hf_hub_download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        asked.append((filename, local_files_only))
        if not local_files_only:
            raise AssertionError(f"a download of {filename} was attempted")
        raise errors.LocalEntryNotFoundError(f"{filename} is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    return asked


def offline_message(name, why):
    return (rf"no local file or folder '{name}', and it cannot be loaded as a hub name: {why}.*, and huggingface_hub's "
            rf"cache does not hold it\. Either connect to the network")


@pytest.mark.parametrize("failure", [socket.gaierror(-2, "Name or service not known"),
                                     ConnectionRefusedError(111, "Connection refused")])
def test_a_hub_name_without_network_fails_at_once(failure, tmp_path, monkeypatch, downloads):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(address, timeout=None):
        raise failure

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=offline_message("google/vit-base-patch16-224",
                                                              r"no network: huggingface\.co:443 cannot be reached")):
        weights.load_any("google/vit-base-patch16-224")
    assert time.perf_counter() - start < 3
    assert downloads and all(local for _, local in downloads)            # only huggingface_hub's cache was read


def test_a_hub_that_never_answers_is_given_up_on_in_seconds(tmp_path, monkeypatch, downloads):
    """A name lookup or connect that hangs (a firewall dropping packets) is abandoned after CONNECT_TIMEOUT_S."""
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    released = threading.Event()

    def hangs(address, timeout=None):  # until the test is over; then fails as a timed-out connect does
        released.wait(30)
        raise TimeoutError("released by the test")

    monkeypatch.setattr(hub.socket, "create_connection", hangs)
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=offline_message("google/vit-base-patch16-224",
                                                                  r"no network: .* \(no answer within 1\.5 s\)")):
            weights.load_any("google/vit-base-patch16-224")
        assert time.perf_counter() - start < 3
    finally:
        released.set()
    assert all(local for _, local in downloads)


def test_hf_hub_offline_is_honoured_without_touching_the_network(tmp_path, monkeypatch, downloads):
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: pytest.fail("the network was asked"))
    with pytest.raises(CheckpointError, match=offline_message("google/vit-base-patch16-224",
                                                              r"HF_HUB_OFFLINE is set \(unset it to download\)")):
        weights.load_any("google/vit-base-patch16-224")
    assert all(local for _, local in downloads)


def test_offline_reads_huggingface_hubs_own_cache(tmp_path, monkeypatch):
    """Offline, a repository huggingface_hub downloaded before still loads from its cache."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    snapshot = tmp_path / "hf-cache" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    from safetensors.numpy import save_file
    params = random_params(SMALL)
    save_file(params, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 5,
                                                      "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 4,
                                                                     "patch_size": 8, "img_size": 32}}))

    def from_cache(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        assert local_files_only
        if not (snapshot / filename).exists():
            raise FileNotFoundError(filename)
        return str(snapshot / filename)

    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path / "ours"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", from_cache)
    config, loaded = weights.load_any("someone/tiny-vit")
    assert config.num_heads == 4 and all(np.array_equal(loaded[k], params[k]) for k in params)


def test_a_real_hub_call_without_network_fails_within_3_s(tmp_path, monkeypatch):
    """Nothing replaced: on a machine without network (as this suite is run) the real lookup fails fast."""
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if hub.offline_reason() is None:
        pytest.skip("this machine reaches the hub")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="no network: "):
        weights.load_any("numpy-vit-tests/no-such-model")
    assert time.perf_counter() - start < 3


def test_hub_name_reads_files_put_by_hand(tmp_path, monkeypatch):
    """The offline route the error message describes: config.json + model.safetensors in our cache folder."""
    from safetensors.numpy import save_file
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never reached: the files are there
    folder = tmp_path / "timm--vit_small_patch16_224.augreg_in21k_ft_in1k"
    folder.mkdir()
    config = ViTConfig.preset("vit_small_patch16_224", depth=1, img_size=32, num_classes=1000)
    params = random_params(config)
    save_file(params, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_small_patch16_224", "num_classes": 1000, "global_pool": "token",
        "model_args": {"depth": 1, "img_size": 32},
        "pretrained_cfg": {"tag": "augreg_in21k_ft_in1k", "input_size": [3, 32, 32], "interpolation": "bicubic",
                           "crop_pct": 0.9, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    loaded_config, loaded = weights.load_any("timm/vit_small_patch16_224.augreg_in21k_ft_in1k")
    assert loaded_config.num_heads == 6 and loaded_config.depth == 1 and loaded_config.crop_pct == 0.9
    assert loaded_config.labels[0] == "tench" and loaded_config.name == "vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


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
