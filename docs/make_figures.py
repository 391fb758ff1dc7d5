"""Redraw the README's figures: ``python docs/make_figures.py`` (all), or name some: ``... attention_budget``.

The demo's seven figures (the shipped default model on viz/assets/sample.png), each at a resolution
that keeps it about 1,300 pixels wide at most, stored with a 256-colour palette to stay small; figure 8
(``explanations``: gradient explanations) from the shipped two-object scene viz/assets/two_shapes.png.
"""
import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from numpy_vit.viz.demo import EXPLANATIONS_FILE, SAMPLE_IMAGE, TWO_SHAPES, sample_scenes  # noqa: E402
from numpy_vit.viz.explanations import explanation_maps, explanations_size, visualize_explanations  # noqa: E402
from numpy_vit.viz.figures import FIGURES, make_figure  # noqa: E402
from numpy_vit.weights.named_models import describe_model, load_model  # noqa: E402

MAX_WIDTH = 1300  # pixels


def main(out=os.path.join(HERE, "figures"), names=None):
    os.makedirs(out, exist_ok=True)
    model = load_model(None)
    trace = model.run(SAMPLE_IMAGE)
    print(f"{describe_model(model)}; prediction: {trace.top_k(1)[0]}")
    for name, spec in FIGURES.items():
        if names and name not in names:
            continue
        path = os.path.join(out, spec.filename)
        width = spec.size(trace, {})[0]
        source = trace
        if name == "attention_distance":   # as the demo does: averaged over the sample's eight scenes
            source = model.run(sample_scenes(), record=["blocks.*.attn.pattern"])
        make_figure(name, source, save_path=path, dpi=min(100, int(MAX_WIDTH / width)))
        shrink(path)
    if not names or "explanations" in names:   # figure 8 needs the model's backward pass, not only a trace
        path = os.path.join(out, EXPLANATIONS_FILE)
        explained = explanation_maps(model, TWO_SHAPES)
        width = explanations_size(len(explained.targets), len(explained.maps))[0]
        visualize_explanations(model, explained, save_path=path, dpi=min(100, int(MAX_WIDTH / width)))
        shrink(path)


def shrink(path):
    image = Image.open(path).convert("RGB")
    # fast octree keeps the colour bars' own colours (median cut turned viridis' yellow orange) and is smaller
    image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{os.path.relpath(path, os.path.dirname(HERE))}: {image.size[0]}x{image.size[1]}, "
          f"{os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(names=sys.argv[1:])
