"""The recipe of the shipped default model, as data: its architecture, stages, losses and seeds.

``training/train.py`` trains by it (torch); ``training/evaluate.py`` reads the model it wrote (NumPy only); both
take these numbers from here. ``model_config`` is the ViTConfig of the exported model at a stage's image size.
"""
from __future__ import annotations

from numpy_vit.config import ViTConfig

from .synthetic_shapes import CLASSES

ARCH = dict(patch_size=16, embed_dim=128, depth=12, num_heads=8, mlp_ratio=4.0, num_classes=len(CLASSES))
MEAN = STD = (0.5, 0.5, 0.5)          # pixels in [0, 1] -> [-1, 1]
NAME = "numpy_vit_shapes_patch16_224"
STAGES = (
    dict(name="low", img_size=112, steps=17500, batch=32, lr=1e-3, warmup=50, eval_every=1750, eval_images=512),
    dict(name="mid", img_size=160, steps=6400, batch=32, lr=3e-4, warmup=20, eval_every=800, eval_images=512),
    dict(name="final", img_size=224, steps=1400, batch=32, lr=2e-4, warmup=20, eval_every=350, eval_images=256),
)
TOKEN_LOSS_WEIGHT = 1.0               # weight of the token-labeling loss (LV-ViT used 0.5; bench/recipe_sweep.py)
TOKEN_MIN_OVERLAP = 1 / 16            # a patch is "on the object" when >= this fraction of its pixels are
TOKEN_CLASSES = len(CLASSES) + 1      # what token labeling tells apart: the ten classes, then background
SHAPE_CELLS = 4                       # each patch token also predicts its part of the mask on a 4 x 4 grid of cells
SHAPE_LOSS_WEIGHT = 8.0               # weight of that mask loss (binary cross-entropy per cell; bench/recipe_sweep.py)
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
CLIP_NORM = 1.0
MIMETIC_QK = 0.7                      # mimetic start (Trockman & Kolter 2023): W_q^T W_k ~ 0.7 Z + 0.7 I per head
MIMETIC_VO = 0.4                      # ... and W_v^T W_proj^T ~ 0.4 Z - 0.4 I per layer (Z: N(0, 1/D) entries)
MIMETIC_FROM = 0.5                    # ... in the blocks from this fraction of the depth on (6-11 of 12); the
                                      # first half keep timm's start, which keeps the rollout on the object
TORCH_SEED = 0
TRAIN_SEED_BASE = 1_000_000           # batch seeds: TRAIN_SEED_BASE + 100_000 * stage + step
VAL_SEED = 99                         # monitoring during training; evaluate.py uses yet another seed


def batch_seed(stage: int, step: int) -> int:
    return TRAIN_SEED_BASE + 100_000 * stage + step


def model_config(img_size: int) -> ViTConfig:
    """The exported model's config at ``img_size`` pixels (square): ARCH, the pixel statistics and the class names."""
    return ViTConfig(name=NAME, img_size=img_size, mean=MEAN, std=STD, crop_pct=1.0, labels=CLASSES, **ARCH)
