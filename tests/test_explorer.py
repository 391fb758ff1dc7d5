"""The attention explorer's data (numpy_vit.viz.explorer): what the page reads is the trace's, within the stated
8-bit bound; the rollout rows are analysis.attention_rollout's; the file is self-contained and small enough;
large grids keep a stated subset or are served on demand; bad input is named. The page itself is driven in a
browser by tests/test_explorer_browser.py."""
import base64
import gzip
import json
import re
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from numpy_vit import ViT, ViTConfig, analysis, cli, sample_image
from numpy_vit.errors import ArgumentError
from numpy_vit.trace import Trace
from numpy_vit.viz import explorer
from numpy_vit.weights.named_models import default_model_exists, load_model


@pytest.fixture(scope="module")
def shipped_trace():
    assert default_model_exists(), "weights/default.npz, the shipped model, is missing"
    return load_model("default").run(sample_image())


@pytest.fixture(scope="module")
def shipped_page(shipped_trace):
    return explorer.explore(shipped_trace)


@pytest.fixture(scope="module")
def register_model():
    """Four registers and a class token on a non-square 3x5 grid: every prefix and layout case at once."""
    config = ViTConfig(img_size=(48, 80), patch_size=16, embed_dim=32, depth=3, num_heads=2, num_classes=4,
                       num_reg_tokens=4, crop_pct=1.0, name="tiny_reg4")
    return ViT(config, seed=1)


@pytest.fixture(scope="module")
def register_trace(register_model):
    return register_model.run(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))


def page_parts(text):
    """The metadata and the data blob of a page, as its JavaScript reads them."""
    meta = json.loads(re.search(r'<script type="application/json" id="nv-meta">(.*?)</script>', text, re.S).group(1))
    blob = re.search(r'<script type="text/plain" id="nv-data">(.*?)</script>', text, re.S).group(1)
    return meta, base64.b64decode(blob)


def trace_rows(trace, token):
    """[R, N] in float64 straight from the trace: every layer's heads, then the rollout from every start layer."""
    attention = [np.asarray(a[0], dtype=np.float64) for a in trace.attention]
    rows = [a[h, token] for a in attention for h in range(a.shape[0])]
    rows += [analysis.attention_rollout(trace.attention, start_layer=s)[0, token] for s in range(len(attention))]
    return np.stack(rows)


def test_the_page_holds_the_traces_numbers_within_the_stated_8_bit_bound(register_trace):
    page = explorer.explore(register_trace)
    meta, blob = page_parts(page.html)
    data = explorer.decode_payload(blob, meta)
    prefix = register_trace.num_prefix_tokens
    assert meta["queries"] == list(range(prefix + 15)) and meta["stride"] == 1
    assert meta["prefix_names"] == ["cls", "reg0", "reg1", "reg2", "reg3"] and meta["grid"] == [3, 5]
    for index, token in enumerate(meta["queries"]):
        expected = trace_rows(register_trace, token)                                   # [R, N]
        shown = explorer.dequantise(data.codes[index], data.row_max[index])            # [R, P]
        row_max = expected[:, prefix:].max(-1)
        # rounding to the nearest of 255 steps: at most half a step, row_max / 510; float32 row_max adds 1e-7
        assert np.all(np.abs(shown - expected[:, prefix:]) <= row_max[:, None] / 510 * (1 + 1e-6) + 1e-9)
        # the prefix columns and each row's max are float32 copies: float32's relative rounding, 2**-24
        np.testing.assert_allclose(data.prefix[index], expected[:, :prefix], rtol=2 ** -23, atol=1e-30)
        np.testing.assert_allclose(data.row_max[index], row_max, rtol=2 ** -23)
        # the trace's largest patch is coded 255 exactly: the page's brightest patch is the trace's argmax
        # (near-equal values of this random model may share the top code)
        top = expected[:, prefix:].argmax(-1)
        assert np.all(data.codes[index][np.arange(len(top)), top] == 255)


def test_rollout_rows_are_attention_rollout_from_every_start_layer(shipped_trace):
    queries = [0, 1, 50, 196]
    rows = explorer.rollout_rows([a[0] for a in shipped_trace.attention], queries)     # [L, Q, N]
    for start in (0, 5, shipped_trace.depth - 1):    # the whole stack, a middle start, the last layer alone
        reference = analysis.attention_rollout(shipped_trace.attention, start_layer=start)[0][queries]
        # the same float64 products grouped differently (row vectors first): a few ulps of values <= 1
        np.testing.assert_allclose(rows[start], reference, rtol=0, atol=1e-12)
        np.testing.assert_allclose(rows[start].sum(-1), 1.0, atol=1e-12)


def test_class_relevance_is_chefers_for_the_top_classes(register_model, register_trace):
    page = explorer.explore(register_trace, model=register_model, classes=2)
    meta, _ = page_parts(page.html)
    assert [r["label"] for r in meta["relevance"]] == [f"class {i}" for i in np.argsort(-register_trace.logits[0])[:2]]
    for entry in meta["relevance"]:
        index = int(entry["label"].split()[1])
        expected = analysis.explanation_map(register_trace, register_model.backward(register_trace, index), "chefer")
        # the page holds float32 copies: float32's relative rounding, 2**-24, of each value
        np.testing.assert_allclose(entry["values"], expected[0].ravel(), rtol=2 ** -23, atol=1e-30)
        assert entry["probability"] == pytest.approx(register_trace.probabilities()[0, index], rel=1e-12)
    assert page_parts(explorer.explore(register_trace).html)[0]["relevance"] == []        # no model, no relevance
    assert explorer.class_relevance(register_trace, register_model, 0) == []
    backbone = ViT(register_model.config.replace(num_classes=0), seed=1)
    assert explorer.class_relevance(backbone.run(np.zeros((48, 80, 3), np.uint8)), backbone, 3) == []
    with pytest.raises(ArgumentError, match="number of classes to explain"):
        explorer.explore(register_trace, model=register_model, classes=-1)


def test_the_file_is_self_contained_and_says_how_its_numbers_are_stored(shipped_page, tmp_path):
    path = shipped_page.save(tmp_path / "sub" / "explorer.html")
    text = open(path, encoding="utf-8").read()
    assert text == shipped_page.html
    # nothing that a browser would fetch: no URL but data: in src/href, no stylesheet link, no CSS url()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text)
    assert "<link" not in text and "url(" not in text and "@import" not in text
    assert not re.search(r"https?://", text), "a web address in the page"
    assert "default-src 'none'" in text                # the page's own policy forbids loading anything
    meta, _ = page_parts(text)
    assert meta["model"] == "numpy_vit_shapes_patch16_224" and meta["depth"] == 12 and meta["heads"] == 8
    assert [label for label, _ in meta["top5"]] == [label for label, _ in shipped_page.trace.top_k(5)]
    assert "8 bits per patch relative to the row's" in open(explorer.os.path.join(explorer.ASSETS, "explorer.js")).read()


def test_the_shipped_model_and_vit_b16_fit_their_size_limits(shipped_page):
    size = len(shipped_page.html.encode("utf-8"))
    assert size < 5_000_000, f"the shipped model's explorer is {size / 1e6:.2f} MB"
    assert shipped_page.stride == 1 and len(shipped_page.queries) == 197 and shipped_page.note == ""
    base = ViT(ViTConfig.preset("vit_base_patch16_224"), seed=0)
    page = explorer.explore(base.run(sample_image(), record=["blocks.*.attn.pattern", "logits"]))
    size = len(page.html.encode("utf-8"))
    assert size < 12_000_000, f"ViT-B/16's explorer is {size / 1e6:.2f} MB"
    assert page.stride == 1 and len(page.queries) == 197


def test_a_grid_too_large_for_one_file_keeps_a_strided_subset_and_says_so():
    config = ViTConfig(img_size=148, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=0,
                       num_reg_tokens=4, crop_pct=1.0)
    trace = ViT(config, seed=0).run(np.zeros((148, 148, 3), np.uint8))                  # a 37 x 37 grid
    rows_per_query, patches = 2 * 2 + 2, 37 * 37
    budget = 100 * rows_per_query * patches                         # room for 100 of the 1374 queries
    page = explorer.explore(trace, max_bytes=budget)
    assert page.stride == 4        # stride 3 keeps 5 + 12 * 12 = 149 queries, stride 4 keeps 5 + 9 * 9 = 86
    kept = page.queries[5:]
    assert page.queries[:5] == [0, 1, 2, 3, 4] and len(page.queries) * rows_per_query * patches <= budget
    rows = sorted({(q - 5) // 37 for q in kept})
    assert rows == list(range(2, 37, 4)) and len(kept) == len(rows) ** 2
    assert "every 4th patch" in page.note and "--serve" in page.note and "(86 of 1374)" in page.note
    for stride, said in ((2, "2nd"), (3, "3rd"), (11, "11th"), (21, "21st"), (22, "22nd")):
        assert f"every {said} patch" in explorer.subset_note(page.meta, page.queries, stride)
    assert explorer.subset_note(page.meta, page.queries, 1) == ""
    meta, blob = page_parts(page.html)
    assert meta["stride"] == 4 and explorer.decode_payload(blob, meta).codes.shape == (len(page.queries), 6, patches)


def test_held_queries_takes_the_smallest_stride_that_fits():
    for grid, budget, stride in (((14, 14), 10 ** 9, 1), ((37, 37), 6 * 1369 * 105, 4), ((37, 37), 1, 37)):
        queries, got = explorer.held_queries(grid, 1, 6, budget)
        assert got == stride
        assert stride == grid[0] or len(queries) * 6 * grid[0] * grid[1] <= budget
        if stride > 1:   # the next smaller stride would not fit
            smaller = len(range((stride - 1) // 2, grid[0], stride - 1)) ** 2 + 1
            assert smaller * 6 * grid[0] * grid[1] > budget


def test_serve_computes_any_querys_rows_on_demand(register_trace):
    server = explorer.make_server(register_trace, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        page = urllib.request.urlopen(base + "/").read().decode("utf-8")
        meta, blob = page_parts(page)
        assert meta["serve"] is True and blob == b"" and meta["queries"] == list(range(20))
        body = urllib.request.urlopen(base + "/query/7").read()
        data = explorer.decode_payload(gzip.compress(body), dict(meta, queries=[7]))
        expected = trace_rows(register_trace, 7)
        # the same 8-bit coding as a file: within half a step of the row's max
        assert np.all(np.abs(explorer.dequantise(data.codes[0], data.row_max[0]) - expected[:, 5:])
                      <= expected[:, 5:].max(-1, keepdims=True) / 510 * (1 + 1e-6) + 1e-9)
        for bad in ("/query/20", "/query/x", "/elsewhere"):
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(base + bad)
            assert error.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ArgumentError, match="127.0.0.1"):
        explorer.make_server(register_trace, host="0.0.0.0")


def test_bad_input_is_named(register_trace, tmp_path):
    with pytest.raises(ArgumentError, match="takes a Trace"):
        explorer.explore(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ArgumentError, match="max_bytes"):
        explorer.explore(register_trace, max_bytes=0)
    model = ViT(register_trace.config, seed=1)
    with pytest.raises(ArgumentError, match="no attention patterns"):
        explorer.explore(model.run(np.zeros((48, 80, 3), np.uint8), record=["logits"]))
    bare = Trace(register_trace.config, register_trace.grid)   # attention alone: no image, no input to rebuild one
    for name, array in register_trace.items():
        if name.endswith("attn.pattern"):
            bare.add(name, array)
    with pytest.raises(ArgumentError, match="no image"):
        explorer.explore(bare)
    page = explorer.explore(register_trace)
    with pytest.raises(ArgumentError, match="is a folder"):
        page.save(tmp_path)


def test_jupyter_shows_the_page_in_an_isolated_frame(register_trace):
    shown = explorer.explore(register_trace)._repr_html_()
    assert shown.startswith("<iframe srcdoc=\"") and "sandbox=\"allow-scripts\"" in shown
    assert "<script" not in shown.split("srcdoc=")[0] and "&lt;script" in shown   # escaped into the attribute


def test_the_command_writes_the_file_and_prints_its_path_and_size(register_model, tmp_path, capsys):
    weights, out = str(tmp_path / "tiny.npz"), tmp_path / "page.html"
    register_model.save(weights)
    assert cli.main(["explore", sample_image(), "--model", weights, "--classes", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and re.search(r"\((\d+\.\d) MiB\)", printed)[1] == f"{out.stat().st_size / 2**20:.1f}"
    meta, _ = page_parts(out.read_text(encoding="utf-8"))
    assert meta["model"] == "tiny_reg4" and len(meta["relevance"]) == 2
    assert cli.main(["explore", sample_image(), "--model", weights, "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
