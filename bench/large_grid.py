"""``numpy-vit show --figure all`` at 518 px (a 37 x 37 grid, 1,370 tokens): wall time and peak memory, for this
tree and for another checkout of the repository (a benchmark, not a test).

    python bench/large_grid.py                          # this tree, 3 rounds
    python bench/large_grid.py --other /tmp/before      # and a checkout of another commit, rounds interleaved
    python bench/large_grid.py --figures                # also each figure's own time, drawn from one trace

The model has DINOv2 ViT-S/14's geometry (``vit_small_patch14_dinov2``: width 384, 12 layers, 6 heads, 14 px
patches, 518 px input) with random weights, written to an .npz by each tree's own code (no download); the image
is a 640 x 480 PNG of smooth shapes, resized and cropped to 518 x 518 as for any photo. Each round runs, per tree, ``python -m numpy_vit.cli show IMAGE --figure all --model MODEL.npz``
twice, trees in alternating order so that a busy neighbour slows both alike: once for the time, once for the
memory. The time is the process's wall time (imports included, as a user waits) and its CPU time (user +
system, all threads), with nothing else of ours running. The memory run adds a sampler thread that reads the
proportional set size summed over the process and its forked figure workers (``Pss`` of
/proc/PID/smaps_rollup, every 20 ms: pages the workers share with the parent are counted once) beside the
peak resident set of the largest single process (``ru_maxrss`` from ``os.wait4``). Reading smaps_rollup walks
the page tables of a 1 GB process, so on two cores the sampler alone adds 1-1.5 s to the wall time it would
share with the run it measures: that is why the time is taken in a run without it. On a machine shared with
other work the wall time grows with the load, the CPU time much less, and on two idle cores the wall time lies
between CPU / 2 and CPU. Medians over the rounds are printed.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BUILD = """
import numpy as np
from PIL import Image
import numpy_vit as nv
config = nv.ViTConfig.preset("vit_small_patch14_reg4_dinov2", num_reg_tokens=0, no_embed_class=False).replace(
    name="vit_small_patch14_dinov2")   # timm's DINOv2-S/14 geometry, built so that any tree can build it
nv.ViT(config, seed=0).save({model!r})
y, x = np.mgrid[0:480, 0:640] / 480.0
image = np.stack([0.5 + 0.4 * np.sin(3 * x), 0.5 + 0.4 * np.cos(2 * y), 0.5 + 0.3 * np.sin(x + y)], -1)
image[120:360, 200:420] = [0.9, 0.8, 0.2]                       # an object in the middle
Image.fromarray((255 * np.clip(image, 0, 1)).astype(np.uint8)).save({image!r})
"""

PER_FIGURE = """
import time
import numpy_vit as nv
from numpy_vit.viz.figures import FIGURES, make_figure
model = nv.ViT.from_pretrained({model!r})
start = time.perf_counter()
trace = model.run({image!r})
print(f"  run (record everything): {{time.perf_counter() - start:5.2f}} s")
for name in FIGURES:
    start = time.perf_counter()
    make_figure(name, trace, save_path={out!r} + f"/{{name}}.png")
    print(f"  {{name:<20}} {{time.perf_counter() - start:5.2f}} s")
"""


def process_tree_pss(root: int) -> int:
    """Kilobytes of proportional set size of ``root`` and all its descendants (0 for those already gone)."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
            with open(f"/proc/{pid}/task/{pid}/children") as children:
                pending += [int(child) for child in children.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_show(tree: Path, work: Path, label: str, sample_memory: bool):
    """(wall seconds, peak resident MiB of one process, peak summed PSS MiB, CPU seconds) of one
    ``show --figure all`` process in ``tree``; the summed PSS is sampled only with ``sample_memory`` (else 0)."""
    out = work / f"out_{label}"
    out.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "numpy_vit.cli", "show", str(work / "image.png"), "--figure", "all",
               "--model", str(work / f"model_{label}.npz"), "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], process_tree_pss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    if sample_memory:
        sampler.join()
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode()
    process.stderr.close()
    if status != 0:
        raise SystemExit(f"{label}: show failed:\n{stderr}")
    return seconds, usage.ru_maxrss / 1024, peak[0] / 1024, usage.ru_utime + usage.ru_stime   # kilobytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, default=None, help="a checkout of another commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--figures", action="store_true", help="also time each figure of this tree")
    args = parser.parse_args()
    trees = {"this tree": ROOT}
    if args.other is not None:
        trees["other tree"] = args.other.resolve()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for index, (label, tree) in enumerate(trees.items()):
            name = f"t{index}"
            code = BUILD.format(model=str(work / f"model_{name}.npz"), image=str(work / "image.png"))
            subprocess.run([sys.executable, "-c", code], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
                           check=True)
        results = {label: [] for label in trees}
        for round_index in range(args.rounds):
            order = list(enumerate(trees.items()))
            order = order if round_index % 2 == 0 else order[::-1]
            for index, (label, tree) in order:
                seconds, _, _, cpu = run_show(tree, work, f"t{index}", sample_memory=False)
                _, mib, pss, _ = run_show(tree, work, f"t{index}", sample_memory=True)
                results[label].append((seconds, mib, pss, cpu))
                print(f"round {round_index + 1}: {label:<10} {seconds:6.2f} s wall  {cpu:6.2f} s CPU  peak "
                      f"{mib:6.0f} MiB one process, {pss:6.0f} MiB PSS all  (load average "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
        for label, tree in trees.items():
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                                    text=True).stdout.strip()
            figures = len(list((work / f"out_t{list(trees).index(label)}").glob("*.png")))
            times, memory, pss, cpu = zip(*results[label])
            print(f"{label} ({commit}, {figures} figures): wall median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}), CPU median {statistics.median(cpu):.2f} s "
                  f"(min {min(cpu):.2f}), peak memory median {statistics.median(memory):.0f} MiB in one process "
                  f"(max {max(memory):.0f}), {statistics.median(pss):.0f} MiB PSS summed (max {max(pss):.0f})")
        if args.figures:
            print("this tree, each figure drawn from one trace:")
            out = work / "per_figure"
            out.mkdir()
            subprocess.run([sys.executable, "-c", PER_FIGURE.format(model=str(work / "model_t0.npz"),
                                                                     image=str(work / "image.png"), out=str(out))],
                           cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)


if __name__ == "__main__":
    main()
