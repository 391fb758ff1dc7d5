"""Train the shipped default model: a ViT (224 px, 16 px patches, depth 12) on ``training.synthetic_shapes``.

Run by hand, never by the tests; it needs torch and timm. From scratch it took 82 minutes on two cores of an
AMD EPYC with AVX-512 and bfloat16 instructions (weights/MODEL_CARD.md has the measured numbers and what was
tried on the way):

    python -m training.train --threads 2           # trains, checkpoints, exports weights/default.npz
    python -m training.train --resume              # after an interruption: continues from the last checkpoint
    python -m training.train --export-only         # re-export weights/default.npz from the final checkpoint
    python -m training.train --steps-scale 0.5     # every stage's steps x 0.5: for a slower CPU
    python -m training.train --float32             # a CPU without bfloat16 instructions (bench/train_step.py)

The recipe (its numbers in ``training/recipe.py``), three stages in ``STAGES``:

1. Stage ``low``: 112 x 112 (a 7 x 7 grid, 50 tokens, about 5x cheaper per image than 224), each batch a fresh
   ``make_shapes`` draw whose seed is a function of the step, so no image is seen twice and a resumed run sees
   exactly the batches it would have seen.
2. Stages ``mid`` and ``final``: 160 x 160 then 224 x 224, the 14 x 14 grid the model ships with (progressive
   resizing). Between stages the position embedding is resampled to the new grid with timm's
   ``resample_abs_pos_embed`` (bicubic, antialiased), as in ViT paper section 3.2 and "FixRes" (Touvron et al.
   2019): the same scenes at more pixels are more patches, so the model must adapt to the new scale.

Every stage: AdamW (Loshchilov & Hutter 2019) with linear warm-up then cosine decay, weight decay on matrices
only, label smoothing 0.1, gradient clipping 1.0, and two dense targets on the patch tokens of the last layer,
from one training-only linear head that is not exported:

* token labeling (Jiang et al. 2021, "All Tokens Matter", LV-ViT): each patch predicts the object's class if
  it overlaps the object, an 11th "background" class elsewhere (weight 1.0). The class label alone is one
  weak target per image; this gives 49 (then 196).
* mask cells: each patch predicts which of its 4 x 4 cells the object covers (binary cross-entropy, weight
  8.0), the object's outline at 4 px instead of 16. The two weights come from ``bench/recipe_sweep.py``.

The position embedding is learnable but starts from the fixed 2-D sine-cosine embedding of MAE (He et al.
2021) and "Better plain ViT baselines" (Beyer et al. 2022) instead of noise: with a random start the model
must discover the grid before it can relate the patches of one shape.

The attention weights of the last six blocks (``MIMETIC_FROM``) start "mimetic" (Trockman & Kolter 2023): each
head's query-key form is near a multiple of the identity, so at the start a patch attends most to patches like
itself, among them its grid neighbours (the sine-cosine embedding makes neighbours alike), and each layer's
value-output product is near minus the identity. The first six blocks keep timm's start: the mimetic start
in the early blocks buys accuracy and costs the attention rollout's hold on the object.

The matrix products run in bfloat16 under ``torch.autocast`` (``AUTOCAST_DTYPE``) with timm's explicit
attention; ``--float32`` trains in float32 with the fused attention from ``FUSED_ATTENTION_FROM`` on.
Checkpoints go to ``training/_train/ckpt.pt`` every few minutes (atomic replace); the log is
``training/_train/train.log``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from numpy_vit.config import ViTConfig
from numpy_vit.errors import ArgumentError
from numpy_vit.fast import blas_on_one_thread
from numpy_vit.weights import save

from . import recipe
from .evaluate import position_embedding_spearman
from .recipe import (ARCH, CLIP_NORM, LABEL_SMOOTHING, MEAN, MIMETIC_FROM, MIMETIC_QK, MIMETIC_VO, SHAPE_CELLS,
                     SHAPE_LOSS_WEIGHT, STAGES, STD, TOKEN_CLASSES, TOKEN_LOSS_WEIGHT, TOKEN_MIN_OVERLAP, TORCH_SEED,
                     VAL_SEED, WEIGHT_DECAY, batch_seed)
from .synthetic_shapes import CLASSES, make_shapes

HERE = Path(__file__).resolve().parent
TRAIN_DIR = HERE / "_train"
DEFAULT_OUT = HERE.parent / "weights" / "default.npz"

# Matrix products in bfloat16 (torch.autocast; parameters, optimiser state, LayerNorm, softmax and the losses stay
# float32). One training step at batch 32, two threads of a 2-core AMD EPYC with AVX512-BF16, median of 7 rounds
# (python bench/train_step.py): 174 / 342 img/s at 112 px (float32 / bfloat16), 81 / 176 at 160, 34.5 / 82 at 224.
# A CPU without bfloat16 instructions emulates them and is slower: pass --float32 there (weights/MODEL_CARD.md).
AUTOCAST_DTYPE = torch.bfloat16
# timm's explicit softmax(q k^T) v under bfloat16: its fused scaled_dot_product_attention is slower there (119 /
# 342 img/s at 112 px, 58.5 / 176 at 160, 39 / 82 at 224, fused / explicit; same bench, same CPU). In float32
# the fused kernel wins from 224 px on (34.5 / 17.2 img/s there), so --float32 takes it from FUSED_ATTENTION_FROM on.
FUSED_ATTENTION_FROM = 224            # float32 only: image sizes from which training uses the fused path
CHECKPOINT_EVERY_S = 240
# One thread by default: on a shared 2-core machine (load average 5-8) two OpenMP threads stall on each other's
# barriers, 7.5 img/s with one thread against 2.5 with two (D=128 at 112 px, batch 64). On an idle machine two
# threads are faster: pass --threads 2.
THREADS = 1


def sincos_pos_embed(grid: tuple, dim: int) -> torch.Tensor:
    """2-D sine-cosine position embedding (MAE's get_2d_sincos_pos_embed), CLS row zero: -> [1, 1 + gh*gw, dim].

    Half the channels encode the row, half the column; each half is sin and cos of position * omega_k
    with omega_k = 10000^(-k / (dim/4)), k = 0 .. dim/4 - 1 (Vaswani et al. 2017's frequencies).
    """
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))      # [D/4]
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")
    def encode(positions):  # [P] -> [P, D/2]
        angles = positions[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    table = torch.cat([encode(rows.flatten()), encode(cols.flatten())], dim=1)             # [P, D]
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()[None]      # [1, 1 + P, D]


def low_rank_factors(target: torch.Tensor, rank: int):
    """Factors A, B [rank, D] with A^T B the best rank-``rank`` approximation of target [D, D] (its SVD cut at
    ``rank``, each factor taking the square root of the singular values)."""
    u, s, vh = torch.linalg.svd(target)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).T, root[:, None] * vh[:rank]


def mimetic_blocks(depth: int) -> range:
    """The blocks that start mimetic: the last (1 - MIMETIC_FROM) of them."""
    return range(round(depth * MIMETIC_FROM), depth)


def mimetic_attention_init(model: VisionTransformer):
    """Start the attention layers ``mimetic_blocks(depth)`` as trained ViTs' layers look (Trockman & Kolter 2023,
    "Mimetic Initialization of Self-Attention Layers"), from torch's global RNG:

    * each head's W_q^T W_k (the bilinear form of its scores, [D, D] of rank D/H) is the rank-D/H part of
      MIMETIC_QK * (Z + I): a token's query is close to its own key, so at the start a patch attends most to the
      patches whose embedding, and so whose position embedding, is like its own: to its neighbours;
    * each layer's W_v^T W_proj^T (what attention adds to the residual stream, per attended token) is
      MIMETIC_VO * (Z - I).

    timm's qkv weight holds W_q, W_k, W_v as [D, D] blocks (out, in), heads in consecutive rows."""
    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    k = dim // heads
    eye = torch.eye(dim)
    with torch.no_grad():
        for block in (model.blocks[i] for i in mimetic_blocks(len(model.blocks))):
            qkv = block.attn.qkv.weight                                   # [3D, D]
            for h in range(heads):
                z = torch.randn(dim, dim) / math.sqrt(dim)
                w_q, w_k = low_rank_factors(MIMETIC_QK * (z + eye), k)
                qkv[h * k:(h + 1) * k] = w_q
                qkv[dim + h * k:dim + (h + 1) * k] = w_k
            z = torch.randn(dim, dim) / math.sqrt(dim)
            w_v, w_proj_t = low_rank_factors(MIMETIC_VO * (z - eye), dim)  # W_v^T W_proj^T = MIMETIC_VO (Z - I)
            qkv[2 * dim:] = w_v
            block.attn.proj.weight.copy_(w_proj_t.T)


def build_model(img_size: int, float32: bool = False) -> VisionTransformer:
    """The recipe's timm ViT for img_size inputs; its attention takes the faster path for that size and precision
    (explicit under bfloat16 autocast; the same math either way)."""
    model = VisionTransformer(img_size=img_size, **ARCH)
    for block in model.blocks:
        block.attn.fused_attn = float32 and img_size >= FUSED_ATTENTION_FROM
    return model


def to_input(images_uint8: torch.Tensor) -> torch.Tensor:  # [B, H, W, 3] uint8 -> [B, 3, H, W] float, same device
    x = images_uint8.permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def learning_rate(stage: dict, step: int) -> float:
    """Linear warm-up to stage["lr"], then cosine decay to 1% of it at the last step."""
    if step < stage["warmup"]:
        return stage["lr"] * (step + 1) / stage["warmup"]
    progress = (step - stage["warmup"]) / max(1, stage["steps"] - stage["warmup"])
    return stage["lr"] * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_token_head() -> torch.nn.Linear:
    """Training-only head on each patch token [D] -> TOKEN_CLASSES logits, then SHAPE_CELLS**2 mask-cell logits."""
    return torch.nn.Linear(ARCH["embed_dim"], TOKEN_CLASSES + SHAPE_CELLS ** 2)


def forward_with_tokens(model: VisionTransformer, token_head, x):  # -> [B, C] class, [B, P, C+1+cells] token logits
    features = model.forward_features(x)                                          # [B, 1 + P, D] after the last norm
    return model.forward_head(features), token_head(features[:, model.num_prefix_tokens:])


def recipe_loss(logits, token_logits, labels, token_labels, cell_labels, token_weight=TOKEN_LOSS_WEIGHT,
                shape_weight=SHAPE_LOSS_WEIGHT):
    """The training loss and its three parts: class token [B, C] against labels [B]; token logits [B, P, ...]
    against token labels [B, P] (classes) and cell labels [B, P, cells] (mask). -> (loss, class, token, shape)"""
    class_loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
    token_loss = F.cross_entropy(token_logits[..., :TOKEN_CLASSES].flatten(0, 1), token_labels.flatten(),
                                 label_smoothing=LABEL_SMOOTHING)
    shape_loss = F.binary_cross_entropy_with_logits(token_logits[..., TOKEN_CLASSES:], cell_labels)
    return class_loss + token_weight * token_loss + shape_weight * shape_loss, class_loss, token_loss, shape_loss


def starting_point():
    """The recipe's start: torch seed TORCH_SEED, the model at stage ``low``'s size with the sine-cosine position
    embedding and mimetic attention weights, and the token head. -> (model, token_head)"""
    torch.manual_seed(TORCH_SEED)
    model = build_model(STAGES[0]["img_size"])
    with torch.no_grad():
        model.pos_embed.copy_(sincos_pos_embed(model.patch_embed.grid_size, ARCH["embed_dim"]))
    mimetic_attention_init(model)
    return model, make_token_head()


def optimisation_step(model, token_head, optimizer, lr, x, labels, token_labels, cell_labels,
                      token_weight=TOKEN_LOSS_WEIGHT, shape_weight=SHAPE_LOSS_WEIGHT, autocast=AUTOCAST_DTYPE):
    """One step of the recipe on a batch x: learning rate, loss, gradients clipped at CLIP_NORM, AdamW.
    The forward pass runs under torch.autocast(autocast) unless it is None; float64 models are never cast.
    -> (class logits, (loss, class, token, shape losses), gradient norm before clipping)"""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logits, token_logits = forward_with_tokens(model, token_head, x)
    logits, token_logits = logits.to(x.dtype), token_logits.to(x.dtype)          # the losses in x's precision
    losses = recipe_loss(logits, token_logits, labels, token_labels, cell_labels, token_weight, shape_weight)
    optimizer.zero_grad(set_to_none=True)
    losses[0].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([*model.parameters(), *token_head.parameters()], CLIP_NORM)
    optimizer.step()
    return logits, losses, grad_norm


def make_optimizer(*modules: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the modules' parameters (the model and the token head), weight decay on matrices only."""
    named = list(torch.nn.ModuleList(modules).named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "pos_embed" not in n)]
    return torch.optim.AdamW([dict(params=decay, weight_decay=WEIGHT_DECAY),
                              dict(params=no_decay, weight_decay=0.0)], lr=0.0, betas=(0.9, 0.999))


def start_stage(model: VisionTransformer, token_head, img_size: int, float32: bool = False):
    """The change between stages: the model resampled to img_size and a fresh optimiser. -> (model, optimizer)"""
    model = grow_to(model, img_size, float32)
    return model, make_optimizer(model, token_head)


def grow_to(model: VisionTransformer, img_size: int, float32: bool = False) -> VisionTransformer:
    """A copy of ``model`` for img_size inputs: same weights, position embedding resampled to the new grid."""
    bigger = build_model(img_size, float32)
    state = dict(model.state_dict())
    grid = bigger.patch_embed.grid_size
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid), num_prefix_tokens=1,
                                                interpolation="bicubic", antialias=True)
    bigger.load_state_dict(state)
    return bigger


def patch_targets(masks: np.ndarray, labels: np.ndarray, patch_size: int) -> np.ndarray:
    """Token-labeling targets: [B, H, W] bool, [B] -> [B, P] int, the class on object patches, len(CLASSES)
    elsewhere."""
    b, h, w = masks.shape
    gh, gw = h // patch_size, w // patch_size
    cover = masks.reshape(b, gh, patch_size, gw, patch_size).mean(axis=(2, 4)).reshape(b, gh * gw)   # [B, P]
    return np.where(cover >= TOKEN_MIN_OVERLAP, labels[:, None], len(CLASSES))


def cell_targets(masks: np.ndarray, patch_size: int) -> np.ndarray:
    """Mask targets per patch: [B, H, W] bool -> [B, P, SHAPE_CELLS**2] float32, 1 where at least half of a cell
    (patch_size / SHAPE_CELLS pixels on a side) is object; cells in row order within the patch."""
    b, h, w = masks.shape
    gh, gw, n, c = h // patch_size, w // patch_size, SHAPE_CELLS, patch_size // SHAPE_CELLS
    cells = masks.reshape(b, gh, n, c, gw, n, c).mean(axis=(3, 6))                  # [B, gh, n, gw, n]
    return (cells.transpose(0, 1, 3, 2, 4).reshape(b, gh * gw, n * n) >= 0.5).astype(np.float32)


def training_batch(n: int, seed: int, img_size: int, patch_size: int) -> tuple:
    """``make_shapes(n, seed, img_size)`` with its training targets, as tensors: images [n, S, S, 3] uint8,
    labels [n], token labels [n, P], cell labels [n, P, SHAPE_CELLS**2]."""
    data = make_shapes(n, seed, img_size=img_size)
    tokens = patch_targets(data["masks"], data["labels"], patch_size)
    cells = cell_targets(data["masks"], patch_size)
    return tuple(torch.from_numpy(a) for a in (data["images"], data["labels"], tokens, cells))


class ShapeBatches(torch.utils.data.IterableDataset):
    """Batches ``start .. steps-1`` of a stage; batch ``step`` is ``make_shapes(batch, batch_seed(stage, step))``.
    It carries its stage and patch size, so a worker process started any way sees the recipe of the run."""

    def __init__(self, stage_index: int, stage: dict, start: int, patch_size: int):
        self.stage_index, self.stage, self.start, self.patch_size = stage_index, dict(stage), start, patch_size

    def __iter__(self):
        torch.set_num_threads(1)
        stage = self.stage
        with blas_on_one_thread():   # the worker's NumPy drawing: small products, one thread (numpy_vit.fast)
            for step in range(self.start, stage["steps"]):
                yield step, *training_batch(stage["batch"], batch_seed(self.stage_index, step), stage["img_size"],
                                            self.patch_size)


# --- monitoring -------------------------------------------------------------------

@torch.no_grad()
def accuracy(model, images, labels, batch=128) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(to_input(images[i:i + batch]))
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    model.train()
    return correct / len(images)


def log(message: str, path: Path):
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")


# --- checkpoints ------------------------------------------------------------------

def save_checkpoint(path: Path, **state):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)     # never leave a half-written checkpoint behind


def export(model: VisionTransformer, out: Path) -> ViTConfig:
    """Write our .npz: the flat timm state dict as float32 plus the ViTConfig that reads it."""
    config = recipe.model_config(model.patch_embed.img_size[0])
    params = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    save(out, config, params)
    return config


# --- the loop ---------------------------------------------------------------------

def scaled_stages(steps_scale: float) -> tuple:
    """STAGES with every stage's steps (and its warm-up and validation interval) times steps_scale, at least 1:
    the same recipe, shorter or longer, for a slower or faster CPU than the one the model card's times are from."""
    if not isinstance(steps_scale, (int, float)) or isinstance(steps_scale, bool) or not 0 < steps_scale <= 10:
        raise ArgumentError(f"steps_scale must be a number in (0, 10], got {steps_scale!r}: 1 is the recipe as "
                            f"written, 0.5 half its steps")
    def scaled(stage):
        steps = max(1, round(stage["steps"] * steps_scale))
        return dict(stage, steps=steps, warmup=min(steps, max(1, round(stage["warmup"] * steps_scale))),
                    eval_every=max(1, round(stage["eval_every"] * steps_scale)))
    return tuple(stage if steps_scale == 1 else scaled(stage) for stage in STAGES)


@dataclass
class Run:
    """What one training run carries from step to step: the models, the optimiser, the clock, where it writes."""
    model: VisionTransformer
    token_head: torch.nn.Linear
    optimizer: torch.optim.Optimizer
    stages: tuple
    steps_scale: float
    precision: str                        # "float32" or "bfloat16 autocast", as the checkpoint records it
    float32: bool
    log_path: Path
    ckpt_path: Path
    elapsed: float = 0.0                  # seconds spent in training steps
    last_save: float = 0.0                # time.time() of the last checkpoint (or of the start)

    def log(self, message: str):
        log(message, self.log_path)


def train(train_dir: Path, resume: bool, out: Path, threads: int = THREADS, steps_scale: float = 1.0,
          float32: bool = False):
    """Train by the recipe (STAGES scaled by steps_scale) into train_dir, resuming from its ckpt.pt if asked, then
    export the model to ``out``."""
    stages = scaled_stages(steps_scale)
    torch.set_num_threads(threads)
    with blas_on_one_thread():   # the NumPy monitoring (make_shapes, the Spearman rho): one BLAS thread
        run_recipe(train_dir, resume, out, stages, steps_scale, float32)


def run_recipe(train_dir: Path, resume: bool, out: Path, stages: tuple, steps_scale: float, float32: bool):
    train_dir.mkdir(parents=True, exist_ok=True)
    model, token_head = starting_point()
    run = Run(model, token_head, make_optimizer(model, token_head), stages, steps_scale,
              "float32" if float32 else f"{str(AUTOCAST_DTYPE).removeprefix('torch.')} autocast", float32,
              train_dir / "train.log", train_dir / "ckpt.pt")
    stage_index, step = 0, 0
    if resume and run.ckpt_path.exists():
        stage_index, step = resume_from_checkpoint(run)
    elif resume:
        run.log(f"--resume: no checkpoint at {run.ckpt_path}, starting from scratch")
    log_recipe(run)   # on every start, so that a resumed log says which recipe it continues with
    run.last_save = time.time()
    while stage_index < len(stages):
        train_stage(run, stage_index, step, train_dir)
        stage_index, step = stage_index + 1, 0
    config = export(run.model, out)
    torch.save(run.model.state_dict(), train_dir / "final.pt")
    run.log(f"done: {run.elapsed/60:.1f} min of training steps; exported {config.name} to {out}")


def resume_from_checkpoint(run: Run) -> tuple:
    """Load run.ckpt_path into ``run`` (model, token head, optimiser, clock, torch RNG), after checking that it
    was written by this recipe at this scale and precision. -> (stage index, step) to go on from"""
    ckpt_path, stages = run.ckpt_path, run.stages
    state = torch.load(ckpt_path, weights_only=True)  # ints, floats, tensors and state dicts only
    stage_index, step, run.elapsed = state["stage"], state["step"], state["elapsed"]
    saved_scale = state.get("steps_scale", 1.0)
    if saved_scale != run.steps_scale:
        raise SystemExit(f"{ckpt_path} was written with --steps-scale {saved_scale}, this run asks for "
                         f"{run.steps_scale}: resume with --steps-scale {saved_scale}, or move the checkpoint away")
    saved_precision = state.get("precision", "float32")
    if saved_precision != run.precision:
        flag = "with --float32" if saved_precision == "float32" else "without --float32"
        raise SystemExit(f"{ckpt_path} was trained in {saved_precision}, this run asks for {run.precision}: resume "
                         f"{flag}, or move the checkpoint away")
    if stage_index >= len(stages):
        raise SystemExit(f"{ckpt_path} is past the last stage ({stage_index} of {len(stages)}): nothing to resume; "
                         f"add a stage to STAGES or run --export-only")
    saved_grid = int(round(math.sqrt(state["model"]["pos_embed"].shape[1] - 1)))
    run.model = build_model(saved_grid * ARCH["patch_size"], run.float32)
    run.model.load_state_dict(state["model"])
    saved_outputs = state["token_head"]["weight"].shape[0]
    if saved_outputs != run.token_head.out_features:
        raise SystemExit(f"{ckpt_path} was written by another recipe: its token head has {saved_outputs} outputs, "
                         f"this recipe's {run.token_head.out_features} ({TOKEN_CLASSES} token classes + "
                         f"{SHAPE_CELLS ** 2} mask cells); train from scratch without --resume, or move the "
                         f"checkpoint away")
    run.token_head.load_state_dict(state["token_head"])
    if saved_grid * ARCH["patch_size"] == stages[stage_index]["img_size"]:
        run.optimizer = make_optimizer(run.model, run.token_head)
        run.optimizer.load_state_dict(state["optimizer"])
    else:   # a checkpoint written at the end of a shorter stage list: the stage change the loop makes
        run.model, run.optimizer = start_stage(run.model, run.token_head, stages[stage_index]["img_size"],
                                               run.float32)
        run.log(f"resampled the checkpoint's {saved_grid}x{saved_grid} position embedding to "
                f"{stages[stage_index]['img_size']} px for stage {stages[stage_index]['name']}; optimiser restarts")
    torch.set_rng_state(state["torch_rng"])
    run.log(f"resumed from {ckpt_path}: stage {stages[stage_index]['name']} step {step}, "
            f"{run.elapsed/60:.1f} min so far")
    return stage_index, step


def log_recipe(run: Run):
    run.log(f"recipe: arch={json.dumps(ARCH)} stages={json.dumps(run.stages)} steps_scale={run.steps_scale} "
            f"wd={WEIGHT_DECAY} label_smoothing={LABEL_SMOOTHING} clip={CLIP_NORM} "
            f"token_loss_weight={TOKEN_LOSS_WEIGHT} token_min_overlap={TOKEN_MIN_OVERLAP:.4f} "
            f"shape_cells={SHAPE_CELLS} shape_loss_weight={SHAPE_LOSS_WEIGHT} mimetic_qk={MIMETIC_QK} "
            f"mimetic_vo={MIMETIC_VO} mimetic_blocks={list(mimetic_blocks(ARCH['depth']))} "
            f"precision={run.precision} threads={torch.get_num_threads()}")


class Window:
    """Running sums over the steps since the last log line: images, correct predictions, the three losses."""

    def __init__(self):
        self.seen, self.correct, self.loss, self.token, self.shape, self.start = 0, 0, 0.0, 0.0, 0.0, time.time()

    def add(self, logits, labels, class_loss, token_loss, shape_loss):
        self.seen += len(labels)
        self.correct += int((logits.argmax(1) == labels).sum())
        self.loss += class_loss.item() * len(labels)
        self.token += token_loss.item() * len(labels)
        self.shape += shape_loss.item() * len(labels)

    def summary(self) -> str:
        n = self.seen
        return (f"loss={self.loss/n:.4f} token_loss={self.token/n:.4f} shape_loss={self.shape/n:.4f} "
                f"train_acc={self.correct/n:.3f}")

    def rate(self) -> float:
        return self.seen / (time.time() - self.start)


def train_stage(run: Run, stage_index: int, start: int, train_dir: Path):
    """Steps ``start`` .. the end of stage ``stage_index``: log every 20 steps, validate every eval_every,
    checkpoint every CHECKPOINT_EVERY_S seconds and at the end, where the model grows to the next stage's size."""
    stage = run.stages[stage_index]
    autocast = None if run.float32 else AUTOCAST_DTYPE
    val = make_shapes(stage["eval_images"], VAL_SEED, img_size=stage["img_size"])
    val_images, val_labels = torch.from_numpy(val["images"]), torch.from_numpy(val["labels"])
    loader = torch.utils.data.DataLoader(ShapeBatches(stage_index, stage, start, ARCH["patch_size"]),
                                         batch_size=None, num_workers=1,
                                         prefetch_factor=4, persistent_workers=False)
    window = Window()
    for step, images, labels, token_labels, cell_labels in loader:
        t0 = time.time()
        lr = learning_rate(stage, step)
        logits, (_, class_loss, token_loss, shape_loss), grad_norm = optimisation_step(
            run.model, run.token_head, run.optimizer, lr, to_input(images), labels, token_labels, cell_labels,
            autocast=autocast)
        run.elapsed += time.time() - t0
        window.add(logits, labels, class_loss, token_loss, shape_loss)
        done = step + 1
        if done % 20 == 0 or done == stage["steps"]:
            run.log(f"stage={stage['name']} step={done}/{stage['steps']} {window.summary()} lr={lr:.2e} "
                    f"grad_norm={float(grad_norm):.2f} img/s={window.rate():.1f} train_min={run.elapsed/60:.1f}")
            window = Window()
        if done % stage["eval_every"] == 0 or done == stage["steps"]:
            acc = accuracy(run.model, val_images, val_labels)
            rho = position_embedding_spearman(run.model.pos_embed.detach().numpy(), run.model.patch_embed.grid_size,
                                              run.model.num_prefix_tokens)
            run.log(f"eval stage={stage['name']} step={done} val_acc={acc:.4f} (n={len(val_labels)}, "
                    f"seed {VAL_SEED}) pos_embed_spearman={rho:.3f}")
        if time.time() - run.last_save > CHECKPOINT_EVERY_S or done == stage["steps"]:
            save_progress(run, stage_index, done, train_dir)
            if done == stage["steps"]:
                break


def save_progress(run: Run, stage_index: int, done: int, train_dir: Path):
    """Checkpoint after ``done`` steps of stage ``stage_index``; at a stage's end the model first grows to the next
    stage's size, so that the checkpoint holds the grown model, and its weights are kept as after_<stage>.pt."""
    stage = run.stages[stage_index]
    next_stage, next_step = (stage_index, done) if done < stage["steps"] else (stage_index + 1, 0)
    if next_stage < len(run.stages) and next_stage != stage_index:
        run.model, run.optimizer = start_stage(run.model, run.token_head, run.stages[next_stage]["img_size"],
                                               run.float32)
        run.log(f"grew model to {run.stages[next_stage]['img_size']} px, pos_embed "
                f"{tuple(run.model.pos_embed.shape)} (bicubic, antialias)")
    save_checkpoint(run.ckpt_path, stage=next_stage, step=next_step, elapsed=run.elapsed, steps_scale=run.steps_scale,
                    precision=run.precision, model=run.model.state_dict(), token_head=run.token_head.state_dict(),
                    optimizer=run.optimizer.state_dict(), torch_rng=torch.get_rng_state())
    if next_stage != stage_index:
        torch.save(run.model.state_dict(), train_dir / f"after_{stage['name']}.pt")
    run.last_save = time.time()
    run.log(f"checkpoint {run.ckpt_path} (stage {next_stage} step {next_step})")


def export_only(train_dir: Path, out: Path):
    model = build_model(STAGES[-1]["img_size"])
    model.load_state_dict(torch.load(train_dir / "final.pt"))
    config = export(model, out)
    print(f"exported {config.name} to {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from <train-dir>/ckpt.pt")
    parser.add_argument("--train-dir", type=Path, default=TRAIN_DIR, help="checkpoints and log (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="exported .npz (default %(default)s)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (default %(default)s)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="every stage's steps times this (default %(default)s: the recipe as written; "
                             "weights/MODEL_CARD.md says when to lower it)")
    parser.add_argument("--float32", action="store_true",
                        help="train in float32 instead of bfloat16 autocast: for a CPU without bfloat16 instructions "
                             "(weights/MODEL_CARD.md)")
    parser.add_argument("--export-only", action="store_true", help="export <train-dir>/final.pt and exit")
    args = parser.parse_args(argv)
    if args.export_only:
        export_only(args.train_dir, args.out)
    else:
        try:
            scaled_stages(args.steps_scale)   # a bad scale is a usage error, before any training starts
        except ArgumentError as error:
            parser.error(str(error))
        train(args.train_dir, args.resume, args.out, args.threads, args.steps_scale, args.float32)


if __name__ == "__main__":
    main()
