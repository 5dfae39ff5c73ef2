"""``cellblock mcp``: the ``execute_code`` tool for LLMs, on the official MCP SDK.

Over stdio by default, or streamable HTTP on loopback (``--http PORT``).
It is one more cellblock client: it talks to a running service, or starts an
embedded one for its own lifetime. Each MCP session is its own cellblock
client id (``mcp-<session>``), so rate limits, grants and history apply per
session. A run that failed, timed out or was refused comes back with
``isError`` set and a message a model can act on; ``permission_required``
says exactly what the user must grant.
"""

from __future__ import annotations

import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent

from protocol import messages as m
from protocol.client import AsyncClient
from protocol.profile import MiB

OK = m.Status.OK
SHOWN_BYTES = 16 * 1024  # per stream in the text block; the structured content has it all


def _cut(text: str, name: str, dropped: int) -> str:
    notice = ""
    if len(text) > SHOWN_BYTES:
        half = SHOWN_BYTES // 2
        notice = f"[{len(text) - SHOWN_BYTES} more characters of {name} not shown here]"
        text = text[:half] + "\n...\n" + text[-half:]
    if dropped:
        notice = (notice + " " if notice else "") + f"[the sandbox kept the head and tail: {dropped} bytes dropped]"
    return text + ("\n" + notice if notice else "")


def format_result(result: m.ExecuteResult) -> str:
    """One compact block: what a model needs to decide its next step."""
    head = f"status: {result.status.value}"
    if result.exit_code is not None:
        head += f" (exit code {result.exit_code})"
    if result.signal is not None:
        head += f" (signal {result.signal})"
    if result.reason and not result.reason.startswith("exit code"):
        head += f": {result.reason}"
    lines = [head]
    if result.status in (
        OK,
        m.Status.ERROR,
        m.Status.TIMEOUT,
        m.Status.MEMORY_LIMIT,
        m.Status.OUTPUT_LIMIT,
        m.Status.KILLED,
    ):
        lines.append(
            f"took {result.wall_ms:.1f} ms wall, {result.cpu_ms:.1f} ms cpu, "
            f"{result.memory_peak_bytes / MiB:.1f} MiB memory"
        )
    if result.error is not None:
        lines.append(f"{result.error.code.value}: {result.error.message}")
    if result.required:
        needs = ", ".join(f"{c.kind.value}:{c.target}" for c in result.required)
        lines.append(f"The user must grant: {needs}. Do not retry until they have.")
    if result.retry_after_s:
        lines.append(f"retry after {result.retry_after_s:.1f} s")
    for name, text, dropped in (
        ("stdout", result.stdout, result.stdout_dropped),
        ("stderr", result.stderr, result.stderr_dropped),
    ):
        if text:
            lines += [f"--- {name} ---", _cut(text.rstrip("\n"), name, dropped)]
    if not result.stdout and not result.stderr and result.status is OK:
        lines.append("(no output)")
    if result.redactions:
        found = ", ".join(f"{k} x{v}" for k, v in sorted(result.redactions.items()))
        lines.append(f"note: secrets in the output were replaced by [REDACTED:...] markers ({found})")
    for finding in result.findings[:10]:
        lines.append(f"finding (line {finding.line}, {finding.severity}): {finding.message}")
    return "\n".join(lines)


def tool_result(result: m.ExecuteResult) -> CallToolResult:
    structured = msgspec.to_builtins(result)
    structured.pop("type", None)
    return CallToolResult(
        content=[TextContent(type="text", text=format_result(result))],
        structured_content=structured,
        is_error=result.status is not OK,
    )


def _describe(status: m.StatusReply) -> str:
    limits, most = status.limits, status.max_limits
    languages = ", ".join(rt.name for rt in status.runtimes if rt.offered) or "python"
    return (
        "Run code in a fresh, isolated sandbox and get back its stdout, stderr, exit status and resource use. "
        f"Languages: {languages}. Each call starts from nothing: no files, variables or processes survive "
        "between calls (write to /work or /tmp within one call only). There is no network access and no "
        "access to the user's files unless the user has granted it. "
        f"Limits per call: {limits.get('timeout_ms', 10000) / 1000:g} s wall clock by default "
        f"(up to {most.get('timeout_ms', 60000) / 1000:g} s if the user grants it), "
        f"{limits.get('memory_bytes', 256 * MiB) // MiB} MiB memory, output kept up to "
        f"{limits.get('output_bytes', MiB) // 1024} KiB per stream (head and tail). "
        "Print what you need to see; the result is marked as an error when the code fails, times out or "
        "is refused, with a message saying why."
    )


def build(socket_path: str, description: str) -> MCPServer:
    client = AsyncClient(socket_path)

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            client.close()

    server: MCPServer = MCPServer(
        name="cellblock",
        instructions="Use execute_code to run code safely; call list_runtimes for languages and limits.",
        lifespan=lifespan,
    )

    sessions: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()

    def client_id(ctx: Context) -> str:
        """One cellblock client per MCP session (stdio: the process; HTTP: each session)."""
        session = ctx.request_context.session
        if session not in sessions:
            sessions[session] = f"mcp-{uuid.uuid4().hex[:12]}"
        return sessions[session]

    @server.tool(name="execute_code", description=description)
    async def execute_code(
        code: str, ctx: Context, language: str = "python", timeout: float | None = None, stdin: str = ""
    ) -> CallToolResult:
        """code: the program; language: python (default); timeout: seconds; stdin: its input."""
        limits = m.Limits(timeout_ms=max(1, int(timeout * 1000)) if timeout else None)
        result = await client.execute(code, language, stdin=stdin, limits=limits, client_id=client_id(ctx))
        return tool_result(result)

    @server.tool(name="list_runtimes", description="Languages this sandbox runs, their versions and the limits.")
    async def list_runtimes() -> CallToolResult:
        status = await client.status()
        data: dict[str, Any] = {
            "runtimes": [
                {
                    "name": rt.name,
                    "version": rt.version,
                    "available": rt.offered,
                    **({"reason": rt.reason} if not rt.offered and rt.reason else {}),
                }
                for rt in status.runtimes
            ],
            "default_limits": status.limits,
            "max_limits_with_permission": status.max_limits,
            "network": "none unless granted",
        }
        lines = [
            f"{r['name']} {r['version']}" + ("" if r["available"] else f" (not available: {r.get('reason')})")
            for r in data["runtimes"]
        ]
        lines.append(f"limits: {status.limits}; with the user's permission up to {status.max_limits}")
        return CallToolResult(content=[TextContent(type="text", text="\n".join(lines))], structured_content=data)

    return server


def main(socket_path: str | None, default_socket: str, http_port: int | None, config: str | None) -> int:
    import anyio

    from protocol.client import Client, ServiceError, service_answers
    from supervisor.tools.embedded import Embedded

    embedded = None
    path = socket_path or default_socket
    if not service_answers(path):
        if socket_path is not None:
            raise SystemExit(f"cellblock mcp: no service answers on {socket_path}")
        embedded = Embedded(config=config)
        path = embedded.start()
    try:
        with Client(path) as client:
            try:
                status = client.status()
            except ServiceError as exc:
                raise SystemExit(f"cellblock mcp: {exc.error.message}") from None
        server = build(path, _describe(status))
        if http_port is None:
            anyio.run(server.run_stdio_async)
        else:
            anyio.run(lambda: server.run_streamable_http_async(host="127.0.0.1", port=http_port))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
