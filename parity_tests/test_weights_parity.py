"""Every checkpoint reader against files written by the libraries themselves.

For each format a small randomly initialised model (depth 2, width 64, 32x32 images, 8x8 patches) is
written by timm / HF transformers / torch / safetensors; the Google JAX .npz is written by inverting the
mapping in this file and is first proven valid by loading it with timm's own JAX loader
(``timm.models.vision_transformer._load_weights``). Then:

1. our reader's params equal the reference state dict exactly (bitwise), and they load with
   ``strict=True`` into a timm model built from the config the reader inferred;
2. that timm model's output equals the original model's output (bitwise for timm sources; for HF,
   whose code path differs, to 1e-5);
3. numpy_vit's ``ViT`` with the loaded (config, params) gives the reference logits to 1e-4 (float32).
"""
import argparse
import json
import os

import numpy as np
import pytest

from conftest import max_err, random_batch

import numpy_vit as nv
from numpy_vit import weights
from numpy_vit.errors import CheckpointError
from numpy_vit.weights import hub

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer, _load_weights  # noqa: E402

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
LOGITS_TOL = 1e-4   # numpy_vit float32 vs torch float32
HF_TOL = 1e-5       # timm code vs HF code, same float32 weights


# --- helpers -------------------------------------------------------------------------------------------

def randomise(model, seed=0):
    """Random values in every tensor (timm zero-initialises heads and biases), so a swapped or
    transposed copy cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_gain = ("norm" in name or "layernorm" in name) and name.endswith("weight")
            p.copy_((1.0 if is_gain else 0.0) + 0.05 * noise)
    return model.eval()


def timm_vit(seed=0, distilled=False, **overrides):
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    return randomise(cls(**{**SMALL, **overrides}), seed)


def state_dict_numpy(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def timm_from_config(config):
    """A timm VisionTransformer with exactly the architecture a ViTConfig describes."""
    assert not config.representation_size, "timm 1.0 has no pre-logits layer"
    from functools import partial
    kwargs = dict(img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
                  embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                  mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, class_token=config.class_token,
                  no_embed_class=config.no_embed_class, reg_tokens=config.num_reg_tokens,
                  global_pool=config.global_pool, fc_norm=config.fc_norm, init_values=config.init_values,
                  num_classes=config.num_classes, norm_layer=partial(torch.nn.LayerNorm, eps=config.layer_norm_eps),
                  act_layer=partial(torch.nn.GELU, approximate="tanh" if config.gelu == "tanh" else "none"))
    cls = VisionTransformerDistilled if config.distilled else VisionTransformer
    return cls(**kwargs).eval()


def torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_params_equal(params, reference):
    assert sorted(params) == sorted(reference), (sorted(set(params) ^ set(reference)))
    for k, ref in reference.items():
        assert params[k].dtype == np.float32, k
        assert params[k].shape == ref.shape and np.array_equal(params[k], ref), f"{k} differs"


def assert_computes_like(config, params, reference_out, x, tol_timm=0.0, output="logits"):
    """The loaded weights in timm (strict) and in numpy_vit reproduce the reference output."""
    if not config.representation_size:
        tm = timm_from_config(config)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
        err = max_err(torch_out(tm, x), reference_out)
        assert err <= tol_timm, f"timm with the loaded weights is off by {err:.3g} (allowed {tol_timm:g})"
    trace = nv.ViT(config, params).forward(x)
    ours = trace.logits if output == "logits" else trace[output]
    err = max_err(ours, reference_out)
    assert err <= LOGITS_TOL, f"numpy_vit {output} off by {err:.3g} (allowed {LOGITS_TOL:g})"
    return err


# --- timm state dicts ------------------------------------------------------------------------------------

TIMM_VARIANTS = {
    "plain_1000": dict(num_classes=1000),
    "deit_distilled": dict(distilled=True, num_classes=10),
    "registers_layerscale_avg": dict(reg_tokens=2, no_embed_class=True, init_values=1e-5, global_pool="avg",
                                     qkv_bias=False, num_classes=6),
    "no_class_token": dict(class_token=False, global_pool="avg", fc_norm=False, num_classes=3),
    "non_square": dict(img_size=(32, 48), num_classes=4),
}


def arch_for(model):
    """What arch= must supply for a bare state dict: the heads (and, for a non-square grid, the image size)."""
    return nv.ViTConfig(img_size=model.patch_embed.img_size, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                        global_pool=model.global_pool or "token", distilled=isinstance(model, VisionTransformerDistilled))


@pytest.mark.parametrize("variant", TIMM_VARIANTS)
def test_timm_safetensors(tmp_path, variant):
    tm = timm_vit(**TIMM_VARIANTS[variant])
    sd = {k: v.contiguous() for k, v in tm.state_dict().items()}
    safetensors_torch.save_file(sd, str(tmp_path / "model.safetensors"))
    config, params = weights.load_any(tmp_path / "model.safetensors", arch=arch_for(tm))
    assert_params_equal(params, state_dict_numpy(tm))
    assert (config.distilled, config.num_reg_tokens, config.no_embed_class, config.class_token) == \
        (isinstance(tm, VisionTransformerDistilled), tm.num_reg_tokens, tm.no_embed_class, tm.cls_token is not None)
    assert config.labels == (weights.labels.imagenet_labels() if tm.num_classes == 1000 else ())
    x = random_batch(config, batch=2, seed=1)
    assert_computes_like(config, params, torch_out(tm, x), x)


def test_timm_bare_state_dict_asks_for_arch(tmp_path):
    safetensors_torch.save_file(timm_vit(num_classes=5).state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not the number of attention heads.*pass arch="):
        weights.load_any(tmp_path / "model.safetensors")


@pytest.mark.parametrize("wrapping", ["bare", "model", "state_dict_ddp", "legacy_pickle_with_args"])
def test_timm_pth(tmp_path, wrapping):
    tm = timm_vit(num_classes=10)
    sd = tm.state_dict()
    path = tmp_path / "checkpoint.pth"
    if wrapping == "bare":
        torch.save(sd, path)
    elif wrapping == "model":  # DeiT's release files
        torch.save({"model": sd}, path)
    elif wrapping == "state_dict_ddp":  # a timm training checkpoint of a DDP model
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, path)
    else:  # the pre-1.6 torch format, with training arguments as timm's train.py stores them
        torch.save({"state_dict": sd, "args": argparse.Namespace(model="vit", lr=1e-3)}, path,
                   _use_new_zipfile_serialization=False)
    config, params = weights.load_any(path, arch=arch_for(tm))
    assert_params_equal(params, state_dict_numpy(tm))
    x = random_batch(config, seed=2)
    assert_computes_like(config, params, torch_out(tm, x), x)


def test_timm_pth_refuses_arbitrary_pickles(tmp_path):
    # a reference to os.system: a full unpickler would hand it over, weights_only=True refuses the global
    torch.save({"model": timm_vit().state_dict(), "hook": os.system}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"torch.load\(weights_only=True\) could not read it.*GLOBAL posix.system"):
        weights.load_any(tmp_path / "evil.pth", arch=nv.ViTConfig(**SMALL))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_timm_hub_folder(tmp_path, safe):
    """timm's save_for_hf writes config.json (architecture, model_args, pretrained_cfg) + weights."""
    from timm.models import save_for_hf
    model_args = dict(depth=2, img_size=32)  # width 384, 6 heads, 1000 classes
    tm = randomise(timm.create_model("vit_small_patch16_224.augreg_in21k_ft_in1k", pretrained=False, **model_args))
    # given by name: timm 1.0.19, for one, stores only the model_args it is given (1.0.31 reads them off the model)
    save_for_hf(tm, str(tmp_path), model_args=model_args, safe_serialization=safe)
    config, params = weights.load_any(tmp_path)  # no arch: config.json has it
    assert config.name == "vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert (config.num_heads, config.depth, config.img_size, config.mean, config.crop_pct) == \
        (6, 2, (32, 32), (0.5, 0.5, 0.5), 0.9)
    assert config.labels[0] == "tench" and len(config.labels) == 1000
    assert_params_equal(params, state_dict_numpy(tm))
    x = random_batch(config, seed=3)
    assert_computes_like(config, params, torch_out(tm, x), x)


# --- HF transformers ---------------------------------------------------------------------------------------

def hf_config(**overrides):
    fields = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
                  patch_size=8, attn_implementation="eager")
    return transformers.ViTConfig(**{**fields, **overrides})


def hf_qkv_weights(state_dict, layer):
    """Layer ``layer``'s query, key and value weights from an HF ViT's state_dict(), whose in-memory names
    differ between transformers releases (``layers.N.attention.q_proj`` in 5.10 and 5.25,
    ``encoder.layer.N.attention.attention.query`` in 5.0 and 4.x)."""
    for prefix, names in ((f"vit.layers.{layer}.attention.", ("q_proj", "k_proj", "v_proj")),
                          (f"vit.encoder.layer.{layer}.attention.attention.", ("query", "key", "value"))):
        if prefix + names[0] + ".weight" in state_dict:
            return [state_dict[prefix + name + ".weight"] for name in names]
    raise KeyError(f"no query / key / value weights of layer {layer} among {sorted(state_dict)[:6]}...")


def hf_randomise(model, seed=0):
    return randomise(model, seed)


@pytest.mark.parametrize("safe", [True, False], ids=["model.safetensors", "pytorch_model.bin"])
def test_hf_image_classifier(tmp_path, safe):
    labels = {i: f"class {i}" for i in range(5)}
    hf = hf_randomise(transformers.ViTForImageClassification(
        hf_config(id2label=labels, label2id={v: k for k, v in labels.items()})))
    hf.save_pretrained(tmp_path)  # transformers 5 writes model.safetensors only
    if not safe:  # the same tensors (HF's on-disk names) as the pytorch_model.bin of older releases
        torch.save(safetensors_torch.load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
        os.remove(tmp_path / "model.safetensors")
    config, params = weights.load_any(tmp_path)
    assert (config.layer_norm_eps, config.gelu, config.pos_embed_resample, config.num_heads) == \
        (1e-12, "erf", "bicubic_hf", 4)
    assert config.labels == tuple(labels.values())
    # the params are the HF tensors rearranged: q, k, v stacked into timm's qkv
    sd = state_dict_numpy(hf)
    for i in range(2):
        np.testing.assert_array_equal(params[f"blocks.{i}.attn.qkv.weight"], np.concatenate(hf_qkv_weights(sd, i)))
    x = random_batch(config, seed=4)
    with torch.no_grad():
        reference = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert_computes_like(config, params, reference, x, tol_timm=HF_TOL)


def test_hf_model_without_prefix_with_pooler(tmp_path):
    """A bare ViTModel: no 'vit.' prefix, no classifier, and a pooler (Dense + tanh: the pre-logits layer)."""
    hf = hf_randomise(transformers.ViTModel(hf_config(layer_norm_eps=1e-6)))
    hf.save_pretrained(tmp_path)
    config, params = weights.load_any(tmp_path)
    assert config.num_classes == 0 and config.representation_size == 64 and config.labels == ()
    x = random_batch(config, seed=5)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(x))
    # pooler_output = tanh(W cls + b): numpy_vit's pre_logits
    assert_computes_like(config, params, out.pooler_output.numpy(), x, output="pre_logits")
    # and the whole sequence after the final LayerNorm, through timm with the pooler left out
    tm = timm_from_config(config.replace(representation_size=None))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in params.items() if not k.startswith("pre_logits")})
    with torch.no_grad():
        err = max_err(tm.forward_features(torch.from_numpy(x)).numpy(), out.last_hidden_state.numpy())
    assert err <= HF_TOL


def test_hf_state_dict_in_transformers5_names(tmp_path):
    """A state_dict() saved without save_pretrained keeps transformers 5's in-memory names (q_proj, layers.N)."""
    hf = hf_randomise(transformers.ViTForImageClassification(hf_config(num_labels=3, qkv_bias=False,
                                                                       hidden_act="gelu_pytorch_tanh")))
    safetensors_torch.save_file({k: v.contiguous() for k, v in hf.state_dict().items()},
                                str(tmp_path / "model.safetensors"))
    hf.config.to_json_file(str(tmp_path / "config.json"))
    config, params = weights.load_any(tmp_path / "model.safetensors")  # the file; config.json beside it
    assert not config.qkv_bias and config.gelu == "tanh" and config.num_classes == 3
    x = random_batch(config, seed=6)
    with torch.no_grad():
        reference = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert_computes_like(config, params, reference, x, tol_timm=HF_TOL)


def test_hf_weights_without_config_are_refused(tmp_path):
    hf = hf_randomise(transformers.ViTModel(hf_config()))
    safetensors_torch.save_file({k: v.contiguous() for k, v in hf.state_dict().items()},
                                str(tmp_path / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="HF transformers weights; their config.json"):
        weights.load_any(tmp_path / "weights.safetensors")


# --- Google JAX .npz -----------------------------------------------------------------------------------------

def to_jax(sd, heads, big_vision=False, stacked=False, prefix="", pre_logits=None):
    """A timm state dict written the way the Flax ViT stores it (the inverse of timm's _load_weights)."""
    sd = {k: v.detach().numpy() for k, v in sd.items()}
    D = sd["patch_embed.proj.weight"].shape[0]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    attn, norm2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
                       ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # [D, C, p, p] -> [p, p, C, D]
           "embedding/bias": sd["patch_embed.proj.bias"],
           "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"]}
    if "cls_token" in sd:
        out["cls"] = sd["cls_token"]
    if "head.weight" in sd:
        out["head/kernel"], out["head/bias"] = sd["head.weight"].T, sd["head.bias"]
    if pre_logits is not None:
        out["pre_logits/kernel"], out["pre_logits/bias"] = pre_logits
    blocks = []
    for i in range(depth):
        b = lambda k: sd[f"blocks.{i}.{k}"]  # noqa: E731
        blk = {"LayerNorm_0/scale": b("norm1.weight"), "LayerNorm_0/bias": b("norm1.bias"),
               f"{norm2}/scale": b("norm2.weight"), f"{norm2}/bias": b("norm2.bias"),
               f"{mlp}/Dense_0/kernel": b("mlp.fc1.weight").T, f"{mlp}/Dense_0/bias": b("mlp.fc1.bias"),
               f"{mlp}/Dense_1/kernel": b("mlp.fc2.weight").T, f"{mlp}/Dense_1/bias": b("mlp.fc2.bias"),
               f"{attn}/out/kernel": b("attn.proj.weight").T.reshape(heads, D // heads, D),
               f"{attn}/out/bias": b("attn.proj.bias")}
        for part, w, bias in zip(("query", "key", "value"), np.split(b("attn.qkv.weight"), 3),
                                 np.split(b("attn.qkv.bias"), 3)):
            blk[f"{attn}/{part}/kernel"] = w.T.reshape(D, heads, D // heads)  # [D_out, D_in] -> [D_in, H, Dh]
            blk[f"{attn}/{part}/bias"] = bias.reshape(heads, D // heads)
        blocks.append(blk)
    if stacked:
        for k in blocks[0]:
            out[f"Transformer/encoderblock/{k}"] = np.stack([blk[k] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in blk.items()})
    return {prefix + k: v for k, v in out.items()}


JAX_VARIANTS = {
    "original": dict(model=dict(num_classes=1000), jax=dict()),
    "original_opt_target": dict(model=dict(num_classes=7), jax=dict(prefix="opt/target/")),
    "big_vision_tok": dict(model=dict(num_classes=7, no_embed_class=True), jax=dict(big_vision=True, prefix="params/")),
    "big_vision_gap_stacked": dict(model=dict(num_classes=7, class_token=False, global_pool="avg", fc_norm=False),
                                   jax=dict(big_vision=True, stacked=True, prefix="params/")),
}


@pytest.mark.parametrize("variant", JAX_VARIANTS)
def test_google_jax_npz(tmp_path, variant):
    tm = timm_vit(**JAX_VARIANTS[variant]["model"])
    arrays = to_jax(tm.state_dict(), heads=4, **JAX_VARIANTS[variant]["jax"])
    if variant == "original_opt_target":  # a Flax optimizer checkpoint also holds its moments
        arrays["opt/state/param_states/embedding/kernel/grad_ema"] = np.zeros(3, np.float32)
    path = tmp_path / "ViT-test.npz"
    np.savez(path, **arrays)
    # the file is a real JAX checkpoint: timm's own loader reads it back into the same weights
    check = timm_vit(seed=99, **JAX_VARIANTS[variant]["model"])
    _load_weights(check, str(path))
    for k, v in tm.state_dict().items():
        assert torch.equal(check.state_dict()[k], v), f"the test's JAX file is wrong at {k}"
    config, params = weights.load_any(path)  # heads come from the [D, H, Dh] kernels: no arch needed
    assert_params_equal(params, state_dict_numpy(tm))
    assert (config.num_heads, config.gelu, config.pos_embed_resample, config.mean) == \
        (4, "tanh", "bilinear", (0.5, 0.5, 0.5))
    assert config.labels == (weights.labels.imagenet_labels() if tm.num_classes == 1000 else ())
    # the Flax code's GELU is the tanh approximation; timm (the reference here) uses erf
    x = random_batch(config, seed=7)
    assert_computes_like(config.replace(gelu="erf"), params, torch_out(tm, x), x)
    tanh_logits = nv.ViT(config, params).forward(x).logits
    assert 0 < max_err(tanh_logits, torch_out(tm, x)) < 1e-2  # the two GELUs differ, slightly


def test_google_jax_npz_with_pre_logits(tmp_path):
    """In21k checkpoints keep the representation layer: pre_logits/kernel [D, R]; the head reads R features."""
    tm = timm_vit(num_classes=5)
    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((64, 48)).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    arrays = to_jax(tm.state_dict(), heads=4, pre_logits=(kernel, bias))
    arrays["head/kernel"] = rng.standard_normal((48, 5)).astype(np.float32)
    np.savez(tmp_path / "in21k.npz", **arrays)
    config, params = weights.load_any(tmp_path / "in21k.npz")
    assert config.representation_size == 48
    np.testing.assert_array_equal(params["pre_logits.fc.weight"], kernel.T)
    np.testing.assert_array_equal(params["head.weight"], arrays["head/kernel"].T)
    # logits = head(tanh(pre_logits(cls features))), the features taken from timm
    x = random_batch(config, seed=8)
    with torch.no_grad():
        cls = tm.forward_head(tm.forward_features(torch.from_numpy(x)), pre_logits=True).numpy()
    expected = np.tanh(cls @ kernel + bias) @ arrays["head/kernel"] + arrays["head/bias"]
    ours = nv.ViT(config.replace(gelu="erf"), params).forward(x).logits
    assert max_err(ours, expected) <= LOGITS_TOL


# --- DINO -------------------------------------------------------------------------------------------------

def test_dino_checkpoint(tmp_path):
    """main_dino.py saves student (DDP: module.) and teacher, each backbone + projection head, with args."""
    teacher, student = timm_vit(seed=1, num_classes=0), timm_vit(seed=2, num_classes=0)
    dino_head = {"head.mlp.0.weight": torch.randn(128, 64), "head.last_layer.weight_g": torch.randn(1000, 1)}
    torch.save({"teacher": {**{"backbone." + k: v for k, v in teacher.state_dict().items()}, **dino_head},
                "student": {**{"module.backbone." + k: v for k, v in student.state_dict().items()},
                            **{"module." + k: v for k, v in dino_head.items()}},
                "optimizer": {"state": {}}, "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=8)},
               tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="pass arch="):
        weights.load_any(tmp_path / "checkpoint.pth")
    config, params = weights.load_any(tmp_path / "checkpoint.pth", arch=nv.ViTConfig(**SMALL, num_classes=0))
    assert_params_equal(params, state_dict_numpy(teacher))  # the teacher, as DINO evaluates it
    assert config.num_classes == 0 and config.mean == (0.485, 0.456, 0.406)
    x = random_batch(config, seed=9)
    with torch.no_grad():
        features = teacher.forward_head(teacher.forward_features(torch.from_numpy(x)), pre_logits=True).numpy()
    assert_computes_like(config, params, features, x, output="pooled")


# --- by name, once downloaded; and the converter --------------------------------------------------------------

def test_hub_name_after_download(tmp_path, monkeypatch):
    """The download itself cannot run here: _download returns the folder huggingface_hub would have filled."""
    hf = hf_randomise(transformers.ViTForImageClassification(hf_config(num_labels=4)))
    snapshot = tmp_path / "snapshots" / "abc123"
    hf.save_pretrained(snapshot)
    (snapshot / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3, "size": {"height": 32}}))
    monkeypatch.setenv("NUMPY_VIT_CACHE", str(tmp_path / "empty"))
    asked = []
    monkeypatch.setattr(hub, "_download", lambda name: asked.append(name) or str(snapshot))
    monkeypatch.setattr(hub, "offline_reason", lambda: None)  # a network to download from
    config, params = weights.load_any("google/vit-test-patch8-32")
    assert asked == [hub.HubName("google/vit-test-patch8-32", "main")]
    assert config.name == "google/vit-test-patch8-32" and config.interpolation == "bicubic"
    x = random_batch(config, seed=10)
    with torch.no_grad():
        reference = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert_computes_like(config, params, reference, x, tol_timm=HF_TOL)


def test_convert_then_load_is_the_same_model(tmp_path):
    from numpy_vit.weights.convert import convert
    hf = hf_randomise(transformers.ViTForImageClassification(hf_config(num_labels=3)))
    hf.save_pretrained(tmp_path / "hf")
    report = convert(tmp_path / "hf", tmp_path / "model.npz")
    assert "HF transformers folder (config.json + model.safetensors)" in report
    assert f"params    {sum(p.numel() for p in hf.parameters()):,}" in report
    direct = weights.load_any(tmp_path / "hf")
    converted = weights.load(tmp_path / "model.npz")
    assert converted[0] == direct[0]
    assert_params_equal(converted[1], direct[1])
    model = nv.ViT.from_pretrained(str(tmp_path / "model.npz"))
    x = random_batch(model.config, seed=11)
    with torch.no_grad():
        reference = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert max_err(model.forward(x).logits, reference) <= LOGITS_TOL
