// A chat transcript or any Markdown, as messages made of prose and code blocks.
//
//   JSON: {"conversation_id": "...", "title": "...", "messages": [{"role": "user", "content": "..."}]}
//         or just the list of messages; content may be a string or a list of {"type": "text", "text"} parts.
//   Markdown: optional front matter (--- conversation_id: ... / title: ... ---); a heading or a
//         bold line naming a role (## User, **Assistant:**) starts a message; fenced code blocks
//         (``` or ~~~, with an optional info string) are the blocks that can run.

const ROLES = /^(?:#{1,6}\s*|\*\*)?(user|assistant|system|human|ai|model|you|me)(?::\*\*|\*\*:?|:)?\s*$/i;

export function parse(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    let data = null;
    try { data = JSON.parse(trimmed); } catch { /* Markdown that starts with a bracket */ }
    if (data !== null) return fromJson(data);
  }
  return fromMarkdown(text);
}

function fromJson(data) {
  const list = Array.isArray(data) ? data : data.messages;
  if (!Array.isArray(list)) throw new Error("a JSON transcript needs a list of messages");
  const messages = list.map((message, i) => {
    if (typeof message !== "object" || message === null) throw new Error(`message ${i + 1} is not an object`);
    let content = message.content ?? message.text ?? "";
    if (Array.isArray(content)) content = content.map((part) => (typeof part === "string" ? part : part.text || "")).join("\n");
    if (typeof content !== "string") throw new Error(`message ${i + 1} has no text content`);
    return { role: String(message.role || ""), parts: splitBlocks(content) };
  });
  const meta = Array.isArray(data) ? {} : data;
  return { conversationId: String(meta.conversation_id || meta.conversation || ""), title: String(meta.title || ""), messages };
}

function fromMarkdown(text) {
  let body = text.replace(/\r\n?/g, "\n");
  const meta = {};
  const front = /^---\n([\s\S]*?)\n---\n/.exec(body);
  if (front) {
    for (const line of front[1].split("\n")) {
      const m = /^([A-Za-z_]+)\s*:\s*(.*)$/.exec(line);
      if (m) meta[m[1].toLowerCase()] = m[2].trim().replace(/^["']|["']$/g, "");
    }
    body = body.slice(front[0].length);
  }
  // Split into messages at role lines outside code fences.
  const messages = [];
  let current = { role: "", lines: [] };
  let fence = null;
  for (const line of body.split("\n")) {
    const f = fenceOf(line);
    if (fence) {
      if (f && f.char === fence.char && f.size >= fence.size && !f.info) fence = null;
    } else if (f) {
      fence = f;
    } else {
      const role = ROLES.exec(line.trim());
      if (role) {
        if (current.role || current.lines.some((l) => l.trim())) messages.push(current);
        current = { role: role[1].toLowerCase(), lines: [] };
        continue;
      }
    }
    current.lines.push(line);
  }
  messages.push(current);
  return {
    conversationId: meta.conversation_id || meta.conversation || "",
    title: meta.title || "",
    messages: messages.map((msg) => ({ role: msg.role, parts: splitBlocks(msg.lines.join("\n")) })),
  };
}

function fenceOf(line) {
  const m = /^ {0,3}(`{3,}|~{3,})\s*(.*)$/.exec(line);
  if (!m) return null;
  if (m[1][0] === "`" && m[2].includes("`")) return null;
  return { char: m[1][0], size: m[1].length, info: m[2].trim() };
}

// Prose and fenced code, in order. An unclosed fence runs to the end, as in CommonMark.
export function splitBlocks(text) {
  const parts = [];
  let prose = [];
  let code = null;
  const flushProse = () => {
    const joined = prose.join("\n");
    if (joined.trim()) parts.push({ type: "text", text: joined.replace(/^\n+|\n+$/g, "") });
    prose = [];
  };
  for (const line of text.split("\n")) {
    const f = fenceOf(line);
    if (code) {
      if (f && f.char === code.fence.char && f.size >= code.fence.size && !f.info) {
        parts.push({ type: "code", info: code.fence.info, code: code.lines.join("\n") + "\n" });
        code = null;
      } else {
        code.lines.push(line);
      }
    } else if (f) {
      flushProse();
      code = { fence: f, lines: [] };
    } else {
      prose.push(line);
    }
  }
  if (code) parts.push({ type: "code", info: code.fence.info, code: code.lines.join("\n") + "\n" });
  flushProse();
  return parts;
}
