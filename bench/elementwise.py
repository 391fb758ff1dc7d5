"""The steps between the matrix multiplies, NumPy against torch, value by value (a benchmark tool, not a test).

    python bench/elementwise.py                 # one thread, ViT-B/16's shapes at batch 8
    python bench/elementwise.py --batch 1

The linear layers of numpy_vit and of torch take the same time (bench/README.md); what separates the two
forward passes is the elementwise work: the softmax over every head's scores, the GELU over the MLP's
hidden layer, the LayerNorms. This times each of them on the arrays a ViT-B/16 forward pass makes, once with
numpy_vit's speed-ups (``numpy_vit.fast``: the in-place softmax and LayerNorm, the chunked GELU) and once in
torch on the same values, both on one thread, and prints nanoseconds per value and
the total per forward pass (times the number of such arrays in one pass). Single primitives (exp, multiply)
write into a preallocated array in both libraries; the layers allocate their output, as they do in a forward
pass.

Rounds alternate NumPy and torch; each number is the median of the rounds' best-of-three.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from numpy_vit import fast  # noqa: E402
from numpy_vit.config import ViTConfig  # noqa: E402

CONFIG = ViTConfig.preset("vit_base_patch16_224")  # the model bench/forward.py times


def seconds(function, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def cases(batch, torch):
    """(name, numpy function, torch function, values per call, calls per forward pass)."""
    c = CONFIG
    tokens, width = c.num_prefix_tokens + c.num_patches, c.embed_dim
    rng = np.random.default_rng(0)
    scores = (rng.standard_normal((tokens, tokens), dtype=np.float32) * 3)  # one head's scores
    shifted = scores - scores.max(axis=-1, keepdims=True)                   # what the softmax exponentiates
    hidden = rng.standard_normal((batch, tokens, c.mlp_dim), dtype=np.float32)
    stream = rng.standard_normal((batch, tokens, width), dtype=np.float32)
    gamma, beta = rng.standard_normal(width, dtype=np.float32), rng.standard_normal(width, dtype=np.float32)
    out_head, out_hidden = np.empty_like(scores), np.empty_like(hidden)
    t_shifted, t_scores, t_hidden, t_stream = (torch.from_numpy(a) for a in (shifted, scores, hidden, stream))
    t_out_head, t_out_hidden = torch.from_numpy(np.empty_like(scores)), torch.from_numpy(np.empty_like(hidden))
    t_gamma, t_beta = torch.from_numpy(gamma), torch.from_numpy(beta)
    heads, eps = batch * c.num_heads * c.depth, c.layer_norm_eps
    return [
        ("exp, one head's shifted scores", lambda: np.exp(shifted, out=out_head),
         lambda: torch.exp(t_shifted, out=t_out_head), shifted.size, heads),
        ("multiply, the same array", lambda: np.multiply(shifted, shifted, out=out_head),
         lambda: torch.mul(t_shifted, t_shifted, out=t_out_head), shifted.size, heads),
        ("softmax, one head [N, N]", lambda: fast.softmax(scores, out=out_head),
         lambda: torch.softmax(t_scores, dim=-1), scores.size, heads),
        ("GELU (erf), the MLP's hidden layer", lambda: fast.gelu(hidden),
         lambda: torch.nn.functional.gelu(t_hidden), hidden.size, c.depth),
        ("exp alone, on the same hidden layer", lambda: np.exp(hidden, out=out_hidden),
         lambda: torch.exp(t_hidden, out=t_out_hidden), hidden.size, c.depth),
        ("LayerNorm, the residual stream", lambda: fast.layer_norm(stream, gamma, beta, eps=eps),
         lambda: torch.nn.functional.layer_norm(t_stream, (width,), t_gamma, t_beta, eps=eps),
         stream.size, 2 * c.depth + 1),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="batch size whose arrays are timed (default 8)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    fast.set_num_threads(1)
    print(f"one thread; ViT-B/16 arrays at batch {args.batch}; median of {args.rounds} rounds (best of 3 each)")
    print(f"{'step':38s} {'numpy ns/value':>15s} {'torch ns/value':>15s} {'ratio':>7s} "
          f"{'numpy ms/pass':>14s} {'torch ms/pass':>14s}")
    for name, numpy_run, torch_run, values, calls in cases(args.batch, torch):
        numpy_times, torch_times = [], []
        for _ in range(args.rounds):
            numpy_times.append(seconds(numpy_run))
            torch_times.append(seconds(torch_run))
        n, t = np.median(numpy_times), np.median(torch_times)
        print(f"{name:38s} {n / values * 1e9:15.2f} {t / values * 1e9:15.2f} {n / t:7.1f} "
              f"{n * calls * 1e3:14.1f} {t * calls * 1e3:14.1f}")


if __name__ == "__main__":
    main()
