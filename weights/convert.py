"""Convert any supported checkpoint into our ``.npz``: ``python -m numpy_vit.weights.convert SRC -o OUT [--arch NAME]``.

``numpy-vit convert`` (numpy_vit/cli.py) calls :func:`convert` too.
"""
from __future__ import annotations

import argparse
import os
import sys

from numpy_vit.errors import NumpyViTError

from .loader import read_checkpoint
from .native import save


def convert(src, out, arch=None) -> str:
    """Read ``src`` (any format ``load_any`` reads), write ``out`` as a numpy-vit ``.npz``, return a report."""
    checkpoint = read_checkpoint(src, arch=arch)
    config = checkpoint.config
    save(out, config, checkpoint.params)
    lines = [
        f"read      {checkpoint.path}",
        f"format    {checkpoint.format}",
        f"tensors   {checkpoint.tensors_read} read, {len(checkpoint.params)} written",
        f"params    {checkpoint.num_params:,}",
        f"config    {config.name or '(unnamed)'}: depth {config.depth}, width {config.embed_dim}, "
        f"{config.num_heads} heads, patch {config.patch_size}, img_size {config.img_size[0]}x{config.img_size[1]}, "
        f"{config.num_classes} classes" + (f" (labels: {', '.join(config.labels[:3])}, ...)" if config.labels else ""),
        f"numerics  gelu={config.gelu}, layer_norm_eps={config.layer_norm_eps:g}, "
        f"pos_embed_resample={config.pos_embed_resample}",
        f"wrote     {out} ({os.path.getsize(out) / 2**20:.1f} MiB)",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m numpy_vit.weights.convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint file, folder, or hub name (owner/name)")
    parser.add_argument("-o", "--out", required=True, help="output .npz")
    parser.add_argument("--arch", default=None, help="preset / timm architecture name, when the file lacks the heads")
    args = parser.parse_args(argv)
    try:
        print(convert(args.src, args.out, arch=args.arch))
    except NumpyViTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
