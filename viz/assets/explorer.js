// numpy-vit attention explorer: the page's code (plain JavaScript, no library, nothing fetched from the network).
// viz/explorer.py inlines it with the metadata (#nv-meta), the image (#nv-image) and the data (#nv-data).
//
// Data layout (viz/explorer.py, Payload): for Q query tokens, R = L*H + L rows each (layer l, head h at
// l*H + h; the rollout from start layer s at L*H + s), a gzip stream of
//   row_max float32 [Q, R] | prefix float32 [Q, R, T] | codes uint8 [Q, R, P]
// with value = code / 255 * row_max for the P patch columns; the T prefix columns are exact.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const meta = JSON.parse($("nv-meta").textContent);
  const L = meta.depth, H = meta.heads, T = meta.prefix_names.length;
  const GH = meta.grid[0], GW = meta.grid[1], P = GH * GW, R = L * H + L;
  const LEVELS = meta.levels;
  const COLOURS = meta.colours;
  const CELL = Math.max(6, Math.floor(476 / Math.max(GH, GW)));   // screen pixels per patch side
  const WIDTH = GW * CELL, HEIGHT = GH * CELL;
  const held = new Map(meta.queries.map((token, index) => [token, index]));

  const state = {
    // a token index (or "mean"): the summary query (CLS, or the mean over the patch queries of a model without
    // one, where the file holds every query), else the centre patch
    query: T > 0 && meta.summary_query === "cls" ? 0
      : meta.summary_query === "mean" && !meta.serve && meta.stride === 1 ? "mean"
      : T + Math.floor(GH / 2) * GW + Math.floor(GW / 2),
    mode: "attention", layer: L - 1, head: 0, start: 0, cls: 0, interp: "nearest", hover: null, follow: false,
  };
  let store = null;          // {rowMax, prefix, codes} of every held query (file mode)
  const cache = new Map();   // token -> {values [R*P], prefix [R*T], bound [R]} as floats

  // --- data -------------------------------------------------------------------------------------
  async function gunzip(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).arrayBuffer();
  }

  function base64Bytes(text) {
    const binary = atob(text.trim());
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function split(buffer, count) {
    // Float32Array reads the platform's byte order: little-endian on every browser platform in use.
    const rowMax = new Float32Array(buffer, 0, count * R);
    const prefix = new Float32Array(buffer, count * R * 4, count * R * T);
    const codes = new Uint8Array(buffer, count * R * 4 * (1 + T), count * R * P);
    return { rowMax, prefix, codes };
  }

  function rowsFrom(parts, index) {
    const values = new Float32Array(R * P), prefix = new Float32Array(R * T), bound = new Float32Array(R);
    for (let r = 0; r < R; r++) {
      const max = parts.rowMax[index * R + r], base = (index * R + r) * P;
      for (let k = 0; k < P; k++) values[r * P + k] = parts.codes[base + k] / LEVELS * max;
      for (let t = 0; t < T; t++) prefix[r * T + t] = parts.prefix[(index * R + r) * T + t];
      bound[r] = max / (2 * LEVELS);   // rounding to the nearest of 255 steps
    }
    return { values, prefix, bound };
  }

  function meanOfPatchQueries() {
    // The mean over every patch query (the pooled token of a mean-pooling model): an average of rows.
    const sum = { values: new Float32Array(R * P), prefix: new Float32Array(R * T), bound: new Float32Array(R) };
    for (let token = T; token < T + P; token++) {
      const rows = rowsFrom(store, held.get(token));
      for (let i = 0; i < R * P; i++) sum.values[i] += rows.values[i] / P;
      for (let i = 0; i < R * T; i++) sum.prefix[i] += rows.prefix[i] / P;
      for (let i = 0; i < R; i++) sum.bound[i] += rows.bound[i] / P;
    }
    return sum;
  }

  async function rowsOf(token) {
    if (cache.has(token)) return cache.get(token);
    let rows;
    if (token === "mean") rows = meanOfPatchQueries();
    else if (meta.serve) {
      const response = await fetch("query/" + token);
      if (!response.ok) throw new Error("the server answered " + response.status + " for query " + token);
      rows = rowsFrom(split(await response.arrayBuffer(), 1), 0);
    } else rows = rowsFrom(store, held.get(token));
    cache.set(token, rows);
    return rows;
  }

  // --- one map from a query's rows ----------------------------------------------------------------
  function row(rows, r) {
    return { values: rows.values.subarray(r * P, (r + 1) * P), prefix: rows.prefix.subarray(r * T, (r + 1) * T),
             bound: rows.bound[r] };
  }

  function fused(rows, layer, how) {
    const values = new Float32Array(P), prefix = new Float32Array(T);
    let bound = 0;
    for (let h = 0; h < H; h++) {
      const one = row(rows, layer * H + h);
      for (let k = 0; k < P; k++) values[k] = how === "mean" ? values[k] + one.values[k] / H
                                                             : Math.max(values[k], one.values[k]);
      for (let t = 0; t < T; t++) prefix[t] = how === "mean" ? prefix[t] + one.prefix[t] / H
                                                             : Math.max(prefix[t], one.prefix[t]);
      bound = how === "mean" ? bound + one.bound / H : Math.max(bound, one.bound);
    }
    return { values, prefix, bound, shares: how === "mean" };
  }

  function relevanceMap(index) {
    // Chefer et al. (2021) relevance for one class: float32 values in the metadata, exact; not a distribution
    const values = Float32Array.from(meta.relevance[index].values);
    return { values, prefix: new Float32Array(T), bound: 0, shares: false, exact: true };
  }

  function mapOf(rows, view) {
    if (view.mode === "relevance") return relevanceMap(view.cls);
    if (view.mode === "rollout") return Object.assign(row(rows, L * H + view.start), { shares: true });
    if (view.head === "mean" || view.head === "max") return fused(rows, view.layer, view.head);
    return Object.assign(row(rows, view.layer * H + view.head), { shares: true });
  }

  // --- drawing ----------------------------------------------------------------------------------
  function colourOf(value, max) {
    const index = Math.min(255, Math.max(0, Math.round(value / max * 255)));
    return COLOURS[index];
  }

  function paintGrid(canvas, values, max) {
    // One pixel per patch: the canvas is as large as the grid, CSS scales it.
    canvas.width = GW; canvas.height = GH;
    const context = canvas.getContext("2d");
    const image = context.createImageData(GW, GH);
    for (let k = 0; k < P; k++) {
      const c = colourOf(values[k], max);
      image.data.set([c[0], c[1], c[2], 255], 4 * k);
    }
    context.putImageData(image, 0, 0);
  }

  function drawOverlay(map) {
    const canvas = $("nv-overlay");
    const max = Math.max(...map.values) || 1;
    const small = document.createElement("canvas");
    paintGrid(small, map.values, max);
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = state.interp === "bilinear";
    context.imageSmoothingQuality = "low";   // bilinear
    context.clearRect(0, 0, WIDTH, HEIGHT);
    context.drawImage(small, 0, 0, WIDTH, HEIGHT);
    $("nv-cb-min").textContent = "0";
    $("nv-cb-max").textContent = format(max);
    return max;
  }

  function drawGridLines() {
    const canvas = $("nv-grid"), context = canvas.getContext("2d");
    context.clearRect(0, 0, WIDTH, HEIGHT);
    if ($("nv-grid-lines").checked) {
      context.strokeStyle = "rgba(255,255,255,0.28)";
      context.lineWidth = 1;
      context.beginPath();
      for (let c = 1; c < GW; c++) { context.moveTo(c * CELL + 0.5, 0); context.lineTo(c * CELL + 0.5, HEIGHT); }
      for (let r = 1; r < GH; r++) { context.moveTo(0, r * CELL + 0.5); context.lineTo(WIDTH, r * CELL + 0.5); }
      context.stroke();
    }
    if (meta.stride > 1 && !meta.serve) {   // the patches this file holds as queries
      context.fillStyle = "rgba(255,255,255,0.8)";
      for (const token of held.keys()) if (token >= T) {
        const k = token - T;
        context.fillRect((k % GW) * CELL + CELL / 2 - 1.5, Math.floor(k / GW) * CELL + CELL / 2 - 1.5, 3, 3);
      }
    }
    if (typeof state.query === "number" && state.query >= T) {
      const k = state.query - T;
      context.strokeStyle = "#ff3030"; context.lineWidth = 3;
      context.strokeRect((k % GW) * CELL + 1.5, Math.floor(k / GW) * CELL + 1.5, CELL - 3, CELL - 3);
    }
    if (state.hover !== null) {
      context.strokeStyle = "#ffffff"; context.lineWidth = 1.5;
      context.strokeRect((state.hover % GW) * CELL + 0.75, Math.floor(state.hover / GW) * CELL + 0.75,
                         CELL - 1.5, CELL - 1.5);
    }
  }

  function format(value) {
    if (value === 0) return "0";
    if (Math.abs(value) >= 0.01) return value.toFixed(4);
    return value.toExponential(3);
  }

  function tokenName(token) {
    if (token === "mean") return meta.summary_query === "mean" ? meta.summary_label : "mean over all patch queries";
    if (token < T) return meta.prefix_names[token];
    const k = token - T;
    return "patch " + k + " (row " + Math.floor(k / GW) + ", col " + (k % GW) + ")";
  }

  function viewName() {
    if (state.mode === "relevance") return "relevance for class " + meta.relevance[state.cls].label;
    if (state.mode === "rollout") return "rollout from layer " + state.start + " through layer " + (L - 1);
    const head = state.head === "mean" ? "mean over heads" : state.head === "max" ? "max over heads"
                                                                                 : "head " + state.head;
    return "layer " + state.layer + ", " + head;
  }

  function drawShares(map) {
    const bar = $("nv-share-bar"), text = $("nv-share-text");
    bar.textContent = "";
    if (!map.shares) {
      text.textContent = state.mode === "relevance"
        ? "Relevance is not a distribution: choose attention or rollout to see the shares."
        : "The max over heads is not a distribution (its rows do not sum to 1): choose a head or the mean to " +
          "see the shares.";
      return;
    }
    const parts = [];
    const prefixColours = ["#d33", "#e98b2a", "#b05fc7", "#7d5a3c", "#e377c2", "#17becf"];
    let prefixTotal = 0;
    const registers = [];
    meta.prefix_names.forEach((name, t) => {
      prefixTotal += map.prefix[t];
      if (name.startsWith("reg")) registers.push(map.prefix[t]);
      else parts.push([name.toUpperCase(), map.prefix[t], prefixColours[t % prefixColours.length]]);
    });
    if (registers.length) parts.push(["registers (" + registers.length + ")", registers.reduce((a, b) => a + b, 0),
                                      "#b05fc7"]);
    parts.push(["patches", Math.max(0, 1 - prefixTotal), "#3b6fb6"]);
    for (const [name, share, colour] of parts) {
      const piece = document.createElement("div");
      piece.style.width = (100 * share) + "%"; piece.style.background = colour; piece.title = name;
      bar.appendChild(piece);
    }
    text.textContent = parts.map(([name, share]) => name + " " + (100 * share).toFixed(1) + "%").join(" · ");
  }

  async function redraw() {
    const rows = await rowsOf(state.query);
    const map = mapOf(rows, state);
    state.map = map;
    state.max = drawOverlay(map);
    $("nv-overlay").style.opacity = $("nv-opacity").value / 100;
    drawGridLines();
    $("nv-query-label").textContent = tokenName(state.query);
    $("nv-title").textContent = state.mode === "relevance"
      ? "Relevance of each patch for class " + meta.relevance[state.cls].label + " (Chefer et al. 2021, " +
        (T && meta.prefix_names[0] === "cls" ? "the class token's row" : "the mean of the patch rows") + ")"
      : "Attention of " + tokenName(state.query) + ": " + viewName();
    $("nv-cb-caption").textContent = ({ rollout: "rollout weight", relevance: "relevance" }[state.mode] ||
                                      "attention weight") + " (colour scaled to this map's largest patch value)";
    for (const button of document.querySelectorAll("button.nv-token"))
      button.classList.toggle("nv-active", button.dataset.token === String(state.query));
    for (const [id, shown] of [["nv-layer", state.mode === "attention"], ["nv-head", state.mode === "attention"],
                               ["nv-start", state.mode === "rollout"], ["nv-class", state.mode === "relevance"]]) {
      $(id).hidden = !shown; $(id + "-label").hidden = !shown;
    }
    $("nv-mode").value = state.mode; $("nv-layer").value = state.layer; $("nv-head").value = state.head;
    $("nv-start").value = state.start; $("nv-class").value = state.cls;
    drawShares(map);
    drawModelView(rows);
    readout();
    document.body.dataset.query = String(state.query);
    document.body.dataset.view = viewName();
  }

  function readout() {
    const out = $("nv-readout");
    if (state.hover === null || !state.map) {
      out.textContent = "Point at a patch to read its value.";
      delete out.dataset.key;
      return;
    }
    const k = state.hover, value = state.map.values[k];
    out.dataset.key = k; out.dataset.value = value; out.dataset.bound = state.map.bound;
    const where = "key patch " + k + " (row " + Math.floor(k / GW) + ", col " + (k % GW) + "): ";
    out.textContent = state.map.exact ? where + "relevance " + format(value)
                                      : where + "weight " + format(value) + " ± " + format(state.map.bound) +
                                        " (8-bit storage)";
  }

  // --- the model view ---------------------------------------------------------------------------
  let modelCells = null;
  function buildModelView() {
    const grid = $("nv-model-view");
    grid.style.gridTemplateColumns = "auto repeat(" + (H + 2) + ", minmax(24px, 56px))";
    grid.appendChild(document.createElement("div"));
    for (let h = 0; h < H; h++) grid.appendChild(label("div", "nv-mv-head", "h" + h));
    grid.appendChild(label("div", "nv-mv-head", "mean"));
    grid.appendChild(label("div", "nv-mv-head", "rollout"));
    modelCells = [];
    for (let l = 0; l < L; l++) {
      grid.appendChild(label("div", "nv-mv-layer", "L" + l));
      const cells = [];
      for (let c = 0; c < H + 2; c++) {
        const canvas = document.createElement("canvas");
        const view = c < H ? { mode: "attention", layer: l, head: c } : c === H ? { mode: "attention", layer: l, head: "mean" }
                                                                                : { mode: "rollout", start: l };
        canvas.dataset.layer = l; canvas.dataset.column = c < H ? c : c === H ? "mean" : "rollout";
        canvas.title = c <= H ? "layer " + l + ", " + (c < H ? "head " + c : "mean over heads")
                              : "rollout from layer " + l + " through layer " + (L - 1);
        canvas.style.aspectRatio = GW + " / " + GH;
        canvas.addEventListener("click", () => { Object.assign(state, view); redraw(); });
        grid.appendChild(canvas);
        cells.push({ canvas, view });
      }
      modelCells.push(cells);
    }
  }

  function label(tag, cls, text) {
    const element = document.createElement(tag);
    element.className = cls; element.textContent = text;
    return element;
  }

  function drawModelView(rows) {
    for (const cells of modelCells) for (const { canvas, view } of cells) {
      const map = mapOf(rows, view);
      paintGrid(canvas, map.values, Math.max(...map.values) || 1);
      const selected = view.mode === state.mode && (view.mode === "rollout" ? view.start === state.start
                         : view.layer === state.layer && String(view.head) === String(state.head));
      canvas.classList.toggle("nv-selected", selected);
    }
  }

  // --- choosing the query -------------------------------------------------------------------------
  function nearestHeld(k) {
    // Files for large grids hold every stride-th patch only: snap to the nearest one held.
    const token = T + k;
    if (meta.serve || held.has(token)) return token;
    let best = null, bestDistance = Infinity;
    for (const candidate of held.keys()) {
      if (candidate < T) continue;
      const j = candidate - T;
      const d = (Math.floor(j / GW) - Math.floor(k / GW)) ** 2 + ((j % GW) - (k % GW)) ** 2;
      if (d < bestDistance) { best = candidate; bestDistance = d; }
    }
    return best;
  }

  function patchAt(event) {
    const rect = $("nv-grid").getBoundingClientRect();
    const col = Math.floor((event.clientX - rect.left) / rect.width * GW);
    const r = Math.floor((event.clientY - rect.top) / rect.height * GH);
    if (col < 0 || col >= GW || r < 0 || r >= GH) return null;
    return r * GW + col;
  }

  function selectPatch(k) {
    state.query = nearestHeld(k);
    redraw();
  }

  function moveQuery(dr, dc) {
    const step = meta.serve ? 1 : meta.stride;
    let k = typeof state.query === "number" && state.query >= T ? state.query - T
                                                                 : Math.floor(GH / 2) * GW + Math.floor(GW / 2);
    const r = Math.min(GH - 1, Math.max(0, Math.floor(k / GW) + dr * step));
    const c = Math.min(GW - 1, Math.max(0, (k % GW) + dc * step));
    selectPatch(r * GW + c);
  }

  function wire() {
    const grid = $("nv-grid");
    grid.addEventListener("click", (event) => { const k = patchAt(event); if (k !== null) selectPatch(k); grid.focus(); });
    grid.addEventListener("mousemove", (event) => {
      const k = patchAt(event);
      if (k === state.hover) return;
      state.hover = k;
      if (state.follow && k !== null && nearestHeld(k) !== state.query) { selectPatch(k); return; }
      drawGridLines(); readout();
    });
    grid.addEventListener("mouseleave", () => { state.hover = null; drawGridLines(); readout(); });
    document.addEventListener("keydown", (event) => {
      if (event.target.tagName === "SELECT" || event.target.tagName === "INPUT") return;
      const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
      if (moves[event.key]) { event.preventDefault(); moveQuery(...moves[event.key]); return; }
      const heads = [...Array(H).keys(), "mean", "max"];
      if (event.key === "[" || event.key === "]") {
        const d = event.key === "]" ? 1 : -1;
        if (state.mode === "rollout") state.start = (state.start + d + L) % L;
        else state.layer = (state.layer + d + L) % L;
        redraw();
      } else if (event.key === "-" || event.key === "=") {
        const index = heads.findIndex((h) => String(h) === String(state.head));
        state.head = heads[(index + (event.key === "=" ? 1 : -1) + heads.length) % heads.length];
        redraw();
      }
    });
    $("nv-mode").addEventListener("change", (e) => { state.mode = e.target.value; redraw(); });
    $("nv-layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); redraw(); });
    $("nv-head").addEventListener("change", (e) => {
      state.head = isNaN(Number(e.target.value)) ? e.target.value : Number(e.target.value); redraw(); });
    $("nv-start").addEventListener("change", (e) => { state.start = Number(e.target.value); redraw(); });
    $("nv-class").addEventListener("change", (e) => { state.cls = Number(e.target.value); redraw(); });
    $("nv-interp").addEventListener("change", (e) => { state.interp = e.target.value; redraw(); });
    $("nv-opacity").addEventListener("input", (e) => { $("nv-overlay").style.opacity = e.target.value / 100; });
    $("nv-grid-lines").addEventListener("change", drawGridLines);
    $("nv-follow").addEventListener("change", (e) => { state.follow = e.target.checked; });
  }

  function options(select, values, labelOf) {
    for (const value of values) {
      const option = document.createElement("option");
      option.value = value; option.textContent = labelOf(value);
      select.appendChild(option);
    }
  }

  function setUp() {
    const geometry = L + " layers × " + H + " heads, width " + meta.width + ", " + meta.patch_size + " px patches, " +
                     GH + "×" + GW + " grid, " + meta.img_size[1] + "×" + meta.img_size[0] + " px input, prefix tokens: " +
                     (T ? meta.prefix_names.join(", ") : "none");
    $("nv-model").textContent = meta.model + " — " + geometry;
    const image = $("nv-img");
    image.src = $("nv-image").textContent.trim();
    image.width = WIDTH; image.height = HEIGHT;
    for (const id of ["nv-overlay", "nv-grid"]) { $(id).width = WIDTH; $(id).height = HEIGHT; }
    document.querySelector(".nv-colourbar").style.width = WIDTH + "px";
    for (const selector of [".nv-readout", ".nv-shares"])
      document.querySelector(selector).style.maxWidth = Math.max(WIDTH, 540) + "px";
    options($("nv-layer"), [...Array(L).keys()], (l) => String(l));
    options($("nv-head"), [...Array(H).keys(), "mean", "max"],
            (h) => (typeof h === "number" ? String(h) : h === "mean" ? "mean over heads" : "max over heads"));
    options($("nv-start"), [...Array(L).keys()], (l) => String(l));
    options($("nv-class"), [...meta.relevance.keys()],
            (i) => meta.relevance[i].label + " (" + (100 * meta.relevance[i].probability).toFixed(1) + "%)");
    if (meta.relevance.length) {
      options($("nv-mode"), ["relevance"], () => "class relevance (Chefer et al. 2021)");
      $("nv-relevance-note").textContent = "Class relevance: Chefer, Gur & Wolf (2021), eqs. 5-6: per layer the " +
        "gradient of the class's logit times the attention, negatives cut per head, averaged over heads, " +
        "accumulated as R + A R from the identity; the class token's row, over the patches (float32, exact). " +
        "It does not depend on the query.";
    }
    $("nv-grid-lines").checked = CELL >= 16;   // lines on a fine grid would hide the image
    const buttons = $("nv-prefix-buttons");
    const tokens = [...meta.prefix_names.keys()];
    if (!meta.serve && meta.stride === 1) tokens.push("mean");
    for (const token of tokens) {
      const button = document.createElement("button");
      button.className = "nv-token"; button.dataset.token = String(token);
      button.textContent = token === "mean" ? "mean of patches" : meta.prefix_names[token].toUpperCase();
      button.title = token === "mean" ? "the average of every patch query's row (the pooled token of models " +
                                        "without CLS)" : "the " + meta.prefix_names[token] + " token as the query";
      button.addEventListener("click", () => { state.query = token; redraw(); });
      buttons.appendChild(button);
    }
    const bar = $("nv-colourbar").getContext("2d");
    COLOURS.forEach((c, i) => { bar.fillStyle = "rgb(" + c.join(",") + ")"; bar.fillRect(i, 0, 1, 14); });
    const step = (0.5 / LEVELS).toFixed(4);
    $("nv-data-note").textContent = "Every attention row is stored with 8 bits per patch relative to the row's " +
      "largest patch value, so a shown value is within " + step + " × that value of the trace's (the ± in the " +
      "readout); the attention to prefix tokens is stored exactly (float32). Colours: " + meta.colour_map + ".";
    const notice = $("nv-notice");
    if (meta.serve) {
      notice.hidden = false;
      notice.textContent = "Served by numpy-vit explore --serve on this machine: each query's rows are computed " +
                           "when you pick it.";
    } else if (meta.note) {   // viz/explorer.py's subset_note: the file holds some of the queries
      notice.hidden = false;
      notice.textContent = meta.note.charAt(0).toUpperCase() + meta.note.slice(1) + ".";
    }
    const top = $("nv-top5");
    if (!meta.top5.length) top.textContent = "this model has no classifier";
    const best = meta.top5.length ? meta.top5[0][1] : 1;
    for (const [name, prob] of meta.top5) {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td></td><td><span class='nv-bar'></span></td>";
      tr.children[0].textContent = name;
      tr.children[1].textContent = (100 * prob).toFixed(1) + "%";
      tr.querySelector(".nv-bar").style.width = Math.max(1, 160 * prob / best) + "px";
      top.appendChild(tr);
    }
    buildModelView();
    wire();
  }

  async function main() {
    setUp();
    if (!meta.serve) store = split(await gunzip(base64Bytes($("nv-data").textContent)), meta.queries.length);
    await redraw();
    $("nv-loading").hidden = true;
    document.body.dataset.ready = "1";
  }

  main().catch((error) => {
    $("nv-loading").textContent = "The explorer could not start: " + error;
    document.body.dataset.error = String(error);
  });
})();
