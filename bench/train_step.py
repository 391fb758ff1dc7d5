"""Speed of one training step of training/train.py's recipe: float32 against bfloat16 autocast, fused against
explicit attention, at the three stage sizes.

    python bench/train_step.py                   # two threads, batch 32, 112 / 160 / 224 px, 7 rounds
    python bench/train_step.py --threads 1 --sizes 112 --rounds 5

One round runs every contender's step once, in a rotating order, on the same batch (rendered once per size,
outside the timing); the table prints the median images per second over the rounds, and each contender's
speed relative to the recipe's float32 path (explicit attention below FUSED_ATTENTION_FROM, fused from there
on) as the median of the per-round ratios. The choices it measures are the recipe's AUTOCAST_DTYPE and
FUSED_ATTENTION_FROM; the numbers quoted in training/train.py come from this script on a 2-core AMD EPYC with
AVX512-BF16 (bench/README.md). A CPU without bfloat16 instructions (neither AVX512-BF16 nor AMX) emulates them:
run this first and train with --float32 there if the bfloat16 rows are not faster.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository's top folder holds training/
from numpy_vit.fast import blas_on_one_thread  # noqa: E402
from training import train as T  # noqa: E402

BATCH = 32
CONTENDERS = (  # name, autocast dtype (None: float32), fused attention
    ("float32, explicit", None, False),
    ("float32, fused", None, True),
    ("bfloat16, explicit", T.AUTOCAST_DTYPE, False),
    ("bfloat16, fused", T.AUTOCAST_DTYPE, True),
)


def prepared(size: int):
    """A batch at size px and, per contender, the recipe's model, token head and optimiser (2 warm-up steps)."""
    images, *targets = T.training_batch(BATCH, 1234, size, T.ARCH["patch_size"])
    batch = (T.to_input(images), *targets)
    runs = {}
    for name, autocast, fused in CONTENDERS:
        model, head = T.starting_point()
        model = T.grow_to(model, size)                       # a copy at the stage's size (112 px: the same grid)
        for block in model.blocks:
            block.attn.fused_attn = fused
        optimizer = T.make_optimizer(model, head)

        def step(model=model, head=head, optimizer=optimizer, autocast=autocast):
            T.optimisation_step(model, head, optimizer, 1e-4, *batch, autocast=autocast)
        for _ in range(2):
            step()
        runs[name] = step
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[s["img_size"] for s in T.STAGES])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with blas_on_one_thread():   # the batches' NumPy drawing: small products, one thread
        measure(args)


def measure(args):
    """Time each contender's step at every size in args.sizes and print the table."""
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, median of {args.rounds} rounds")
    print(f"{'size':>5}  {'contender':<20} {'img/s':>7}  {'vs recipe float32':>17}")
    for size in args.sizes:
        runs = prepared(size)
        reference = "float32, fused" if size >= T.FUSED_ATTENTION_FROM else "float32, explicit"
        seconds = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - start)
        for name in names:
            speed = BATCH / statistics.median(seconds[name])
            ratio = statistics.median(ref / own for ref, own in zip(seconds[reference], seconds[name]))
            print(f"{size:>5}  {name:<20} {speed:>7.1f}  {ratio:>16.2f}x")


if __name__ == "__main__":
    main()
