"""A result as a file: the Markdown or JSON that ``cellblock export`` writes and
the console downloads, made in one place so both give the same text."""

from __future__ import annotations

from protocol import messages as m
from protocol.profile import MiB
from protocol.wire import to_json


def export_markdown(result: m.ExecuteResult) -> str:
    lines = [
        f"## cellblock run {result.run_id or result.id}",
        "",
        f"- status: **{result.status.value}**"
        + (f" (exit {result.exit_code})" if result.exit_code is not None else ""),
        f"- runtime: {result.runtime or result.language}",
        f"- wall {result.wall_ms:.1f} ms, cpu {result.cpu_ms:.1f} ms, memory {result.memory_peak_bytes / MiB:.1f} MiB",
    ]
    if result.reason:
        lines.append(f"- reason: {result.reason}")
    if result.error is not None:
        lines.append(f"- error: `{result.error.code.value}`: {result.error.message}")
    if result.redactions:
        lines.append("- redacted: " + ", ".join(f"{k} x{v}" for k, v in sorted(result.redactions.items())))
    for f in result.findings:
        lines.append(f"- finding (line {f.line}, {f.severity}): {f.message}")
    for name, text, cut, dropped in (
        ("stdout", result.stdout, result.stdout_truncated, result.stdout_dropped),
        ("stderr", result.stderr, result.stderr_truncated, result.stderr_dropped),
    ):
        if text:
            note = f" ({dropped} bytes dropped)" if cut else ""
            fence = "````" if "```" in text else "```"
            lines += ["", f"### {name}{note}", "", fence, text.rstrip("\n"), fence]
    return "\n".join(lines) + "\n"


def export_text(result: m.ExecuteResult, fmt: str) -> bytes:
    if fmt == "markdown":
        return export_markdown(result).encode()
    if fmt == "json":
        return to_json(result) + b"\n"
    raise ValueError(f"no export format {fmt!r}: json or markdown")
