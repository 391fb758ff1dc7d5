"""The ``numpy-vit`` command: the guide's demo, figures for your own images, predictions, the
before/after-training comparison, and checkpoint conversion.

    numpy-vit demo                                   # the seven figures of the sample image, offline
    numpy-vit show cat.jpg dog.jpg --figure all      # every figure for every image
    numpy-vit predict cat.jpg                        # top-5 classes
    numpy-vit compare cat.jpg --before random --after weights/default.npz
    numpy-vit convert vit_base.safetensors -o vit_base.npz

Imports are lazy: ``predict`` and ``convert`` never load matplotlib.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import ArgumentError, NumpyViTError


# --- models ------------------------------------------------------------------------------

def fallback_config():
    """The architecture of the shipped default model, untrained: what runs while none is shipped."""
    from numpy_vit.weights.shapes import CLASSES

    from .config import ViTConfig

    return ViTConfig.preset("vit_tiny_patch16_224", embed_dim=128, num_heads=8, num_classes=len(CLASSES),
                            labels=CLASSES, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                            crop_pct=1.0).replace(name="untrained_patch16_224")


def default_model_exists() -> bool:
    from numpy_vit.weights.loader import DEFAULT_PATH

    return os.path.isfile(DEFAULT_PATH)


def load_model(name=None, like=None, warn=None):
    """A ViT from a name: None = the shipped default model (a random one, with a warning, while it is
    missing), ``"random"`` = randomly initialised with ``like``'s architecture (or the default's),
    ``"random:PRESET"`` = a random model of a preset, anything else = ``ViT.from_pretrained(name)``."""
    from .config import ViTConfig
    from .model import ViT

    warn = warn or (lambda message: print(f"numpy-vit: warning: {message}", file=sys.stderr))
    if name is None:
        if default_model_exists():
            return ViT.from_pretrained(None)
        warn("there is no trained default model yet (weights/default.npz is missing), so this uses a randomly "
             "initialised ViT: its figures show an untrained model")
        return ViT(fallback_config(), seed=0)
    if name == "random" or name.startswith("random:"):
        if ":" in name:
            return ViT(ViTConfig.preset(name.split(":", 1)[1]), seed=0)
        if like is not None:
            return ViT(like.config, seed=0)
        config = ViT.from_pretrained(None).config if default_model_exists() else fallback_config()
        return ViT(config, seed=0)
    return ViT.from_pretrained(name)


def describe_model(model) -> str:
    c = model.config
    return (f"{c.name or 'unnamed'} ({c.depth} layers, {c.num_heads} heads, width {c.embed_dim}, "
            f"{c.patch_size}px patches, {model.num_params / 1e6:.2f}M params)")


# --- small helpers ----------------------------------------------------------------------

def progress(done: int, total: int, label: str, stream=None) -> None:
    """A one-line progress bar on stderr: ``[########------------] 2/5 cat.jpg``."""
    stream = stream or sys.stderr
    width = 24
    filled = int(round(width * done / max(total, 1)))
    line = f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} {label}"
    if stream.isatty():
        stream.write("\r" + line[:100].ljust(100) + ("\n" if done == total else ""))
    else:
        stream.write(line + "\n")
    stream.flush()


def parse_query(text):
    """--query: cls, mean, dist, reg0, a patch number, or row,col."""
    if text is None:
        return None
    if "," in text:
        try:
            row, col = (int(v) for v in text.split(","))
        except ValueError:
            raise ArgumentError(f"--query {text!r}: use ROW,COL with two integers, e.g. 3,7") from None
        return (row, col)
    return int(text) if text.lstrip("-").isdigit() else text


def figure_options(args) -> dict:
    options = {"interpolation": args.interpolation, "dino_mask": args.dino_mask, "query": parse_query(args.query)}
    if args.layers is not None:
        options["layer_indices"] = args.layers
    if args.head is not None:
        options["head_index"] = args.head
    return options


def _figure_list(name):
    from numpy_vit.viz.figures import FIGURES, figure_name

    return list(FIGURES) if name == "all" else [figure_name(name)]


# --- commands ---------------------------------------------------------------------------------

def cmd_demo(args):
    from numpy_vit.viz.demo import run_demo

    run_demo(args.out, args.image, args.model, dpi=args.dpi)


def cmd_show(args):
    from numpy_vit.viz.figures import make_figure

    names = _figure_list(args.figure)
    model = load_model(args.model)
    options = figure_options(args)
    os.makedirs(args.out, exist_ok=True)
    stems = [os.path.splitext(os.path.basename(path))[0] for path in args.images]
    total = len(args.images) * len(names)
    written = []
    progress(0, total, "")
    for index, (path, stem) in enumerate(zip(args.images, stems)):
        stem = stem if stems.count(stem) == 1 else f"{index}_{stem}"
        trace = model.run(path)
        for name in names:
            target = os.path.join(args.out, f"{stem}_{name}.png")
            make_figure(name, trace, save_path=target, dpi=args.dpi, **options)
            written.append(target)
            progress(len(written), total, os.path.basename(target))
    print(f"wrote {len(written)} figure(s) to {os.path.abspath(args.out)}")


def cmd_predict(args):
    model = load_model(args.model)
    if not model.config.num_classes:
        raise ArgumentError(f"{describe_model(model)} has no classifier (num_classes=0), so it cannot predict")
    for path in args.images:
        trace = model.run(path, record=["logits"])
        print(f"{path}:")
        for rank, (label, prob) in enumerate(trace.top_k(args.top), 1):
            print(f"  {rank}. {label:<24} {prob:7.2%}")


def cmd_compare(args):
    from numpy_vit.viz.figures import compare_figure

    after = load_model(None if args.after == "default" else args.after)
    before = load_model(args.before, like=after)
    if before.config.grid_size != after.config.grid_size and args.figure != "patch_grid":
        print("numpy-vit: note: the two models use different patch grids", file=sys.stderr)
    labels = (f"Before: {_model_label(args.before, before)}", f"After: {_model_label(args.after, after)}")
    traces = (before.run(args.image), after.run(args.image))
    out = args.out or f"compare_{_figure_list(args.figure)[0]}.png"
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    compare_figure(args.figure, traces, labels, save_path=out, dpi=args.dpi, **figure_options(args))
    for label, trace in zip(labels, traces):
        if "logits" in trace:
            top, prob = trace.top_k(1)[0]
            print(f"{label}: predicts {top} ({prob:.1%})")
    print(f"wrote {os.path.abspath(out)}")


def _model_label(name, model):
    if name in (None, "default"):
        return f"trained default model ({model.config.name})" if default_model_exists() else "random init (no default)"
    if str(name).startswith("random"):
        return "random init (untrained)"
    return os.path.basename(str(name).rstrip("/"))


def cmd_convert(args):
    from numpy_vit.weights.convert import convert

    print(convert(args.src, args.out, args.arch))


# --- the parser ---------------------------------------------------------------------------

def _add_dpi_option(parser):
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs in dots per inch (default 100)")


def _add_figure_options(parser):
    _add_dpi_option(parser)
    parser.add_argument("--layers", type=int, nargs="+", metavar="L",
                        help="layers to draw (attention_layers; default: 0 3 6 11 for 12 layers) or the layer of "
                             "all_heads (its first value; default: 5 for 12 layers)")
    parser.add_argument("--head", type=int, default=None, help="attention head for attention_layers (default 0)")
    parser.add_argument("--query", default=None,
                        help="whose attention: cls (default), mean, dist, reg0, a patch number, or ROW,COL")
    parser.add_argument("--interpolation", choices=("bilinear", "nearest"), default="bilinear",
                        help="upsampling of the patch grid: bilinear (smooth) or nearest (blocky, what the model has)")
    parser.add_argument("--dino-mask", action="store_true",
                        help="outline the fewest patches holding 60%% of the attention (Caron et al. 2021)")


def _model_option(parser, help_text="checkpoint path or hub name; 'random' for an untrained model "
                                    "(default: the shipped default model)"):
    parser.add_argument("--model", default=None, metavar="NAME", help=help_text)


def _figure_help():
    # the names live in viz/_common.py, which imports matplotlib; keep --help light by listing them here
    return ("patch_grid, position_embedding, attention_layers, all_heads, attention_distance, cls_evolution, "
            "attention_rollout, or all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numpy-vit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A Vision Transformer in NumPy, and figures of what each layer and head does.",
        epilog="Run 'numpy-vit COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="draw the guide's seven figures for the sample image (offline, seconds)",
        description="Run the model once on the shipped sample image (or --image) and write the guide's seven "
                    "files vis_1_patch_grid.png ... vis_7_attention_rollout.png; print where they are and the "
                    "model's prediction.")
    demo.add_argument("--out", default=".", metavar="DIR", help="folder for the PNGs (created if missing; default: .)")
    demo.add_argument("--image", default=None, metavar="PATH", help="image to explain (default: the sample)")
    _add_dpi_option(demo)
    _model_option(demo)
    demo.set_defaults(handler=cmd_demo)

    show = commands.add_parser(
        "show", help="draw figures for your own images, one file per image and figure",
        description="Run the model on each IMAGE and write OUT/<image>_<figure>.png for each figure, with a "
                    "progress bar. Figures: " + _figure_help() + ".")
    show.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any mode: converted to RGB)")
    show.add_argument("--figure", default="attention_layers", metavar="NAME",
                      help=f"which figure: {_figure_help()} (default: attention_layers)")
    _add_figure_options(show)
    _model_option(show)
    show.add_argument("-o", "--out", default=".", metavar="DIR", help="output folder (created if missing)")
    show.set_defaults(handler=cmd_show)

    predict = commands.add_parser("predict", help="print the top classes for images",
                                  description="Print the model's top-k classes and probabilities for each IMAGE.")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("-k", "--top", type=int, default=5, help="how many classes (default 5)")
    _model_option(predict)
    predict.set_defaults(handler=cmd_predict)

    compare = commands.add_parser(
        "compare", help="the same figure before and after training, side by side",
        description="The guide's before/after comparison: draw one figure for two models on one image, stacked. "
                    "--before random builds an untrained model with the --after model's architecture.")
    compare.add_argument("image", metavar="IMAGE")
    compare.add_argument("--before", default="random", metavar="MODEL",
                         help="'random' (default), 'random:PRESET', or a checkpoint")
    compare.add_argument("--after", default="default", metavar="MODEL",
                         help="'default' (the shipped model, the default) or a checkpoint")
    compare.add_argument("--figure", default="attention_layers", metavar="NAME",
                         help=f"which figure: {_figure_help().replace(', or all', '')} (default: attention_layers)")
    _add_figure_options(compare)
    compare.add_argument("-o", "--out", default=None, metavar="FILE",
                         help="output PNG (default: compare_<figure>.png)")
    compare.set_defaults(handler=cmd_compare)

    convert = commands.add_parser(
        "convert", help="convert a checkpoint (timm, HF, JAX, DINO) to numpy-vit's .npz",
        description="Read SRC in any supported format and write OUT as numpy-vit's .npz (weights.convert).")
    convert.add_argument("src", metavar="SRC", help="checkpoint file, folder, or hub name")
    convert.add_argument("-o", "--out", required=True, metavar="OUT", help="output .npz")
    convert.add_argument("--arch", default=None, metavar="NAME",
                         help="architecture (preset / timm name) when SRC does not say")
    convert.set_defaults(handler=cmd_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except NumpyViTError as error:
        print(f"numpy-vit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system said no: a file where the output folder should be, no permission
        print(f"numpy-vit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
