"""Sweep the ``low`` stage of ``training/train.py`` on a GPU: many hyperparameter settings at once.

The shipped model's recipe must train in 90 minutes on two CPU cores, so each of its choices (learning
rate, batch size, loss weights, how many images) can be tried on the CPU only about once. On a GPU
this script trains K copies of the same ViT side by side, each with its own hyperparameters, in one
batched forward and backward pass (every parameter carries a leading model axis K): the GPU is bound by
kernel launches for a model this small, so K models cost about what one does.

    python bench/recipe_sweep.py --check           # CPU: the batched model against timm + torch.optim.AdamW
    python bench/recipe_sweep.py --out DIR         # GPU: generate the data, run the last of ROUNDS -> DIR/sweep.jsonl
    python bench/recipe_sweep.py --round 1 --out DIR    # ... or an earlier round again
    python bench/recipe_sweep.py --summary bench/results/recipe_sweep/round3.jsonl   # the table of a past round

Every model starts from the same weights as ``training.train`` (seed, sine-cosine position embedding, token
head) and sees the same stream of images; a group shares one batch size. Each model follows its own
warm-up + cosine schedule over its own number of steps and is frozen (lr 0) after it. The validation set
is ``make_shapes(1024, VAL_SEED, 112)``, the seed the training monitor uses.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.synthetic_shapes import make_shapes  # noqa: E402
from training.train import (ARCH, CLIP_NORM, LABEL_SMOOTHING, STAGES, TOKEN_CLASSES, VAL_SEED,  # noqa: E402
                            WEIGHT_DECAY, cell_targets, learning_rate, patch_targets, starting_point, to_input)

IMG = STAGES[0]["img_size"]
# what ROUNDS vary: stage low with the loss weights 0.5 / 0.5 the sweep started from, written out (not read from
# training.train, whose weights are the sweep's result, token_w 1.0 and shape_w 8.0) so that the rounds keep their
# meaning
BASE = dict(lr=1e-3, steps=4500, warmup=50, beta2=0.999, token_w=0.5, shape_w=0.5)
# The rounds (run on an H200 on 2026-11-26; results in bench/results/recipe_sweep/round<N>.jsonl). In each round
# one group per batch size; "steps" 4500 at batch 32 is 144k images.
ROUNDS = {
    1: {32: [dict(name="base"), dict(name="lr2e-3", lr=2e-3), dict(name="lr5e-4", lr=5e-4),
             dict(name="lr1.4e-3", lr=1.4e-3), dict(name="tw1_sw1", token_w=1.0, shape_w=1.0),
             dict(name="sw2", shape_w=2.0), dict(name="beta2_.99", beta2=0.99),
             dict(name="lr2e-3_tw1_sw1", lr=2e-3, token_w=1.0, shape_w=1.0),
             dict(name="base_x2", steps=9000), dict(name="base_x4", steps=18000)],
        64: [dict(name=f"b64_lr{lr:g}", lr=lr, steps=2250, warmup=25) for lr in (1e-3, 1.4e-3, 2e-3, 2.8e-3)]
            + [dict(name="b64_lr2e-3_x2", lr=2e-3, steps=4500, warmup=25)],
        128: [dict(name=f"b128_lr{lr:g}", lr=lr, steps=1125, warmup=12) for lr in (1.4e-3, 2e-3, 2.8e-3, 4e-3)]},
    2: {32: [dict(name="sw2", shape_w=2.0), dict(name="tw1_sw2", token_w=1.0, shape_w=2.0),
             dict(name="sw4", shape_w=4.0), dict(name="tw1_sw4", token_w=1.0, shape_w=4.0),
             dict(name="sw2_b2.99", shape_w=2.0, beta2=0.99),
             dict(name="tw1_sw2_b2.99", token_w=1.0, shape_w=2.0, beta2=0.99),
             dict(name="tw1_sw2_b2.99_lr5e-4", token_w=1.0, shape_w=2.0, beta2=0.99, lr=5e-4),
             dict(name="sw2_lr5e-4", shape_w=2.0, lr=5e-4), dict(name="tw2_sw2", token_w=2.0, shape_w=2.0),
             dict(name="tw1_sw2_b2.95", token_w=1.0, shape_w=2.0, beta2=0.95)]},
    3: {32: [dict(name="tw1_sw4", token_w=1.0, shape_w=4.0), dict(name="tw1_sw8", token_w=1.0, shape_w=8.0),
             dict(name="sw8", shape_w=8.0), dict(name="tw1_sw16", token_w=1.0, shape_w=16.0),
             dict(name="tw2_sw8", token_w=2.0, shape_w=8.0),
             dict(name="tw1_sw4_lr5e-4", token_w=1.0, shape_w=4.0, lr=5e-4),
             dict(name="tw1_sw8_lr5e-4", token_w=1.0, shape_w=8.0, lr=5e-4),
             dict(name="tw0_sw8", token_w=0.0, shape_w=8.0)]},
}
CHUNK = 1024            # images per pool file; every batch size divides it
POOL_SEED = 7_000_000   # apart from the training (1_000_000 + ...), monitor (99) and evaluation (2024) seeds
EVALS = 9               # evaluations per 144k images: every 16k, a whole number of batches of 32, 64, 128


# --- K ViTs as one: every parameter [K, ...] ----------------------------------------------

def stacked_params(k: int, device) -> dict:
    """K copies of training.train's starting point: the timm model, its sine-cosine pos_embed, the token head.
    Names are timm's, except that the blocks are stacked too: "blocks.attn.qkv.weight" is [K, depth, 3D, D].
    Fewer, larger tensors: the optimiser's kernel launches do not grow with the depth."""
    state = recipe_state(*starting_point())
    flat = {n: v for n, v in state.items() if not n.startswith("blocks.")}
    for kind in BLOCK_KINDS:
        flat["blocks." + kind] = torch.stack([state[f"blocks.{i}.{kind}"] for i in range(ARCH["depth"])])
    return {n: v.detach()[None].repeat(k, *[1] * v.ndim).to(device).requires_grad_() for n, v in flat.items()}


def recipe_state(model, token_head) -> dict:
    """timm's state dict with the token head's parameters as "token_head.weight" and "token_head.bias"."""
    return {**model.state_dict(), **{f"token_head.{n}": v for n, v in token_head.state_dict().items()}}


BLOCK_KINDS = [f"{m}.{w}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
               for w in ("weight", "bias")]


def linear(x, w, b):  # [K, M, in], [K, out, in], [K, out] -> [K, M, out]
    return torch.baddbmm(b[:, None], x, w.transpose(1, 2))


def layer_norm(x, w, b):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * w[:, None] + b[:, None]


def forward(p: dict, x: torch.Tensor):
    """timm VisionTransformer.forward_features + heads for K models on one batch x [B, 3, S, S].
    -> class logits [K, B, C], token logits [K, B, P, TOKEN_CLASSES + cells]."""
    kk, (b, _, s, _) = p["cls_token"].shape[0], x.shape
    ps, d, h = ARCH["patch_size"], ARCH["embed_dim"], ARCH["num_heads"]
    g = s // ps
    patches = x.reshape(b, 3, g, ps, g, ps).permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, 3 * ps * ps)
    w = p["patch_embed.proj.weight"].reshape(kk, d, -1)
    tokens = torch.einsum("mi,kdi->kmd", patches, w) + p["patch_embed.proj.bias"][:, None]     # [K, B*P, D]
    tokens = tokens.reshape(kk, b, g * g, d)
    cls = p["cls_token"].expand(kk, b, 1, d)                                                 # [K, 1, 1, D] stacked
    z = (torch.cat([cls, tokens], dim=2) + p["pos_embed"]).reshape(kk, b * (1 + g * g), d)
    n = 1 + g * g
    layers = {kind: p["blocks." + kind].unbind(1) for kind in BLOCK_KINDS}   # one stack in the backward pass
    for i in range(ARCH["depth"]):
        get = lambda name: (layers[name + ".weight"][i], layers[name + ".bias"][i])
        qkv = linear(layer_norm(z, *get("norm1")), *get("attn.qkv"))                         # [K, B*N, 3D]
        q, k, v = qkv.reshape(kk * b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(kk, b * n, d)
        z = z + linear(a, *get("attn.proj"))
        y = F.gelu(linear(layer_norm(z, *get("norm2")), *get("mlp.fc1")))
        z = z + linear(y, *get("mlp.fc2"))
    z = layer_norm(z, p["norm.weight"], p["norm.bias"]).reshape(kk, b, n, d)
    logits = linear(z[:, :, 0], p["head.weight"], p["head.bias"])
    patch_z = z[:, :, 1:].reshape(kk, b * (n - 1), d)
    token_logits = linear(patch_z, p["token_head.weight"], p["token_head.bias"]).reshape(kk, b, n - 1, -1)
    return logits, token_logits


def losses(p, x, labels, tokens, cells, cfg):
    """Each model's loss as training.train computes it, summed over models (their gradients stay apart)."""
    logits, tl = forward(p, x)
    kk = logits.shape[0]
    ce = lambda lg, y: F.cross_entropy(lg.flatten(0, -2), y.expand(kk, *y.shape).flatten(), reduction="none",
                                       label_smoothing=LABEL_SMOOTHING).reshape(kk, -1).mean(1)
    class_loss = ce(logits, labels)
    token_loss = ce(tl[..., :TOKEN_CLASSES], tokens)
    shape_loss = F.binary_cross_entropy_with_logits(tl[..., TOKEN_CLASSES:], cells.expand(kk, *cells.shape),
                                                    reduction="none").reshape(kk, -1).mean(1)
    total = class_loss + cfg["token_w"] * token_loss + cfg["shape_w"] * shape_loss
    return total.sum(), logits


class AdamW:
    """torch.optim.AdamW (decoupled weight decay on matrices, none on pos_embed and vectors) with a learning
    rate and beta2 per model, and training.train's gradient clipping (global norm CLIP_NORM) per model."""

    def __init__(self, p: dict, beta2: torch.Tensor):
        self.p, self.beta2, self.t = p, beta2, 0
        self.m = {n: torch.zeros_like(v) for n, v in p.items()}
        self.v = {n: torch.zeros_like(v) for n, v in p.items()}
        # matrices decay; the model axis K and, for blocks, the depth axis are not the parameter's own
        self.decay = {n: v.ndim - 1 - n.startswith("blocks.") >= 2 and "pos_embed" not in n for n, v in p.items()}

    @torch.no_grad()
    def step(self, lr: torch.Tensor):  # lr [K]
        self.t += 1
        names = list(self.p)
        kk = lr.shape[0]
        norm = torch.stack([self.p[n].grad.reshape(kk, -1).pow(2).sum(1) for n in names]).sum(0).sqrt()
        coef = (CLIP_NORM / (norm + 1e-6)).clamp(max=1.0)
        b1, b2 = 0.9, self.beta2
        for n in names:
            prm, g = self.p[n], self.p[n].grad
            shape = (kk,) + (1,) * (prm.ndim - 1)
            g = g * coef.view(shape)
            if self.decay[n]:
                prm.mul_(1 - (lr * WEIGHT_DECAY).view(shape))
            self.m[n].mul_(b1).add_(g, alpha=1 - b1)
            self.v[n].mul_(b2.view(shape)).add_((1 - b2).view(shape) * g * g)
            bc1, bc2 = 1 - b1 ** self.t, 1 - b2.view(shape) ** self.t
            prm.sub_((lr.view(shape) / bc1) * self.m[n] / (self.v[n].sqrt() / bc2.sqrt() + 1e-8))
            prm.grad = None
        return norm


def schedule(cfg: dict, step: int) -> float:
    """training.train.learning_rate over the model's own steps (cfg has a stage's lr, warmup and steps), then 0."""
    return learning_rate(cfg, step) if step < cfg["steps"] else 0.0


# --- the CPU check against timm --------------------------------------------------------------

def check() -> tuple:
    """Two batched models against two timm models trained by training.train's loss (``recipe_loss``), clipping and
    torch's AdamW, in float64 -> (max |parameter difference| after 3 steps, max |logit difference|).
    (In float32 the parameters differ by up to 1.8e-5 after 3 steps, 0.5% of their change: Adam divides by the
    root of tiny squared gradients; in float64 by 1e-13, so the math is the same.)"""
    from training.train import make_optimizer, optimisation_step
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(2)
    try:
        cfgs = [dict(BASE, lr=1e-3), dict(BASE, lr=2e-3, beta2=0.99, token_w=0.5, shape_w=2.0)]
        p = stacked_params(2, "cpu")
        opt = AdamW(p, torch.tensor([c["beta2"] for c in cfgs]))
        refs = []
        for c in cfgs:
            model, head = starting_point()
            o = make_optimizer(model, head)
            for group in o.param_groups:
                group["betas"] = (0.9, c["beta2"])
            refs.append((model, head, o))
        weights = {key: torch.tensor([c[key] for c in cfgs]) for key in ("token_w", "shape_w")}
        worst_logit = 0.0
        for step in range(3):
            data = make_shapes(8, 123 + step, img_size=IMG)
            x = to_input(torch.from_numpy(data["images"])).double()
            labels = torch.from_numpy(data["labels"])
            tokens = torch.from_numpy(patch_targets(data["masks"], data["labels"], ARCH["patch_size"]))
            cells = torch.from_numpy(cell_targets(data["masks"], ARCH["patch_size"])).double()
            lr = torch.tensor([schedule(c, 30 + step) for c in cfgs])
            total, logits = losses(p, x, labels, tokens, cells, weights)
            total.backward()
            opt.step(lr)
            for i, (model, head, o) in enumerate(refs):
                ref_logits = optimisation_step(model, head, o, float(lr[i]), x, labels, tokens, cells,
                                               cfgs[i]["token_w"], cfgs[i]["shape_w"])[0]
                worst_logit = max(worst_logit, float((ref_logits - logits[i]).detach().abs().max()))
        worst_param = 0.0
        for i, (model, head, _) in enumerate(refs):
            for name, value in recipe_state(model, head).items():
                if name.startswith("blocks."):       # blocks.<i>.<kind> is p["blocks.<kind>"][model, i]
                    _, layer, kind = name.split(".", 2)
                    mine = p["blocks." + kind][i, int(layer)]
                else:
                    mine = p[name][i]
                worst_param = max(worst_param, float((value - mine).detach().abs().max()))
        return worst_param, worst_logit
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


# --- the GPU sweep ---------------------------------------------------------------------------

def make_chunk(args):
    pool, c = args
    path = pool / f"chunk{c:05d}.npz"
    data = make_shapes(CHUNK, POOL_SEED + c, img_size=IMG)
    tmp = pool / f"tmp{c:05d}.npz"
    np.savez(tmp, images=data["images"], labels=data["labels"],
             tokens=patch_targets(data["masks"], data["labels"], ARCH["patch_size"]).astype(np.int8),
             cells=cell_targets(data["masks"], ARCH["patch_size"]).astype(np.uint8))
    os.replace(tmp, path)


def load_chunk(pool: Path, c: int, deadline: float):
    path = pool / f"chunk{c:05d}.npz"
    while not path.exists():
        if time.time() > deadline:
            return None
        time.sleep(0.2)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def configs(groups: dict, batch: int, scale: float) -> list:
    """groups[batch] filled in from BASE; scale < 1 shortens every run (a smoke test on the CPU)."""
    cfgs = [dict(BASE, **c) for c in groups[batch]]
    return [dict(c, steps=max(2, int(c["steps"] * scale))) for c in cfgs]


def run_group(groups: dict, batch: int, pool: Path, out: Path, deadline: float, scale: float):
    torch.set_num_threads(1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfgs = configs(groups, batch, scale)
    kk = len(cfgs)
    p = stacked_params(kk, dev)
    opt = AdamW(p, torch.tensor([c["beta2"] for c in cfgs], device=dev))
    w = {key: torch.tensor([c[key] for c in cfgs], device=dev) for key in ("token_w", "shape_w")}
    val = make_shapes(1024 if scale >= 1 else 64, VAL_SEED, img_size=IMG)
    val_x, val_y = torch.from_numpy(val["images"]).to(dev), torch.from_numpy(val["labels"]).to(dev)
    steps = max(c["steps"] for c in cfgs)
    eval_every = max(1, int(144_000 * scale) // EVALS // batch)
    per_chunk = CHUNK // batch
    correct, seen, t0 = torch.zeros(kk, device=dev), 0, time.time()
    log = open(out / "sweep.jsonl", "a")

    @torch.no_grad()
    def evaluate(step):
        right = torch.zeros(kk, device=dev)
        for i in range(0, len(val_y), 256):
            logits, _ = forward(p, to_input(val_x[i:i + 256]))
            right += (logits.argmax(-1) == val_y[i:i + 256]).sum(1)
        acc = (right / len(val_y)).tolist()
        train = (correct / max(seen, 1)).tolist()
        for c, a, tr in zip(cfgs, acc, train):
            if step <= c["steps"]:
                row = dict(name=c["name"], batch=batch, step=step, images=step * batch, val_acc=round(a, 4),
                           train_acc=round(tr, 4), seconds=round(time.time() - t0, 1), final=step == c["steps"])
                log.write(json.dumps(row) + "\n")
                log.flush()
        print(f"b{batch} step {step}/{steps} {time.time() - t0:.0f}s " +
              " ".join(f"{c['name']}={a:.3f}" for c, a in zip(cfgs, acc) if step <= c["steps"]), flush=True)

    # the whole schedule on the device up front: a host-to-device copy per step would wait for the GPU
    lrs = torch.tensor([[schedule(c, step) for c in cfgs] for step in range(steps)], device=dev)    # [steps, K]
    chunk = None
    for step in range(steps):
        if step % per_chunk == 0:
            chunk = load_chunk(pool, step // per_chunk, deadline)
            if chunk is None or time.time() > deadline:
                print(f"b{batch}: deadline at step {step}", flush=True)
                evaluate(step)
                return
            chunk = {k: torch.from_numpy(v).to(dev) for k, v in chunk.items()}
        i = (step % per_chunk) * batch
        x = to_input(chunk["images"][i:i + batch])
        labels, tokens = chunk["labels"][i:i + batch], chunk["tokens"][i:i + batch].long()
        cells = chunk["cells"][i:i + batch].float()
        total, logits = losses(p, x, labels, tokens, cells, w)
        total.backward()
        opt.step(lrs[step])
        correct += (logits.detach().argmax(-1) == labels).sum(1)
        seen += batch
        done = step + 1
        if done % eval_every == 0 or any(done == c["steps"] for c in cfgs):
            evaluate(done)
            correct, seen = torch.zeros(kk, device=dev), 0


def sweep(sweep_round: int, out: Path, seconds: float, workers: int, scale: float):
    groups = ROUNDS[sweep_round]
    out.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    need = max(max(c["steps"] for c in configs(groups, b, scale)) * b for b in groups)
    chunks = -(-need // CHUNK)
    base = shm if shm.exists() and shutil.disk_usage(shm).free > chunks * 42e6 else Path("/tmp")
    pool = base / "sweep_pool"
    pool.mkdir(exist_ok=True)
    print(f"pool {pool}: {chunks} chunks of {CHUNK} images at {IMG} px; {workers} generators", flush=True)
    deadline = time.time() + seconds
    procs = [subprocess.Popen([sys.executable, __file__, "--round", str(sweep_round), "--group", str(b), "--pool",
                               str(pool), "--out", str(out), "--deadline", str(deadline), "--scale", str(scale)])
             for b in groups]
    t0 = time.time()
    with mp.get_context("fork").Pool(workers) as gen:
        for j, _ in enumerate(gen.imap(make_chunk, [(pool, c) for c in range(chunks)])):
            if (j + 1) % 50 == 0:
                print(f"generated {j + 1}/{chunks} chunks in {time.time() - t0:.0f}s", flush=True)
            if time.time() > deadline:
                break
    for pr in procs:
        pr.wait()
    summary(out / "sweep.jsonl")


def summary(path: Path):
    """One row per model: validation accuracy after 48k, 96k, 144k, 288k, 576k images and at its last step."""
    rows = [json.loads(line) for line in open(path)]
    points = (48_000, 96_000, 144_000, 288_000, 576_000)
    print(f"\n{'name':<22} {'batch':>5} " + " ".join(f"{f'@{n // 1000}k':>6}" for n in points) + "   last (images)")
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        at = lambda n: next((f"{r['val_acc']:.3f}" for r in mine if r["images"] == n), "-")
        last = mine[-1]
        print(f"{name:<22} {last['batch']:>5} " + " ".join(f"{at(n):>6}" for n in points) +
              f"   {last['val_acc']:.3f} ({last['images']}{'' if last['final'] else ', stopped'})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the batched model with timm, on the CPU")
    parser.add_argument("--round", type=int, default=max(ROUNDS), help="which of ROUNDS (default %(default)s)")
    parser.add_argument("--summary", type=Path, help="print the table of a sweep.jsonl and exit")
    parser.add_argument("--out", type=Path, default=Path("sweep_out"))
    parser.add_argument("--seconds", type=float, default=480)
    parser.add_argument("--workers", type=int, help="data generators (default: the cores the groups leave)")
    parser.add_argument("--group", type=int)
    parser.add_argument("--pool", type=Path)
    parser.add_argument("--deadline", type=float)
    parser.add_argument("--scale", type=float, default=1.0, help="shorten every run (smoke test)")
    args = parser.parse_args()
    if args.check:
        params, logits = check()
        print(f"batched against timm, float64, 3 steps: max |parameter difference| {params:.1e}, "
              f"max |logit difference| {logits:.1e}")
    elif args.summary:
        summary(args.summary)
    elif args.group:
        run_group(ROUNDS[args.round], args.group, args.pool, args.out, args.deadline, args.scale)
    else:
        workers = args.workers or max(1, (os.cpu_count() or 2) - len(ROUNDS[args.round]))
        sweep(args.round, args.out, args.seconds, workers, args.scale)


if __name__ == "__main__":
    main()
