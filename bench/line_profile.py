"""Where numpy_vit's forward pass spends its time, line by line (a benchmark tool, not a test).

    python bench/line_profile.py                    # ViT-B/16, batch 1, patterns+logits recorded, 1 BLAS thread
    python bench/line_profile.py --batch 8 --threads 2 --record all

A small line timer (``sys.settrace`` on numpy_vit's own files): the time between two line events of those
files is charged to the earlier line, so a line's time includes the NumPy and BLAS calls it makes, and
excludes the numpy_vit functions it calls (they have their own lines). Two clocks: wall time, and the process's
CPU time (all threads), which a busy neighbour process disturbs much less. The tracer costs a few
microseconds per line event; the forward pass has a few hundred lines events per block, so its overhead is
well under 1% of a ViT-B forward.
"""
import argparse
import linecache
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy_vit as nv  # noqa: E402

PACKAGE = str(ROOT / "numpy_vit")


class LineTimer:
    """Charges the wall and CPU nanoseconds between consecutive line events to the earlier line."""

    def __init__(self):
        self.wall = defaultdict(int)
        self.cpu = defaultdict(int)
        self.hits = defaultdict(int)
        self._last = None
        self._t = self._c = 0

    def _charge(self, key):
        t, c = time.perf_counter_ns(), time.process_time_ns()
        if self._last is not None:
            self.wall[self._last] += t - self._t
            self.cpu[self._last] += c - self._c
        self._last = key
        if key is not None:
            self.hits[key] += 1
        # read the clocks again so the bookkeeping above is not charged to the next line
        self._t, self._c = time.perf_counter_ns(), time.process_time_ns()

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="numpy BLAS threads (threadpoolctl; default 1)")
    parser.add_argument("--record", choices=["patterns", "all"], default="patterns",
                        help='"patterns": ["blocks.*.attn.pattern", "logits"]; "all": everything')
    parser.add_argument("--runs", type=int, default=3, help="forward passes profiled (after one warm-up)")
    parser.add_argument("--top", type=int, default=25, help="lines shown")
    args = parser.parse_args(argv)

    try:
        import threadpoolctl
        _limiter = threadpoolctl.threadpool_limits(args.threads, user_api="blas")  # noqa: F841 (kept alive)
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS uses its default thread count")
    record = None if args.record == "all" else ["blocks.*.attn.pattern", "logits"]
    model = nv.ViT.from_preset(args.arch)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, *model.config.img_size), dtype=np.float32)
    model.forward(x, record=record)

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with LineTimer() as timer:
        for _ in range(args.runs):
            model.forward(x, record=record)
    wall = (time.perf_counter() - start_wall) / args.runs
    cpu = (time.process_time() - start_cpu) / args.runs

    total_wall = sum(timer.wall.values())
    print(f"{args.arch}, batch {args.batch}, record={args.record}, {args.threads} BLAS thread(s), "
          f"load average {os.getloadavg()[0]:.1f}: {wall * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms CPU per forward")
    print(f"{'wall ms':>8} {'cpu ms':>8} {'share':>6}  line")
    for key in sorted(timer.wall, key=timer.wall.get, reverse=True)[: args.top]:
        filename, lineno = key
        source = linecache.getline(filename, lineno).strip()
        print(f"{timer.wall[key] / 1e6 / args.runs:8.1f} {timer.cpu[key] / 1e6 / args.runs:8.1f} "
              f"{timer.wall[key] / total_wall:6.1%}  {Path(filename).name}:{lineno} {source[:90]}")


if __name__ == "__main__":
    main()
