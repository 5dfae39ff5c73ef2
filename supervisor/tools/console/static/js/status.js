// Status: what an operator watches. Read every 2 s while the page is on screen.

import { api } from "./api.js";
import { $, clear, h } from "./dom.js";

const EVERY_MS = 2000;
let timer = null;

export function show() {
  stop();
  refresh();
  timer = setInterval(() => { if (!document.hidden) refresh(); }, EVERY_MS);
}

export function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

async function refresh() {
  const updated = $("#status-updated");
  try {
    render(await api("/api/status"));
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshed every ${EVERY_MS / 1000} s.`;
  } catch (error) {
    updated.textContent = `The service's status could not be read: ${error.message}`;
  }
}

function table(caption, head, rows) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, ...head.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, ...rows.map((row) => h("tr", {}, ...row.map((cell) => h("td", {}, cell))))),
    ),
  );
}

function render(s) {
  const uptime = s.uptime_s < 120 ? `${Math.round(s.uptime_s)} s` : `${Math.round(s.uptime_s / 60)} min`;
  const counters = Object.entries(s.counters).filter(([, v]) => v).sort();
  clear($("#status-body")).append(
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Service"), h("dd", {}, `cellblock ${s.version}, ${s.mode} mode, profile ${s.profile}, up ${uptime}`),
      h("dt", {}, "Queue"), h("dd", { "data-field": "queue" }, `${s.queue} waiting of ${s.queue_limit} allowed; ${s.in_flight} running`),
    ),
    table(
      "Runtimes and their warm pools",
      ["Runtime", "Version", "Offered", "Warm", "Busy", "Starting", "Target", "Restarts", "Setup failures"],
      s.runtimes.map((rt) => [
        rt.name, rt.version || "–", rt.offered ? "✓ yes" : `✗ no: ${rt.reason}`,
        String(rt.warm), String(rt.busy), String(rt.starting), String(rt.target), String(rt.restarts), String(rt.setup_failures),
      ]),
    ),
    table("Sandbox layers", ["Layer", "Active", "Detail"], s.layers.map((l) => [l.name, l.active ? "✓ on" : "✗ off", l.detail])),
    table("Counters (non-zero)", ["Counter", "Value"], counters.length ? counters.map(([k, v]) => [k, String(v)]) : [["none yet", "–"]]),
  );
}
