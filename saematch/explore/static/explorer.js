// saematch explorer: flow view (Plotly Sankey), feature cards, search. Data come from sibling
// .js files (data/meta.js at once; evidence and token indexes lazily by <script> tag), so the
// page works from file:// with no server.
(function () {
  "use strict";
  const SAEM = (window.SAEM = window.SAEM || {});
  const evidence = {}; // "layer_chunk" -> records
  const vocabs = {}; // layer -> {token id: text}
  const tokenIndex = {}; // layer -> {token: [features]}
  const loading = {};
  const SCORE_NAMES = {
    context_tokens: "context tokens", logit_tokens: "logit tokens",
    activation_corr: "activation corr.",
  };
  let M, P, chainLen, layerIdx;

  SAEM.addEvidence = (layer, chunk, records) => { evidence[layer + "_" + chunk] = records; };
  SAEM.addVocab = (layer, vocab) => { vocabs[layer] = vocab; };
  SAEM.addTokens = (layer, index) => { tokenIndex[layer] = index; };

  function loadScript(src) {
    if (!loading[src]) {
      loading[src] = new Promise((resolve, reject) => {
        const s = document.createElement("script");
        s.src = src;
        s.onload = () => resolve();
        s.onerror = () => reject(new Error("cannot load " + src));
        document.head.appendChild(s);
      });
    }
    return loading[src];
  }

  function decode(b64, Type) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Type(bytes.buffer);
  }

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–"
    : Number(x).toPrecision(d).replace(/\.?0+$/, "").replace(/\.?0+e/, "e"));
  const $ = (id) => document.getElementById(id);

  function status(text) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("show", !!text);
  }

  function init() {
    M = SAEM.meta;
    layerIdx = {};
    M.layers.forEach((L, t) => { layerIdx[L] = t; });
    P = M.pairs.map((p) => ({
      a: p.a, b: p.b, randomMse: p.random_mse, threshold: p.threshold,
      perm: decode(p.perm, Int32Array), cost: decode(p.cost, Float32Array),
      mse: decode(p.mse, Float32Array), matched: decode(p.matched, Uint8Array),
      sem: Object.fromEntries(Object.entries(p.sem).map(([k, v]) => [k, decode(v, Float32Array)])),
      inv: null,
    }));
    chainLen = M.chain_len.map((s) => decode(s, Int32Array));
  }

  function inverse(t) { // layer index t+1 -> t
    const p = P[t];
    if (!p.inv) {
      p.inv = new Int32Array(p.perm.length);
      p.perm.forEach((j, i) => { p.inv[j] = i; });
    }
    return p.inv;
  }

  const weight = (t, i) => Math.max(0.04, Math.min(1, 1 - P[t].mse[i] / P[t].randomMse));

  // The full path through feature i of layer index t: every layer, along the permutations.
  function pathThrough(t, i) {
    const feats = [i];
    let j = i;
    for (let s = t - 1; s >= 0; s--) { j = inverse(s)[j]; feats.unshift(j); }
    j = i;
    for (let s = t; s < P.length; s++) { j = P[s].perm[j]; feats.push(j); }
    return { start: 0, feats };
  }

  // A chain of `len` matched steps from (t, i), plus the step where it breaks, if any.
  function chainPath(t, i, len) {
    const feats = [i];
    let j = i;
    for (let s = t; s < Math.min(P.length, t + len + 1); s++) { j = P[s].perm[j]; feats.push(j); }
    return { start: t, feats };
  }

  function drawFlow(paths, highlight) {
    const nodes = new Map(); // "t:i" -> node index
    const perLayer = M.layers.map(() => []);
    const node = (t, i) => {
      const key = t + ":" + i;
      if (!nodes.has(key)) { nodes.set(key, nodes.size); perLayer[t].push(key); }
      return nodes.get(key);
    };
    const links = { source: [], target: [], value: [], color: [], customdata: [] };
    const seen = new Set();
    for (const path of paths) {
      for (let k = 0; k + 1 < path.feats.length; k++) {
        const t = path.start + k, i = path.feats[k], j = path.feats[k + 1];
        const a = node(t, i), b = node(t + 1, j);
        if (seen.has(a + ">" + b)) continue;
        seen.add(a + ">" + b);
        const ok = P[t].matched[i] === 1;
        links.source.push(a);
        links.target.push(b);
        links.value.push(weight(t, i));
        links.color.push(ok ? "rgba(44,110,180,0.55)" : "rgba(214,39,40,0.45)");
        links.customdata.push(`L${M.layers[t]} #${i} → L${M.layers[t + 1]} #${j}<br>` +
          `${ok ? "matched" : "not matched"} · cost ${fmt(P[t].cost[i])} · ` +
          `MSE ${fmt(P[t].mse[i])} (random ${fmt(P[t].randomMse)})`);
      }
    }
    const n = nodes.size, x = new Array(n), y = new Array(n), labels = new Array(n);
    const custom = new Array(n), colors = new Array(n);
    const span = Math.max(1, M.layers.length - 1);
    perLayer.forEach((keys, t) => keys.forEach((key, r) => {
      const k = nodes.get(key), i = Number(key.split(":")[1]);
      x[k] = 0.01 + 0.98 * (t / span);
      y[k] = (r + 0.5) / keys.length;
      labels[k] = `#${i}`;
      custom[k] = `${M.layers[t]}:${i}`;
      colors[k] = highlight === custom[k] ? "#f39c12" : "#50617a";
    }));
    const data = [{
      type: "sankey", arrangement: "fixed",
      node: { label: labels, x, y, pad: 2, thickness: 12, color: colors, customdata: custom,
        hovertemplate: "layer:feature %{customdata}<extra></extra>" },
      link: { ...links, hovertemplate: "%{customdata}<extra></extra>" },
    }];
    const layout = {
      margin: { l: 10, r: 10, t: 30, b: 10 }, font: { size: 10 },
      annotations: M.layers.map((L, t) => ({
        x: 0.01 + 0.98 * (t / span), y: 1.06, xref: "paper", yref: "paper",
        text: "L" + L, showarrow: false, font: { size: 11, color: "#4b5466" } })),
    };
    const el = $("flow");
    const tallest = Math.max(...perLayer.map((keys) => keys.length));
    layout.height = Math.max(220, Math.min(640, 70 + 18 * tallest));
    el.style.height = `${layout.height}px`;
    Plotly.react(el, data, layout, { displaylogo: false, responsive: true });
    if (!el.dataset.bound) {
      el.dataset.bound = "1";
      el.on("plotly_click", (ev) => {
        const pt = ev.points && ev.points[0];
        if (pt && "sourceLinks" in pt && typeof pt.customdata === "string") {
          const [L, i] = pt.customdata.split(":").map(Number);
          openFeature(L, i, false);
        }
      });
    }
    el.dataset.nodes = String(n);
  }

  function drawTopChains() {
    const paths = M.flow.map(([t, i, len]) => chainPath(t, i, len));
    $("flow-title").textContent = paths.length
      ? `Longest chains of matched features (${paths.length}, longest first)`
      : "No matched steps: every feature's first step is not matched";
    drawFlow(paths.length ? paths : [pathThrough(0, 0)], null);
  }

  async function featureRecord(L, i) {
    const c = Math.floor(i / M.chunk);
    const key = L + "_" + c;
    await Promise.all([evidence[key] || loadScript(`data/ev_${L}_${c}.js`),
      vocabs[L] || loadScript(`data/voc_${L}.js`)]);
    return { rec: evidence[key][i - c * M.chunk], vocab: vocabs[L] };
  }

  function scoreCells(t, i) {
    return M.scores.map((s) => `<td>${fmt(P[t].sem[s][i], 2)}</td>`).join("");
  }

  // One step of pair t (feature i of its first layer): the partner link goes to (L2, j).
  function partnerRow(kind, t, i, L2, j) {
    const ok = P[t].matched[i] === 1;
    return `<tr class="partner-row ${kind}"><th>${kind}</th><td><a class="feature-link partner-${kind}"
      data-layer="${L2}" data-index="${j}">L${L2} #${j}</a></td><td>${fmt(P[t].cost[i])}</td>
      <td>${fmt(P[t].mse[i])}</td><td class="${ok ? "ok" : "no"}">${ok ? "matched" : "not matched"}</td>
      ${scoreCells(t, i)}</tr>`;
  }

  function contextHtml(ctx, vocab) {
    const max = Math.max(...ctx.a, 1e-9);
    const toks = ctx.t.map((tok, k) => {
      if (tok < 0) return "";
      const alpha = Math.max(0, ctx.a[k]) / max;
      const cls = k === M.ctx_offset ? "tok fire" : "tok";
      return `<span class="${cls}" title="${fmt(ctx.a[k])}" style="background:rgba(211,84,0,${
        (0.6 * alpha).toFixed(2)})">${esc(vocab[tok])}</span>`;
    }).join("");
    const ds = M.datasets[ctx.d] || "";
    return `<div class="ctx"><span class="ds">${esc(ds)}</span>${toks}<span class="act">${
      fmt(ctx.a[M.ctx_offset])}</span></div>`;
  }

  function tokenList(ids, values, vocab, neg) {
    return `<div class="tokens${neg ? " neg" : ""}">${ids.map((tok, k) =>
      `<span title="${fmt(values[k])}">${esc(vocab[tok])}</span>`).join("")}</div>`;
  }

  async function openFeature(L, i, redraw) {
    const t = layerIdx[L];
    if (t === undefined || !(i >= 0 && i < M.n_features)) {
      status(`no feature ${L}:${i} (layers ${M.layers.join(", ")}; 0–${M.n_features - 1})`);
      return;
    }
    status(`loading layer ${L} …`);
    let rec, vocab;
    try {
      ({ rec, vocab } = await featureRecord(L, i));
    } catch (e) {
      status(String(e));
      return;
    }
    const path = pathThrough(t, i);
    if (redraw) {
      $("flow-title").textContent = `Path through L${L} #${i} across all layers`;
      drawFlow([path], `${L}:${i}`);
    }
    const npId = M.np_ids[t];
    const rows = [];
    if (t > 0) rows.push(partnerRow("prev", t - 1, inverse(t - 1)[i], M.layers[t - 1],
      inverse(t - 1)[i]));
    if (t < P.length) rows.push(partnerRow("next", t, i, M.layers[t + 1], P[t].perm[i]));
    const chain = path.feats.map((f, s) => {
      const here = s === t ? " here" : "";
      const step = s < P.length ? `<span class="step ${P[s].matched[f] ? "ok" : "no"}"></span>` : "";
      return `<a class="feature-link${here}" data-layer="${M.layers[s]}" data-index="${f}">` +
        `${M.layers[s]}:${f}</a>${step}`;
    }).join("");
    const survives = t < P.length ? chainLen[t][i] : 0;
    let html = `<h2>Layer ${L} · feature ${i}</h2>`;
    if (npId) {
      html += `<p><a class="neuronpedia" target="_blank" rel="noopener"
        href="https://www.neuronpedia.org/${esc(npId)}/${i}">Neuronpedia: ${esc(npId)}/${i}</a></p>`;
    }
    if (rec.x) html += `<p class="explanation">${esc(rec.x)}</p>`;
    html += `<p class="stats"><span>threshold ${fmt(rec.th)}</span>`;
    if (rec.fr !== undefined) {
      html += `<span>fires on ${fmt(100 * rec.fr, 2)}% of held-out tokens</span>` +
        `<span>mean activation ${fmt(rec.ma)}</span>`;
    }
    html += `<span>chain: ${survives} matched step${survives === 1 ? "" : "s"} on</span></p>`;
    html += `<h3>Partners (${esc(M.variant)} matching)</h3><table><tr><th></th><th>feature</th>
      <th>cost</th><th>MSE</th><th>decision</th>${M.scores.map((s) =>
      `<th>${esc(SCORE_NAMES[s] || s)}</th>`).join("")}</tr>${rows.join("")}</table>`;
    html += `<h3>Path through all layers</h3><div class="chain">${chain}</div>`;
    if (rec.ctx) {
      html += `<h3>Top held-out contexts</h3>` +
        (rec.ctx.length ? rec.ctx.map((c) => contextHtml(c, vocab)).join("")
          : "<p class=\"dim\">never fires on the held-out text</p>");
    }
    if (rec.lt) {
      html += `<h3>Logit lens: promoted</h3>${tokenList(rec.lt, rec.lv, vocab, false)}` +
        `<h3>suppressed</h3>${tokenList(rec.lb, rec.bv, vocab, true)}`;
    }
    const card = $("card");
    card.className = "card";
    card.dataset.layer = L;
    card.dataset.index = i;
    card.innerHTML = html;
    status("");
  }

  async function searchToken(query) {
    const q = query.trim().toLowerCase();
    const out = $("token-results");
    if (!q) return;
    if (!M.has_contexts && !M.has_logit_lens) {
      out.innerHTML = "<p class=\"dim\">This source has no token evidence (no text, no model).</p>";
      return;
    }
    const hits = [];
    for (const L of M.layers) {
      status(`searching layer ${L} …`);
      if (!tokenIndex[L]) await loadScript(`data/tok_${L}.js`);
      for (const i of tokenIndex[L][q] || []) hits.push([L, i]);
    }
    status("");
    const shown = hits.slice(0, 300);
    out.innerHTML = `<h3>Token “${esc(q)}”: ${hits.length} feature${hits.length === 1 ? "" : "s"}` +
      `${hits.length > shown.length ? ` (first ${shown.length})` : ""}</h3>` +
      shown.map(([L, i]) => `<a class="feature-link" data-layer="${L}" data-index="${i}">` +
        `${L}:${i}</a>`).join(" ");
  }

  // Small multiples: the matched fraction per pair, then each semantic score per pair for every
  // variant against random pairs (mean dashed, 95th percentile dotted).
  function drawOverview() {
    const traces = [{
      x: P.map((p) => `${p.a}→${p.b}`), y: M.pairs.map((p) => p.frac_matched),
      name: `matched (${M.variant})`, mode: "lines+markers", line: { color: "#555" },
      xaxis: "x", yaxis: "y", showlegend: false,
    }];
    const rows = M.semantic_table;
    const variants = [...new Set(rows.map((r) => r.variant))];
    const colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
    const titles = [`matched fraction (${M.variant})`];
    M.scores.forEach((score, k) => {
      const axis = k + 2;
      const pick = (v) => rows.filter((r) => r.variant === v && r.score === score);
      variants.forEach((v, c) => {
        const rs = pick(v);
        traces.push({ x: rs.map((r) => `${r.layer_a}→${r.layer_b}`), y: rs.map((r) => r.mean),
          name: v, legendgroup: v, showlegend: k === 0, mode: "lines+markers",
          line: { color: colors[c % colors.length] }, xaxis: `x${axis}`, yaxis: `y${axis}` });
      });
      const ref = pick(variants[0]);
      for (const [field, dash, name] of [["null_mean", "dash", "random pairs: mean"],
        ["null_q95", "dot", "random pairs: 95th pct"]]) {
        traces.push({ x: ref.map((r) => `${r.layer_a}→${r.layer_b}`), y: ref.map((r) => r[field]),
          name, legendgroup: field, showlegend: k === 0, mode: "lines",
          line: { dash, color: "black", width: 1 }, xaxis: `x${axis}`, yaxis: `y${axis}` });
      }
      titles.push(`${SCORE_NAMES[score] || score} (mean over the matching's pairs)`);
    });
    const layout = {
      height: 170 * titles.length + 60, margin: { l: 45, r: 10, t: 24, b: 30 },
      grid: { rows: titles.length, columns: 1, pattern: "independent", ygap: 0.45 },
      legend: { orientation: "h", y: -0.08 }, font: { size: 11 },
      annotations: titles.map((text, k) => ({ text, showarrow: false, xref: "paper",
        yref: `y${k ? k + 1 : ""} domain`, x: 0, y: 1.18, xanchor: "left", font: { size: 12 } })),
    };
    layout.yaxis = { range: [0, 1.02] };
    Plotly.newPlot($("overview-chart"), traces, layout,
      { displayModeBar: false, responsive: true });
    if (M.judge_table.length) {
      $("judge").innerHTML = "<h3>LLM judge along feature paths</h3><table><tr><th>pair</th>" +
        "<th>SAME</th><th>MAYBE</th><th>DIFFERENT</th><th>other</th></tr>" +
        M.judge_table.map((r) => `<tr><td>${r.layer_a}→${r.layer_b}</td><td>${r.same}</td>` +
          `<td>${r.maybe}</td><td>${r.different}</td><td>${r.other}</td></tr>`).join("") +
        "</table>";
    }
  }

  function parseFeature(text) {
    const m = /^\s*L?(\d+)\s*[:#\s/]\s*#?(\d+)\s*$/i.exec(text);
    return m ? [Number(m[1]), Number(m[2])] : null;
  }

  function bind() {
    $("search-feature").addEventListener("submit", (e) => {
      e.preventDefault();
      const f = parseFeature($("feature-input").value);
      if (f) openFeature(f[0], f[1], true);
      else status("type layer:index, e.g. 3:17");
    });
    $("search-token").addEventListener("submit", (e) => {
      e.preventDefault();
      searchToken($("token-input").value).catch((err) => status(String(err)));
    });
    document.body.addEventListener("click", (e) => {
      const a = e.target.closest("a.feature-link");
      if (a) {
        e.preventDefault();
        openFeature(Number(a.dataset.layer), Number(a.dataset.index), true);
      }
    });
  }

  init();
  bind();
  drawTopChains();
  drawOverview();
  SAEM.openFeature = openFeature;
  SAEM.partner = (t, i) => P[t].perm[i]; // feature i of layer index t -> its partner in t+1
  SAEM.ready = true;
})();
