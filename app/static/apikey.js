// The API key both pages send: one field in the header, kept in sessionStorage (this
// tab only, forgotten when it closes, never in a cookie the server would see on its
// own), sent as Authorization: Bearer on every /agent/* request. With no key the
// pages still work wherever the server is open (dev mode, before the first key).
// Loaded before app.js / dashboard.js, which call window.celeriacKey.
"use strict";
window.celeriacKey = (() => {
  const STORE = "celeriac.apiKey";
  const $ = (id) => document.getElementById(id);
  const listeners = [];

  // sessionStorage throws when storage is disabled; the key then lives in memory only.
  function load() {
    try { return sessionStorage.getItem(STORE) || ""; } catch { return ""; }
  }
  function save(value) {
    try {
      if (value) sessionStorage.setItem(STORE, value);
      else sessionStorage.removeItem(STORE);
    } catch { /* memory only */ }
  }

  let key = load();

  // Headers for a fetch: `extra` plus the bearer token when a key is set.
  function headers(extra = {}) {
    return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
  }

  function showStatus(text) {
    const box = $("key-status");
    if (!box) return;
    box.textContent = text;
    box.hidden = !text;
  }

  // A 401: say plainly what is missing and how to get it; the server's own message
  // follows (before the first key exists it names `celeriac keys create TENANT`).
  function refused(serverMessage) {
    const input = $("api-key");
    if (input) input.setAttribute("aria-invalid", "true");
    const why = key ? "The server refused this API key" : "This server needs an API key";
    const server = serverMessage ? ` Server: ${serverMessage}` : "";
    const make = server.includes("keys create") ? "" : " (celeriac keys create TENANT makes one)";
    showStatus(`${why}: enter one in the API key field above${make}.${server}`);
  }

  // Any request that got through: the key (or no key, on an open server) works.
  function accepted() {
    const input = $("api-key");
    if (input) input.removeAttribute("aria-invalid");
    showStatus("");
  }

  // Listeners run even when the key is unchanged: pressing "Use" again is a retry.
  function set(value) {
    key = String(value || "").trim();
    save(key);
    accepted();
    for (const listener of listeners) {
      try { listener(key); } catch (err) { console.error("celeriacKey listener failed", err); }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = $("key-form");
    const input = $("api-key");
    if (!form || !input) return;
    input.value = key;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      set(input.value);
    });
  });

  return { headers, refused, accepted, get: () => key, onChange: (fn) => listeners.push(fn) };
})();
