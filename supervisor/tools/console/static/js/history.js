// History: metadata of past runs, filtered, a page of 100 at a time by a cursor
// (the last row's start time and run id), so the 100th page costs what the first
// does and the table never holds more than one page.

import { api } from "./api.js";
import { $, clear, h } from "./dom.js";
import * as words from "./words.js";

const PAGE = 100;
const state = { filters: {}, cursors: [null], more: false, next: null, seq: 0 };

export function init() {
  const status = $("#history-form select[name=status]");
  for (const name of Object.keys(words.STATUS)) status.append(h("option", { value: name }, words.statusText(name)));
  $("#history-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = readFilters();
    state.cursors = [null];
    load();
  });
  $("#history-older").addEventListener("click", () => {
    if (!state.more) return;
    state.cursors.push(state.next);
    load();
  });
  $("#history-newer").addEventListener("click", () => {
    if (state.cursors.length < 2) return;
    state.cursors.pop();
    load();
  });
}

export function show() {
  return load();
}

function readFilters() {
  const form = new FormData($("#history-form"));
  const filters = {};
  for (const name of ["client", "conversation", "status", "language"]) {
    const value = String(form.get(name) || "").trim();
    if (value) filters[name] = value;
  }
  for (const name of ["since", "until"]) {
    const value = form.get(name);
    if (value) filters[name] = String(new Date(value).getTime() / 1000);
  }
  return filters;
}

async function load() {
  // The newest request wins: a filter submitted while a page is loading is not dropped,
  // and an answer that arrives after a newer request was made is ignored.
  const seq = ++state.seq;
  $("#history-range").dataset.requested = String(seq);
  $("#history-older").disabled = $("#history-newer").disabled = true;
  const started = performance.now();
  const cursor = state.cursors[state.cursors.length - 1];
  const query = new URLSearchParams({ ...state.filters, limit: String(PAGE) });
  if (cursor) {
    query.set("before", String(cursor.started));
    query.set("before_run_id", cursor.run_id);
  }
  const range = $("#history-range");
  let page;
  try {
    page = await api(`/api/history?${query}`);
  } catch (error) {
    if (seq !== state.seq) return;
    range.textContent = `History could not be read: ${error.message}`;
    state.more = false;
    page = null;
  }
  if (seq !== state.seq) return;
  if (page) {
    render(page.entries);
    state.more = page.more;
    const last = page.entries[page.entries.length - 1];
    state.next = last ? { started: last.started, run_id: last.run_id } : null;
    const first = (state.cursors.length - 1) * PAGE + 1;
    const elapsed = Math.round(performance.now() - started);
    range.textContent = page.entries.length
      ? `Runs ${first}–${first + page.entries.length - 1}${page.more ? "" : " (the oldest)"} · loaded in ${elapsed} ms`
      : "No runs match.";
    range.dataset.ms = String(elapsed);
  }
  range.dataset.loaded = String(seq);
  $("#history-older").disabled = !state.more;
  $("#history-newer").disabled = state.cursors.length < 2;
}

function render(entries) {
  const body = clear($("#history-table tbody"));
  for (const e of entries) {
    const notes = [];
    const redacted = Object.entries(e.redactions || {});
    if (redacted.length) notes.push("redacted " + redacted.map(([k, v]) => `${k} ×${v}`).join(", "));
    if (e.findings.length) notes.push("findings: " + e.findings.join(", "));
    if (e.capabilities.length) notes.push("used: " + e.capabilities.map(words.capabilityLabel).join(", "));
    for (const d of e.network) notes.push(`${d.allowed ? "✓" : "⊘"} ${d.host}:${d.port}`);
    if (e.stdout_truncated || e.stderr_truncated) notes.push("output cut");
    body.append(
      h(
        "tr",
        { "data-run": e.run_id },
        h("td", {}, words.when(e.started)),
        h("td", {}, e.client_id),
        h("td", {}, e.conversation_id || "–"),
        h("td", {}, e.language),
        h("td", { class: `status-${e.status}` }, words.statusText(e.status)),
        h("td", {}, e.exit_code === null ? "–" : String(e.exit_code)),
        h("td", { class: "num" }, words.ms(e.wall_ms)),
        h("td", { class: "num" }, words.ms(e.cpu_ms)),
        h("td", { class: "num" }, words.bytes(e.memory_peak_bytes)),
        h("td", {}, h("span", { title: `sha256 ${e.code_sha256}` }, `${words.bytes(e.code_bytes)} · ${e.code_sha256.slice(0, 10)}`)),
        h("td", {}, notes.join("; ")),
      ),
    );
  }
}
