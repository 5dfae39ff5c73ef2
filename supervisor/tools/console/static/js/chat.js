// The chat view: a transcript's prose as text, each fenced code block with a
// language (detected, changeable), the capabilities it looks like it needs, a
// Run button, live status and output, and the result panel.

import { ApiError, api, download, stream } from "./api.js";
import { $, clear, h } from "./dom.js";
import { parse } from "./transcript.js";
import * as words from "./words.js";

const info = { clientId: "console", languages: ["python", "javascript", "bash"] };

export function setInfo(data) {
  info.clientId = data.client_id;
  info.languages = data.languages;
}

export const conversation = () => $("#conversation").value.trim();

function newConversationId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function showTranscript(text) {
  const root = $("#transcript");
  let transcript;
  try {
    transcript = parse(text);
  } catch (error) {
    clear(root).append(h("p", { class: "alert", role: "alert" }, `This transcript cannot be read: ${error.message}`));
    return;
  }
  $("#conversation").value = transcript.conversationId || newConversationId();
  clear(root);
  if (transcript.title) root.append(h("h2", {}, transcript.title));
  const blocks = [];
  for (const message of transcript.messages) {
    const article = h("article", { class: `message role-${message.role || "none"}` });
    if (message.role) article.append(h("p", { class: "role" }, message.role));
    for (const part of message.parts) {
      if (part.type === "text") article.append(...prose(part.text));
      else {
        const block = new CodeBlock(part, blocks.length + 1);
        blocks.push(block);
        article.append(block.node);
      }
    }
    root.append(article);
  }
  if (!blocks.length) root.append(h("p", { class: "muted" }, "This text has no fenced code blocks to run."));
  if (!blocks.length) return;
  try {
    const found = await api("/api/analyse", { method: "POST", body: { blocks: blocks.map((b) => ({ code: b.code, hint: b.info })) } });
    found.blocks.forEach((analysis, i) => blocks[i].detected(analysis));
  } catch (error) {
    blocks.forEach((b) => b.detected(null, error.message));
  }
}

// Prose stays text: a heading line becomes a heading, the rest paragraphs (line breaks kept).
function prose(text) {
  return text.split(/\n{2,}/).filter((p) => p.trim()).map((paragraph) => {
    const heading = /^(#{1,6})\s+(.*)$/.exec(paragraph.trim());
    if (heading && !paragraph.trim().includes("\n")) return h("h3", { class: "prose-heading" }, heading[2]);
    return h("p", { class: "prose" }, paragraph);
  });
}

class CodeBlock {
  constructor(part, number) {
    this.code = part.code;
    this.info = part.info;
    this.number = number;
    this.result = null;
    this.running = false;
    const label = `block ${number}`;
    this.select = h("select", { "aria-label": `Language of ${label}` });
    this.fillLanguages("");
    this.detectedNote = h("span", { class: "detected muted" }, "detecting the language…");
    this.runButton = h("button", { type: "button", class: "run", onclick: () => this.run() }, "Run");
    this.state = h("span", { class: "state", role: "status", "aria-live": "polite" });
    this.caps = h("fieldset", { class: "caps", hidden: true }, h("legend", {}, "It looks like it needs"));
    this.alert = h("p", { class: "alert", role: "alert", hidden: true });
    this.stdout = h("pre", { class: "out", tabindex: "0", "aria-label": `stdout of ${label}` });
    this.stderr = h("pre", { class: "out err", tabindex: "0", "aria-label": `stderr of ${label}` });
    this.stdoutBox = h("div", { class: "stream", hidden: true }, h("p", { class: "stream-name" }, "stdout"), this.stdout);
    this.stderrBox = h("div", { class: "stream", hidden: true }, h("p", { class: "stream-name" }, "stderr"), this.stderr);
    this.panel = h("section", { class: "result", "aria-label": `Result of ${label}`, hidden: true });
    this.node = h(
      "section",
      { class: "block", "aria-label": `Code ${label}` },
      h("div", { class: "block-head" }, h("label", {}, "Language ", this.select), this.detectedNote, this.runButton, this.state),
      h("pre", { class: "code", tabindex: "0", "aria-label": `Code of ${label}` }, h("code", {}, this.code)),
      this.caps,
      this.alert,
      this.stdoutBox,
      this.stderrBox,
      this.panel,
    );
    this.setState("idle");
  }

  fillLanguages(chosen) {
    const names = [...new Set([...info.languages, ...(chosen ? [chosen] : [])])];
    clear(this.select).append(
      ...names.map((name) =>
        h("option", { value: name, selected: name === chosen }, info.languages.includes(name) ? name : `${name} (not offered here)`),
      ),
      h("option", { value: "auto", selected: !chosen }, "auto (the service decides)"),
    );
  }

  detected(analysis, failure) {
    if (!analysis) {
      this.detectedNote.textContent = `language not detected (${failure})`;
      return;
    }
    this.fillLanguages(analysis.language);
    this.detectedNote.textContent = analysis.language
      ? `detected: ${analysis.language} (${analysis.confidence}: ${analysis.reason})`
      : `not detected: ${analysis.reason}; choose one`;
    if (analysis.capabilities.length) {
      this.caps.hidden = false;
      for (const cap of analysis.capabilities) {
        const box = h("input", { type: "checkbox", checked: true });
        box.capability = cap;
        this.caps.append(h("label", {}, box, ` ${words.capabilityLabel(cap)}`));
      }
    }
  }

  capabilities() {
    return Array.from(this.caps.querySelectorAll("input:checked"), (box) => box.capability);
  }

  setState(name, status) {
    const [symbol, word] = status ? words.STATUS[status] || ["?", status] : words.STATES[name];
    this.state.textContent = `${symbol} ${name === "done" ? "done: " : ""}${word}`;
    this.state.className = `state state-${status || name}`;
    this.node.dataset.state = name;
  }

  async run(extra = {}) {
    if (this.running) return;
    this.running = true;
    this.runButton.disabled = true;
    this.result = null;
    this.alert.hidden = true;
    this.panel.hidden = true;
    clear(this.stdout);
    clear(this.stderr);
    this.stdoutBox.hidden = this.stderrBox.hidden = true;
    this.setState("queued");
    const keep = $("#keep-state").checked;
    const body = {
      code: this.code,
      language: this.select.value,
      capabilities: keep ? [] : this.capabilities(),
      conversation_id: conversation(),
      keep_state: keep,
      files: await runFiles(),
      ...extra,
    };
    let result = null;
    try {
      await stream("/api/run", body, (event, data) => {
        if (event === "running") this.setState("running");
        else if (event === "chunk") this.output(data.stream, data.data);
        else if (event === "result") result = data;
      });
      if (!result) throw new ApiError(0, "no_result", "the console's stream ended without a result");
    } catch (error) {
      this.setState("failed");
      this.alert.textContent = error.message;
      this.alert.hidden = false;
      return;
    } finally {
      this.running = false;
      this.runButton.disabled = false;
    }
    await this.finish(result);
  }

  output(name, text) {
    const pane = name === "stderr" ? this.stderr : this.stdout;
    (name === "stderr" ? this.stderrBox : this.stdoutBox).hidden = false;
    pane.append(document.createTextNode(text));
  }

  async finish(result) {
    this.result = result;
    this.setState("done", result.status);
    // The final result is the authority: redaction over the whole output may hide
    // more than the stream could (a secret whose halves came in two chunks).
    this.stdout.textContent = result.stdout;
    this.stderr.textContent = result.stderr;
    this.stdoutBox.hidden = !result.stdout;
    this.stderrBox.hidden = !result.stderr;
    clear(this.panel).append(...resultPanel(result, this));
    this.panel.hidden = false;
    if (result.status === "permission_required" && result.required.length) await this.askPermission(result.required);
  }

  async askPermission(required) {
    const choice = await ask(required);
    if (choice === "once") return this.run({ allow_once: required });
    if (choice === "conversation" || choice === "client") {
      try {
        for (const capability of required) {
          await api("/api/grants", { method: "POST", body: { capability, scope: choice, conversation_id: conversation() } });
        }
      } catch (error) {
        this.alert.textContent = `The grant was not made: ${error.message}`;
        this.alert.hidden = false;
        return;
      }
      return this.run();
    }
    this.setState("denied");
  }
}

function ask(required) {
  const dialog = $("#permission");
  clear($("#permission-list")).append(...required.map((cap) => h("li", {}, `This code wants to ${words.capabilityWords(cap)}.`)));
  $("#permission-scope").textContent = `Client “${info.clientId}”, conversation “${conversation()}”.`;
  return new Promise((resolve) => {
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue || "deny"), { once: true });
    dialog.showModal();
  });
}

// --- files for the runs: read once when chosen, sent with every run ----------------------

let chosenFiles = [];

export function watchRunFiles() {
  $("#run-files").addEventListener("change", async (event) => {
    chosenFiles = await Promise.all(Array.from(event.target.files, readFile));
    const names = chosenFiles.map((f) => `${f.name} (${words.bytes(f.size)})`);
    $("#run-files-list").textContent = names.length
      ? `written into /work before each run: ${names.join(", ")}`
      : "no files: each run's /work starts empty";
  });
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, size: file.size, data: String(reader.result).split(",", 2)[1] || "" });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function runFiles() {
  return chosenFiles.map(({ name, data }) => ({ name, data }));
}

// --- the result panel: a list of sections, each a few rows of a definition list ----------

const RAN = new Set(["ok", "error", "timeout", "memory_limit", "output_limit", "killed"]);

const SECTIONS = [
  (r) => [["Status", words.statusText(r.status) + (r.exit_code === null ? "" : `, exit code ${r.exit_code}`) + (r.signal ? `, signal ${r.signal}` : "")]],
  (r) => (RAN.has(r.status) ? [
    ["Time", `wall ${words.ms(r.wall_ms)}, cpu ${words.ms(r.cpu_ms)}`],
    ["Peak memory", words.bytes(r.memory_peak_bytes)],
  ] : [["Ran", "no: the code did not run"]]),
  (r) => {
    const cut = [];
    if (r.stdout_truncated) cut.push(`stdout cut, ${words.bytes(r.stdout_dropped)} dropped`);
    if (r.stderr_truncated) cut.push(`stderr cut, ${words.bytes(r.stderr_dropped)} dropped`);
    return RAN.has(r.status) ? [["Output", cut.length ? cut.join("; ") + " (head and tail kept)" : "complete"]] : [];
  },
  (r) => {
    const found = Object.entries(r.redactions || {}).sort();
    return RAN.has(r.status) ? [["Secrets redacted", found.length ? found.map(([k, v]) => `${k} ×${v}`).join(", ") : "none"]] : [];
  },
  (r) => [["Findings", r.findings.length ? list(r.findings.map((f) => `line ${f.line} (${f.severity}): ${f.message}`)) : "none"]],
  (r) => [["Network", r.network.length ? list(r.network.map(netLine)) : "not used"]],
  (r) => (r.artifacts && r.artifacts.length ? [["Files out", h("div", { class: "artifacts" }, ...r.artifacts.map(artifact))]] : []),
  (r) => (r.session ? [["Session", r.session_ended ? `${r.session}: ended with this block (its state is gone)` : `${r.session}: state kept for the next block`]] : []),
  (r) => [
    r.reason && !r.reason.startsWith("exit code") ? ["Reason", r.reason] : null,
    r.error ? ["Error", `${r.error.code}: ${r.error.message}`] : null,
    r.required.length ? ["Needs", list(r.required.map((c) => words.capabilityWords(c)))] : null,
    r.retry_after_s ? ["Retry after", `${r.retry_after_s} s`] : null,
  ],
  (r) => [["Runtime", [r.runtime || r.language || "–", r.run_id ? ` · run ${r.run_id}` : ""].join("")]],
];

// A file the run left in /work/out: a picture shown inline, anything else a download.
function artifact(a) {
  const caption = `${a.name} · ${a.media_type} · ${words.bytes(a.size)}`;
  if (a.dropped) return h("p", { class: "artifact" }, `${caption}: over the size cap, not sent`);
  if (a.media_type.startsWith("image/") && a.media_type !== "image/svg+xml") {
    return h("figure", { class: "artifact" }, h("img", { src: `data:${a.media_type};base64,${a.data}`, alt: `${a.name}, made by the run` }), h("figcaption", {}, caption));
  }
  const bytes = Uint8Array.from(atob(a.data), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  return h("p", { class: "artifact" }, h("a", { href: url, download: a.name.split("/").pop() }, `Download ${a.name}`), ` (${a.media_type}, ${words.bytes(a.size)})`);
}

function netLine(d) {
  const count = d.count > 1 ? ` (${d.count} times)` : "";
  const target = d.host ? `${d.host}:${d.port}` : "(no host: cut off)";
  return d.allowed
    ? `✓ ${target} allowed${count}, in ${words.bytes(d.bytes_in)}, out ${words.bytes(d.bytes_out)}`
    : `⊘ ${target} denied${count}: ${d.reason}`;
}

function list(items) {
  return h("ul", {}, ...items.map((item) => h("li", {}, item)));
}

function resultPanel(result, block) {
  const rows = SECTIONS.flatMap((section) => section(result)).filter(Boolean);
  const dl = h("dl", {}, ...rows.flatMap(([term, detail]) => [h("dt", {}, term), h("dd", {}, detail)]));
  const exportAs = (format) => async () => {
    try {
      await download("/api/export", { result: block.result, format });
    } catch (error) {
      block.alert.textContent = `Export failed: ${error.message}`;
      block.alert.hidden = false;
    }
  };
  return [
    dl,
    h(
      "div",
      { class: "row" },
      h("button", { type: "button", onclick: exportAs("json") }, "Export JSON"),
      h("button", { type: "button", onclick: exportAs("markdown") }, "Export Markdown"),
    ),
  ];
}
