// Celeriac web form: submit a task, follow it over SSE (polling as fallback).
// Server data is only ever inserted with textContent / text nodes, never innerHTML.
// Every request carries the API key from apikey.js (window.celeriacKey), the event
// stream too: EventSource cannot send an Authorization header, so the stream is read
// with fetch instead.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const FIELDS = ["input", "agent", "priority", "model"];
  const POLL_MS = 1000;

  let agents = [];
  let current = null; // {id, gen, stream, timer, version, status, ended}
  let gen = 0; // bumped whenever the followed task changes; stale callbacks compare it

  // ---- helpers -------------------------------------------------------------
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value == null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child); // strings become text nodes
    return node;
  }
  const fmtCost = (v) => "$" + (Number(v) || 0).toFixed(6);
  const fmtInt = (v) => (Number(v) || 0).toLocaleString();
  const fmtMs = (v) => (v == null ? "—" : Math.round(Number(v)).toLocaleString());
  const truncate = (s, n) => (s && s.length > n ? s.slice(0, n - 1) + "…" : s || "");
  const fmtTime = (iso) => (!iso ? "—" : Number.isNaN(Date.parse(iso)) ? String(iso) : new Date(iso).toLocaleString());
  const badgeClass = (status) => `badge badge-${String(status).replace(/[^a-z]/g, "")}`;
  const badge = (status) => el("span", { class: badgeClass(status), text: status });
  const setBadge = (node, status) => { node.textContent = status; node.className = badgeClass(status); };
  const setLive = (text) => { $("live").textContent = text; };

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.code = e.code || "http_error";
      this.field = e.field || null;
    }
  }

  async function api(path, options = {}) {
    const res = await fetch(path, { cache: "no-store", ...options,
      headers: celeriacKey.headers({ Accept: "application/json", ...(options.headers || {}) }) });
    const body = await res.json().catch(() => null);
    if (!res.ok) {
      const err = new ApiError(res.status, body);
      if (res.status === 401) celeriacKey.refused(err.message);
      throw err;
    }
    celeriacKey.accepted();
    return body;
  }
  const describeError = (err) => (err instanceof ApiError ? err.message : `Network error: ${err.message}`);

  // ---- agents ----------------------------------------------------------------
  async function loadAgents() {
    const select = $("agent");
    try {
      agents = (await api("/agent/agents")).agents || [];
    } catch (err) { showFormError(`Could not load agents: ${describeError(err)}`); }
    if (!agents.length) agents = [{ name: "default", description: "", versions: [] }];
    select.replaceChildren(...agents.map((a) => el("option", { value: a.name, text: a.name })));
    select.value = agents.some((a) => a.name === "default") ? "default" : agents[0].name;
    describeAgent();
  }

  function describeAgent() {
    const agent = agents.find((a) => a.name === $("agent").value);
    const versions = (agent && agent.versions) || [];
    const pinned = agent && versions.find((v) => v.version === agent.pinned);
    const main = pinned || (versions.length === 1 ? versions[0] : null);
    const parts = [];
    if (agent && agent.description) parts.push(agent.description);
    if (versions.length) parts.push("versions: " + versions.map((v) => `${v.version} (${v.model}, ${(v.tools || []).length} tools)`).join(", "));
    $("agent-hint").textContent = parts.join(" · ");
    const models = [...new Set(versions.map((v) => v.model))];
    $("model").placeholder = main ? `Agent default (${main.model})`
      : models.length ? `Agent default (${models.join(" / ")})` : "Agent default";
  }

  // ---- form ------------------------------------------------------------------
  function clearFormError() {
    const box = $("form-error");
    box.hidden = true;
    box.textContent = "";
    for (const f of FIELDS) $(f).removeAttribute("aria-invalid");
  }

  function showFormError(message, field) {
    const box = $("form-error");
    box.textContent = message;
    box.hidden = false;
    const name = field ? String(field).split(".")[0] : null;
    if (name && FIELDS.includes(name)) {
      $(name).setAttribute("aria-invalid", "true");
      $(name).focus();
    }
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearFormError();
    const body = { input: $("input").value, agent: $("agent").value, priority: $("priority").value };
    if ($("model").value.trim()) body.model = $("model").value.trim();
    for (const key of ["agent", "priority"]) if (!body[key]) delete body[key];
    if (!body.input.trim()) return showFormError("Please enter a message.", "input");
    if ($("continue").checked && thread) body.thread_id = thread;
    const button = $("submit");
    button.disabled = true;
    button.textContent = "Submitting…";
    try {
      const data = await api("/agent/run", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      setThread(data.thread_id);
      watch(data.task_id, data.status);
      refreshRecent();
    } catch (err) {
      showFormError(describeError(err), err.field);
    } finally {
      button.disabled = false;
      button.textContent = "Submit";
    }
  }

  // The conversation the next message may continue: the last task shown.
  let thread = null;
  function setThread(id) {
    if (!id || id === thread) return;
    thread = id;
    $("continue").disabled = false;
    $("thread-hint").textContent = "Thread " + id.slice(0, 8) + "…: tick to send the next message on it.";
  }

  // ---- following a task -----------------------------------------------------
  function stopWatching() {
    if (!current) return;
    if (current.stream) current.stream.abort();
    clearTimeout(current.timer);
    current = null;
  }

  function watch(taskId, initialStatus = "queued") {
    stopWatching();
    const myGen = ++gen;
    current = { id: taskId, gen: myGen, stream: null, timer: null, version: -1, status: null, ended: false };
    resetTaskView(taskId, initialStatus);
    history.replaceState(null, "", "#task=" + encodeURIComponent(taskId));
    highlightRecent();
    if (typeof ReadableStream === "undefined" || typeof TextDecoderStream === "undefined") return poll(myGen);
    follow(myGen, null);
  }

  // One text/event-stream frame ("event: status\ndata: {...}") as {event, data, id}.
  function parseFrame(frame) {
    const out = { event: "message", data: [], id: null };
    for (const line of frame.split("\n")) {
      if (!line || line.startsWith(":")) continue; // comment / keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") out.event = value;
      else if (field === "data") out.data.push(value);
      else if (field === "id") out.id = value;
    }
    return { ...out, data: out.data.join("\n") };
  }

  // Reads GET /agent/events/<id> until its "end" event. A stream the server closed
  // without one (it ends streams after 10 minutes) is reopened from the last event id;
  // any failure falls back to polling, which reports errors itself.
  async function follow(myGen, lastId) {
    const ctrl = new AbortController();
    current.stream = ctrl;
    setLive("Connecting…");
    const headers = celeriacKey.headers({ Accept: "text/event-stream" });
    if (lastId) headers["Last-Event-ID"] = lastId;
    let ended = false;
    try {
      const res = await fetch("/agent/events/" + encodeURIComponent(current.id),
        { cache: "no-store", headers, signal: ctrl.signal });
      if (!res.ok || !res.body) throw new ApiError(res.status, await res.json().catch(() => null));
      if (myGen !== gen) return;
      setLive("Live: streaming updates");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      while (!ended) {
        const { value, done } = await reader.read();
        if (done || myGen !== gen) break;
        // CRLF or CR line ends become LF; a CR last in the chunk waits for the next
        // chunk, which may begin with its LF.
        buffer = (buffer + value).replace(/\r\n|\r(?!$)/g, "\n");
        for (let cut = buffer.indexOf("\n\n"); cut >= 0 && !ended; cut = buffer.indexOf("\n\n")) {
          const frame = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (frame.id) lastId = frame.id;
          if (frame.event === "end") ended = true;
          else if (frame.event === "status") {
            try { render(JSON.parse(frame.data)); } catch (err) { console.error("bad status event", err); }
          }
        }
      }
      ctrl.abort(); // done with this response either way
    } catch (err) {
      if (myGen !== gen || ctrl.signal.aborted) return; // stopped watching
      if (err instanceof ApiError && err.status === 401) {
        celeriacKey.refused(err.message);
        return setLive(`Stopped: ${err.message}`);
      }
      setLive("Stream interrupted: polling every second");
      return poll(myGen);
    }
    if (myGen !== gen) return;
    current.stream = null;
    if (!ended) { // reopen after the server's advertised retry delay (1 s)
      current.timer = setTimeout(() => follow(myGen, lastId), 1000);
      return;
    }
    if (TERMINAL.has(current.status)) onTerminal(myGen);
    else poll(myGen); // ended without a terminal document in hand: ask directly
  }

  async function poll(myGen) {
    if (myGen !== gen) return;
    try {
      const doc = await api("/agent/status/" + encodeURIComponent(current.id));
      if (myGen !== gen) return;
      render(doc);
      if (TERMINAL.has(doc.status)) return onTerminal(myGen);
      setLive("Polling every second");
    } catch (err) {
      if (myGen !== gen) return;
      const retriable = !(err instanceof ApiError) || err.status >= 500 || err.status === 429 || err.status === 408;
      if (!retriable) return setLive(`Stopped: ${err.message}`);
      setLive(`Retrying: ${describeError(err)}`);
    }
    current.timer = setTimeout(() => poll(myGen), POLL_MS);
  }

  function onTerminal(myGen) {
    if (myGen !== gen || current.ended) return;
    current.ended = true;
    setLive("Finished");
    refreshRecent();
  }

  async function onCancel() {
    if (!current) return;
    const myGen = gen;
    const button = $("cancel");
    button.disabled = true;
    try {
      const doc = await api("/agent/cancel/" + encodeURIComponent(current.id), { method: "POST" });
      if (myGen === gen) render(doc);
    } catch (err) {
      if (myGen === gen) { setLive(`Cancel failed: ${describeError(err)}`); button.disabled = false; }
    }
  }

  // ---- rendering ---------------------------------------------------------------
  function resetTaskView(taskId, status) {
    $("task-empty").hidden = true;
    $("task-body").hidden = false;
    $("task-id").textContent = taskId;
    $("status-link").href = "/agent/status/" + encodeURIComponent(taskId);
    setBadge($("status"), status || "queued");
    $("progress").value = 0;
    $("progress-label").textContent = "0%";
    $("result").textContent = "";
    $("result").dataset.placeholder = "Waiting for the result…";
    $("error").hidden = true;
    $("error").textContent = "";
    $("cost").textContent = fmtCost(0);
    $("tokens").textContent = "0 in / 0 out";
    for (const id of ["model-used", "agent-used", "priority-used", "budget", "created-at", "finished-at"]) $(id).textContent = "—";
    renderSteps([]);
    $("cancel").hidden = $("cancel").disabled = TERMINAL.has(status);
  }

  function render(doc) {
    if (!current || !doc || doc.task_id !== current.id) return;
    if (typeof doc.version === "number") {
      if (doc.version < current.version) return; // an older document arrived late
      current.version = doc.version;
    }
    current.status = doc.status;
    setThread(doc.thread_id);
    const terminal = TERMINAL.has(doc.status);
    setBadge($("status"), doc.status);
    const pct = Math.max(0, Math.min(100, Math.round(Number(doc.progress) || 0)));
    $("progress").value = pct;
    $("progress-label").textContent = pct + "%";
    $("result").textContent = doc.result == null ? "" : String(doc.result);
    $("result").dataset.placeholder = terminal ? "No result." : "Waiting for the result…";
    $("error").hidden = !doc.error;
    $("error").replaceChildren(...(doc.error ? [el("strong", { text: doc.error.code || "error" }), ": " + (doc.error.message || "")] : []));
    const usage = doc.usage || {};
    $("cost").textContent = fmtCost(usage.cost_usd);
    $("tokens").textContent = `${fmtInt(usage.input_tokens)} in / ${fmtInt(usage.output_tokens)} out`;
    $("model-used").textContent = doc.model || "—";
    $("agent-used").textContent = doc.agent ? `${doc.agent}@${doc.agent_version}` : "—";
    $("priority-used").textContent = doc.priority || "—";
    $("budget").textContent = doc.budget_usd == null ? "—" : fmtCost(doc.budget_usd);
    $("created-at").textContent = fmtTime(doc.created_at);
    $("finished-at").textContent = fmtTime(doc.finished_at);
    renderSteps(doc.steps || []);
    $("cancel").hidden = $("cancel").disabled = terminal;
  }

  function block(label, text) {
    return el("div", { class: "detail" }, el("span", { class: "detail-label", text: label }), el("pre", { text }));
  }

  function renderSteps(steps) {
    const rows = steps.map((s, i) => {
      const details = el("td", { class: "details" });
      if (s.kind === "tool") {
        details.append(block("arguments", JSON.stringify(s.arguments ?? {}, null, 2)));
        if (s.output != null) details.append(block("output", String(s.output)));
      } else if (s.kind === "summary") {
        // A context-window fold: what the older turns were folded into.
        if (s.output != null) details.append(block("summary", String(s.output)));
      }
      if (s.error) details.append(el("p", { class: "step-error", text: `${s.error.code}: ${s.error.message}` }));
      const name = el("td", {}, el("span", { class: "mono", text: s.name }));
      if (s.model && s.model !== s.name) name.append(el("div", { class: "hint", text: s.model }));
      const status = el("td", {}, badge(s.status));
      if (s.attempts > 1) status.append(el("span", { class: "hint", text: ` ×${s.attempts}` }));
      return el("tr", { "data-step-id": s.id, "data-kind": s.kind },
        el("td", { class: "num", text: String(i + 1) }),
        el("td", {}, el("span", { class: `kind kind-${s.kind === "tool" ? "tool" : "llm"}`, text: s.kind })),
        name, status,
        el("td", { class: "num", text: fmtMs(s.latency_ms) }),
        el("td", { class: "num", text: `${fmtInt(s.input_tokens)} / ${fmtInt(s.output_tokens)}` }),
        el("td", { class: "num", text: fmtCost(s.cost_usd) }),
        details);
    });
    $("steps").tBodies[0].replaceChildren(...rows);
    $("steps-empty").hidden = steps.length > 0;
  }

  // ---- recent tasks ----------------------------------------------------------
  async function refreshRecent() {
    const empty = $("recent-empty");
    try {
      const items = (await api("/agent/tasks?limit=10")).items || [];
      $("recent").replaceChildren(...items.map((item) => {
        const button = el("button", { type: "button", class: "recent-item", "data-task-id": item.task_id, title: item.input },
          badge(item.status),
          el("span", { class: "recent-input", text: truncate(item.input, 90) }),
          el("span", { class: "recent-meta", text: `${item.agent} · ${item.model} · ${item.priority} · ${fmtCost(item.cost_usd)} · ${fmtTime(item.created_at)}` }));
        button.addEventListener("click", () => watch(item.task_id, item.status));
        return el("li", {}, button);
      }));
      empty.textContent = "No tasks yet.";
      empty.hidden = items.length > 0;
      highlightRecent();
    } catch (err) {
      empty.textContent = `Could not load tasks: ${describeError(err)}`;
      empty.hidden = false;
    }
  }

  function highlightRecent() {
    for (const button of $("recent").querySelectorAll("button[data-task-id]")) {
      if (current && button.dataset.taskId === current.id) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  // A new key (or the same one again, as a retry): reload what the page shows with it.
  function onKeyChange() {
    loadAgents();
    refreshRecent();
    if (current) watch(current.id, current.status || "queued");
  }

  // ---- wiring -------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    celeriacKey.onChange(onKeyChange);
    $("run-form").addEventListener("submit", onSubmit);
    $("cancel").addEventListener("click", onCancel);
    $("agent").addEventListener("change", describeAgent);
    $("recent-refresh").addEventListener("click", refreshRecent);
    for (const f of FIELDS) $(f).addEventListener("input", () => $(f).removeAttribute("aria-invalid"));
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("run-form").requestSubmit(); }
    });
    loadAgents();
    refreshRecent();
    const match = location.hash.match(/^#task=(.+)$/);
    if (match) watch(decodeURIComponent(match[1]), "queued");
  });
})();
