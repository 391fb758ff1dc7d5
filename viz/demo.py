"""The guide's demo, offline and in seconds: ``python -m numpy_vit.viz.demo`` (or ``numpy-vit demo``).

Runs the model once on the shipped sample image and writes the guide's seven files,
``vis_1_patch_grid.png`` ... ``vis_7_attention_rollout.png``, ``vis_9_attention_budget.png`` (where the attention
goes), and beside them ``explorer.html``, the
interactive attention explorer (viz/explorer.py), then prints where they are and what the model
predicted. ``vis_8_explanations.png`` explains the model's top two classes by gradients (viz/explanations.py), on
the shipped two-object scene ``two_shapes.png`` when the sample image and a shapes model are used. The guide's
version downloaded a CIFAR-10 image and took 2-3 minutes.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time

from numpy_vit import sample_image
from numpy_vit.errors import NumpyViTError
from numpy_vit.fast import blas_on_one_thread
from numpy_vit.weights.named_models import describe_model, load_model

SAMPLE_IMAGE = sample_image()
SAMPLE_SCENES = os.path.join(os.path.dirname(SAMPLE_IMAGE), "sample_scenes.npz")
TWO_SHAPES = os.path.join(os.path.dirname(SAMPLE_IMAGE), "two_shapes.png")   # figure 8's star and cross
EXPLANATIONS_FILE = "vis_8_explanations.png"


def run_demo(out_dir=".", image=None, model=None, echo=print, dpi=None) -> list:
    """Write the figures of the registry (the guide's seven and figure 9), figure 8 and the explorer page for
    ``image`` (default: the sample) to ``out_dir``; returns the registry figures' paths.

    ``model`` is a ViT, a name for ``ViT.from_pretrained`` or None (the shipped default model, or a
    randomly initialised one with a warning while none is shipped).
    """
    from .explorer import explore
    from .figures import FIGURES

    start = time.perf_counter()
    image = SAMPLE_IMAGE if image is None else image
    model = load_model(model) if model is None or isinstance(model, str) else model
    os.makedirs(out_dir, exist_ok=True)
    with blas_on_one_thread():  # small matrices; the parallelism comes from processes
        trace = model.run(image)
    echo(f"model: {describe_model(model)}")
    echo(f"image: {image if isinstance(image, str) else type(image).__name__}")
    if "logits" in trace:
        (label, prob), *rest = trace.top_k(5)
        echo(f"prediction: {label} ({prob:.1%}); next: " + ", ".join(f"{l} ({p:.1%})" for l, p in rest[:2]))
    paths = [os.path.join(out_dir, spec.filename) for spec in FIGURES.values()]
    pool = sample_scenes() if image == SAMPLE_IMAGE else None
    with blas_on_one_thread():  # small matrices; the parallelism comes from processes
        draw_in_parallel(trace, [(name, path, dpi) for name, path in zip(FIGURES, paths)], model=model,
                         distance_images=pool)
    echo(f"wrote {len(paths)} figures to {os.path.abspath(out_dir)}:")
    for path in paths:
        echo(f"  {os.path.basename(path)}")
    written = explanations_figure(model, image, out_dir, dpi)
    echo(f"  {EXPLANATIONS_FILE}: {written}" if os.path.isfile(os.path.join(out_dir, EXPLANATIONS_FILE)) else written)
    page = explore(trace, model=model, classes=1).save(os.path.join(out_dir, "explorer.html"))  # one backward pass
    echo(f"and {os.path.basename(page)} ({os.path.getsize(page) / 2**20:.1f} MiB): the interactive explorer, "
         f"open it in a browser")
    echo(f"done in {time.perf_counter() - start:.1f} s")
    return paths


def explanations_figure(model, image, out_dir, dpi=None) -> str:
    """Figure 8 (viz/explanations.py) into ``out_dir``; returns a line saying what it shows, or why it was skipped.

    For the sample image and a model of the ten shapes it explains the shipped two-object scene (a star and a
    cross, viz/assets/two_shapes.png), where a map for one class should sit on one object; otherwise ``image``.
    """
    from numpy_vit.weights.labels import SHAPE_CLASSES

    from .explanations import visualize_explanations

    if not model.config.num_classes:
        return f"{EXPLANATIONS_FILE} skipped: the model has no classifier, so there is no class to explain"
    shapes = tuple(model.config.labels or ()) == SHAPE_CLASSES
    scene = TWO_SHAPES if image == SAMPLE_IMAGE and shapes else image
    with blas_on_one_thread():
        visualize_explanations(model, scene, save_path=os.path.join(out_dir, EXPLANATIONS_FILE),
                               **({"dpi": dpi} if dpi else {}))
    what = "the two-object scene viz/assets/two_shapes.png" if scene == TWO_SHAPES else "the image"
    return f"gradient explanations of the top two classes of {what}"


def sample_scenes():
    """The sample's scene set, eight 224 x 224 RGB images stored in viz/assets/sample_scenes.npz (the sample is
    scene 6; viz/assets/README.md says how they were drawn): the attention distance is an average over images
    (the ViT paper used 128), so the demo pools these eight."""
    import numpy as np

    with np.load(SAMPLE_SCENES) as scenes:
        return list(scenes["images"])                                               # 8 x [224, 224, 3] uint8


# What the forked workers draw from: inherited through fork, never pickled.
_SHARED = {"trace": None, "model": None, "distance_images": None}


def _draw_one(job):
    from .figures import make_figure

    name, path, dpi = job
    trace = _SHARED["trace"]
    if name == "attention_distance" and _SHARED["distance_images"] is not None:
        trace = _SHARED["model"].run(_SHARED["distance_images"], record=["blocks.*.attn.pattern"])
    make_figure(name, trace, save_path=path, **({"dpi": dpi} if dpi else {}))
    return path


def draw_in_parallel(trace, jobs, workers=None, model=None, distance_images=None):
    """Draw (figure name, path, dpi or None) jobs from one trace on up to ``workers`` processes (default:
    the CPU count, at most 2). Rendering and PNG encoding hold the GIL, so threads would not help; forked
    processes share the trace without copying it. Without fork (Windows, macOS' default) they run in turn.
    With ``model`` and ``distance_images``, the attention-distance figure pools those images instead."""
    workers = min(len(jobs), workers or min(2, os.cpu_count() or 1))
    jobs = sorted(jobs, key=lambda job: job[0] != "attention_distance")   # the slowest job first
    _SHARED.update(trace=trace, model=model, distance_images=distance_images if model is not None else None)
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                pool.map(_draw_one, jobs, chunksize=1)
        else:
            for job in jobs:
                _draw_one(job)
    finally:
        _SHARED.update(trace=None, model=None, distance_images=None)


def main(argv=None) -> int:
    """``python -m numpy_vit.viz.demo [--out DIR] [--image PATH] [--model NAME] [--dpi N]``: ``numpy-vit demo``
    without its --arch and --img-size."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m numpy_vit.viz.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", metavar="DIR", help="folder for the PNGs (default: .)")
    parser.add_argument("--image", default=None, metavar="PATH", help="image to explain (default: the sample)")
    parser.add_argument("--model", default="default", metavar="MODEL",
                        help="default, random, random:PRESET, a checkpoint file or folder, or a hub name OWNER/NAME")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs in dots per inch (default 100)")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, args.image, load_model(args.model), dpi=args.dpi)
    except NumpyViTError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
