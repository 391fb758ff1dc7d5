"""numpy_vit's forward pass against timm's on this CPU (a benchmark, not a test).

    python bench/forward.py                  # batch 1 and 8, 5 interleaved rounds, torch's default threads
    python bench/forward.py --batch 1 --rounds 9 --threads 1
    python bench/forward.py --threads 1 --speedups   # numpy_vit.fast's functions on one thread too
    python bench/forward.py --arch vit_base_patch16_clip_224   # any timm name numpy_vit reads (CLIP, gap, ...)

ViT-B/16 at 224 (``vit_base_patch16_224``, or ``--arch``'s architecture at its own resolution) with the same
random weights in both. Each round times, in a
rotating order so that a busy neighbour process hurts every contender alike:
  numpy_vit keeping the attention patterns and the logits (``record=["blocks.*.attn.pattern", "logits"]``),
  numpy_vit keeping every intermediate (``record=None``, the default),
  timm's default path (fused scaled_dot_product_attention),
  timm's non-fused path (``timm.layers.set_fused_attn(False)``, which materialises the softmax as we do).
Ratios are taken within a round (numpy_vit time / torch time of the same round), then the median, min and max
over the rounds are printed. numpy's BLAS is limited to torch's thread count through threadpoolctl, and
numpy_vit's own threads (a batch's shards, or a single image's split layers) through
``numpy_vit.set_num_threads``. On several threads numpy_vit runs the speed-ups of ``numpy_vit.fast``; on one, the
reference functions of ``numpy_vit.layers`` unless --speedups (``model.speedups = True``).

Also printed: the achieved GFLOP/s against this machine's own float32 GEMM rate on the same matrix sizes, the
trace's memory at batch 8, the demo's wall time and ``import numpy_vit``'s time (fresh interpreters).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy_vit as nv  # noqa: E402

ARCH = "vit_base_patch16_224"  # the default of --arch
PATTERNS_AND_LOGITS = ["blocks.*.attn.pattern", "logits", "pooled"]  # "pooled": the output of a model without head


# --- the contenders -----------------------------------------------------------------------------------

def make_models(torch, timm, arch=ARCH):
    """timm's model of ``arch`` twice (fused and non-fused attention) and numpy_vit's, all with one set of random
    weights. numpy_vit's config is ``ViTConfig.preset(arch)`` with timm's head width (timm gives an untagged
    name its default tag's head, e.g. a CLIP projection)."""
    import timm.layers

    torch.manual_seed(0)
    fused = timm.create_model(arch, pretrained=False).eval()
    head = fused.get_classifier()
    if isinstance(head, torch.nn.Linear):
        with torch.no_grad():  # timm zero-initialises the head; random values make the logits comparable
            head.weight.normal_(0, 0.02)
            if head.bias is not None:
                head.bias.normal_(0, 0.1)
    timm.layers.set_fused_attn(False)
    unfused = timm.create_model(arch, pretrained=False).eval()
    unfused.load_state_dict(fused.state_dict())
    timm.layers.set_fused_attn(True)
    assert fused.blocks[0].attn.fused_attn and not unfused.blocks[0].attn.fused_attn
    config = nv.ViTConfig.preset(arch, num_classes=fused.num_classes)
    names = nv.param_shapes(config)
    params = {k: v.detach().numpy() for k, v in fused.state_dict().items() if k in names}  # our names are timm's
    return fused, unfused, nv.ViT(config, params)


def contenders(model, fused, unfused, x, torch):
    xt = torch.from_numpy(x)

    def torch_forward(module):
        def run():
            with torch.inference_mode():
                return module(xt)
        return run

    runs = {
        "numpy_vit (patterns+logits)": lambda: model.forward(x, record=PATTERNS_AND_LOGITS),
        "numpy_vit (record everything)": lambda: model.forward(x),
        "torch (fused SDPA)": torch_forward(fused),
        "torch (non-fused)": torch_forward(unfused),
    }
    return runs


def check_same_numbers(runs):
    """The contenders compute the same function: their logits agree to float32 rounding."""
    trace = runs["numpy_vit (patterns+logits)"]()
    ours = trace.logits if "logits" in trace else trace["pooled"]
    for name in ("torch (fused SDPA)", "torch (non-fused)"):
        err = float(np.max(np.abs(ours - runs[name]().numpy())))
        if err > 1e-3:
            raise SystemExit(f"numpy_vit and {name} disagree (max |logit diff| {err:.2e}): not benchmarking")


def interleaved_times(runs, rounds):
    """({name: [wall seconds per round]}, {name: [CPU seconds per round]}); each round runs every contender
    once, the starting one rotating. CPU time is the process's (all threads, spin-waiting included)."""
    names = list(runs)
    for name in names:  # warm-up: first-call allocations, oneDNN/BLAS initialisation
        runs[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def summary(values):
    return statistics.median(values), min(values), max(values)


# --- FLOPs and the machine's own GEMM rate --------------------------------------------------------------

def matmul_shapes(config, batch):
    """Every matrix multiply of the forward pass as (count, m, k, n): C[m, n] = A[m, k] @ B[k, n]."""
    D, M, H, Dh = config.embed_dim, config.mlp_dim, config.num_heads, config.head_dim
    P = config.num_patches
    N = P + config.num_prefix_tokens
    L = config.depth
    return [
        (1, batch * P, 3 * config.patch_size ** 2, D),  # patch embedding
        (L, batch * N, D, 3 * D),  # qkv
        (L * batch * H, N, Dh, N),  # q k^T per head
        (L * batch * H, N, N, Dh),  # pattern v per head
        (L, batch * N, D, D),  # output projection
        (L, batch * N, D, M),  # fc1
        (L, batch * N, M, D),  # fc2
        (1, batch, D, config.num_classes),  # head
    ]


def gemm_floor(shapes, repeats=5):
    """(FLOPs, seconds): the time numpy's float32 GEMM alone takes for these sizes (median of ``repeats``
    of each contiguous product), i.e. the forward pass's floor on this machine."""
    rng = np.random.default_rng(0)
    flops = seconds = 0.0
    for count, m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        inner = max(1, min(count, 24))  # time a run of ``inner`` products, scale to ``count``
        np.matmul(a, b, out=out)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(inner):
                np.matmul(a, b, out=out)
            samples.append((time.perf_counter() - start) / inner)
        flops += count * 2.0 * m * k * n
        seconds += count * statistics.median(samples)
    return flops, seconds


# --- memory, demo, import -------------------------------------------------------------------------------

def trace_megabytes(trace):
    return sum(np.asarray(trace[k]).nbytes for k in trace.keys()) / 2 ** 20


def demo_seconds():
    """Wall time of ``numpy-vit demo --out <tmp>`` (None and a reason when the command is not there)."""
    exe = shutil.which("numpy-vit") or str(Path(sys.executable).with_name("numpy-vit"))
    if not os.path.exists(exe):
        return None, "the numpy-vit command is not installed (pip install -e .)"
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([exe, "demo", "--out", out], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode:
        return None, f"numpy-vit demo failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    return seconds, ""


def import_seconds(module, repeats=5):
    """Median time of ``import module`` in a fresh interpreter (numpy's own import included)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    samples = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True, cwd=ROOT).stdout) for _ in range(repeats)]
    return statistics.median(samples)


# --- main -----------------------------------------------------------------------------------------------

def limit_blas_threads(threads):
    """Give numpy's BLAS the same thread count as torch; returns (limiter or None, description)."""
    try:
        import threadpoolctl
    except ImportError:
        return None, "threadpoolctl is not installed: numpy's BLAS keeps its default thread count"
    limiter = threadpoolctl.threadpool_limits(threads, user_api="blas")
    pools = [f"{p['internal_api']} {p.get('version')} kernel={p.get('architecture')} threads={p['num_threads']}"
             for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    return limiter, "; ".join(pools)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=ARCH, metavar="NAME", help="a timm architecture name numpy_vit reads, "
                        f"e.g. vit_base_patch16_clip_224 (default: {ARCH})")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and numpy's BLAS "
                        "(default: torch's default)")
    parser.add_argument("--skip-extras", action="store_true", help="only the timings (no GEMM floor, demo, import)")
    parser.add_argument("--speedups", action="store_true", help="numpy_vit.fast's functions even on one thread "
                        "(model.speedups = True; by default one thread runs the reference numpy_vit.layers)")
    args = parser.parse_args(argv)

    import torch
    import timm

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    _limiter, blas = limit_blas_threads(threads)  # kept alive for the whole run
    nv.set_num_threads(threads)  # numpy_vit's own threads (shards, split layers), as torch's intra-op threads
    print(f"{args.arch}, float32, {threads} thread(s) for torch {torch.__version__}, for numpy {np.__version__}'s "
          f"BLAS ({blas}) and for numpy_vit's own; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS"):
        if var in os.environ:
            print(f"  {var}={os.environ[var]}")

    fused, unfused, model = make_models(torch, timm, args.arch)
    model.speedups = True if args.speedups else None
    rows = []
    for batch in args.batch:
        x = np.random.default_rng(batch).standard_normal((batch, 3, *model.config.img_size), dtype=np.float32)
        runs = contenders(model, fused, unfused, x, torch)
        check_same_numbers(runs)
        times, cpu = interleaved_times(runs, args.rounds)
        print(f"\nbatch {batch}: seconds per forward over {args.rounds} interleaved rounds (median [min, max]), "
              f"load average now {os.getloadavg()[0]:.1f}")
        print(f"  {'':36s} {'wall':>23s}   {'CPU (all threads)':>23s}")
        for name, values in times.items():
            print(f"  {name:36s} {summary(values)[0]:7.3f} [{min(values):6.3f}, {max(values):6.3f}]   "
                  f"{summary(cpu[name])[0]:7.3f} [{min(cpu[name]):6.3f}, {max(cpu[name]):6.3f}]")
        ours_names = ["numpy_vit (patterns+logits)", "numpy_vit (record everything)"]
        for ours in ours_names:
            for theirs in ("torch (fused SDPA)", "torch (non-fused)"):
                ratio = summary([a / b for a, b in zip(times[ours], times[theirs])])
                cpu_ratio = summary([a / b for a, b in zip(cpu[ours], cpu[theirs])])
                rows.append((batch, ours, theirs, ratio, cpu_ratio))
        if not args.skip_extras:
            flops, floor = gemm_floor(matmul_shapes(model.config, batch))
            ours = statistics.median(times["numpy_vit (patterns+logits)"])
            torch_time = statistics.median(times["torch (fused SDPA)"])
            print(f"  {flops / 1e9:.1f} GFLOP per forward (matrix multiplies); numpy GEMM alone on these sizes: "
                  f"{floor:.3f} s = {flops / floor / 1e9:.1f} GFLOP/s")
            print(f"  achieved: numpy_vit {flops / ours / 1e9:.1f} GFLOP/s ({floor / ours:.0%} of the GEMM rate), "
                  f"torch fused {flops / torch_time / 1e9:.1f} GFLOP/s ({floor / torch_time:.0%})")
        if batch == 8 or batch == max(args.batch):
            print(f"  trace memory at batch {batch}: patterns+logits "
                  f"{trace_megabytes(model.forward(x, record=PATTERNS_AND_LOGITS)):.0f} MiB, "
                  f"everything {trace_megabytes(model.forward(x)):.0f} MiB")

    print(f"\nratio numpy_vit / torch at {threads} thread(s): median [min, max] of the per-round ratios "
          f"(< 1: numpy_vit is faster)")
    print(f"  {'':68s} {'wall':>17s}   {'CPU':>17s}")
    for batch, ours, theirs, (med, lo, hi), (cmed, clo, chi) in rows:
        print(f"  batch {batch}  {ours:34s} / {theirs:18s} {med:5.2f} [{lo:.2f}, {hi:.2f}]   "
              f"{cmed:5.2f} [{clo:.2f}, {chi:.2f}]")

    if not args.skip_extras:
        seconds, why = demo_seconds()
        print("\nnumpy-vit demo --out <tmp>: " + (f"{seconds:.1f} s wall" if seconds is not None else f"skipped: {why}"))
        print(f"import numpy_vit: {import_seconds('numpy_vit') * 1e3:.0f} ms in a fresh interpreter "
              f"(import numpy alone: {import_seconds('numpy') * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
