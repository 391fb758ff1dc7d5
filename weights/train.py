"""Train the shipped default model: a ViT (224 px, 16 px patches, depth 12) on ``weights.shapes``.

Run by hand, never by the tests (it needs torch and about 80 minutes of two quiet CPU cores from scratch):

    python -m weights.train --threads 2           # trains, checkpoints, exports weights/default.npz
    python -m weights.train --resume              # after an interruption: continues from the last checkpoint
    python -m weights.train --export-only         # re-export weights/default.npz from the final checkpoint

The recipe (see weights/MODEL_CARD.md for the numbers it reaches), two stages in ``STAGES``:

1. Stage ``window``: 8 x 8-patch windows (128 px, 65 tokens) of 224 x 224 scenes, each window drawn at random
   among those that hold the object's bounding box (``object_windows``). ``forward_window`` gives every patch
   token the position embedding of the place in the 224 px grid it came from, so the model trains at the scale
   and on the grid it ships with, at about the cost per image of a whole 112 px image (50 tokens). Each batch
   is a fresh ``make_shapes`` draw whose seed is a function of the step, so no image is seen twice and a
   resumed run sees exactly the batches it would have seen.
2. Stage ``final``: whole 224 x 224 images, the 14 x 14 grid: the model learns to find the object among all
   196 patches, the clutter of the whole scene included.

Until session 8 the recipe trained on whole images at 112 px, then 160 px, then 224 px (progressive
resizing, position embedding resampled between stages). It cost about the same, but each change of size
halved what the model knew: the model after 112 px read 60.5 % of validation images at 112 px and 34.8 % at
160 px (its embedding resampled), because at 112 px an object is half as many patches wide (1.25-3.75
instead of 2.5-7.5) and the grid is interpolated. A window changes neither.

Every stage: AdamW (Loshchilov & Hutter 2019) with linear warm-up then cosine
decay, weight decay on matrices only, label smoothing 0.1, gradient clipping 1.0,
and token labeling (Jiang et al. 2021, "All Tokens Matter", LV-ViT): a linear
head on every patch token of the last layer predicts the object's class for
patches that overlap the object and an 11th "background" class elsewhere
(weight 1.0). With the class-token loss alone the first 18k images stayed at
chance (loss 2.31 = ln 10); the dense loss gives each image 64 (then 196)
targets. The same head also predicts, for every patch, which of its 4 x 4 cells the object covers (binary
cross-entropy, weight 8.0): the object's outline at 4 px instead of 16, a dense target about *what* the object
is where the class label says only *that* it is there. The auxiliary head is training-only: it is not
exported. The two weights come from ``bench/recipe_sweep.py``, which trained stage ``low`` (144k images) with
35 settings on a GPU (whole 112 px images, the session-7 first stage): validation accuracy at 112 px went from 0.423 (weights 0.5 / 0.5, the previous recipe)
to 0.668 (1.0 / 8.0); learning rate, Adam's beta2 and larger batches gained nothing (bench/README.md).

The position embedding is learnable but starts from the fixed 2-D sine-cosine
embedding of MAE (He et al. 2021) and "Better plain ViT baselines" (Beyer et
al. 2022) instead of noise: with a random start the model must discover the
grid before it can relate the patches of one shape, and two runs (class loss
alone, then with token labeling) were still near chance after 19k images.
The model card reports the embedding's grid correlation at initialisation
next to the trained one, so the reader sees what training kept or added.
Checkpoints go to ``weights/_train/ckpt.pt`` every few minutes (atomic
replace); the log is ``weights/_train/train.log``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from numpy_vit.config import ViTConfig
from weights import save
from weights.evaluate import position_embedding_spearman
from weights.shapes import CLASSES, make_shapes

HERE = Path(__file__).resolve().parent
TRAIN_DIR = HERE / "_train"
DEFAULT_OUT = HERE / "default.npz"

# --- the recipe, as data ----------------------------------------------------------
ARCH = dict(patch_size=16, embed_dim=128, depth=12, num_heads=8, mlp_ratio=4.0, num_classes=len(CLASSES))
MEAN = STD = (0.5, 0.5, 0.5)          # pixels in [0, 1] -> [-1, 1]
STAGES = (
    # 8 x 8-patch windows (128 px) of 224 px scenes, each holding the object: native scale, 65 tokens
    dict(name="window", img_size=224, window=8, steps=4600, batch=32, lr=1e-3, warmup=50, eval_every=575,
         eval_images=256),
    dict(name="final", img_size=224, steps=600, batch=32, lr=3e-4, warmup=20, eval_every=200, eval_images=256),
)
TOKEN_LOSS_WEIGHT = 1.0               # weight of the token-labeling loss (LV-ViT used 0.5; bench/recipe_sweep.py)
TOKEN_MIN_OVERLAP = 1 / 16            # a patch is "on the object" when >= this fraction of its pixels are
TOKEN_CLASSES = len(CLASSES) + 1      # what token labeling tells apart: the ten classes, then background
SHAPE_CELLS = 4                       # each patch token also predicts its part of the mask on a 4 x 4 grid of cells
SHAPE_LOSS_WEIGHT = 8.0               # weight of that mask loss (binary cross-entropy per cell; bench/recipe_sweep.py)
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
CLIP_NORM = 1.0
TORCH_SEED = 0
TRAIN_SEED_BASE = 1_000_000           # batch seeds: TRAIN_SEED_BASE + 100_000 * stage + step
VAL_SEED = 99                         # monitoring during training; evaluate.py uses yet another seed
CHECKPOINT_EVERY_S = 240
# One thread: on this shared 2-core machine (load 5-8 while others run tests) two OpenMP threads stall on each
# other's barriers; measured 7.5 img/s with one thread against 2.5 with two (D=128 at 112 px, batch 64).
# On an idle machine two threads are faster (79 img/s at 112 px): pass --threads 2.
THREADS = 1
NAME = "numpy_vit_shapes_patch16_224"


def batch_seed(stage: int, step: int) -> int:
    return TRAIN_SEED_BASE + 100_000 * stage + step


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


def blas_one_thread():
    """NumPy's OpenBLAS spins two threads per call by default; on a busy shared CPU that makes small matrix
    products 10-50x slower (measured: 0.73 s -> 0.05 s for one layer's attention of 10 images)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def build_model(img_size: int) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, **ARCH)


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


def forward_window(model: VisionTransformer, token_head, x, rows, cols):
    """The model on windows of its images: x [B, 3, w*p, w*p] holds, for each image, the w x w patches whose top-left
    patch is (rows[b], cols[b]) on the model's grid. Each patch token gets the position embedding of the place it
    came from, so the window is the full image minus the patches outside it: the same scale, the same positions.
    The CLS token and the blocks are the model's. -> [B, C] class logits, [B, w*w, ...] token logits"""
    b, p = x.shape[0], model.patch_embed.patch_size[0]
    w, grid_w = x.shape[-1] // p, model.patch_embed.grid_size[1]
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)                         # [B, w*w, D]
    offsets = torch.arange(w)
    where = ((rows[:, None] + offsets)[:, :, None] * grid_w + (cols[:, None] + offsets)[:, None, :]).reshape(b, -1)
    tokens = tokens + model.pos_embed[0, model.num_prefix_tokens:][where]                 # [B, w*w, D]
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(b, -1, -1)                    # [B, 1, D]
    h = model.norm(model.blocks(model.norm_pre(model.pos_drop(torch.cat([cls, tokens], dim=1)))))
    return model.forward_head(h), token_head(h[:, model.num_prefix_tokens:])


def object_windows(masks: np.ndarray, window: int, patch_size: int, rng: np.random.Generator):
    """For each image, a window of window x window patches that holds its object: [B, H, W] bool -> rows [B], cols
    [B], the window's top-left patch. Among the windows that hold the object's bounding box one is drawn at random
    (so the object is anywhere in it); an object wider than the window gets the window centred on it."""
    b, h, w = masks.shape
    grid = h // patch_size
    starts = np.empty((2, b), np.int64)
    for i in range(b):
        for axis, on in enumerate((masks[i].any(axis=1), masks[i].any(axis=0))):     # rows, then columns
            first, last = np.flatnonzero(on)[[0, -1]] // patch_size                     # patches of the bounding box
            low, high = max(0, last - window + 1), min(grid - window, first)
            if low > high:
                low = high = int(np.clip((first + last + 1) // 2 - window // 2, 0, grid - window))
            starts[axis, i] = rng.integers(low, high + 1)
    return starts[0], starts[1]


def cut_windows(pixels: np.ndarray, rows, cols, window: int, patch_size: int) -> np.ndarray:
    """[B, H, W, ...] -> [B, window*p, window*p, ...], image b from patch (rows[b], cols[b])."""
    size = window * patch_size
    return np.stack([a[r * patch_size:r * patch_size + size, c * patch_size:c * patch_size + size]
                     for a, r, c in zip(pixels, rows, cols)])


def recipe_loss(logits, token_logits, labels, token_labels, cell_labels, token_weight=TOKEN_LOSS_WEIGHT,
                shape_weight=SHAPE_LOSS_WEIGHT):
    """The training loss and its three parts: class token [B, C] against labels [B]; token logits [B, P, ...]
    against token labels [B, P] (classes) and cell labels [B, P, cells] (mask). -> (loss, class, token, shape)"""
    class_loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
    token_loss = F.cross_entropy(token_logits[..., :TOKEN_CLASSES].flatten(0, 1), token_labels.flatten(),
                                 label_smoothing=LABEL_SMOOTHING)
    shape_loss = F.binary_cross_entropy_with_logits(token_logits[..., TOKEN_CLASSES:], cell_labels)
    return class_loss + token_weight * token_loss + shape_weight * shape_loss, class_loss, token_loss, shape_loss


def starting_point(img_size: int | None = None):
    """The recipe's start: torch seed TORCH_SEED, the model at the first stage's size (or img_size) with the
    sine-cosine position embedding, and the token head. -> (model, token_head)"""
    torch.manual_seed(TORCH_SEED)
    model = build_model(img_size or STAGES[0]["img_size"])
    with torch.no_grad():
        model.pos_embed.copy_(sincos_pos_embed(model.patch_embed.grid_size, ARCH["embed_dim"]))
    return model, make_token_head()


def optimisation_step(model, token_head, optimizer, lr, x, labels, token_labels, cell_labels,
                      token_weight=TOKEN_LOSS_WEIGHT, shape_weight=SHAPE_LOSS_WEIGHT, windows=None):
    """One step of the recipe on a batch x (windows: None for whole images, or (rows, cols) of forward_window):
    learning rate, loss, gradients clipped at CLIP_NORM, AdamW.
    -> (class logits, (loss, class, token, shape losses), gradient norm before clipping)"""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if windows is None:
        logits, token_logits = forward_with_tokens(model, token_head, x)
    else:
        logits, token_logits = forward_window(model, token_head, x, *windows)
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


def start_stage(model: VisionTransformer, token_head, img_size: int):
    """The change between stages: the model resampled to img_size and a fresh optimiser. -> (model, optimizer)"""
    model = grow_to(model, img_size)
    return model, make_optimizer(model, token_head)


def grow_to(model: VisionTransformer, img_size: int) -> VisionTransformer:
    """A copy of ``model`` for img_size inputs: same weights, position embedding resampled to the new grid."""
    bigger = build_model(img_size)
    state = dict(model.state_dict())
    grid = bigger.patch_embed.grid_size
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid), num_prefix_tokens=1,
                                                interpolation="bicubic", antialias=True)
    bigger.load_state_dict(state)
    return bigger


def patch_targets(masks: np.ndarray, labels: np.ndarray, patch_size: int) -> np.ndarray:
    """Token-labeling targets: [B, H, W] bool, [B] -> [B, P] int, the class on object patches, len(CLASSES) elsewhere."""
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


class ShapeBatches(torch.utils.data.IterableDataset):
    """Batches ``start .. steps-1`` of a stage; batch ``step`` is ``make_shapes(batch, batch_seed(stage, step))``.
    It carries its stage and patch size, so a worker process started any way sees the recipe of the run."""

    def __init__(self, stage_index: int, stage: dict, start: int, patch_size: int):
        self.stage_index, self.stage, self.start, self.patch_size = stage_index, dict(stage), start, patch_size

    def __iter__(self):
        torch.set_num_threads(1)
        blas_one_thread()
        stage = self.stage
        for step in range(self.start, stage["steps"]):
            seed = batch_seed(self.stage_index, step)
            data = make_shapes(stage["batch"], seed, img_size=stage["img_size"])
            images, masks = data["images"], data["masks"]
            rows = cols = np.zeros(len(images), np.int64)
            if stage.get("window"):
                rows, cols = object_windows(masks, stage["window"], self.patch_size, np.random.default_rng([seed, 1]))
                images, masks = (cut_windows(a, rows, cols, stage["window"], self.patch_size) for a in (images, masks))
            tokens = patch_targets(masks, data["labels"], self.patch_size)
            cells = cell_targets(masks, self.patch_size)
            yield (step, torch.from_numpy(images), torch.from_numpy(data["labels"]), torch.from_numpy(tokens),
                   torch.from_numpy(cells), torch.from_numpy(rows), torch.from_numpy(cols))


# --- monitoring -------------------------------------------------------------------

@torch.no_grad()
def accuracy(model, images, labels, batch=128, windows=None, token_head=None) -> float:
    """Top-1 accuracy on whole images, or on windows (rows, cols) of them through forward_window and token_head."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = to_input(images[i:i + batch])
        if windows is None:
            logits = model(x)
        else:
            logits = forward_window(model, token_head, x, *(w[i:i + batch] for w in windows))[0]
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
    config = ViTConfig(name=NAME, img_size=model.patch_embed.img_size[0], mean=MEAN, std=STD, crop_pct=1.0,
                       labels=CLASSES, **ARCH)
    params = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    save(out, config, params)
    return config


# --- the loop ---------------------------------------------------------------------

def train(train_dir: Path, resume: bool, out: Path, threads: int = THREADS):
    torch.set_num_threads(threads)
    blas_one_thread()
    train_dir.mkdir(parents=True, exist_ok=True)
    log_path, ckpt_path = train_dir / "train.log", train_dir / "ckpt.pt"

    stage_index, step, elapsed = 0, 0, 0.0
    model, token_head = starting_point()
    optimizer = make_optimizer(model, token_head)
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)  # ints, floats, tensors and state dicts only
        stage_index, step, elapsed = state["stage"], state["step"], state["elapsed"]
        if stage_index >= len(STAGES):
            raise SystemExit(f"{ckpt_path} is past the last stage ({stage_index} of {len(STAGES)}): nothing to resume; "
                             f"add a stage to STAGES or run --export-only")
        saved_grid = int(round(math.sqrt(state["model"]["pos_embed"].shape[1] - 1)))
        model = build_model(saved_grid * ARCH["patch_size"])
        model.load_state_dict(state["model"])
        saved_outputs = state["token_head"]["weight"].shape[0]
        if saved_outputs != token_head.out_features:
            raise SystemExit(f"{ckpt_path} was written by another recipe: its token head has {saved_outputs} outputs, "
                             f"this recipe's {token_head.out_features} ({TOKEN_CLASSES} token classes + "
                             f"{SHAPE_CELLS ** 2} mask cells); train from scratch without --resume, or move the "
                             f"checkpoint away")
        token_head.load_state_dict(state["token_head"])
        if saved_grid * ARCH["patch_size"] == STAGES[stage_index]["img_size"]:
            optimizer = make_optimizer(model, token_head)
            optimizer.load_state_dict(state["optimizer"])
        else:   # a checkpoint written at the end of the stage list before it grew: the stage change the loop makes
            model, optimizer = start_stage(model, token_head, STAGES[stage_index]["img_size"])
            log(f"resampled the checkpoint's {saved_grid}x{saved_grid} position embedding to "
                f"{STAGES[stage_index]['img_size']} px for stage {STAGES[stage_index]['name']}; optimiser restarts",
                log_path)
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed from {ckpt_path}: stage {STAGES[stage_index]['name']} step {step}, {elapsed/60:.1f} min so far",
            log_path)
    elif resume:
        log(f"--resume: no checkpoint at {ckpt_path}, starting from scratch", log_path)
    # on every start, so that a resumed log says which recipe it continues with
    log(f"recipe: arch={json.dumps(ARCH)} stages={json.dumps(STAGES)} wd={WEIGHT_DECAY} "
        f"label_smoothing={LABEL_SMOOTHING} clip={CLIP_NORM} token_loss_weight={TOKEN_LOSS_WEIGHT} "
        f"token_min_overlap={TOKEN_MIN_OVERLAP:.4f} shape_cells={SHAPE_CELLS} shape_loss_weight={SHAPE_LOSS_WEIGHT} "
        f"threads={torch.get_num_threads()}", log_path)

    last_save = time.time()
    while stage_index < len(STAGES):
        stage = STAGES[stage_index]
        val = make_shapes(stage["eval_images"], VAL_SEED, img_size=stage["img_size"])
        val_images, val_labels = torch.from_numpy(val["images"]), torch.from_numpy(val["labels"])
        if stage.get("window"):   # the monitor also reads the windows the stage trains on
            rows, cols = object_windows(val["masks"], stage["window"], ARCH["patch_size"],
                                        np.random.default_rng([VAL_SEED, 1]))
            val_windows = (torch.from_numpy(cut_windows(val["images"], rows, cols, stage["window"],
                                                        ARCH["patch_size"])), torch.from_numpy(rows),
                           torch.from_numpy(cols))
        loader = torch.utils.data.DataLoader(ShapeBatches(stage_index, stage, step, ARCH["patch_size"]),
                                             batch_size=None, num_workers=1,
                                             prefetch_factor=4, persistent_workers=False)
        seen, correct, loss_sum, token_sum, shape_sum, window_start = 0, 0, 0.0, 0.0, 0.0, time.time()
        for step, images, labels, token_labels, cell_labels, rows, cols in loader:
            t0 = time.time()
            lr = learning_rate(stage, step)
            logits, (_, class_loss, token_loss, shape_loss), grad_norm = optimisation_step(
                model, token_head, optimizer, lr, to_input(images), labels, token_labels, cell_labels,
                windows=(rows, cols) if stage.get("window") else None)
            elapsed += time.time() - t0
            seen += len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            loss_sum += class_loss.item() * len(labels)
            token_sum += token_loss.item() * len(labels)
            shape_sum += shape_loss.item() * len(labels)
            done = step + 1
            if done % 20 == 0 or done == stage["steps"]:
                rate = seen / (time.time() - window_start)
                log(f"stage={stage['name']} step={done}/{stage['steps']} loss={loss_sum/seen:.4f} "
                    f"token_loss={token_sum/seen:.4f} shape_loss={shape_sum/seen:.4f} "
                    f"train_acc={correct/seen:.3f} lr={lr:.2e} grad_norm={float(grad_norm):.2f} "
                    f"img/s={rate:.1f} train_min={elapsed/60:.1f}", log_path)
                seen, correct, loss_sum, token_sum, shape_sum, window_start = 0, 0, 0.0, 0.0, 0.0, time.time()
            if done % stage["eval_every"] == 0 or done == stage["steps"]:
                acc = accuracy(model, val_images, val_labels)
                on_windows = ""
                if stage.get("window"):
                    window_images, *windows = val_windows
                    window_acc = accuracy(model, window_images, val_labels, windows=windows, token_head=token_head)
                    on_windows = f" val_acc_windows={window_acc:.4f}"
                rho = position_embedding_spearman(model.pos_embed.detach().numpy(), model.patch_embed.grid_size,
                                                  model.num_prefix_tokens)
                log(f"eval stage={stage['name']} step={done} val_acc={acc:.4f}{on_windows} (n={len(val_labels)}, "
                    f"seed {VAL_SEED}) pos_embed_spearman={rho:.3f}", log_path)
            if time.time() - last_save > CHECKPOINT_EVERY_S or done == stage["steps"]:
                next_stage, next_step = (stage_index, done) if done < stage["steps"] else (stage_index + 1, 0)
                if next_stage < len(STAGES) and next_stage != stage_index:
                    # the checkpoint holds the grown model
                    model, optimizer = start_stage(model, token_head, STAGES[next_stage]["img_size"])
                    log(f"next stage {STAGES[next_stage]['name']}: model at {STAGES[next_stage]['img_size']} px, "
                        f"pos_embed {tuple(model.pos_embed.shape)} (resampled bicubic, antialias, if the grid "
                        f"changed), fresh optimiser", log_path)
                save_checkpoint(ckpt_path, stage=next_stage, step=next_step, elapsed=elapsed,
                                model=model.state_dict(), token_head=token_head.state_dict(),
                                optimizer=optimizer.state_dict(),
                                torch_rng=torch.get_rng_state())
                if next_stage != stage_index:
                    torch.save(model.state_dict(), train_dir / f"after_{stage['name']}.pt")
                last_save = time.time()
                log(f"checkpoint {ckpt_path} (stage {next_stage} step {next_step})", log_path)
                if next_stage != stage_index:
                    break
        stage_index, step = stage_index + 1, 0

    config = export(model, out)
    torch.save(model.state_dict(), train_dir / "final.pt")
    log(f"done: {elapsed/60:.1f} min of training steps; exported {config.name} to {out}", log_path)


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
    parser.add_argument("--export-only", action="store_true", help="export <train-dir>/final.pt and exit")
    args = parser.parse_args(argv)
    if args.export_only:
        export_only(args.train_dir, args.out)
    else:
        train(args.train_dir, args.resume, args.out, args.threads)


if __name__ == "__main__":
    main()
