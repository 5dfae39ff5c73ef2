// What the page says about things: capabilities in words, sizes, times, statuses.
// A status is always a word and a symbol, never a colour alone.

const LIMIT_WORDS = {
  timeout_ms: "more time than the default",
  cpu_ms: "more CPU time than the default",
  memory_bytes: "more memory than the default",
  output_bytes: "more output than the default",
};

export function capabilityWords(cap) {
  switch (cap.kind) {
    case "net": return `reach ${cap.target}`;
    case "fs_read": return `read ${cap.target}`;
    case "fs_write": return `write to ${cap.target}`;
    case "limits": return `use ${LIMIT_WORDS[cap.target] || cap.target}`;
    default: return `${cap.kind}: ${cap.target}`;
  }
}

export function capabilityLabel(cap) {
  const kinds = { net: "network", fs_read: "read files", fs_write: "write files", limits: "limit" };
  return `${kinds[cap.kind] || cap.kind}: ${cap.target}`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function ms(n) {
  if (n === null || n === undefined) return "–";
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${n.toFixed(1)} ms`;
}

export function when(seconds) {
  if (!seconds) return "–";
  const d = new Date(seconds * 1000);
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export const STATES = {
  idle: ["○", "not run"],
  queued: ["◷", "queued"],
  running: ["▶", "running"],
  denied: ["⊘", "denied: not run"],
  failed: ["✗", "could not run"],
};

export const STATUS = {
  ok: ["✓", "ok"],
  error: ["✗", "error"],
  timeout: ["◔", "timed out"],
  memory_limit: ["✗", "out of memory"],
  output_limit: ["✗", "too much output"],
  killed: ["✗", "killed"],
  rejected: ["⊘", "rejected"],
  rate_limited: ["◷", "rate limited"],
  permission_required: ["⚠", "permission required"],
  overloaded: ["◷", "service overloaded"],
  internal_error: ["✗", "internal error"],
};

export function statusText(status) {
  const [symbol, word] = STATUS[status] || ["?", status];
  return `${symbol} ${word}`;
}
