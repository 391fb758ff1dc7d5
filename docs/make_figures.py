"""Redraw the README's figures: ``python docs/make_figures.py``.

Runs the demo (the shipped default model on viz/assets/sample.png) at a README-friendly resolution
and stores each PNG with a 256-colour palette, which keeps it small.
"""
import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from viz.demo import run_demo  # noqa: E402  (after the path set-up, for a checkout that is not installed)


def main(out=os.path.join(HERE, "figures"), dpi=75):
    for path in run_demo(out, dpi=dpi):
        image = Image.open(path).convert("RGB")
        image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        print(f"{os.path.relpath(path, os.path.dirname(HERE))}: {image.size[0]}x{image.size[1]}, "
              f"{os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
