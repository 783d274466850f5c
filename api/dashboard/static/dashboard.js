/* hookstream dashboard: refreshes each section from its partial, draws the SVG charts from the
   data-chart attributes, and posts review decisions with the session's CSRF token. No libraries. */
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const M = { l: 40, r: 8, t: 10, b: 24 };
  const refreshMs = (Number(document.body.dataset.refreshS) || 5) * 1000;

  function node(name, attrs, parent, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  /* The axis top: 2, 4, 10, 20, 40, 100, ... so that the middle line is a whole number too. */
  function niceMax(v) {
    if (!(v > 2)) return 2;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function short(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(n % 1e6 ? 1 : 0) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return String(Math.round(n * 100) / 100);
  }

  function label(text, format) {
    return format === "time" ? text.slice(11, 16) : text.slice(5, 10);
  }

  /* spec: {kind: "stacked"|"grouped", format: "time"|"day", labels: [...], series: [{name, cls, values}]} */
  function draw(box, spec) {
    box.textContent = "";
    const n = spec.labels.length, series = spec.series || [];
    if (!n) return;
    const stacked = spec.kind !== "grouped";
    const heights = spec.labels.map((_, i) => {
      const vals = series.map((s) => s.values[i] || 0);
      return stacked ? vals.reduce((a, b) => a + b, 0) : Math.max(0, ...vals);
    });
    const top = niceMax(Math.max(0, ...heights));
    // Drawn at the box's own pixel width, so that text keeps its size whatever the layout.
    const W = Math.max(240, Math.round(box.clientWidth || 640)), H = box.classList.contains("tall") ? 200 : 150;
    const pw = W - M.l - M.r, ph = H - M.t - M.b, band = pw / n;
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, "data-kind": spec.kind,
                                "data-max": top }, box);
    const y = (v) => M.t + ph - (v / top) * ph;
    for (const f of [0, 0.5, 1]) {
      node("line", { class: f ? "grid" : "axis", x1: M.l, x2: W - M.r, y1: y(f * top), y2: y(f * top) }, svg);
      node("text", { x: M.l - 4, y: y(f * top) + 3, "text-anchor": "end" }, svg, short(f * top));
    }
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / 56))));
    spec.labels.forEach((text, i) => {
      if ((n - 1 - i) % every === 0) {  // counted back from the newest, which is always labelled
        const last = i === n - 1;
        node("text", { x: last ? W - M.r : M.l + (i + 0.5) * band, y: H - 8, "text-anchor": last ? "end" : "middle" },
             svg, label(text, spec.format));
      }
      let base = 0;
      series.forEach((s, j) => {
        const v = s.values[i] || 0;
        if (!v) return;
        let x, w, yTop;
        if (stacked) {
          x = M.l + i * band + band * 0.1; w = band * 0.8; yTop = y(base + v); base += v;
        } else {
          w = (band * 0.8) / series.length; x = M.l + i * band + band * 0.1 + j * w; yTop = y(v);
        }
        const r = node("rect", {
          class: s.cls, x: x.toFixed(2), y: yTop.toFixed(2), width: Math.max(w, 0.5).toFixed(2),
          height: Math.max((v / top) * ph, 0.5).toFixed(2), "data-series": s.name, "data-index": i,
          "data-label": text, "data-value": v,
        }, svg);
        node("title", {}, r, `${s.name}, ${label(text, spec.format)}${spec.format === "time" ? " UTC" : ""}: ${v}`);
      });
    });
  }

  function drawAll(root) {
    root.querySelectorAll(".chart[data-chart]").forEach((box) => {
      try { draw(box, JSON.parse(box.dataset.chart)); } catch (e) { box.textContent = "chart unavailable"; }
    });
  }

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function mark(ok) {
    const u = document.getElementById("updated");
    if (!u) return;
    const now = new Date().toISOString().slice(11, 19);
    u.textContent = ok ? `page updated ${now} UTC` : `stale: refresh failed at ${now} UTC`;
    u.classList.toggle("stale", !ok);
    if (ok) document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  }

  let running = null;
  const shown = new WeakMap();  // section -> the partial HTML it shows
  function refresh(force) {
    if (running) return force ? running.then(() => refresh(true)) : running;
    if (document.hidden && !force) return Promise.resolve();
    running = reload().finally(() => { running = null; });
    return running;
  }

  async function reload() {
    try {
      const sections = Array.from(document.querySelectorAll("section[data-partial]"));
      await Promise.all(sections.map(async (sec) => {
        const r = await fetch(sec.dataset.partial, { credentials: "same-origin", cache: "no-store",
                                                     headers: { Accept: "text/html" } });
        if (r.status === 401) { location.assign("/login"); throw new Error("logged out"); }
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        const html = await r.text();
        if (html !== shown.get(sec)) {
          sec.innerHTML = html;
          shown.set(sec, html);
          drawAll(sec);
        }
      }));
      mark(true);
    } catch (e) {
      mark(false);
    }
  }

  function say(text, bad) {
    const p = document.getElementById("decision-result");
    if (!p) return;
    p.hidden = false;
    p.textContent = text;
    p.classList.toggle("error", Boolean(bad));
  }

  function describe(out) {
    if (out.decision === "dismiss") return `Dismissed the reply from ${out.subject || "?"}.`;
    const change = out.change ? ` (consent change #${out.change.change_id})` : ": consent was already opted out";
    return `Opted out ${out.subject} for ${out.scope}${change}.`;
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("review")) return;
    ev.preventDefault();
    const body = new URLSearchParams(new FormData(form));
    if (ev.submitter && ev.submitter.name) body.set(ev.submitter.name, ev.submitter.value);
    form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const r = await fetch(form.action, {
        method: "POST", credentials: "same-origin", body,
        headers: { Accept: "application/json", "X-CSRF-Token": csrf(),
                   "Content-Type": "application/x-www-form-urlencoded" },
      });
      const out = await r.json().catch(() => ({}));
      if (r.status === 401) { location.assign("/login"); return; }
      say(r.ok ? describe(out) : (out.detail || `The decision failed (HTTP ${r.status}).`), !r.ok);
    } catch (e) {
      say("The decision could not be sent; try again.", true);
    }
    await refresh(true);
  });

  drawAll(document);
  let resized = null;
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => drawAll(document), 150);
  });
  if (document.querySelector("section[data-partial]")) {
    setInterval(() => refresh(false), refreshMs);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(false); });
  }
})();
