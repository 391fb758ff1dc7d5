"""Measure the shipped default model on fresh shapes, with the NumPy model (no torch needed).

    python -m training.evaluate                          # weights/default.npz, the numbers in MODEL_CARD.md
    python -m training.evaluate --model other.npz --seed 7 --n-accuracy 500 --n-attention 64
    python -m training.evaluate --checkpoint training/_train/ckpt.pt   # a training checkpoint (needs torch)

Four numbers, all on images from ``--seed`` (default 2024; training
used seeds >= 1_000_000 and monitored on 99):

* **top-1 accuracy** on ``--n-accuracy`` images (target >= 0.95);
* **rollout on the object**: attention rollout (Abnar & Zuidema 2020, eq. 1,
  head-mean fusion) from the CLS token, its row over the patch columns
  renormalised to sum 1; per image, (mass on patches that overlap the object) /
  (fraction of patches that overlap the object), averaged over
  ``--n-attention`` images (target >= 2.0; 1.0 is a map blind to the object);
* **position-embedding grid**: Spearman's rho between the cosine similarity of
  two patches' position embeddings and minus their distance on the grid, over
  all pairs of patches (target >= 0.5);
* **mean attention distance** per layer (Dosovitskiy et al. 2021, Fig. 7
  right), in pixels, averaged over heads, query patches and the same images;
  prefix columns dropped and rows renormalised (``numpy_vit.analysis``).

It also says where the rollout's ratio comes from: the same ratio for each layer's own CLS attention (head
mean, no residual), and for the rollout through layers 0..l only. When the first layers attend globally, the
rollout is settled after them: from then on every token's row already mixes the whole image, so a later
layer that reads the object moves it little.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import numpy_vit as nv
from numpy_vit import analysis
from numpy_vit.fast import blas_on_one_thread

from . import recipe
from .synthetic_shapes import make_shapes

TEST_SEED = 2024
TARGETS = dict(accuracy=0.95, rollout_object_ratio=2.0, pos_embed_spearman=0.5)


def patches_on_object(masks: np.ndarray, grid: tuple) -> np.ndarray:
    """Which patches overlap the object: [B, H, W] bool pixel masks -> [B, P] bool (any pixel of the patch)."""
    b, h, w = masks.shape
    gh, gw = grid
    ph, pw = h // gh, w // gw
    blocks = masks[:, :gh * ph, :gw * pw].reshape(b, gh, ph, gw, pw)               # [B, gh, ph, gw, pw]
    return blocks.any(axis=(2, 4)).reshape(b, gh * gw)                            # [B, P]


def rollout_object_ratio(cls_rollout: np.ndarray, on_object: np.ndarray) -> np.ndarray:
    """Per image: rollout mass on object patches / fraction of patches on the object. [B, P], [B, P] -> [B].

    ``cls_rollout`` is the CLS row over the patch columns; it is renormalised to sum 1 here, so a
    map that ignores the object scores 1 and one entirely on the object scores 1 / fraction.
    """
    mass = cls_rollout / cls_rollout.sum(axis=1, keepdims=True)                   # [B, P]
    on_mass = (mass * on_object).sum(axis=1)                                       # [B]
    fraction = on_object.mean(axis=1)                                              # [B]
    return on_mass / fraction


def position_embedding_spearman(pos_embed: np.ndarray, grid: tuple, num_prefix_tokens: int) -> float:
    """Spearman's rho between cos(pos_i, pos_j) and -||grid_i - grid_j|| over all pairs i < j of patches."""
    from scipy.stats import spearmanr   # average ranks for the many tied distances

    gh, gw = grid
    similarity = analysis.position_embedding_similarity(pos_embed, grid, num_prefix_tokens).reshape(gh * gw, -1)
    distance = analysis.patch_distances(grid, patch_size=1)                       # [P, P] in grid units
    upper = np.triu_indices(gh * gw, k=1)
    return float(spearmanr(similarity[upper], -distance[upper]).statistic)


def predict(model: nv.ViT, images: np.ndarray, batch: int = 50) -> np.ndarray:
    """Top-1 class index per image: [B, H, W, 3] uint8 -> [B] (preprocessing from the model's config)."""
    return np.concatenate([model.run(list(images[i:i + batch]), record=["logits"]).logits.argmax(axis=1)
                           for i in range(0, len(images), batch)])


def attention_measures(model: nv.ViT, images: np.ndarray, masks: np.ndarray, batch: int = 20):
    """Over the same images: rollout-on-object ratios [B]; mean attention distance [L, H]; per layer, the same ratio
    for that layer's own CLS attention (head mean) [B, L] and for the rollout through layers 0..l only [B, L]."""
    config = model.config
    ratios, distances, layer_ratios, partial_ratios = [], [], [], []
    for i in range(0, len(images), batch):
        trace = model.run(list(images[i:i + batch]), record=["blocks.*.attn.pattern"])
        patterns = trace.attention                                                # L x [b, H, N, N]
        t = trace.num_prefix_tokens
        on_object = patches_on_object(masks[i:i + batch], trace.grid)             # [b, P]
        rollouts = analysis.attention_rollout(patterns, head_fusion="mean", num_prefix_tokens=t,
                                              every_layer=True)                   # [L, b, N, N], through layer l
        partial = [rollout_object_ratio(r[:, 0, t:], on_object) for r in rollouts]   # L x [b], the last = all layers
        partial_ratios.append(np.stack(partial, axis=1))
        ratios.append(partial[-1])
        layer_ratios.append(np.stack([rollout_object_ratio(p.mean(axis=1)[:, 0, t:], on_object) for p in patterns],
                                     axis=1))
        distance = analysis.mean_attention_distance(patterns, trace.grid, config.patch_size, t)   # [L, H]
        distances.append(distance * len(on_object))
    return (np.concatenate(ratios), np.sum(distances, axis=0) / len(images), np.concatenate(layer_ratios),
            np.concatenate(partial_ratios))


def model_from_checkpoint(path: Path) -> nv.ViT:
    """A NumPy model from a training checkpoint (training/train.py's ckpt.pt or final.pt), at its own size."""
    import torch

    state = torch.load(path, weights_only=True)
    state = state.get("model", state)
    params = {k: v.numpy().astype(np.float32) for k, v in state.items()}
    grid = int(round(np.sqrt(params["pos_embed"].shape[1] - 1)))
    return nv.ViT(recipe.model_config(grid * recipe.ARCH["patch_size"]), params)


def evaluate(model: nv.ViT, seed: int, n_accuracy: int, n_attention: int) -> dict:
    config = model.config
    size = config.img_size[0]
    start = time.time()
    data = make_shapes(max(n_accuracy, n_attention), seed, img_size=size)
    result = dict(model=config.name, img_size=size, seed=seed)
    labels = data["labels"][:n_accuracy]
    predicted = predict(model, data["images"][:n_accuracy])
    result["accuracy"] = float((predicted == labels).mean())
    result["n_accuracy"] = n_accuracy
    result["class_recall"] = {name: round(float((predicted[labels == c] == c).mean()), 3)
                              for c, name in enumerate(config.labels) if (labels == c).any()}
    ratios, distance, layer_ratios, partial_ratios = attention_measures(model, data["images"][:n_attention],
                                                                        data["masks"][:n_attention])
    result["rollout_object_ratio"] = float(ratios.mean())
    result["rollout_object_ratio_median"] = float(np.median(ratios))
    result["rollout_images_over_1"] = float((ratios > 1).mean())
    result["n_attention"] = n_attention
    result["cls_attention_object_ratio_per_layer"] = [round(float(r), 2) for r in layer_ratios.mean(axis=0)]
    result["rollout_object_ratio_through_layer"] = [round(float(r), 2) for r in partial_ratios.mean(axis=0)]
    result["pos_embed_spearman"] = position_embedding_spearman(model.params["pos_embed"], config.grid_size,
                                                               config.num_prefix_tokens)
    result["mean_attention_distance_px"] = [round(float(d), 1) for d in distance.mean(axis=1)]
    result["mean_attention_distance_px_min_head"] = [round(float(d), 1) for d in distance.min(axis=1)]
    result["mean_attention_distance_px_max_head"] = [round(float(d), 1) for d in distance.max(axis=1)]
    result["uniform_attention_distance_px"] = round(analysis.uniform_attention_distance(config.grid_size,
                                                                                       config.patch_size), 1)
    result["seconds"] = round(time.time() - start, 1)
    return result


def report(result: dict) -> str:
    lines = [f"{result['model']} at {result['img_size']} px, fresh images from seed {result['seed']}"]
    for key, target in TARGETS.items():
        verdict = "meets" if result[key] >= target else "MISSES"
        extra = f" on {result['n_accuracy']} images" if key == "accuracy" else (
            f" over {result['n_attention']} images (median {result['rollout_object_ratio_median']:.2f}, "
            f"{result['rollout_images_over_1']:.0%} of images > 1)" if key.startswith("rollout") else
            " over all pairs of patches")
        lines.append(f"  {key:<22} {result[key]:.4f}{extra}  [target >= {target}: {verdict}]")
    lines.append("  recall per class: " + ", ".join(f"{k} {v:.2f}" for k, v in result["class_recall"].items()))
    lines.append("  the same ratio for each layer's own CLS attention (head mean), layers 0..: "
                 + " ".join(f"{r:.2f}" for r in result["cls_attention_object_ratio_per_layer"]))
    lines.append("  ... and for the rollout through layers 0..l only:                        "
                 + " ".join(f"{r:.2f}" for r in result["rollout_object_ratio_through_layer"]))
    lines.append(f"  mean attention distance per layer (px, mean over heads; uniform = "
                 f"{result['uniform_attention_distance_px']}):")
    for i, (mean, lo, hi) in enumerate(zip(result["mean_attention_distance_px"],
                                           result["mean_attention_distance_px_min_head"],
                                           result["mean_attention_distance_px_max_head"])):
        lines.append(f"    layer {i:2d}: {mean:6.1f}   (heads {lo:.1f} .. {hi:.1f})")
    lines.append(f"  ({result['seconds']} s)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an .npz (default: the shipped weights/default.npz)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a torch training checkpoint instead")
    parser.add_argument("--seed", type=int, default=TEST_SEED)
    parser.add_argument("--n-accuracy", type=int, default=2000)
    parser.add_argument("--n-attention", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    model = model_from_checkpoint(args.checkpoint) if args.checkpoint else nv.ViT.from_pretrained(args.model)
    # OpenBLAS's threads spin-wait between the small per-head products; on a shared CPU one thread is 10-50x faster
    with blas_on_one_thread():
        result = evaluate(model, args.seed, args.n_accuracy, args.n_attention)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
