"""The explorer page in a real browser: headless Chromium (Debian's ``chromium`` package) driven by Playwright.

The page is opened from file:// with every request watched: anything but the file itself and data:/blob: URLs
fails the test. Clicks on three patches and on a layer/head of the model view; the overlay's pixels are read
back from its canvas and turned into colour levels through the page's own colour table; they must follow the
trace's attention row. The values under the cursor are checked against the trace, and a screenshot is saved
(``NUMPY_VIT_SCREENSHOT=docs/figures/explorer.png`` writes the README's).

Without chromium or playwright these tests are skipped here with a message saying so; in CI (``CI=true``, as
.ci/run sets it) a missing browser is a failure, never a skip.
"""
import json
import os
import re
import shutil

import numpy as np
import pytest

from numpy_vit import ViT, ViTConfig, analysis, sample_image
from numpy_vit.viz import explorer
from numpy_vit.weights.named_models import load_model

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("NUMPY_VIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
LEVEL_TOLERANCE = 1   # a level is round(value / max * 255): the page rounds a float32 product, the test a float64
                      # one, so a value at a half step may land one level either side


def _missing():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install '.[test]')"
    if CHROMIUM is None:
        return "no chromium executable (apt-get install chromium, or set NUMPY_VIT_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing:
        if IN_CI:
            pytest.fail(f"the browser tests must run in CI: {missing}")
        pytest.skip(f"browser tests skipped on this machine: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def model():
    return load_model("default")


@pytest.fixture(scope="module")
def trace(model):
    return model.run(sample_image())


@pytest.fixture(scope="module")
def page_file(model, trace, tmp_path_factory):
    page = explorer.explore(trace, model=model, classes=2)                # two backward passes
    return page.save(tmp_path_factory.mktemp("explorer") / "explorer.html")


@pytest.fixture(scope="module")
def page(browser, page_file):
    """The explorer opened from file://, with every request it makes recorded in ``page.outside``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1110})
    page.outside = []
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def watch(route):
        url = route.request.url
        if url.startswith(("data:", "blob:")) or url == f"file://{page_file}":
            return route.continue_()
        page.outside.append(url)
        return route.abort()

    page.route("**/*", watch)
    page.on("request", lambda request: None if request.url.startswith(("data:", "blob:", "file:"))
            else page.outside.append(request.url))
    page.goto(f"file://{page_file}")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    page.errors = errors
    yield page
    page.close()


def attention(trace):
    return np.stack([np.asarray(a[0], dtype=np.float64) for a in trace.attention])    # [L, H, N, N]


def patch_centre(page, k, grid):
    box = page.locator("#nv-grid").bounding_box()
    gh, gw = grid
    return box["x"] + (k % gw + 0.5) * box["width"] / gw, box["y"] + (k // gw + 0.5) * box["height"] / gh


def overlay_levels(page, grid):
    """The colour level (0..255) of each patch, read back from the overlay canvas at the patch centres."""
    return np.array(page.evaluate("""([gh, gw]) => {
        const canvas = document.getElementById("nv-overlay");
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        const colours = JSON.parse(document.getElementById("nv-meta").textContent).colours;
        const levels = [];
        for (let k = 0; k < gh * gw; k++) {
            const x = Math.floor(((k % gw) + 0.5) * canvas.width / gw), y = Math.floor((Math.floor(k / gw) + 0.5) * canvas.height / gh);
            const i = 4 * (y * canvas.width + x);
            let best = 0, bestDistance = Infinity;
            colours.forEach((c, level) => {
                const d = (c[0] - pixels[i]) ** 2 + (c[1] - pixels[i + 1]) ** 2 + (c[2] - pixels[i + 2]) ** 2;
                if (d < bestDistance) { best = level; bestDistance = d; }
            });
            levels.push(best);
        }
        return levels;
    }""", list(grid)))


def spearman(a, b):
    """Spearman's rank correlation, ties given their mean rank."""
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):                        # ties share the mean of their ranks
            tied = x == value
            r[tied] = r[tied].mean()
        return r
    return float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1])


def readout(page):
    text = page.locator("#nv-readout").inner_text()
    match = re.fullmatch(r"key patch (\d+) \(row (\d+), col (\d+)\): weight (\S+) ± (\S+) \(8-bit storage\)", text)
    assert match, f"unexpected readout {text!r}"
    return int(match[1]), int(match[2]), int(match[3]), float(match[4]), float(match[5])


def shown_to_within(value):
    """What the page's number format rounds away: 4 decimals from 0.01 up, else 4 significant digits."""
    return 5e-5 if abs(value) >= 0.01 else 5e-4 * abs(value) + 1e-12


def resolvable_head(a, queries, prefix):
    """The (layer, head) whose rows for these queries 8-bit colours can order best.

    A colour level is value / row_max at 8 bits, so values below row_max / 510 all show as level 0: a head whose
    rows put nearly all their mass on one patch has hundreds of tied zeros, and no picture of it can reach a
    rank correlation of 0.99 with the exact row. The order is checked on the head where it is visible; every
    head's levels are checked one by one in test_every_patch_shows_its_level_in_every_view."""
    def worst(layer, head):
        rows = a[layer, head][queries][:, prefix:]
        levels = np.rint(rows / rows.max(-1, keepdims=True) * 255)
        return min(spearman(level, row) for level, row in zip(levels, rows))
    return max(((layer, head) for layer in range(a.shape[0]) for head in range(a.shape[1])), key=lambda lh: worst(*lh))


def test_three_patches_and_a_model_view_head_match_the_trace(page, trace, tmp_path):
    a, prefix, grid = attention(trace), trace.num_prefix_tokens, trace.grid
    patches = [20, 97, 170]
    layer, head = resolvable_head(a, [prefix + k for k in patches], prefix)
    page.locator(f"#nv-model-view canvas[data-layer='{layer}'][data-column='{head}']").click()
    assert page.locator("body").get_attribute("data-view") == f"layer {layer}, head {head}"
    assert page.locator(f"#nv-model-view canvas[data-layer='{layer}'][data-column='{head}']").get_attribute(
        "class") == "nv-selected"
    for k in patches:
        page.mouse.click(*patch_centre(page, k, grid))
        assert page.locator("body").get_attribute("data-query") == str(prefix + k)
        assert page.locator("#nv-query-label").inner_text() == f"patch {k} (row {k // grid[1]}, col {k % grid[1]})"
        row = a[layer, head, prefix + k, prefix:]                                    # the trace's row [P]
        levels = overlay_levels(page, grid)
        assert levels[row.argmax()] == 255, "the brightest key patch is not the trace's argmax"
        assert np.all(np.abs(levels - np.rint(row / row.max() * 255)) <= LEVEL_TOLERANCE)
        assert spearman(levels, row) >= 0.99
    # the README's picture: a patch on the heart's edge, the last layer, and the value under the cursor
    page.mouse.click(*patch_centre(page, 91, grid))
    page.select_option("#nv-layer", "11")
    page.select_option("#nv-head", "0")
    page.mouse.move(*patch_centre(page, 94, grid))
    assert readout(page)[0] == 94
    screenshot = os.environ.get("NUMPY_VIT_SCREENSHOT") or str(tmp_path / "explorer.png")
    page.screenshot(path=screenshot)   # the viewport holds the page: a full-page capture would move the mouse out
    assert open(screenshot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert page.outside == [] and page.errors == []


def test_every_patch_shows_its_level_in_every_view(page, trace):
    """Levels of the fused and rollout views, picked with the page's own controls, against analysis' numbers."""
    a, prefix, grid = attention(trace), trace.num_prefix_tokens, trace.grid
    page.mouse.click(*patch_centre(page, 60, grid))
    query = prefix + 60
    page.select_option("#nv-mode", "attention")
    for layer, head in ((0, "3"), (5, "mean"), (11, "max")):
        page.select_option("#nv-layer", str(layer))
        page.select_option("#nv-head", head)
        rows = a[layer, :, query, prefix:]                                            # [H, P]
        row = rows[int(head)] if head.isdigit() else rows.mean(0) if head == "mean" else rows.max(0)
        # fused views are built from the 8-bit rows: each head's value is within its row max / 510
        slack = rows.max(-1).max() / 510 / row.max() * 255
        levels = overlay_levels(page, grid)
        assert np.all(np.abs(levels - np.rint(row / row.max() * 255)) <= LEVEL_TOLERANCE + slack), (layer, head)
    page.select_option("#nv-mode", "rollout")
    page.select_option("#nv-start", "4")
    row = analysis.attention_rollout(trace.attention, start_layer=4)[0, query, prefix:]
    levels = overlay_levels(page, grid)
    assert levels[row.argmax()] == 255
    assert np.all(np.abs(levels - np.rint(row / row.max() * 255)) <= LEVEL_TOLERANCE)
    assert page.locator("body").get_attribute("data-view") == "rollout from layer 4 through layer 11"
    page.select_option("#nv-mode", "attention")
    assert page.outside == [] and page.errors == []


def test_the_values_under_the_cursor_are_the_traces(page, trace):
    a, prefix, grid = attention(trace), trace.num_prefix_tokens, trace.grid
    page.mouse.click(*patch_centre(page, 100, grid))
    page.select_option("#nv-layer", "7")
    for head in ("2", "mean"):
        page.select_option("#nv-head", head)
        rows = a[7, :, prefix + 100, prefix:]
        row = rows[int(head)] if head.isdigit() else rows.mean(0)
        for k in (0, 99, 101, 195):
            page.mouse.move(*patch_centre(page, k, grid))
            key, r, c, value, bound = readout(page)
            assert (key, r, c) == (k, k // grid[1], k % grid[1])
            # the stated bound (half an 8-bit step of the row max), and the rounding of the shown digits
            assert abs(value - row[k]) <= bound + shown_to_within(value) + shown_to_within(bound), (head, k)
            assert bound <= rows.max() / 510 * 1.001
    assert page.outside == [] and page.errors == []


def test_prefix_queries_shares_and_arrow_keys(page, trace):
    a, prefix, grid = attention(trace), trace.num_prefix_tokens, trace.grid
    page.locator("button.nv-token[data-token='0']").click()                           # CLS as the query
    page.select_option("#nv-head", "1")
    page.select_option("#nv-layer", "9")
    assert page.locator("body").get_attribute("data-query") == "0"
    cls_share = a[9, 1, 0, 0]
    shares = page.locator("#nv-share-text").inner_text()
    assert f"CLS {100 * cls_share:.1f}%" in shares and f"patches {100 * (1 - cls_share):.1f}%" in shares
    row = a[9, 1, 0, prefix:]
    assert overlay_levels(page, grid)[row.argmax()] == 255
    page.mouse.click(*patch_centre(page, 30, grid))
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    assert page.locator("body").get_attribute("data-query") == str(prefix + 30 + 1 + grid[1])
    page.keyboard.press("]")
    assert page.locator("body").get_attribute("data-view") == "layer 10, head 1"
    page.locator("#nv-follow").check()                                # the query follows the mouse
    page.mouse.move(*patch_centre(page, 5, grid))
    assert page.locator("body").get_attribute("data-query") == str(prefix + 5)
    page.locator("#nv-follow").uncheck()
    assert page.outside == [] and page.errors == []


def test_class_relevance_shows_chefers_map(page, trace):
    grid = trace.grid
    page.select_option("#nv-mode", "relevance")
    page.select_option("#nv-class", "1")                                  # the second most probable class
    second = int(np.argsort(-trace.logits[0])[1])
    # the page's numbers, which tests/test_explorer.py checks against analysis.explanation_map(..., "chefer")
    meta = json.loads(page.locator("#nv-meta").text_content())
    values = np.array(meta["relevance"][1]["values"])                                   # [P]
    assert page.locator("body").get_attribute("data-view") == f"relevance for class {trace.config.labels[second]}"
    levels = overlay_levels(page, grid)
    assert levels[values.argmax()] == 255
    assert np.all(np.abs(levels - np.rint(values / values.max() * 255)) <= LEVEL_TOLERANCE)
    for k in (40, 100):
        page.mouse.move(*patch_centre(page, k, grid))
        text = page.locator("#nv-readout").inner_text()
        match = re.fullmatch(rf"key patch {k} \(row {k // grid[1]}, col {k % grid[1]}\): relevance (\S+)", text)
        assert match, text
        # float32 in the page; only the shown digits round
        assert abs(float(match[1]) - values[k]) <= shown_to_within(values[k]) + 1e-7 * abs(values[k])
    page.select_option("#nv-mode", "attention")
    assert page.outside == [] and page.errors == []


def test_served_page_computes_the_clicked_query(browser, trace):
    """numpy-vit explore --serve: the page asks 127.0.0.1 for each query's rows, and nothing else."""
    import threading

    server = explorer.make_server(trace, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}/"
    page = browser.new_page(viewport={"width": 1400, "height": 1110})
    asked, errors = [], []
    page.on("request", lambda request: asked.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(address)
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        a, prefix, grid = attention(trace), trace.num_prefix_tokens, trace.grid
        page.select_option("#nv-layer", "2")
        page.select_option("#nv-head", "5")
        page.mouse.click(*patch_centre(page, 150, grid))
        page.wait_for_selector(f"body[data-query='{prefix + 150}']")   # the rows came back from the server
        row = a[2, 5, prefix + 150, prefix:]
        levels = overlay_levels(page, grid)
        assert np.all(np.abs(levels - np.rint(row / row.max() * 255)) <= LEVEL_TOLERANCE)
        assert "every query" not in page.locator("#nv-notice").inner_text()
        assert "computed when you pick it" in page.locator("#nv-notice").inner_text()
        assert all(url.startswith((address, "data:", "blob:")) for url in asked), asked
        assert f"{address}query/{prefix + 150}" in asked and errors == []
    finally:
        page.close()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def large_page():
    """A tiny model on a 37 x 37 grid, in a file with room for 100 queries: stride 4 (see test_explorer.py)."""
    config = ViTConfig(img_size=148, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3,
                       crop_pct=1.0, name="tiny_37x37")
    trace = ViT(config, seed=0).run(np.random.default_rng(1).integers(0, 255, (148, 148, 3), dtype=np.uint8))
    return explorer.explore(trace, max_bytes=100 * (2 * 2 + 2) * 37 * 37)


def test_a_large_grid_file_snaps_clicks_to_the_patches_it_holds(browser, large_page, tmp_path):
    made, grid = large_page, large_page.trace.grid
    page = browser.new_page(viewport={"width": 1400, "height": 1110})
    try:
        page.goto(f"file://{made.save(tmp_path / 'large.html')}")
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        assert "every 4th patch" in page.locator("#nv-notice").inner_text()
        page.mouse.click(*patch_centre(page, 3 * 37 + 5, grid))    # (3, 5): the nearest held patch is (2, 6)
        assert page.locator("body").get_attribute("data-query") == str(1 + 2 * 37 + 6)
        assert 1 + 2 * 37 + 6 in made.queries
    finally:
        page.close()


def test_jupyter_frame_runs_the_page(browser, large_page):
    """_repr_html_ as a notebook shows it: the page inside a sandboxed iframe, decoded and drawn."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.set_content("<html><body>" + large_page._repr_html_() + "</body></html>")
        frame = page.frames[1]
        frame.wait_for_selector("body[data-ready='1']", timeout=20_000)
        assert frame.locator("#nv-model").inner_text().startswith("tiny_37x37")
    finally:
        page.close()
