"""The readers without torch: a timm .safetensors (its geometry from its tensors, its errors, loading with torch
hidden), format sniffing, and the JAX layout transforms on hand-worked arrays.

Every file here is written by numpy or by hand; parity_tests/test_weights_parity.py checks the readers against
files written by timm, HF transformers and torch.
"""
import json
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from bad_input_files import SMALL, random_params, write_timm_safetensors
from numpy_vit import weights
from numpy_vit.config import ViTConfig
from numpy_vit.errors import CheckpointError
from numpy_vit.weights.files import read_safetensors, sniff
from numpy_vit.weights.labels import imagenet_labels
from numpy_vit.weights.read_jax import out_from_heads, qkv_bias_from_heads, qkv_from_heads


# --- timm state dicts in .safetensors, read without torch ----------------------------------------------

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


def test_a_safetensors_header_of_128_bytes_is_not_taken_for_a_pickle(tmp_path):
    """The header length is the file's first 8 bytes, little-endian: a 128-byte header makes the first byte 0x80,
    a pickle's first opcode. The file is still read as safetensors (safetensors 0.4.3 pads to such lengths)."""
    from numpy_vit.weights.files import read_safetensors, sniff
    name = "x" * 59   # {"x...x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} padded to 128 bytes
    header = json.dumps({name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (128 - len(header))
    assert len(header) == 128
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", 128) + header + np.array([1.5, -2.0], "<f4").tobytes())
    assert path.read_bytes()[:1] == b"\x80" and sniff(str(path)) == "safetensors"
    np.testing.assert_array_equal(read_safetensors(str(path))[name], [1.5, -2.0])


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




def test_timm_config_json_with_a_tag_numpy_vit_does_not_list():
    """A hub folder's pretrained tag names the weights; the file's own fields give the head and the crop, so a
    tag outside numpy_vit's list still loads, while a listed one (dino: no head) still applies."""
    from numpy_vit.weights.config_from_tensors import config_from_timm_json

    unlisted = {"architecture": "vit_base_patch16_224", "pretrained_cfg": {"tag": "some_new_in1k", "crop_pct": 0.95}}
    config = config_from_timm_json(unlisted, "config.json")
    assert config.embed_dim == 768 and config.crop_pct == 0.95
    listed = {"architecture": "vit_base_patch16_224", "pretrained_cfg": {"tag": "dino"}}
    assert config_from_timm_json(listed, "config.json").num_classes == 0
