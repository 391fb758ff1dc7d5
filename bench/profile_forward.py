"""Where numpy_vit's forward pass spends its time (a benchmark tool, not a test).

    python bench/profile_forward.py                   # ViT-B/16, batch 1, patterns+logits, 1 BLAS thread
    python bench/profile_forward.py --batch 8 --threads 2 --record all
    python bench/profile_forward.py --lines           # also line by line
    python bench/profile_forward.py --speedups        # numpy_vit.fast's functions on one thread too

By function (the default): every function of ``numpy_vit.layers``, ``numpy_vit.fast`` and ``numpy_vit.erf``
(but the thread machinery) is wrapped in a timer for the run, and each is charged its own time, without the
layer functions it calls (``attention`` without ``linear``, and so on); names say which module's function ran.
A few hundred calls per forward pass, so the timers cost nothing measurable. With --threads 1 the forward pass
runs the reference functions of ``numpy_vit.layers`` (unless --speedups); with more, those of
``numpy_vit.fast``, which hold BLAS to one thread and split the work themselves. A batch cut into shards
(one shard of images per thread, each through every block, ``fast.encoder_in_shards``) is timed in every
shard's thread and the times are summed over the threads: the shares are then of wall time x threads, and
``fast.encoder_in_shards`` holds the calling thread's wait for the others. A single image's steps share their
rows, heads and GELU chunks with helper threads: only the calling thread is timed, so a function's wall time
is its step's, helpers included.

By line (``--lines``): ``sys.settrace`` on numpy_vit's files charges the time between two line events to the
earlier line, so a line's time includes the NumPy and BLAS calls it makes. Each line event costs the tracer a
microsecond or two, which inflates lines run thousands of times per pass (the GELU's chunk loop): use it to
find a line, and the function table to weigh it. With shards only the calling thread's shard is traced.

Two clocks: wall time, and the process's CPU time (all threads), which a busy neighbour process disturbs less.
"""
import argparse
import functools
import inspect
import linecache
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy_vit as nv  # noqa: E402
from numpy_vit import erf, fast, layers, model as model_module  # noqa: E402

PACKAGE = str(ROOT / "numpy_vit")
TIMED_MODULES = (layers, fast, erf)
# the thread machinery: charged to the layer function that calls it, as it should be
NOT_TIMED = {"share_between_threads", "run_in_shard", "blas_on_one_thread", "get_num_threads", "set_num_threads",
             "matmul_threads", "can_put_blas_on_one_thread", "blas_is_held", "uses_threads", "equal_blocks",
             "_blas_threads", "_thread_pool", "_threads_from_environment", "_release_openblas_control",
             "_forget_pools", "_no_record"}


def clocks():
    return time.perf_counter_ns(), time.process_time_ns()


def thread_clocks():  # for shards: each thread on one BLAS thread, so its own CPU time is its shard's
    return time.perf_counter_ns(), time.thread_time_ns()


class FunctionTimer:
    """Wraps the functions of ``TIMED_MODULES`` (and every reference to them in those modules and the model's)
    so that each call's time, minus the time of the wrapped functions it calls, is charged to it."""

    def __init__(self, clocks=clocks, calling_thread_only=False):
        self.own = defaultdict(lambda: [0, 0, 0])  # name -> [wall ns, cpu ns, calls]
        self._clocks = clocks
        self._only = threading.get_ident() if calling_thread_only else None
        self._local = threading.local()  # .stack, per thread: [children wall ns, children cpu ns] per active call
        self._lock = threading.Lock()  # shard threads add to self.own at the same time
        self._originals = []

    def _wrap(self, name, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            if self._only is not None and threading.get_ident() != self._only:
                return function(*args, **kwargs)
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append([0, 0])
            start_wall, start_cpu = self._clocks()
            try:
                return function(*args, **kwargs)
            finally:
                end_wall, end_cpu = self._clocks()
                children_wall, children_cpu = stack.pop()
                wall, cpu = end_wall - start_wall, end_cpu - start_cpu
                with self._lock:
                    entry = self.own[name]
                    entry[0] += wall - children_wall
                    entry[1] += cpu - children_cpu
                    entry[2] += 1
                if stack:
                    stack[-1][0] += wall
                    stack[-1][1] += cpu
        return timed

    def __enter__(self):
        for home in TIMED_MODULES:
            for name, function in inspect.getmembers(home, inspect.isfunction):
                if function.__module__ != home.__name__ or name in NOT_TIMED:
                    continue
                timed = self._wrap(f"{home.__name__.split('.')[-1]}.{name}", function)
                for module in (*TIMED_MODULES, model_module):
                    if getattr(module, name, None) is function:
                        self._originals.append((module, name, function))
                        setattr(module, name, timed)
        return self

    def __exit__(self, *exc):
        for module, name, function in self._originals:
            setattr(module, name, function)


class LineTimer:
    """Charges the wall and CPU nanoseconds between consecutive line events to the earlier line."""

    def __init__(self):
        self.wall = defaultdict(int)
        self.cpu = defaultdict(int)
        self._last = None
        self._t = self._c = 0

    def _charge(self, key):
        t, c = clocks()
        if self._last is not None:
            self.wall[self._last] += t - self._t
            self.cpu[self._last] += c - self._c
        self._last = key
        self._t, self._c = clocks()  # read again so this bookkeeping is not charged to the next line

    def _local(self, frame, event, arg):
        if event == "line":
            self._charge((frame.f_code.co_filename, frame.f_lineno))
        elif event == "return":
            caller = frame.f_back
            traced = caller is not None and caller.f_code.co_filename.startswith(PACKAGE)
            self._charge((caller.f_code.co_filename, caller.f_lineno) if traced else None)
        return self._local

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename.startswith(PACKAGE):
            self._charge((frame.f_code.co_filename, frame.f_lineno))
            return self._local
        return None

    def __enter__(self):
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)
        self._charge(None)


def profile(model, x, record, runs, timer):
    start_wall, start_cpu = clocks()
    with timer:
        for _ in range(runs):
            model.forward(x, record=record)
    end_wall, end_cpu = clocks()
    return (end_wall - start_wall) / runs / 1e6, (end_cpu - start_cpu) / runs / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="numpy_vit's threads "
                        "(numpy_vit.set_num_threads; BLAS gets as many through threadpoolctl; default 1)")
    parser.add_argument("--record", choices=["patterns", "all"], default="patterns",
                        help='"patterns": ["blocks.*.attn.pattern", "logits"]; "all": everything')
    parser.add_argument("--speedups", action="store_true", help="numpy_vit.fast's functions even on one thread "
                        "(model.speedups = True)")
    parser.add_argument("--runs", type=int, default=3, help="forward passes profiled (after one warm-up)")
    parser.add_argument("--lines", type=int, nargs="?", const=25, default=0, metavar="TOP",
                        help="also time line by line and show the TOP lines (default 25)")
    args = parser.parse_args(argv)

    try:
        import threadpoolctl
        _limiter = threadpoolctl.threadpool_limits(args.threads, user_api="blas")  # noqa: F841 (kept alive)
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS uses its default thread count")
    nv.set_num_threads(args.threads)  # numpy_vit's own threads (see the module docstring)
    record = None if args.record == "all" else ["blocks.*.attn.pattern", "logits"]
    model = nv.ViT.from_preset(args.arch)
    model.speedups = True if args.speedups else None
    x = np.random.default_rng(0).standard_normal((args.batch, 3, *model.config.img_size), dtype=np.float32)
    model.forward(x, record=record)

    split = fast.uses_threads()  # numpy_vit.fast splits the work
    shards = min(args.batch, args.threads) if split and args.batch > 1 else 1
    functions = FunctionTimer(thread_clocks if shards > 1 else clocks, calling_thread_only=split and shards == 1)
    wall, cpu = profile(model, x, record, args.runs, functions)
    print(f"{args.arch}, batch {args.batch}, record={args.record}, {args.threads} BLAS thread(s), "
          f"load average {os.getloadavg()[0]:.1f}: {wall:.0f} ms wall, {cpu:.0f} ms CPU per forward")
    if shards > 1:
        print(f"the batch runs as {shards} shards, one per thread on one BLAS thread: times are summed "
              f"over the {shards} threads, CPU is each thread's own, shares are of {shards} x wall")
    elif split:
        print(f"one image, its layers split between {args.threads} threads on one BLAS thread each: times are "
              f"the calling thread's (a step's wall time, helpers included); CPU is the process's")
    print(f"{'wall ms':>8} {'cpu ms':>8} {'share':>6} {'calls':>6}  numpy_vit.layers / .fast / .erf function (own time)")
    timed_wall = 0
    for name, (w, c, n) in sorted(functions.own.items(), key=lambda kv: -kv[1][0]):
        timed_wall += w
        print(f"{w / 1e6 / args.runs:8.1f} {c / 1e6 / args.runs:8.1f} {w / 1e6 / args.runs / (wall * shards):6.1%} "
              f"{n // args.runs:6d}  {name}")
    rest = wall * shards - timed_wall / 1e6 / args.runs
    print(f"{rest:8.1f} {'':8s} {rest / (wall * shards):6.1%} {'':6s}  the rest (model.forward, the trace"
          f"{', threads waiting' if shards > 1 else ''})")

    if args.lines:
        lines = LineTimer()
        profile(model, x, record, args.runs, lines)
        print(f"\n{'wall ms':>8} {'cpu ms':>8}  line (tracer overhead included: see the module docstring)")
        for key in sorted(lines.wall, key=lines.wall.get, reverse=True)[: args.lines]:
            filename, lineno = key
            source = linecache.getline(filename, lineno).strip()
            print(f"{lines.wall[key] / 1e6 / args.runs:8.1f} {lines.cpu[key] / 1e6 / args.runs:8.1f}  "
                  f"{Path(filename).name}:{lineno} {source[:90]}")


if __name__ == "__main__":
    main()
