"""numpy_vit against HF transformers ViTForImageClassification (eager attention), through our HF reader."""
import numpy as np
import pytest

from conftest import compare_traces, random_batch

import numpy_vit as nv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_model(tmp_path, dtype, image_size=224, patch_size=16, hidden=192, layers=4, heads=3, labels=10):
    config = transformers.ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                                    num_hidden_layers=layers, num_attention_heads=heads,
                                    intermediate_size=4 * hidden, num_labels=labels,
                                    id2label={i: f"label_{i}" for i in range(labels)},
                                    label2id={f"label_{i}": i for i in range(labels)},
                                    attn_implementation="eager")  # the probabilities are not returned by SDPA
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # biases, LayerNorms, tokens and head random too, so each is really compared
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g) * (10 if "embeddings.cls" in name or "position" in name else 1))
    hf.save_pretrained(tmp_path)  # model.safetensors + config.json, as on the hub
    if dtype == np.float64:
        hf = hf.double()
    return hf


def _reference(hf, x, interpolate=False):
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(x), output_attentions=True, output_hidden_states=True,
                 interpolate_pos_encoding=interpolate)
    ref = {"logits": out.logits.numpy()}
    for i, a in enumerate(out.attentions):
        ref[f"blocks.{i}.attn.pattern"] = a.numpy()
        ref[f"blocks.{i}.resid_pre"] = out.hidden_states[i].numpy()
        ref[f"blocks.{i}.resid_post"] = out.hidden_states[i + 1].numpy()
    return ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_hf_vit_matches(tmp_path, dtype, monkeypatch):
    if dtype == np.float64:
        # HF's eager attention computes its softmax in float32 whatever the model's dtype
        # (modeling_vit.eager_attention_forward: softmax(..., dtype=torch.float32)), which limits a float64
        # comparison to ~1e-9. Keep the softmax in float64 for this run so the reference is float64 throughout.
        softmax = torch.nn.functional.softmax

        def softmax_in_input_dtype(x, dim=None, _stacklevel=3, dtype=None):
            return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

        monkeypatch.setattr(torch.nn.functional, "softmax", softmax_in_input_dtype)
    hf = _hf_model(tmp_path, dtype)
    model = nv.ViT.from_pretrained(str(tmp_path), dtype=dtype)
    assert model.config.layer_norm_eps == 1e-12 and model.config.labels[3] == "label_3"
    x = random_batch(model.config, batch=2, dtype=dtype)
    compare_traces(model.forward(x), _reference(hf, x), dtype, "HF ViTForImageClassification", model.config.depth)


def test_hf_vit_non_square_interpolated(tmp_path):
    """HF's interpolate_pos_encoding (bicubic, a=-0.75, no antialias) on a 224x160 input."""
    hf = _hf_model(tmp_path, np.float32)
    model = nv.ViT.from_pretrained(str(tmp_path))
    assert model.config.pos_embed_resample == "bicubic_hf"
    x = random_batch(model.config, batch=2, size=(224, 160), seed=2)
    trace = model.forward(x)
    assert trace.grid == (14, 10)
    compare_traces(trace, _reference(hf, x, interpolate=True), np.float32, "HF ViT @ 224x160", model.config.depth)
