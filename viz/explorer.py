"""An interactive attention explorer in one offline HTML file: point at a patch, see where it reads, in every
layer and head.

    from numpy_vit.viz.explorer import explore
    page = explore(model.run("cat.jpg"))      # shows inline in Jupyter (_repr_html_)
    page.save("explorer.html")                # one file: the image, the attention, the code; no network

The page (viz/assets/explorer.js and explorer.css, inlined) shows the image with its patch grid; a click (or
the arrow keys) picks the query token, a patch or a prefix token (CLS, registers); the overlay is that query's
attention row in one layer and head (or the mean / max over heads), or the attention rollout from that query
(Abnar & Zuidema 2020, eq. 1) from a chosen start layer through the last. A "model view" draws the same query's
row in every layer x head at once (BertViz's model view, Vig 2019, for images). Given the model too
(``explore(trace, model=model)``), the page also holds the class-specific relevance of the top classes (Chefer,
Gur & Wolf 2021, eqs. 5-6, ``analysis.explanation_map(trace, model.backward(trace, c), "chefer")``): one
backward pass per class.

What the file holds (``payload``, decoded by ``decode_payload``), for every query token it keeps, and every
row = (layer, head) of the attention plus (start layer) of the rollout:

* the patch columns as 8-bit codes relative to the row's largest patch value:
  ``value = code / 255 * row_max``, so a shown value is within ``row_max / 510`` of the trace's;
* ``row_max`` itself and the prefix columns (attention to CLS / registers) as float32, exact.

Rows are stored per query, so a file can keep a subset of queries: when all of them would not fit in
``max_bytes`` (large grids, e.g. 37 x 37 at 518 px), the file keeps the prefix tokens and the patches of an
evenly strided sub-grid, and says so on the page; ``serve`` computes any query's rows on demand instead, on
127.0.0.1 with the standard library's http.server.
"""
from __future__ import annotations

import base64
import gzip
import html
import io
import json
import os
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from numpy_vit import analysis
from numpy_vit.errors import ArgumentError

from ._common import HEAT_CMAP, is_trace, trace_attention, trace_image

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
MAX_BYTES = 8_000_000     # uncompressed 8-bit codes kept in one file: ViT-B/16 at 224 px needs 6.0 MB
LEVELS = 255              # 8-bit codes: 0 .. 255
FORMAT_VERSION = 1

# Shapes: L layers, H heads, T prefix tokens, P patches, N = T + P tokens, Q query tokens kept in the file,
# R = L * H + L rows per query (every layer's heads, then the rollout from every start layer).


# --- the numbers -------------------------------------------------------------------------------

def rollout_rows(attentions, queries) -> np.ndarray:
    """Attention rollout rows of the query tokens, from every start layer: list over L of [H, N, N] -> [L, Q, N].

    Abnar & Zuidema (2020), eq. 1, with A_hat_l = (mean_h A_l + I) / rowsum (``analysis.fuse_heads`` and
    ``analysis.add_residual``): rollout from start layer s is R_s = A_hat_{L-1} @ ... @ A_hat_s, and its row q is
    e_q^T A_hat_{L-1} ... A_hat_s. Multiplying row vectors from the last layer down gives the rows of every
    start layer in one pass, Q rows at a time instead of N x N products (``analysis.attention_rollout`` with
    ``start_layer=s``, row q, is the same number). ``analysis.attention_rollout_row`` does this for one query
    and one start layer; the page needs every query from every start layer, here for the cost of the deepest.
    """
    depth = len(attentions)
    rows = np.eye(attentions[0].shape[-1])[queries]                    # [Q, N] one-hot rows e_q
    out = np.empty((depth,) + rows.shape)                                # [L, Q, N]
    for layer in range(depth - 1, -1, -1):
        a_hat = analysis.add_residual(analysis.fuse_heads(attentions[layer][None]))[0]   # [N, N]
        rows = rows @ a_hat                                              # [Q, N] @ [N, N] -> [Q, N]
        out[layer] = rows
    return out


def query_rows(attentions, queries) -> np.ndarray:
    """Every row the page shows for the query tokens: [Q, R, N], R = L * H attention rows then L rollout rows.

    float32, the trace's own precision: the 8-bit codes' half step, 1/510 of a row's max, is 16,000 times
    float32's relative rounding."""
    attention = np.stack([np.asarray(a)[:, queries] for a in attentions])   # [L, H, Q, N]
    depth, heads, count, tokens = attention.shape
    attention = attention.transpose(2, 0, 1, 3).reshape(count, depth * heads, tokens)   # [Q, L*H, N]
    rollout = rollout_rows(attentions, queries).transpose(1, 0, 2)     # [L, Q, N] -> [Q, L, N]
    return np.concatenate([attention, rollout], axis=1, dtype=np.float32)   # [Q, R, N]


def quantise(rows: np.ndarray, num_prefix_tokens: int):
    """Rows [Q, R, N] -> (codes uint8 [Q, R, P], row_max float32 [Q, R], prefix float32 [Q, R, T]).

    8 bits per value relative to the row's largest patch value, rounded to nearest: the error is at most
    row_max / 510, below what a colour map (256 colours) can show. The prefix columns stay float32.
    """
    patches = rows[..., num_prefix_tokens:]                             # [Q, R, P]
    row_max = patches.max(-1)                                           # [Q, R]
    scale = np.where(row_max > 0, row_max, 1.0)
    codes = np.rint(patches / scale[..., None] * LEVELS).astype(np.uint8)
    return codes, row_max.astype(np.float32), rows[..., :num_prefix_tokens].astype(np.float32)


def dequantise(codes, row_max) -> np.ndarray:
    """What the page computes from the codes: [Q, R, P] uint8, [Q, R] -> [Q, R, P] float64."""
    return codes.astype(np.float64) / LEVELS * np.asarray(row_max, dtype=np.float64)[..., None]


def held_queries(grid, num_prefix_tokens: int, rows_per_query: int, max_bytes: int):
    """Which query tokens a file keeps: all, or the prefix tokens plus every ``stride``-th patch of each grid
    row and column (centred in each stride), the fewest strides so that the 8-bit codes fit in ``max_bytes``.
    Returns (token indices, stride); stride 1 = every query."""
    gh, gw = grid
    patches = gh * gw
    per_query = rows_per_query * patches                                 # bytes of codes per query
    for stride in range(1, max(gh, gw) + 1):
        rows, cols = range(stride // 2, gh, stride), range(stride // 2, gw, stride)
        if (num_prefix_tokens + len(rows) * len(cols)) * per_query <= max_bytes or stride == max(gh, gw):
            kept = [num_prefix_tokens + r * gw + c for r in rows for c in cols]
            return list(range(num_prefix_tokens)) + kept, stride
    raise AssertionError("unreachable: the largest stride keeps one patch")


# --- the data the page reads -----------------------------------------------------------------

def _png_data_url(image) -> str:
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8)   # [H, W, 3] in [0, 1] -> bytes
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _colour_table(name=HEAT_CMAP) -> list:
    """The figures' colour map as 256 RGB triples, so the page colours exactly as the PNG figures do."""
    import matplotlib

    colours = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]   # [256, 3] in [0, 1]
    return np.rint(colours * 255).astype(int).tolist()


def describe(trace) -> dict:
    """The page's metadata: model, geometry, prediction, and how the rows are stored."""
    config = trace.config
    gh, gw = (int(g) for g in trace.grid)
    attentions = trace_attention(trace)
    heads = int(attentions[0].shape[1])
    return {
        "version": FORMAT_VERSION,
        "model": config.name or "unnamed model",
        "depth": len(attentions), "heads": heads, "width": int(config.embed_dim),
        "patch_size": int(trace.patch_size), "grid": [gh, gw],
        "img_size": [gh * int(trace.patch_size), gw * int(trace.patch_size)],
        "prefix_names": list(trace.prefix_names),
        # the query the page opens on and what it is called (analysis.summary_query: CLS, or the patch mean)
        "summary_query": analysis.summary_query(trace.prefix_names)[0],
        "summary_label": analysis.summary_query(trace.prefix_names)[1],
        "levels": LEVELS,
        "colours": _colour_table(),
        "colour_map": HEAT_CMAP,
        "top5": [[label, prob] for label, prob in trace.top_k(5)] if "logits" in set(trace.keys()) else [],
    }


def class_relevance(trace, model, classes=3) -> list:
    """Chefer et al. (2021) relevance of every patch for each of the trace's ``classes`` most probable classes:
    [{"label", "probability", "values": [P] floats}], best first. One ``model.backward`` per class, from the class
    token's row (the mean of the patch rows for a model without one), start layer 0."""
    if not isinstance(classes, (int, np.integer)) or isinstance(classes, bool) or classes < 0:
        raise ArgumentError(f"the number of classes to explain (classes=, --classes) must be a whole number >= 0 "
                            f"(0: none), got {classes!r}")
    if not classes or "logits" not in set(trace.keys()):   # a model without classifier has no class to explain
        return []
    probabilities = trace.probabilities()[0]                                  # [C]
    labels = trace.config.labels or tuple(f"class {i}" for i in range(len(probabilities)))
    out = []
    for index in np.argsort(-probabilities)[: int(classes)]:
        grads = model.backward(trace, int(index))
        values = analysis.explanation_map(trace, grads, "chefer")[0]          # [gh, gw], image 0
        out.append({"label": labels[index], "probability": float(probabilities[index]),
                    "values": values.astype(np.float32).ravel().tolist()})   # [gh, gw] -> [P]
    return out


@dataclass
class Payload:
    """The rows a file holds (see the module docstring); ``queries`` are token indices into N."""
    queries: list
    stride: int
    codes: np.ndarray       # [Q, R, P] uint8
    row_max: np.ndarray     # [Q, R] float32
    prefix: np.ndarray      # [Q, R, T] float32

    def to_bytes(self) -> bytes:
        """row_max, prefix (float32, little-endian) then codes, as one gzip stream (mtime 0: same input, same
        bytes). Browsers read it with DecompressionStream('gzip')."""
        raw = (self.row_max.astype("<f4").tobytes() + self.prefix.astype("<f4").tobytes()
               + self.codes.tobytes())
        return gzip.compress(raw, compresslevel=6, mtime=0)


def build_payload(trace, queries=None, max_bytes=MAX_BYTES) -> Payload:
    """The rows of ``queries`` (token indices; default: all that fit in ``max_bytes``, see ``held_queries``)."""
    attentions = [np.asarray(a[0]) for a in trace_attention(trace)]   # L x [H, N, N], image 0
    depth, heads = len(attentions), attentions[0].shape[0]
    prefix = int(trace.num_prefix_tokens)
    stride = 1
    if queries is None:
        queries, stride = held_queries(trace.grid, prefix, depth * heads + depth, max_bytes)
    codes, row_max, prefix_values = quantise(query_rows(attentions, queries), prefix)
    return Payload(list(queries), stride, codes, row_max, prefix_values)


def decode_payload(blob: bytes, meta: dict) -> Payload:
    """The inverse of ``Payload.to_bytes`` with the page's metadata: what the page's JavaScript reads."""
    raw = gzip.decompress(blob)
    count = len(meta["queries"])
    rows = meta["depth"] * meta["heads"] + meta["depth"]
    prefix, patches = len(meta["prefix_names"]), meta["grid"][0] * meta["grid"][1]
    sizes = [count * rows * 4, count * rows * prefix * 4, count * rows * patches]
    if len(raw) != sum(sizes):
        raise ArgumentError(f"the explorer's data holds {len(raw)} bytes, its metadata describes {sum(sizes)}")
    row_max = np.frombuffer(raw, "<f4", count * rows).reshape(count, rows)
    prefix_values = np.frombuffer(raw, "<f4", count * rows * prefix, sizes[0]).reshape(count, rows, prefix)
    codes = np.frombuffer(raw, np.uint8, sizes[2], sizes[0] + sizes[1]).reshape(count, rows, patches)
    return Payload(list(meta["queries"]), meta["stride"], codes, row_max, prefix_values)


# --- the page ------------------------------------------------------------------------------

def _asset(name) -> str:
    with open(os.path.join(ASSETS, name), encoding="utf-8") as handle:
        return handle.read()


def _script_text(text: str) -> str:
    """Text safe inside <script>: no '</' that could close the element early."""
    return text.replace("</", "<\\/")


def render_html(meta: dict, image_url: str, blob: bytes | None) -> str:
    """One self-contained page: CSS, metadata, image, data and code inline; nothing is fetched from anywhere
    (``blob`` None: a page for ``serve``, which asks its server for each query's rows)."""
    data = "" if blob is None else base64.b64encode(blob).decode("ascii")
    title = f"numpy-vit explorer: {meta['model']}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data: blob:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self' data: blob:\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_asset('explorer.css')}</style></head>\n<body>\n"
        f"{_asset('explorer.html')}\n"
        f"<script type=\"application/json\" id=\"nv-meta\">{_script_text(json.dumps(meta))}</script>\n"
        f"<script type=\"text/plain\" id=\"nv-image\">{image_url}</script>\n"
        f"<script type=\"text/plain\" id=\"nv-data\">{data}</script>\n"
        f"<script>{_script_text(_asset('explorer.js'))}</script>\n</body></html>\n")


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def subset_note(meta: dict, queries, stride: int) -> str:
    """What the command line and the page tell the user about a file holding only some queries ('' for all)."""
    if stride == 1:
        return ""
    gh, gw = meta["grid"]
    return (f"the {gh}x{gw} grid is too large for every query in one file: it holds the prefix tokens and every "
            f"{_ordinal(stride)} patch in each direction as queries ({len(queries)} of "
            f"{len(meta['prefix_names']) + gh * gw}), and a click picks the nearest one held; "
            f"numpy-vit explore IMAGE --serve computes any query on demand")


class Explorer:
    """The explorer page of one trace: ``.html`` (the text), ``.save(path)``, and inline display in Jupyter.

    ``.queries`` are the query tokens the page holds (all of them, or a strided subset with ``.stride`` > 1
    for grids too large for one file: ``.note`` says so)."""

    def __init__(self, trace, max_bytes=MAX_BYTES, model=None, classes=3):
        if not is_trace(trace):
            raise ArgumentError(f"explore takes a Trace (trace = model.run(image)), got {type(trace).__name__}")
        image = trace_image(trace)
        if image is None:
            raise ArgumentError("this Trace holds no image to draw under the attention; run the model on an image "
                                "(model.run(path)) rather than on a normalised array")
        if not isinstance(max_bytes, (int, np.integer)) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ArgumentError(f"max_bytes must be a positive integer number of bytes, got {max_bytes!r}")
        self.trace = trace
        self.meta = describe(trace)
        self.payload = build_payload(trace, max_bytes=int(max_bytes))
        self.meta.update(queries=self.payload.queries, stride=self.payload.stride, serve=False,
                         note=subset_note(self.meta, self.payload.queries, self.payload.stride),
                         relevance=[] if model is None else class_relevance(trace, model, classes))
        self.image_url = _png_data_url(image)
        self.html = render_html(self.meta, self.image_url, self.payload.to_bytes())

    @property
    def queries(self):
        return self.payload.queries

    @property
    def stride(self):
        return self.payload.stride

    @property
    def note(self) -> str:
        """What the user must know about the data in the file ('' when it holds every query)."""
        return self.meta["note"]

    def save(self, path) -> str:
        """Write the page to ``path`` (an .html file; its folder is created); returns the absolute path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ArgumentError(f"{path!r} is a folder; give the explorer a file name such as {path}/explorer.html")
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.html)
        return os.path.abspath(path)

    def _repr_html_(self) -> str:
        """Inline in Jupyter: the page in an iframe (srcdoc), so its script and styles touch nothing else."""
        return (f"<iframe srcdoc=\"{html.escape(self.html, quote=True)}\" style=\"width:100%;height:900px;"
                f"border:1px solid #ccc\" sandbox=\"allow-scripts\"></iframe>")


def explore(trace, max_bytes=MAX_BYTES, model=None, classes=3) -> Explorer:
    """The interactive explorer of ``trace`` (from ``model.run(image)``; of a batch, its first image): see the
    module docstring. With ``model`` (the ViT that made the trace), the relevance of the ``classes`` most
    probable classes too."""
    return Explorer(trace, max_bytes=max_bytes, model=model, classes=classes)


# --- on demand, for grids too large for one file ------------------------------------------------

def query_bytes(trace, attentions, token: int) -> bytes:
    """One query's rows as the server sends them: row_max, prefix (float32) then codes, uncompressed."""
    codes, row_max, prefix = quantise(query_rows(attentions, [token]), int(trace.num_prefix_tokens))
    return row_max.astype("<f4").tobytes() + prefix.astype("<f4").tobytes() + codes.tobytes()


def make_server(trace, port=0, host="127.0.0.1", model=None, classes=3):
    """An http.server on ``host`` (default 127.0.0.1, this machine only) serving the page at / and each query's
    rows at /query/<token>, computed when asked. Returns the server; ``server.serve_forever()`` runs it."""
    if host not in ("127.0.0.1", "localhost"):
        raise ArgumentError(f"the explorer serves this machine only (127.0.0.1); got host {host!r}")
    if not is_trace(trace) or trace_image(trace) is None:
        raise ArgumentError("serve takes a Trace of an image (trace = model.run(path))")
    attentions = [np.asarray(a[0]) for a in trace_attention(trace)]
    tokens = attentions[0].shape[-1]
    meta = describe(trace)
    meta.update(queries=list(range(tokens)), stride=1, serve=True, note="",
                relevance=[] if model is None else class_relevance(trace, model, classes))
    page = render_html(meta, _png_data_url(trace_image(trace)), None).encode("utf-8")
    lock = threading.Lock()   # one query at a time: each already uses every core through BLAS

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path in ("/", "/index.html"):
                return self._send(page, "text/html; charset=utf-8")
            prefix, _, token = self.path.partition("/query/")
            if prefix == "" and token.isdigit() and int(token) < tokens:
                with lock:
                    body = query_bytes(trace, attentions, int(token))
                return self._send(body, "application/octet-stream")
            self.send_error(404, f"no such page; the explorer is at / and query rows at /query/0..{tokens - 1}")

        def _send(self, body, kind):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):   # quiet: the command line prints the address once
            pass

    return ThreadingHTTPServer((host, int(port)), Handler)
