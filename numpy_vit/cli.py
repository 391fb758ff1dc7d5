"""The ``numpy-vit`` command: the guide's demo, figures for your own images, predictions, the
before/after-training comparison, and checkpoint conversion.

    numpy-vit demo                                   # the figures of the sample image, offline
    numpy-vit show cat.jpg dog.jpg --figure all      # every figure for every image
    numpy-vit predict cat.jpg --model timm/vit_base_patch16_224.augreg2_in21k_ft_in1k
    numpy-vit compare cat.jpg --before random --after default --figure all
    numpy-vit convert vit_base.safetensors --arch vit_base_patch16_224 -o vit_base.npz
    numpy-vit explore cat.jpg -o explorer.html                # click a patch, see its attention, offline
    numpy-vit explain scene.png --target star --target cross   # figure 8: which patches speak for each class

Every command that loads a model takes the same three options: ``--model`` (MODEL_LIST),
``--arch`` and ``--img-size``; ``numpy_vit.weights.named_models`` turns them into a ViT. The figures are imported
where they are drawn: ``predict`` and ``convert`` never load matplotlib.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
import warnings

from numpy_vit.weights.labels import SHAPE_CLASSES
from numpy_vit.weights.named_models import default_model_exists, describe_model, is_default, is_random, load_model

from .errors import ArgumentError, NumpyViTError

MODEL_HELP = "default, random, random:PRESET, a checkpoint file or folder, or a hub name OWNER/NAME (see below)"
MODEL_LIST = """\
MODEL is one of:
  default        the shipped model: ten synthetic shapes (circle, square, ...), not photos
  random         untrained, with --arch's architecture (else the default's; in compare, --after's)
  random:PRESET  untrained, of a preset, e.g. random:vit_small_patch16_224
  FILE           a checkpoint: numpy-vit or Google JAX .npz, timm .safetensors or .pth, DINO .pth
  FOLDER         a timm or HF transformers folder (config.json + model.safetensors)
  OWNER/NAME     a hub name, e.g. timm/vit_base_patch16_224.augreg2_in21k_ft_in1k: read from
                 $NUMPY_VIT_CACHE/OWNER--NAME (default ~/.cache/numpy_vit) when its files are there,
                 else downloaded; without network it fails at once; HF_HUB_OFFLINE=1 is honoured
A file named like a keyword is given as a path: ./default. An image upscaled more than 2x to the
model's input (--img-size) gets a warning."""
ARCH_HELP = ("the architecture, for checkpoints that do not store the number of heads (bare timm or DINO state "
             "dicts): a preset such as vit_small_patch16_224 or vit_small_patch14_reg4_dinov2, or a timm name "
             "vit_{tiny,small,base,large,huge}_patch<P>_<RES>, a CLIP tower vit_base_patch16_clip[_quickgelu]_224, "
             "a model without class token vit_base_patch16_gap_224, or eva02_{tiny,small,base,large}_patch14_<RES> "
             "(EVA-02 files need it: their rotary position embedding has no weights); for random, the random "
             "model's architecture")
IMG_SIZE_HELP = ("run the model at this input size: N, or H,W (also HxW), multiples of the patch size; the position "
                 "embedding is resampled to the new grid (default: the checkpoint's own size, e.g. 518 for DINOv2)")
EXPLAIN_METHODS = ("chefer", "grad_rollout", "grad_cam", "input_x_grad", "ig_black", "ig_blur")  # viz/explanations.py
EXPLAIN_DEFAULT = ("chefer", "grad_rollout", "grad_cam", "input_x_grad", "ig_blur")
FIGURE_NAMES = ("patch_grid, position_embedding, attention_layers, all_heads, attention_distance, cls_evolution, "
                "attention_rollout, attention_budget")  # viz/_common.py imports matplotlib: listed here to keep
                                                        # --help light

# Library messages name Python arguments; the same things on the command line are flags.
CLI_WORDS = (
    (r"\(a preset or timm architecture name, or a ViTConfig\)", "(a preset or timm architecture name)"),
    (r"pass arch= with the image size \(a ViTConfig with img_size=\(H, W\)\)",
     'put a timm config.json beside the weights whose "model_args" give "img_size": [H, W]'),
    (r"\barch must be a timm architecture name or a ViTConfig", "--arch must be a preset or timm architecture name"),
    (r"\barch='([^']*)'", r"--arch \1"),
    (r"\barch= ?", "--arch "),
    (r"\(arch vs file:", "(--arch vs file:"),
    (r"\(img_size=\)", "(--img-size)"),
    (r"\bhead_index\b", "--head"),
    (r"\blayer_idx\b", "--layers"),
    (r"^steps must be", "--steps must be"),
)


def cli_words(message: str) -> str:
    """A library message as the command line says it: ``--arch NAME`` where Python says ``arch='NAME'``."""
    for pattern, replacement in CLI_WORDS:
        message = re.sub(pattern, replacement, message)
    return message


# --- models ------------------------------------------------------------------------------

def shapes_note(model):
    """One line for a model whose classes are the shipped model's synthetic shapes, else None."""
    if tuple(model.config.labels) != SHAPE_CLASSES:
        return None
    count = "ten" if len(SHAPE_CLASSES) == 10 else str(len(SHAPE_CLASSES))
    return (f"this model classifies {count} synthetic shapes ({', '.join(SHAPE_CLASSES)}), not photos: every image "
            f"gets one of them (see weights/MODEL_CARD.md; for photos use --model with an ImageNet checkpoint)")


def model_options(args) -> dict:
    return {"arch": args.arch, "img_size": args.img_size}


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


def parse_img_size(text):
    """--img-size: ``224``, ``224,320`` or ``224x320`` -> (height, width)."""
    parts = re.split(r"[,xX]", text.strip())
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: use one positive integer (224) or HEIGHT,WIDTH "
                                         f"(224,320 or 224x320)")
    return tuple(int(part) for part in parts)


def figure_options(args) -> dict:
    options = {"interpolation": args.interpolation, "dino_mask": args.dino_mask, "query": parse_query(args.query)}
    if args.layers is not None:
        options["layer_indices"] = args.layers
    if args.head is not None:
        options["head_index"] = args.head
    options.update(start_layer=args.start_layer, exclude_layers=tuple(args.exclude_layers or ()),
                   exclude_heads=tuple(parse_head(text) for text in args.exclude_heads or ()),
                   full_matrix=args.full_rollout)
    return options


def parse_head(text):
    """--exclude-heads: LAYER.HEAD, e.g. 0.3 for head 3 of layer 0."""
    try:
        layer, head = (int(part) for part in str(text).split("."))
    except ValueError:
        raise ArgumentError(f"--exclude-heads {text!r}: give each head as LAYER.HEAD, e.g. 0.3 (head 3 of "
                            f"layer 0)") from None
    return (layer, head)


def _figure_list(name):
    from numpy_vit.viz.figures import FIGURES, figure_name

    return list(FIGURES) if str(name).lower() == "all" else [figure_name(name)]


def _print_warning(message, category, filename, lineno, file=None, line=None):
    """Python's warnings as one line each: ``numpy-vit: warning: ...``."""
    print(f"numpy-vit: warning: {cli_words(str(message))}", file=sys.stderr)


# --- commands ---------------------------------------------------------------------------------

def cmd_demo(args):
    from numpy_vit.viz.demo import run_demo

    model = load_model(args.model, **model_options(args))
    run_demo(args.out, args.image, model, dpi=args.dpi)


def cmd_show(args):
    from numpy_vit.viz.figures import draw_figures, record_for

    names = _figure_list(args.figure)
    model = load_model(args.model, **model_options(args))
    options = figure_options(args)
    os.makedirs(args.out, exist_ok=True)
    stems = [os.path.splitext(os.path.basename(path))[0] for path in args.images]
    total = len(args.images) * len(names)
    written = []
    progress(0, total, "")
    for index, (path, stem) in enumerate(zip(args.images, stems)):
        stem = stem if stems.count(stem) == 1 else f"{index}_{stem}"
        trace = model.run(path, record=record_for(names))   # only what the figures draw
        jobs = [(name, os.path.join(args.out, f"{stem}_{name}.png"), args.dpi) for name in names]
        for target in draw_figures(trace, jobs, **options):     # two at once on two cores
            written.append(target)
            progress(len(written), total, os.path.basename(target))
    print(f"wrote {len(written)} figure(s) to {os.path.abspath(args.out)}")


def cmd_predict(args):
    model = load_model(args.model, **model_options(args))
    if not model.config.num_classes:
        raise ArgumentError(f"{describe_model(model)} has no classification head, so it cannot predict; "
                            f"pass --model with a classifier checkpoint")
    note = shapes_note(model)
    if note:
        print(f"numpy-vit: note: {note}", file=sys.stderr)
    for path in args.images:
        trace = model.run(path, record=["logits"])
        print(f"{path}:")
        for rank, (label, prob) in enumerate(trace.top_k(args.top), 1):
            print(f"  {rank}. {label:<24} {prob:7.2%}")


def cmd_compare(args):
    from numpy_vit.viz.figures import compare_figure

    names = _figure_list(args.figure)
    after = load_model(args.after, **model_options(args))
    before = load_model(args.before, like=after, **model_options(args))
    if before.config.grid_size != after.config.grid_size and names != ["patch_grid"]:
        print("numpy-vit: note: the two models use different patch grids (--img-size N runs both at one size)",
              file=sys.stderr)
    labels = (f"Before: {_model_label(args.before, before)}", f"After: {_model_label(args.after, after)}")
    traces = (before.run(args.image), after.run(args.image))
    for name in names:
        out = _compare_path(args.out, name, several=len(names) > 1)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        compare_figure(name, traces, labels, save_path=out, dpi=args.dpi, **figure_options(args))
        print(f"wrote {os.path.abspath(out)}")
    for label, trace in zip(labels, traces):
        if "logits" in trace:
            top, prob = trace.top_k(1)[0]
            print(f"{label}: predicts {top} ({prob:.1%})")


def _compare_path(out, name, several):
    """-o FILE for one figure; with several, FILE's stem + _<figure> (default: compare_<figure>.png)."""
    if out is None:
        return f"compare_{name}.png"
    if not several:
        return out
    stem, extension = os.path.splitext(out)
    return f"{stem}_{name}{extension or '.png'}"


def _model_label(name, model):
    if is_default(name):
        return f"trained default model ({model.config.name})" if default_model_exists() else "random init (no default)"
    if is_random(name):
        return "random init (untrained)"
    return os.path.basename(str(name).rstrip("/"))


def cmd_explore(args):
    from numpy_vit.viz.explorer import explore, make_server

    model = load_model(args.model, **model_options(args))
    trace = model.run(args.image)
    if args.serve:
        server = make_server(trace, port=args.port, model=model, classes=args.classes)
        host, port = server.server_address[:2]
        print(f"serving the explorer of {args.image} at http://{host}:{port}/ (this machine only; Ctrl-C stops it)",
              flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return
    page = explore(trace, model=model, classes=args.classes)
    path = page.save(args.out)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB): open it in a browser, no network needed")
    if page.note:
        print(f"numpy-vit: note: {page.note}", file=sys.stderr)


def cmd_explain(args):
    from numpy_vit.viz.explanations import explanation_maps, visualize_explanations

    model = load_model(args.model, **model_options(args))
    if not model.config.num_classes:
        raise ArgumentError(f"{describe_model(model)} has no classification head, so there is no class to explain; "
                            f"pass --model with a classifier checkpoint")
    methods = args.method or list(EXPLAIN_DEFAULT)
    trace = model.run(args.image)
    explained = explanation_maps(model, trace, args.target, methods, steps=args.steps)
    for target in explained.targets:
        print(f"class {target} {explained.labels[target]!r}: p = {explained.probabilities[target]:.1%}")
    out_folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_folder, exist_ok=True)
    visualize_explanations(model, explained, save_path=args.out, interpolation=args.interpolation, dpi=args.dpi)
    print(f"wrote {os.path.abspath(args.out)} ({', '.join(methods)}; rows: the classes above)")


def cmd_convert(args):
    from numpy_vit.weights.convert import convert

    if is_random(args.src) or args.img_size is not None:  # built or changed here: no file to report on
        model = load_model(args.src, **model_options(args))
        model.save(args.out)
        print(f"model     {describe_model(model)}\nwrote     {args.out} "
              f"({os.path.getsize(args.out) / 2**20:.1f} MiB)")
        return
    print(convert(None if is_default(args.src) else args.src, args.out, args.arch))


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
    parser.add_argument("--start-layer", type=int, default=0, metavar="L",
                        help="attention_rollout: roll out from layer L on (default 0); the layers before it keep "
                             "only their residual path")
    parser.add_argument("--exclude-heads", nargs="+", default=None, metavar="LAYER.HEAD",
                        help="attention_rollout: heads fused out of their layer, e.g. 0.3 (a sink head; the "
                             "figure names a sink that dominates the rollout and adds the map without it)")
    parser.add_argument("--exclude-layers", type=int, nargs="+", default=None, metavar="L",
                        help="attention_rollout: layers whose attention is left out (their residual path stays)")
    parser.add_argument("--full-rollout", action="store_true",
                        help="attention_rollout: form every N x N product instead of the query's row only "
                             "(same map, N times the work)")


def _add_model_options(parser, model_flag=True):
    """--model (unless the command names its models otherwise), --arch and --img-size."""
    if model_flag:
        parser.add_argument("--model", default="default", metavar="MODEL", help=f"{MODEL_HELP} (default: default)")
    parser.add_argument("--arch", default=None, metavar="NAME", help=ARCH_HELP)
    parser.add_argument("--img-size", type=parse_img_size, default=None, metavar="N|H,W", help=IMG_SIZE_HELP)


def _subcommand(commands, name, help_text, description):
    return commands.add_parser(name, help=help_text, description=textwrap.fill(description, 100),
                               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=MODEL_LIST)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numpy-vit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A Vision Transformer in NumPy, and figures of what each layer and head does.",
        epilog="Every command that loads a model takes --model (default, random, random:PRESET, a file, a folder "
               "or a hub name owner/name), --arch and --img-size.\nRun 'numpy-vit COMMAND --help' for a command's "
               "options.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = _subcommand(
        commands, "demo", "draw the figures for the sample image (offline, seconds)",
        "Run the model once on the shipped sample image (or --image) and write the guide's seven files "
        "vis_1_patch_grid.png ... vis_7_attention_rollout.png, vis_8_explanations.png, vis_9_attention_budget.png "
        "and explorer.html; print where they are and the model's prediction.")
    demo.add_argument("--out", default=".", metavar="DIR", help="folder for the PNGs (created if missing; default: .)")
    demo.add_argument("--image", default=None, metavar="PATH", help="image to explain (default: the sample)")
    _add_dpi_option(demo)
    _add_model_options(demo)
    demo.set_defaults(handler=cmd_demo)

    show = _subcommand(
        commands, "show", "draw figures for your own images, one file per image and figure",
        f"Run the model on each IMAGE and write OUT/<image>_<figure>.png for each figure, with a progress bar. "
        f"Figures: {FIGURE_NAMES}, or all.")
    show.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any mode: converted to RGB)")
    show.add_argument("--figure", default="attention_layers", metavar="NAME",
                      help=f"which figure: {FIGURE_NAMES}, or all (default: attention_layers)")
    _add_figure_options(show)
    _add_model_options(show)
    show.add_argument("-o", "--out", default=".", metavar="DIR", help="output folder (created if missing)")
    show.set_defaults(handler=cmd_show)

    predict = _subcommand(commands, "predict", "print the top classes for images",
                          "Print the model's top-k classes and probabilities for each IMAGE. The default model "
                          "knows ten synthetic shapes, not photos: for photos pass --model with an ImageNet "
                          "checkpoint, e.g. timm/vit_base_patch16_224.augreg2_in21k_ft_in1k.")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("-k", "--top", type=int, default=5, help="how many classes (default 5)")
    _add_model_options(predict)
    predict.set_defaults(handler=cmd_predict)

    compare = _subcommand(
        commands, "compare", "the same figure before and after training, side by side",
        "The guide's before/after comparison: draw a figure for two models on one image, stacked. --before and "
        "--after each take any model; --before random builds an untrained model with the --after model's "
        "architecture. --arch and --img-size apply to both.")
    compare.add_argument("image", metavar="IMAGE")
    compare.add_argument("--before", default="random", metavar="MODEL", help="the upper model (default: random)")
    compare.add_argument("--after", default="default", metavar="MODEL", help="the lower model (default: default)")
    compare.add_argument("--figure", default="attention_layers", metavar="NAME",
                         help=f"which figure: {FIGURE_NAMES}, or all (default: attention_layers)")
    _add_figure_options(compare)
    _add_model_options(compare, model_flag=False)
    compare.add_argument("-o", "--out", default=None, metavar="FILE",
                         help="output PNG (default: compare_<figure>.png); with --figure all, FILE's name gets "
                              "_<figure> before the extension, one file per figure")
    compare.set_defaults(handler=cmd_compare)

    convert = _subcommand(
        commands, "convert", "convert a checkpoint (timm, HF, JAX, DINO) to numpy-vit's .npz",
        "Read MODEL and write it as numpy-vit's .npz (weights.convert), which loads without --arch. "
        "With --img-size the written model's position embedding is resampled to that size.")
    convert.add_argument("src", metavar="MODEL", help="the model to convert: " + MODEL_HELP)
    convert.add_argument("-o", "--out", required=True, metavar="OUT", help="output .npz")
    _add_model_options(convert, model_flag=False)
    convert.set_defaults(handler=cmd_convert)

    explore = _subcommand(
        commands, "explore", "an interactive page: click a patch, see its attention in every layer and head",
        "Run the model on IMAGE and write one self-contained HTML file (-o, default explorer.html) that opens in "
        "a browser offline: the image with its patch grid; click a patch (or CLS, a register) to make it the "
        "query; its attention in one layer and head, the mean or max over heads, or the rollout from a chosen "
        "layer; every layer x head at once; the top-5 prediction and the class relevance of the top classes. "
        "Grids too large for one file keep every k-th patch as a query (the page says so); --serve computes any "
        "query on demand on 127.0.0.1 instead.")
    explore.add_argument("image", metavar="IMAGE")
    explore.add_argument("-o", "--out", default="explorer.html", metavar="FILE",
                         help="the HTML file to write (default: explorer.html)")
    explore.add_argument("--serve", action="store_true",
                         help="serve the explorer on http://127.0.0.1:PORT/ instead of writing a file (standard "
                              "library only; every query of any grid, computed when picked)")
    explore.add_argument("--port", type=int, default=8000, help="the port for --serve (default 8000; 0: any free)")
    explore.add_argument("--classes", type=int, default=3, metavar="K",
                         help="the class relevance (Chefer et al. 2021) of the K most probable classes, one backward "
                              "pass each (default 3; 0: none)")
    _add_model_options(explore)
    explore.set_defaults(handler=cmd_explore)

    explain = _subcommand(
        commands, "explain", "figure 8: which patches speak for each class, by gradient methods beside rollout",
        "Run the model on IMAGE, take the gradient of each target class's logit (the backward pass) and write one "
        "figure (-o, default explanations.png): a row per class with its probability, a column per method, each "
        "column on one colour scale, beside the class-agnostic attention rollout. Methods: chefer (Chefer et al. "
        "2021), grad_rollout (vit-explain), grad_cam (Selvaraju et al. 2017), input_x_grad, ig_black and ig_blur "
        "(integrated gradients, Sundararajan et al. 2017, from a black or a blurred image; --steps passes each).")
    explain.add_argument("image", metavar="IMAGE")
    explain.add_argument("--target", action="append", default=None, metavar="NAME|INDEX|top",
                         help="a class to explain: its name (the model's labels), its index, or top; repeat for "
                              "more rows (default: the two most probable classes)")
    explain.add_argument("--method", action="append", default=None, choices=EXPLAIN_METHODS, metavar="METHOD",
                         help=f"a method, repeatable: {', '.join(EXPLAIN_METHODS)} (default: "
                              f"{' '.join(EXPLAIN_DEFAULT)})")
    explain.add_argument("--steps", type=int, default=16,
                         help="integrated gradients' steps along the path (midpoint rule; default 16)")
    explain.add_argument("--interpolation", choices=("nearest", "bilinear"), default="nearest",
                         help="upsampling of the patch maps: nearest (default: one value per patch) or bilinear")
    explain.add_argument("-o", "--out", default="explanations.png", metavar="FILE",
                         help="the PNG to write (default: explanations.png)")
    _add_dpi_option(explain)
    _add_model_options(explain)
    explain.set_defaults(handler=cmd_explain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning
            args.handler(args)
    except NumpyViTError as error:
        print(f"numpy-vit {args.command}: error: {cli_words(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system said no: a file where the output folder should be, no permission
        print(f"numpy-vit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
