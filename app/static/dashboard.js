// Celeriac dashboard: polls GET /agent/dashboard/data every 3 s and draws every
// panel with plain DOM + inline SVG (no libraries; machines may be offline).
// Server data is only ever inserted with textContent / text nodes, never innerHTML.
// Each poll carries the API key from apikey.js (window.celeriacKey); a 401 stops
// polling until a key is entered, since the same request would only be refused again.
"use strict";
(() => {
  const DATA_URL = "/agent/dashboard/data";
  const POLL_MS = 3000;
  const FETCH_TIMEOUT_MS = 10000;
  const STALE_AFTER_MS = 15000; // five missed polls
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers ------------------------------------------------------------
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value == null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "style") node.style.cssText = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child); // strings become text nodes
    return node;
  }

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null) continue;
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  const tip = (text) => svg("title", { text }); // native tooltip for an SVG shape

  // ---- formatting ---------------------------------------------------------------
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const num = (v) => (isNum(v) ? v : 0);

  // Number#toFixed, but exact ties round half to even, like Python's format(x, ".Nf"),
  // so every figure on the page is exactly what f"{x:.Nf}" gives for the same JSON.
  function fixed(x, digits) {
    const plain = x.toFixed(digits);
    if (Math.abs(x) >= 1e21) return plain;
    const exact = Math.abs(x).toFixed(100); // the double's exact decimal value
    const dot = exact.indexOf(".");
    if (!/^50*$/.test(exact.slice(dot + 1 + digits))) return plain; // not a tie
    const truncated = exact.slice(0, dot + 1 + digits).replace(/\.$/, "");
    if (Number(truncated[truncated.length - 1]) % 2 === 1) return plain; // round up to even
    return (x < 0 ? "-" : "") + truncated;
  }
  const group = (n) => (n < 0 ? "-" : "") + String(Math.abs(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const fmtInt = (v) => (isNum(v) ? group(Math.round(v)) : "—");
  const fmtPct = (v) => (isNum(v) ? fixed(v * 100, 1) + "%" : "—");
  const fmtUsd = (v) => (isNum(v) ? "$" + fixed(v, 6) : "—");
  const fmtSecs = (v) => (isNum(v) ? fixed(v, 2) + " s" : "—");
  const plural = (n, word) => `${fmtInt(n)} ${word}${n === 1 ? "" : "s"}`;

  function fmtAge(seconds) {
    if (!isNum(seconds)) return "—";
    if (seconds < 60) return fixed(seconds, 1) + " s";
    const s = Math.floor(seconds);
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
  }

  function fmtAgo(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 120) return `${s}s`;
    if (s < 7200) return `${Math.floor(s / 60)}m`;
    return `${Math.floor(s / 3600)}h`;
  }

  const parseTime = (iso) => (iso ? new Date(iso) : null);
  const validTime = (d) => d instanceof Date && !Number.isNaN(d.getTime());
  const fmtTime = (iso) => {
    const d = parseTime(iso);
    return validTime(d) ? d.toLocaleString() : iso ? String(iso) : "—";
  };
  const pad2 = (n) => String(n).padStart(2, "0");
  const clockLabel = (iso) => {
    const d = parseTime(iso);
    return validTime(d) ? `${pad2(d.getHours())}:${pad2(d.getMinutes())}` : "";
  };

  // ---- chart helpers ----------------------------------------------------------------
  function niceStep(raw, integer) {
    if (!(raw > 0)) return 1;
    const exp = 10 ** Math.floor(Math.log10(raw));
    const f = raw / exp;
    const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * exp;
    return integer ? Math.max(1, Math.round(step)) : step;
  }

  // A y axis from 0 to a round number >= max, with about `count` gridlines.
  function yScale(max, { integer = true, count = 4 } = {}) {
    const step = niceStep((max > 0 ? max : integer ? 1 : 0.001) / count, integer);
    const top = Math.max(step, Math.ceil(max / step - 1e-9) * step);
    const ticks = [];
    for (let i = 0; i * step <= top + step / 1e6; i++) ticks.push(i * step);
    return { top, ticks, step };
  }

  function usdAxisLabel(value, step) {
    const digits = Math.min(6, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
    return "$" + value.toFixed(digits);
  }

  // Frame for a vertical bar chart: gridlines and y labels. Returns geometry helpers.
  function barFrame(root, { width, height, margin, scale, label }) {
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const y = (v) => margin.top + plotH - (v / scale.top) * plotH;
    const grid = svg("g", { class: "grid" });
    for (const t of scale.ticks) {
      grid.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: y(t), y2: y(t) }),
        svg("text", { x: margin.left - 6, y: y(t) + 4, class: "axis-label", "text-anchor": "end", text: label(t) }));
    }
    root.append(grid);
    return { plotW, plotH, y, bottom: margin.top + plotH };
  }

  // Charts are drawn at the container's own width (1 SVG unit = 1 CSS pixel), so text
  // stays legible at any size; they are redrawn when that width changes.
  const drawnWidth = new Map();
  function widthOf(id, fallback) {
    const w = Math.floor($(id).clientWidth) || fallback;
    drawnWidth.set(id, w);
    return Math.max(240, w);
  }

  // Show every k-th label so that labels are at least `minGap` pixels apart.
  function labelEvery(slot, minGap) {
    return [1, 2, 3, 4, 6, 8, 12, 24].find((k) => k * slot >= minGap) || 24;
  }

  function chartSvg(width, height, ariaLabel) {
    return svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": ariaLabel,
      class: "chart-svg" });
  }

  function emptyNote(root, width, y, text) {
    root.append(svg("text", { x: width / 2, y, class: "chart-empty", "text-anchor": "middle", text }));
  }

  // ---- panels -------------------------------------------------------------------------
  function renderTotals(d) {
    const t = d.totals || {};
    $("success-rate").textContent = fmtPct(t.success_rate);
    $("error-rate").textContent = fmtPct(t.error_rate);
    $("avg-latency").textContent = fmtSecs(t.avg_latency_s);
    $("cost-today").textContent = fmtUsd(t.cost_today_usd);
    $("queued").textContent = fmtInt(t.queued);
    $("running").textContent = fmtInt(t.running);

    const completed = num(t.completed), failed = num(t.failed), cancelled = num(t.cancelled);
    const finished = completed + failed + cancelled;
    const none = "No finished tasks in the last 24 h";
    $("success-detail").textContent = t.success_rate == null ? none : `${fmtInt(completed)} of ${plural(finished, "finished task")} completed`;
    $("error-detail").textContent = t.error_rate == null ? none : `${fmtInt(failed)} of ${plural(finished, "finished task")} failed`;
    $("latency-detail").textContent = t.avg_latency_s == null ? none : `submission to finish, over ${plural(finished, "task")}`;
    $("tasks-detail").textContent = `24 h: ${fmtInt(completed)} completed · ${fmtInt(failed)} failed · ${fmtInt(cancelled)} cancelled`;

    const global = (d.budgets && d.budgets.global) || {};
    $("cost-detail").textContent = isNum(global.cap_usd)
      ? `of ${fmtUsd(global.cap_usd)} global daily cap` : "no global daily cap";

    $("success-rate").dataset.level = level(t.success_rate, 0.95, 0.8, true);
    $("error-rate").dataset.level = level(t.error_rate, 0.05, 0.2, false);
    renderErrorTrend(Array.isArray(d.requests_by_hour) ? d.requests_by_hour : []);
  }

  // "good" / "warn" / "bad" for colouring a rate; "" when unknown.
  function level(v, good, bad, higherIsBetter) {
    if (!isNum(v)) return "";
    if (higherIsBetter) return v >= good ? "good" : v >= bad ? "warn" : "bad";
    return v <= good ? "good" : v <= bad ? "warn" : "bad";
  }

  function renderErrorTrend(hours) {
    const W = 120, H = 40, P = 3;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "spark-svg" });
    const rates = hours.map((h) => {
      const finished = num(h.completed) + num(h.failed) + num(h.cancelled);
      return finished ? num(h.failed) / finished : null;
    });
    const n = rates.length;
    const x = (i) => (n > 1 ? P + (i / (n - 1)) * (W - 2 * P) : W / 2);
    const y = (r) => H - P - r * (H - 2 * P);
    root.append(svg("line", { x1: P, x2: W - P, y1: y(0), y2: y(0), class: "spark-base" }));
    let run = [];
    const flush = () => {
      if (run.length > 1) root.append(svg("polyline", { points: run.map(([a, b]) => `${a},${b}`).join(" "), class: "spark-line" }));
      else if (run.length === 1) root.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 1.8, class: "spark-dot" }));
      run = [];
    };
    rates.forEach((r, i) => { if (r == null) flush(); else run.push([x(i), y(r)]); });
    flush();
    root.append(tip("Error rate per hour, last 24 h (gaps: no finished tasks)"));
    $("error-trend").replaceChildren(root);
  }

  function renderRequests(d) {
    const hours = Array.isArray(d.requests_by_hour) ? d.requests_by_hour : [];
    const W = widthOf("requests-chart", 720), H = 240, M = { top: 12, right: 8, bottom: 26, left: 40 };
    const keys = ["completed", "failed", "cancelled"];
    const totals = hours.map((h) => keys.reduce((a, k) => a + num(h[k]), 0));
    const sums = Object.fromEntries(keys.map((k) => [k, hours.reduce((a, h) => a + num(h[k]), 0)]));
    const root = chartSvg(W, H,
      `Finished tasks per hour, last 24 hours: ${sums.completed} completed, ${sums.failed} failed, ${sums.cancelled} cancelled`);
    const scale = yScale(Math.max(0, ...totals));
    const f = barFrame(root, { width: W, height: H, margin: M, scale, label: (v) => fmtInt(v) });
    const slot = hours.length ? f.plotW / hours.length : f.plotW;
    const barW = Math.max(2, slot * 0.72);
    const every = labelEvery(slot, 46);
    hours.forEach((h, i) => {
      const x = M.left + i * slot + (slot - barW) / 2;
      const g = svg("g", { class: "bar-group" });
      let base = 0;
      for (const k of keys) {
        const v = num(h[k]);
        if (v > 0) {
          g.append(svg("rect", { x, y: f.y(base + v), width: barW, height: f.y(base) - f.y(base + v), class: `bar bar-${k}` }));
        }
        base += v;
      }
      // A full-height transparent target so the tooltip works on empty hours too.
      g.append(svg("rect", { x: M.left + i * slot, y: M.top, width: slot, height: f.plotH, class: "hit" }));
      const start = clockLabel(h.hour);
      g.append(tip(`${start || h.hour} — ${num(h.completed)} completed, ${num(h.failed)} failed, ${num(h.cancelled)} cancelled`));
      root.append(g);
      if ((hours.length - 1 - i) % every === 0 && start) {
        root.append(svg("text", { x: M.left + i * slot + slot / 2, y: H - 8, class: "axis-label", "text-anchor": "middle", text: start }));
      }
    });
    if (!totals.some((v) => v > 0)) emptyNote(root, W, M.top + f.plotH / 2, "No finished tasks in the last 24 hours");
    $("requests-chart").replaceChildren(root);
  }

  function renderLatency(d) {
    const buckets = Array.isArray(d.latency_histogram) ? d.latency_histogram : [];
    const W = widthOf("latency-chart", 360), H = 240, M = { top: 18, right: 6, bottom: 26, left: 36 };
    const bound = (le) => (Number.isFinite(Number(le)) ? String(Number(le)) : String(le)); // "5.0" -> "5"
    const labels = buckets.map((b, i) => {
      if (String(b.le) === "+Inf") return i > 0 ? `>${bound(buckets[i - 1].le)} s` : "all";
      return `≤${bound(b.le)} s`;
    });
    const counts = buckets.map((b) => num(b.count));
    const total = counts.reduce((a, b) => a + b, 0);
    const root = chartSvg(W, H, "Latency of finished tasks: " +
      buckets.map((b, i) => `${labels[i]}: ${counts[i]}`).join(", "));
    const scale = yScale(Math.max(0, ...counts));
    const f = barFrame(root, { width: W, height: H, margin: M, scale, label: (v) => fmtInt(v) });
    const slot = buckets.length ? f.plotW / buckets.length : f.plotW;
    const barW = Math.max(2, slot * 0.8);
    const every = labelEvery(slot, 44);
    buckets.forEach((b, i) => {
      const x = M.left + i * slot + (slot - barW) / 2;
      const v = counts[i];
      const share = total ? ` (${fixed((v / total) * 100, 1)}%)` : "";
      const g = svg("g", { class: "bar-group" },
        svg("rect", { x, y: f.y(v), width: barW, height: f.bottom - f.y(v), class: "bar bar-latency" }),
        svg("rect", { x: M.left + i * slot, y: M.top, width: slot, height: f.plotH, class: "hit" }),
        tip(`${labels[i]}: ${plural(v, "task")}${share}`));
      if (v > 0) g.append(svg("text", { x: x + barW / 2, y: f.y(v) - 4, class: "bar-value", "text-anchor": "middle", text: fmtInt(v) }));
      root.append(g);
      if (i % every === 0) root.append(svg("text", { x: M.left + i * slot + slot / 2, y: H - 8, class: "axis-label", "text-anchor": "middle", text: labels[i] }));
    });
    if (!total) emptyNote(root, W, M.top + f.plotH / 2, "No finished tasks yet");
    $("latency-chart").replaceChildren(root);
  }

  function renderTools(d) {
    const tools = (Array.isArray(d.tool_usage) ? d.tool_usage : [])
      .slice().sort((a, b) => num(b.calls) - num(a.calls) || String(a.tool).localeCompare(String(b.tool)));
    const box = $("tools-chart");
    if (!tools.length) {
      drawnWidth.set("tools-chart", Math.floor(box.clientWidth));
      return box.replaceChildren(el("p", { class: "hint chart-empty-html", text: "No tool calls yet." }));
    }
    const W = widthOf("tools-chart", 560);
    // Wide: name | bar | figures on one line. Narrow: the name above its bar.
    const compact = W < 480;
    const ROW = compact ? 46 : 30, LABEL = compact ? 0 : 130, VALUE = 215, BAR_H = 20;
    const H = tools.length * ROW + 8;
    const totalCalls = tools.reduce((a, t) => a + num(t.calls), 0);
    const maxCalls = Math.max(1, ...tools.map((t) => num(t.calls)));
    const barMax = Math.max(40, W - LABEL - VALUE);
    const maxName = compact ? Math.floor(W / 7.5) : 18;
    const root = chartSvg(W, H, "Tool calls: " + tools.map((t) => `${t.tool} ${num(t.calls)} calls, ${num(t.errors)} errors`).join("; "));
    tools.forEach((t, i) => {
      const calls = num(t.calls), errors = Math.min(num(t.errors), calls);
      const top = 4 + i * ROW;
      const barY = compact ? top + 20 : top + (ROW - BAR_H) / 2;
      const w = (calls / maxCalls) * barMax;
      const ew = calls ? (errors / calls) * w : 0;
      const name = String(t.tool);
      const share = totalCalls ? fixed((calls / totalCalls) * 100, 1) + "%" : "—";
      const g = svg("g", { class: "bar-group", "data-tool": name },
        svg("text", { x: compact ? 0 : LABEL - 8, y: compact ? top + 13 : barY + BAR_H / 2 + 4, class: "row-label",
          "text-anchor": compact ? "start" : "end", text: name.length > maxName ? name.slice(0, maxName - 1) + "…" : name }),
        svg("rect", { x: LABEL, y: barY, width: Math.max(w, calls ? 2 : 0), height: BAR_H, rx: 3, class: "bar bar-calls" }));
      if (ew > 0) g.append(svg("rect", { x: LABEL + w - ew, y: barY, width: Math.max(ew, 2), height: BAR_H, class: "bar bar-failed" }));
      g.append(svg("text", { x: LABEL + w + 8, y: barY + BAR_H / 2 + 4, class: "bar-value",
        text: `${plural(calls, "call")} · ${plural(errors, "error")} · ${share}` }),
        svg("rect", { x: 0, y: top, width: W, height: ROW, class: "hit" }),
        tip(`${name}: ${plural(calls, "call")}, ${plural(errors, "error")}, ${share} of all calls`));
      root.append(g);
    });
    box.replaceChildren(root);
  }

  function renderCost(d) {
    const days = Array.isArray(d.cost_by_day) ? d.cost_by_day : [];
    const W = widthOf("cost-chart", 560), H = 220, M = { top: 12, right: 8, bottom: 26, left: 62 };
    const values = days.map((x) => num(x.cost_usd));
    const total = values.reduce((a, b) => a + b, 0);
    $("cost-total").textContent = days.length ? `${days.length}-day total ${fmtUsd(total)}` : "";
    const root = chartSvg(W, H, `Cost per day over ${days.length} days, total ${fmtUsd(total)}`);
    const scale = yScale(Math.max(0, ...values), { integer: false });
    const f = barFrame(root, { width: W, height: H, margin: M, scale, label: (v) => usdAxisLabel(v, scale.step) });
    const slot = days.length ? f.plotW / days.length : f.plotW;
    const barW = Math.max(2, slot * 0.7);
    const every = labelEvery(slot, 44);
    days.forEach((day, i) => {
      const v = values[i];
      const x = M.left + i * slot + (slot - barW) / 2;
      const today = i === days.length - 1;
      const g = svg("g", { class: "bar-group" });
      if (v > 0) g.append(svg("rect", { x, y: f.y(v), width: barW, height: f.bottom - f.y(v), rx: 2, class: today ? "bar bar-cost bar-today" : "bar bar-cost" }));
      g.append(svg("rect", { x: M.left + i * slot, y: M.top, width: slot, height: f.plotH, class: "hit" }),
        tip(`${day.day}${today ? " (today)" : ""}: ${fmtUsd(v)}`));
      root.append(g);
      if ((days.length - 1 - i) % every === 0) {
        root.append(svg("text", { x: M.left + i * slot + slot / 2, y: H - 8, class: "axis-label", "text-anchor": "middle",
          text: String(day.day || "").slice(5) }));
      }
    });
    if (!(total > 0)) emptyNote(root, W, M.top + f.plotH / 2, "No spend in the last 14 days");
    $("cost-chart").replaceChildren(root);
  }

  function renderQueues(d) {
    const order = { high: 0, default: 1, low: 2 };
    const queues = (Array.isArray(d.queues) ? d.queues : []).slice()
      .sort((a, b) => (order[a.name] ?? 9) - (order[b.name] ?? 9));
    const max = Math.max(1, ...queues.map((q) => num(q.depth)));
    $("queues").tBodies[0].replaceChildren(...queues.map((q) => {
      const name = String(q.name);
      const depth = num(q.depth);
      return el("tr", { "data-queue": name },
        el("td", {}, el("span", { class: `queue-name queue-${name.replace(/[^a-z]/g, "")}`, text: name })),
        el("td", { class: "num depth", text: fmtInt(q.depth) }),
        el("td", { class: "bar-col" }, el("div", { class: "hbar" },
          el("div", { class: "hbar-fill", style: `width: ${((depth / max) * 100).toFixed(1)}%` }))),
        el("td", { class: "num oldest", text: fmtAge(q.oldest_age_s), title: isNum(q.oldest_age_s) ? `${q.oldest_age_s} s` : "empty" }));
    }));
  }

  const CIRCUIT_TEXT = { closed: "closed", half_open: "half-open", open: "open" };

  function renderProviders(d) {
    const providers = Array.isArray(d.providers) ? d.providers : [];
    $("providers").tBodies[0].replaceChildren(...providers.map((p) => {
      const circuit = String(p.circuit);
      const calls = num(p.calls_24h), errors = num(p.errors_24h);
      const paused = num(p.paused_for_s);
      return el("tr", { "data-model": String(p.model), "data-circuit": circuit },
        el("td", {}, el("span", { class: "mono", text: String(p.model) })),
        el("td", { text: String(p.provider) }),
        el("td", {}, el("span", { class: `circuit circuit-${circuit.replace(/[^a-z_]/g, "")}`, text: CIRCUIT_TEXT[circuit] || circuit })),
        el("td", { class: "num", text: paused > 0 ? fixed(paused, 1) + " s" : "—" }),
        el("td", { class: "num calls", text: fmtInt(calls) }),
        el("td", { class: "num errors", text: fmtInt(errors) }),
        el("td", { class: "num", text: calls ? fmtPct(errors / calls) : "—" }));
    }));
    $("providers-empty").hidden = providers.length > 0;
  }

  function renderBudgets(d) {
    const b = d.budgets || {};
    const rows = [["tenant", "Tenant"], ["global", "Global"]].map(([key, label]) => {
      const s = b[key] || {};
      const capped = isNum(s.cap_usd);
      const meter = el("div", { class: "meter-wrap" });
      if (capped) {
        const cap = s.cap_usd;
        const spentPct = cap > 0 ? Math.min(100, (num(s.spent_usd) / cap) * 100) : 100;
        const resPct = cap > 0 ? Math.min(100 - spentPct, (num(s.reserved_usd) / cap) * 100) : 0;
        const used = cap > 0 ? (num(s.spent_usd) + num(s.reserved_usd)) / cap : 1;
        meter.append(el("div", { class: "meter", "data-level": used >= 1 ? "bad" : used >= 0.8 ? "warn" : "good",
          title: `spent ${fmtUsd(s.spent_usd)} + reserved ${fmtUsd(s.reserved_usd)} of ${fmtUsd(cap)}` },
        el("div", { class: "meter-spent", style: `width: ${spentPct.toFixed(2)}%` }),
        el("div", { class: "meter-reserved", style: `width: ${resPct.toFixed(2)}%` })),
        el("span", { class: "meter-label mono", text: fmtPct(used) }));
      } else {
        meter.append(el("span", { class: "hint", text: "no cap" }));
      }
      return el("tr", { "data-scope": key },
        el("th", { scope: "row", text: label }),
        el("td", { class: "num cap", text: capped ? fmtUsd(s.cap_usd) : "no cap" }),
        el("td", { class: "num spent", text: fmtUsd(s.spent_usd) }),
        el("td", { class: "num reserved", text: fmtUsd(s.reserved_usd) }),
        el("td", { class: "num remaining", text: isNum(s.remaining_usd) ? fmtUsd(s.remaining_usd) : capped ? "—" : "no cap" }),
        el("td", { class: "meter-col" }, meter));
    });
    $("budgets").tBodies[0].replaceChildren(...rows);
    const parts = [];
    if (b.day) parts.push(`${b.day}${b.timezone ? ` (${b.timezone})` : ""}`);
    if (b.resets_at) parts.push(`resets ${fmtTime(b.resets_at)}`);
    if ("max_task_usd" in b) parts.push(`max per task ${isNum(b.max_task_usd) ? fmtUsd(b.max_task_usd) : "no cap"}`);
    $("budgets-meta").textContent = parts.join(" · ");
  }

  const PANELS = [renderTotals, renderRequests, renderLatency, renderTools, renderCost, renderQueues, renderProviders, renderBudgets];

  function render(data, panels = PANELS) {
    for (const panel of panels) {
      try { panel(data); } catch (err) { console.error(`dashboard: ${panel.name} failed`, err); } // one bad panel keeps the rest
    }
  }

  const CHARTS = { "requests-chart": renderRequests, "latency-chart": renderLatency, "tools-chart": renderTools, "cost-chart": renderCost };

  // Redraw the charts whose width changed (window resized, layout reflowed).
  let resizeFrame = 0;
  function onResize() {
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(() => {
      if (!last) return;
      const stale = Object.keys(CHARTS).filter((id) => Math.floor($(id).clientWidth) !== drawnWidth.get(id));
      render(last.data, stale.map((id) => CHARTS[id]));
    });
  }

  // ---- polling ----------------------------------------------------------------------
  let last = null; // {data, at: client time of receipt}
  let failure = null; // message of the last failed poll, null after a success
  let timer = null;
  let inFlight = false;
  let needKey = false; // the last poll was refused (401) with the key still in use

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  async function poll() {
    if (inFlight) return;
    if (document.hidden) return schedule(POLL_MS); // catch up on visibilitychange
    inFlight = true;
    const ctrl = new AbortController();
    const abort = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    const sentKey = celeriacKey.get();
    needKey = false;
    try {
      const res = await fetch(DATA_URL, { cache: "no-store", headers: celeriacKey.headers({ Accept: "application/json" }), signal: ctrl.signal });
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        const message = (body && body.error && body.error.message) || `HTTP ${res.status}`;
        if (res.status === 401) {
          celeriacKey.refused(message);
          needKey = celeriacKey.get() === sentKey; // a key entered meanwhile is tried at once
        }
        throw new Error(message);
      }
      const data = await res.json();
      if (!data || typeof data !== "object" || !data.totals) throw new Error("malformed response");
      celeriacKey.accepted();
      render(data);
      last = { data, at: Date.now() };
      failure = null;
    } catch (err) {
      failure = err.name === "AbortError" ? "timed out" : err.message || String(err);
    } finally {
      clearTimeout(abort);
      inFlight = false;
      tick();
      if (needKey) clearTimeout(timer);
      else schedule(celeriacKey.get() === sentKey ? POLL_MS : 0);
    }
  }

  // Refreshes the "updated Ns ago" line; runs every second and after each poll.
  function tick() {
    const node = $("updated");
    const errorBox = $("poll-error");
    errorBox.hidden = !failure;
    errorBox.textContent = !failure ? ""
      : needKey ? "Waiting for an API key (enter one above)"
        : `Last refresh failed (${failure}); retrying every ${POLL_MS / 1000} s`;
    if (!last) {
      node.textContent = failure ? "No data yet" : "Loading…";
      node.dataset.state = failure ? "error" : "loading";
      return;
    }
    const age = Date.now() - last.at;
    node.textContent = `Updated ${fmtAgo(age)} ago`;
    node.dataset.state = age > STALE_AFTER_MS ? "stale" : failure ? "error" : "ok";
    node.dataset.generatedAt = String(last.data.generated_at || "");
    node.title = last.data.generated_at ? `Server time of the data: ${fmtTime(last.data.generated_at)}` : "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("refresh").addEventListener("click", () => { if (!inFlight) poll(); });
    // While a poll is in flight its finally block sees the new key and polls again.
    celeriacKey.onChange(() => { if (!inFlight) poll(); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden && !inFlight) poll(); });
    setInterval(tick, 1000);
    if (typeof ResizeObserver !== "undefined") {
      const observer = new ResizeObserver(onResize);
      for (const id of Object.keys(CHARTS)) observer.observe($(id));
    } else {
      window.addEventListener("resize", onResize);
    }
    poll();
  });
})();
