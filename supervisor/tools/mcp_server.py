"""``cellblock mcp``: the ``execute_code`` tool for LLMs, on the official MCP SDK.

Over stdio by default, or streamable HTTP on loopback (``--http PORT``).
It is one more cellblock client: it talks to a running service, or starts an
embedded one for its own lifetime. Each MCP session is its own cellblock
client id (see ``Identity``), so rate limits, grants and history apply per
session, and a grant the user makes for the id a refusal names reaches the
session's next call. A run that failed, timed out or was refused comes back with
``isError`` set and a message a model can act on; ``permission_required``
says exactly what the user must grant.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, TypedDict

import msgspec
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from protocol import messages as m
from protocol.client import AsyncClient
from protocol.errors import ErrorCode, ErrorInfo
from protocol.profile import MiB
from supervisor.policy.validation import MINIMUM

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


def _packages(status: m.StatusReply) -> str:
    """What the default environments offer, in words a model can act on."""
    said = []
    for rt in status.runtimes:
        runtime = rt.name.split(":")[0]
        if rt.offered and rt.environment and status.default_environments.get(runtime) == rt.environment:
            names = ", ".join(p.split()[0] for p in rt.packages)
            said.append(f"{runtime.capitalize()} code can import {names} (environment {rt.environment!r}).")
    return " ".join(said) + (" " if said else "")


def _describe(status: m.StatusReply) -> str:
    limits, most = status.limits, status.max_limits
    languages = ", ".join(sorted({rt.name.split(":")[0] for rt in status.runtimes if rt.offered})) or "python"
    return (
        "Run code in a fresh, isolated sandbox and get back its stdout, stderr, exit status and resource use. "
        f"Languages: {languages}. {_packages(status)}"
        "Each call starts from nothing: no files, variables or processes survive between calls "
        "(write to /work or /tmp within one call only). There is no network access and no "
        "access to the user's files unless the user has granted it. "
        f"Limits per call: {limits.get('timeout_ms', 10000) / 1000:g} s wall clock by default "
        f"(up to {most.get('timeout_ms', 60000) / 1000:g} s if the user grants it), "
        f"{limits.get('memory_bytes', 256 * MiB) // MiB} MiB memory, output kept up to "
        f"{limits.get('output_bytes', MiB) // 1024} KiB per stream (head and tail). "
        "Print what you need to see; the result is marked as an error when the code fails, times out or "
        "is refused, with a message saying why."
    )


class RunResult(TypedDict, total=False):
    """The structured content of an execute_code result (the service's ExecuteResult)."""

    status: str  # ok, error, timeout, memory_limit, output_limit, killed, rejected, rate_limited, ...
    exit_code: int | None
    signal: int | None
    reason: str
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_ms: float
    cpu_ms: float
    memory_peak_bytes: int
    language: str
    runtime: str
    error: dict[str, Any] | None  # {code, message, field}: why it was refused or lost
    retry_after_s: float | None
    required: list[dict[str, str]]  # capabilities the user must grant first: [{kind, target}]
    findings: list[dict[str, Any]]
    redactions: dict[str, int]
    network: list[dict[str, Any]]
    run_id: str


class Identity:
    """Which cellblock client an MCP call belongs to: it must last the whole MCP session,
    or a grant made for it (``cellblock grant <id> ...``) would not reach the next call.

    * an id the operator fixed (``cellblock mcp --client-id NAME``): every call;
    * streamable HTTP with a session (the handshake era's ``mcp-session-id``): one
      id per transport session;
    * otherwise (stdio, where the process is the session; or a stateless HTTP
      client of the 2026 protocol, which has no session at all): this server's own id.

    The SDK makes a new session object per request on some transports, so the
    object is never the key.
    """

    def __init__(self, fixed: str = "") -> None:
        self.fixed = fixed
        self.own = fixed or f"mcp-{uuid.uuid4().hex[:12]}"

    def of(self, ctx: Context) -> str:
        if self.fixed:
            return self.fixed
        session = (ctx.headers or {}).get("mcp-session-id", "")
        if session:
            return f"mcp-{hashlib.sha256(session.encode()).hexdigest()[:12]}"
        return self.own


def _refused(field: str, message: str) -> m.ExecuteResult:
    error = ErrorInfo(code=ErrorCode.INVALID_REQUEST, message=message, field=field)
    return m.ExecuteResult(id="", status=m.Status.REJECTED, error=error)


def _limits(timeout: float | None, floor_ms: int) -> m.Limits | m.ExecuteResult:
    if timeout is None:
        return m.Limits()
    if timeout * 1000 < floor_ms:
        return _refused("timeout", f"timeout {timeout:g} s is below the least a run needs ({floor_ms / 1000:g} s)")
    return m.Limits(timeout_ms=round(timeout * 1000))


def _capabilities(asked: list[str]) -> list[m.Capability] | m.ExecuteResult:
    try:
        return [m.Capability.parse(text) for text in asked]
    except ValueError as exc:
        return _refused("capabilities", str(exc))


def build(socket_path: str, status: m.StatusReply, client_id: str = "") -> MCPServer:
    client = AsyncClient(socket_path)
    identity = Identity(client_id)

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
    floor_ms = MINIMUM["timeout_ms"]

    async def execute_code(
        code: Annotated[str, Field(description="The whole program to run, as source text.")],
        ctx: Context,
        language: str = "python",  # its schema (an enum of what is offered) is set below
        timeout: Annotated[
            float | None,
            Field(
                description="Wall-clock limit in seconds. Default: the service's (see list_runtimes); "
                "more than the default needs the user's permission."
            ),
        ] = None,
        stdin: Annotated[str, Field(description="Text given to the program on its standard input.")] = "",
        capabilities: Annotated[
            list[str],
            Field(
                description="What the run needs beyond a bare sandbox, each granted by the user beforehand: "
                "'net:api.example.com' (or 'net:*.example.com') to reach that host through the proxy, "
                "'fs_read:/path' or 'fs_write:/path' for a host folder (seen at /mnt/host/<path>). "
                "Without a grant the result says exactly what the user must grant."
            ),
        ] = [],  # noqa: B006 - never mutated; the schema shows the default
        environment: str = "",  # its schema (an enum of the built environments) is set below
    ) -> Annotated[CallToolResult, RunResult]:
        limits = _limits(timeout, floor_ms)
        caps = _capabilities(capabilities)
        if isinstance(limits, m.ExecuteResult):
            return tool_result(limits)
        if isinstance(caps, m.ExecuteResult):
            return tool_result(caps)
        result = await client.execute(
            code,
            language,
            stdin=stdin,
            limits=limits,
            capabilities=caps,
            client_id=identity.of(ctx),
            environment=environment,
        )
        return tool_result(result)

    _enums(execute_code, status)
    server.tool(name="execute_code", description=_describe(status))(execute_code)

    @server.tool(name="list_runtimes", description="Languages this sandbox runs, their versions and the limits.")
    async def list_runtimes() -> CallToolResult:
        return _runtimes(await client.status())

    return server


def _enums(execute_code: Any, status: m.StatusReply) -> None:
    """The language and environment parameters' schemas: enums of what this service offers,
    so they are set on the function here rather than written in its signature."""
    offered = sorted({rt.name.split(":")[0] for rt in status.runtimes if rt.offered}) or ["python"]
    languages = Literal[tuple([*offered, "auto"])]  # type: ignore[valid-type]
    envs = sorted({rt.environment for rt in status.runtimes if rt.offered and rt.environment})
    environments = Literal[tuple(["", *envs, "none"])]  # type: ignore[valid-type]
    execute_code.__annotations__["language"] = Annotated[
        languages,  # type: ignore[valid-type]
        Field(description="Its language; 'auto' detects it from a code fence, a shebang or the code itself."),
    ]
    execute_code.__annotations__["environment"] = Annotated[
        environments,  # type: ignore[valid-type]
        Field(
            description="A package environment by name (see list_runtimes); empty for the service's default, "
            "'none' for the language's standard library only."
        ),
    ]


def _runtimes(status: m.StatusReply) -> CallToolResult:
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


def main(
    socket_path: str | None, default_socket: str, http_port: int | None, config: str | None, client_id: str = ""
) -> int:
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
        server = build(path, status, client_id)
        if http_port is None:
            anyio.run(server.run_stdio_async)
        else:
            anyio.run(lambda: server.run_streamable_http_async(host="127.0.0.1", port=http_port))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
