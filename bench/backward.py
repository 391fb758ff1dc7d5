"""numpy_vit's forward + backward pass against torch autograd on this CPU (a benchmark, not a test).

    python bench/backward.py                          # batch 1 and 8, 1 and 2 threads, 5 interleaved rounds
    python bench/backward.py --batch 8 --threads 2 --rounds 3
    python bench/backward.py --profile --batch 8 --threads 2   # where numpy_vit's time goes, by function

ViT-B/16 at 224 (``vit_base_patch16_224``), float32, the same random weights on both sides (the head too).
One step is a forward pass and the gradients of a fixed random cotangent of the logits with respect to every
parameter and the input image:
  numpy_vit: ``model.backward(model.forward(x, record=numpy_vit.BACKWARD_RECORD), cotangent)`` (the trace
    keeps what the backward pass reads), once with ``model.speedups = True`` (numpy_vit.fast's forward) and
    once with ``False`` (the reference numpy_vit.layers throughout);
  torch: timm's model (its default fused attention) with ``requires_grad`` on the input,
    ``(model(x) * cotangent).sum().backward()``, the parameters' ``.grad`` cleared before each step.
Each contender runs in its own process (numpy's BLAS and torch's OpenMP threads never share one), started once
per thread count. The main process checks that they compute the same numbers (logits, input gradient and a
few parameter gradients within 1e-3 of their scale), then runs rounds: every contender does one step, in a
rotating order, so that a busy neighbour hurts all alike. Ratios are taken within a round (numpy_vit / torch),
then the median, min and max over the rounds are printed. Threads: ``torch.set_num_threads`` for torch; for
numpy_vit its own threads (``numpy_vit.set_num_threads``) and numpy's BLAS (threadpoolctl), as
bench/forward.py does. Peak memory: a fresh process per contender runs one step at the largest batch and
reports its peak resident set size (``ru_maxrss``) and the growth over the loaded model.

Writes bench/results/backward.json.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

ARCH = "vit_base_patch16_224"
CONTENDERS = ("numpy_vit (speedups)", "numpy_vit (reference)", "torch autograd")
WORKER = {"numpy_vit (speedups)": "numpy-speedups", "numpy_vit (reference)": "numpy-reference",
          "torch autograd": "torch"}
CHECKED = ("head.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc1.weight", "patch_embed.proj.weight",
           "cls_token", "pos_embed")


def inputs(batch, num_classes):
    """The images and the logits' cotangent of a batch: the same for every contender."""
    rng = np.random.default_rng(batch)
    return (rng.standard_normal((batch, 3, 224, 224), dtype=np.float32),
            rng.standard_normal((batch, num_classes), dtype=np.float32))


def make_weights(path):
    """timm's random ViT-B/16 (the zero-initialised head made random) saved as {timm name: array} .npz."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.02)
        model.head.bias.normal_(0, 0.1)
    np.savez(path, **{k: v.detach().numpy() for k, v in model.state_dict().items()})


def rss_mib():
    """This process's resident set size now (MiB), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- the workers: one process per contender ---------------------------------------------------------------

class NumpyStep:
    def __init__(self, weights, threads, speedups):
        import numpy_vit as nv
        from forward import limit_blas_threads

        self.limiter, _ = limit_blas_threads(threads)  # kept alive: numpy's BLAS on ``threads`` threads
        nv.set_num_threads(threads)
        params = dict(np.load(weights))
        self.nv = nv
        self.model = nv.ViT(nv.ViTConfig.preset(ARCH), params)
        self.model.speedups = speedups

    def setup(self, batch):
        self.x, self.cotangent = inputs(batch, self.model.config.num_classes)

    def step(self):
        trace = self.model.forward(self.x, record=self.nv.BACKWARD_RECORD)
        return trace, self.model.backward(trace, self.cotangent)

    def check(self):
        trace, grads = self.step()
        return dict(logits=trace.logits, input=grads["input"], **{k: grads.params[k] for k in CHECKED})


class TorchStep:
    def __init__(self, weights, threads):
        import timm
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = timm.create_model(ARCH, pretrained=False).eval()
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(weights).items()})

    def setup(self, batch):
        x, cotangent = inputs(batch, self.model.num_classes)
        self.x = self.torch.from_numpy(x).requires_grad_(True)
        self.cotangent = self.torch.from_numpy(cotangent)

    def step(self):
        self.model.zero_grad(set_to_none=True)
        self.x.grad = None
        logits = self.model(self.x)
        (logits * self.cotangent).sum().backward()
        return logits

    def check(self):
        logits = self.step()
        params = dict(self.model.named_parameters())
        return dict(logits=logits.detach().numpy(), input=self.x.grad.numpy(),
                    **{k: params[k].grad.numpy() for k in CHECKED})


def make_step(kind, weights, threads):
    if kind == "torch":
        return TorchStep(weights, threads)
    return NumpyStep(weights, threads, speedups=kind == "numpy-speedups")


def worker(kind, weights, threads):
    """Answers the main process's commands, one JSON line each, on the real stdout (libraries' chatter goes
    to stderr): setup (batch, path): build the batch, run one step and save the checked arrays to path;
    run: one timed step; quit."""
    out = sys.stdout
    sys.stdout = sys.stderr
    step = make_step(kind, weights, threads)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "setup":
            step.setup(cmd["batch"])
            np.savez(cmd["path"], **step.check())
            step.step()  # warm-up: first-call allocations
            reply = {}
        elif cmd["cmd"] == "run":
            start, start_cpu = time.perf_counter(), time.process_time()
            step.step()
            reply = {"wall": time.perf_counter() - start, "cpu": time.process_time() - start_cpu}
        else:
            break
        out.write(json.dumps(reply) + "\n")
        out.flush()


def memory_worker(kind, weights, threads, batch):
    """One step at ``batch`` in a fresh process: prints the peak RSS and the RSS before the step (MiB)."""
    step = make_step(kind, weights, threads)
    step.setup(batch)
    before = rss_mib()
    step.step()
    print(json.dumps({"rss_before_mib": before, "peak_rss_mib": peak_rss_mib()}))


# --- the main process -----------------------------------------------------------------------------------

class Contender:
    def __init__(self, name, weights, threads):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", WORKER[name], "--weights", weights,
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}'s worker exited (run it alone with --worker {WORKER[self.name]} to "
                             f"see why)")
        return json.loads(line)

    def close(self):
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait()


def check_same_numbers(arrays):
    """Every contender's logits, input gradient and checked parameter gradients agree within 1e-3 of their
    scale (float32 through twelve blocks differs by ~1e-6; a wrong gradient by far more)."""
    reference = arrays["torch autograd"]
    for name, ours in arrays.items():
        for key, ref in reference.items():
            err = float(np.max(np.abs(ours[key] - ref))) / max(float(np.max(np.abs(ref))), 1e-30)
            if err > 1e-3:
                raise SystemExit(f"{name} and torch disagree on {key} ({err:.2e} of its scale): not benchmarking")


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def timed_rounds(contenders, batch, rounds, tmp):
    arrays = {}
    for c in contenders:
        path = os.path.join(tmp, f"check_{WORKER[c.name]}.npz")
        c.ask(cmd="setup", batch=batch, path=path)
        arrays[c.name] = dict(np.load(path))
    check_same_numbers(arrays)
    wall = {c.name: [] for c in contenders}
    cpu = {c.name: [] for c in contenders}
    for r in range(rounds):
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            t = c.ask(cmd="run")
            wall[c.name].append(t["wall"])
            cpu[c.name].append(t["cpu"])
    return wall, cpu


def measure_memory(weights, threads, batch):
    out = {}
    for name in CONTENDERS:
        done = subprocess.run([sys.executable, __file__, "--memory", str(batch), "--worker", WORKER[name],
                               "--weights", weights, "--threads", str(threads)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"memory run of {name} failed: {done.stderr[-500:]}")
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def profile(weights, threads, batch, top=25):
    """cProfile of numpy_vit's step (speedups on) at ``batch``: the functions by their own time, then the
    backward functions of numpy_vit.layers by cumulative time."""
    import cProfile
    import pstats

    step = NumpyStep(weights, threads, speedups=True)
    step.setup(batch)
    step.step()
    start = time.perf_counter()
    forward_start = time.perf_counter()
    trace = step.model.forward(step.x, record=step.nv.BACKWARD_RECORD)
    forward = time.perf_counter() - forward_start
    step.model.backward(trace, step.cotangent)
    total = time.perf_counter() - start
    print(f"batch {batch}, {threads} thread(s): forward {forward:.3f} s, backward {total - forward:.3f} s "
          f"(unprofiled)")
    profiler = cProfile.Profile()
    profiler.enable()
    step.step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"layers.py.*backward|model.py.*backward|resample.py.*backward")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per setting (default 5)")
    parser.add_argument("--out", default=str(ROOT / "results" / "backward.json"), help="the JSON written")
    parser.add_argument("--profile", action="store_true", help="profile numpy_vit's step instead (first batch "
                        "and thread count given)")
    parser.add_argument("--worker", choices=sorted(WORKER.values()), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--memory", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker and args.memory:
        return memory_worker(args.worker, args.weights, args.threads[0], args.memory)
    if args.worker:
        return worker(args.worker, args.weights, args.threads[0])

    import torch
    import numpy_vit as nv

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        make_weights(weights)
        if args.profile:
            return profile(weights, args.threads[0], args.batch[0])
        print(f"{ARCH}, float32, forward + backward (gradients of every parameter and of the input); torch "
              f"{torch.__version__}, numpy {np.__version__}, numpy_vit {nv.__version__ if hasattr(nv, '__version__') else ''}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        rows = []
        for threads in args.threads:
            contenders = [Contender(name, weights, threads) for name in CONTENDERS]
            try:
                for batch in args.batch:
                    wall, cpu = timed_rounds(contenders, batch, args.rounds, tmp)
                    row = {"threads": threads, "batch": batch, "rounds": args.rounds,
                           "load_average": os.getloadavg()[0], "wall_seconds": wall, "cpu_seconds": cpu,
                           "ratio_to_torch": {name: summary([a / b for a, b in zip(wall[name], wall["torch autograd"])])
                                              for name in CONTENDERS[:2]},
                           "cpu_ratio_to_torch": {name: summary([a / b for a, b in zip(cpu[name], cpu["torch autograd"])])
                                                  for name in CONTENDERS[:2]}}
                    rows.append(row)
                    print(f"\n{threads} thread(s), batch {batch}: seconds per step over {args.rounds} interleaved "
                          f"rounds, median [min, max]; load average now {row['load_average']:.1f}")
                    for name in CONTENDERS:
                        s, c = summary(wall[name]), summary(cpu[name])
                        ratio = row["ratio_to_torch"].get(name)
                        text = (f"   numpy_vit / torch {ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}]"
                                if ratio else "")
                        print(f"  {name:24s} {s['median']:7.3f} [{s['min']:6.3f}, {s['max']:6.3f}]  CPU "
                              f"{c['median']:7.3f}{text}")
            finally:
                for c in contenders:
                    c.close()
        memory_batch, memory_threads = max(args.batch), max(args.threads)
        memory = measure_memory(weights, memory_threads, memory_batch)
        print(f"\npeak memory of one step at batch {memory_batch}, {memory_threads} thread(s), each in a fresh "
              f"process (MiB): peak RSS (RSS before the step, with the model loaded)")
        for name, m in memory.items():
            print(f"  {name:24s} {m['peak_rss_mib']:7.0f} ({m['rss_before_mib']:.0f} before: "
                  f"+{m['peak_rss_mib'] - m['rss_before_mib']:.0f})")

    print("\nratio numpy_vit / torch autograd, median [min, max] of the per-round ratios of wall time and of the "
          "process's CPU time (< 1: numpy_vit is faster)")
    for row in rows:
        for name, r in row["ratio_to_torch"].items():
            c = row["cpu_ratio_to_torch"][name]
            print(f"  {row['threads']} thread(s), batch {row['batch']}: {name:24s} wall {r['median']:.2f} "
                  f"[{r['min']:.2f}, {r['max']:.2f}]   CPU {c['median']:.2f} [{c['min']:.2f}, {c['max']:.2f}]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"arch": ARCH, "dtype": "float32", "cpus": os.cpu_count(), "torch": torch.__version__,
                   "numpy": np.__version__, "command": " ".join(["python", "bench/backward.py", *(argv or sys.argv[1:])]),
                   "rows": rows, "memory": {"batch": memory_batch, "threads": memory_threads, "mib": memory}},
                  f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
