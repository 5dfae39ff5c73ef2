"""``cellblock mcp``: the ``execute_code`` tool for LLMs, on the official MCP SDK.

Over stdio by default, or streamable HTTP on loopback (``--http PORT``).
It is one more cellblock client: it talks to a running service, or starts an
embedded one for its own lifetime. Each MCP session is its own cellblock
client id (see ``Identity``), so rate limits, grants and history apply per
session, and a grant the user makes for the id a refusal names reaches the
session's next call. A run that failed, timed out or was refused comes back with
``isError`` set and a message a model can act on; ``permission_required``
says exactly what the user must grant.

State is opt-in: ``keep_state=true`` runs the code in the caller's
session for that language (opened on first use, one per MCP client and
language): variables, imports and /work carry over between such calls,
and the value of the last expression is shown. A boolean is what a model
uses correctly; it never handles a session id. Files go in as a list of
{name, content, encoding}; what the run leaves in /work/out comes back as
image content (pictures) and embedded resources (other files), or by name
and size when over the cap.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, TypedDict

import msgspec
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
)
from pydantic import BaseModel, Field

from protocol import messages as m
from protocol.client import AsyncClient, ServiceError
from protocol.errors import ErrorCode, ErrorInfo
from protocol.files import is_text
from protocol.nodes import AsyncNodes
from protocol.profile import MiB
from supervisor.policy.validation import MINIMUM
from supervisor.tools.kept import KeptSessions

OK = m.Status.OK
# Over TCP: (endpoints, the nodes' public key, this client's key file), for AsyncNodes.
Remote = tuple[list[str], str, str]
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


def _file_lines(result: m.ExecuteResult) -> list[str]:
    lines = []
    for artifact in result.artifacts:
        note = " (over the size cap: not sent)" if artifact.dropped else ""
        lines.append(f"file /work/out/{artifact.name}: {artifact.media_type}, {artifact.size} bytes{note}")
    if result.artifacts_omitted:
        lines.append(f"({result.artifacts_omitted} more files in /work/out, not listed)")
    if result.session:
        lines.append(
            "the session ended with this call: its state is gone"
            if result.session_ended
            else "state kept: the next call with keep_state=true continues from here"
        )
    return lines


def _file_blocks(result: m.ExecuteResult) -> list[ImageContent | EmbeddedResource]:
    """The run's files as MCP content: pictures as images, text as text, the rest as blobs."""
    blocks: list[ImageContent | EmbeddedResource] = []
    for artifact in result.artifacts:
        if artifact.dropped:
            continue
        encoded = base64.b64encode(artifact.data).decode("ascii")
        uri = f"cellblock://{result.run_id}/out/{artifact.name}"
        if artifact.media_type.startswith("image/") and artifact.media_type != "image/svg+xml":
            blocks.append(ImageContent(type="image", data=encoded, mime_type=artifact.media_type))
            continue
        try:
            text = artifact.data.decode("utf-8") if is_text(artifact.media_type) else None
        except UnicodeDecodeError:
            text = None
        resource: TextResourceContents | BlobResourceContents = (
            TextResourceContents(uri=uri, mime_type=artifact.media_type, text=text)
            if text is not None
            else BlobResourceContents(uri=uri, mime_type=artifact.media_type, blob=encoded)
        )
        blocks.append(EmbeddedResource(type="resource", resource=resource))
    return blocks


def tool_result(result: m.ExecuteResult, note: str = "") -> CallToolResult:
    structured = msgspec.to_builtins(result)
    structured.pop("type", None)
    # The files' bytes travel as content blocks; the structured result names them.
    structured["artifacts"] = [
        {"name": a.name, "size": a.size, "media_type": a.media_type, "dropped": a.dropped, "sha256": a.sha256}
        for a in result.artifacts
    ]
    text = "\n".join([*([note] if note else []), format_result(result), *_file_lines(result)])
    return CallToolResult(
        content=[TextContent(type="text", text=text), *_file_blocks(result)],
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
        "By default each call starts from nothing. With keep_state=true the call runs in your session for "
        "that language instead: variables, imports, functions and files in /work stay for the next "
        "keep_state=true call (like notebook cells; the last expression's value is shown), until "
        f"{_minutes(status.session_idle_timeout_s)} without a call. Use it for step-by-step work; a call that "
        "times out is interrupted and the state is kept. Files you pass in (files) are written into /work "
        "before the code runs. Save plots and files to /work/out to get them back "
        "(matplotlib figures left open or shown come back as PNG images by themselves). "
        "There is no network access and no access to the user's files unless the user has granted it. "
        f"Limits per call: {limits.get('timeout_ms', 10000) / 1000:g} s wall clock by default "
        f"(up to {most.get('timeout_ms', 60000) / 1000:g} s if the user grants it), "
        f"{limits.get('memory_bytes', 256 * MiB) // MiB} MiB memory, output kept up to "
        f"{limits.get('output_bytes', MiB) // 1024} KiB per stream (head and tail). "
        "Print what you need to see; the result is marked as an error when the code fails, times out or "
        "is refused, with a message saying why."
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"


class FileIn(BaseModel):
    """A file to write into /work before the code runs."""

    name: Annotated[str, Field(description="Its path under /work, e.g. 'data.csv' or 'input/a.json'.")]
    content: Annotated[str, Field(description="Its content: text, or base64 when encoding is 'base64'.")]
    encoding: Literal["text", "base64"] = "text"


def _files(given: list[FileIn]) -> dict[str, bytes] | m.ExecuteResult:
    files = {}
    for item in given:
        if item.name in files:
            return _refused("files", f"file {item.name!r} is given twice")
        try:
            files[item.name] = (
                base64.b64decode(item.content, validate=True) if item.encoding == "base64" else item.content.encode()
            )
        except (binascii.Error, ValueError):
            return _refused("files", f"file {item.name!r}: content is not valid base64")
    return files


KeepState = Annotated[
    bool,
    Field(
        description="true: run in your session for this language, where variables, imports and files "
        "in /work from earlier keep_state=true calls are still there. false: a fresh sandbox."
    ),
]
Files = Annotated[list[FileIn], Field(description="Files written into /work before the code runs.")]


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
    artifacts: list[dict[str, Any]]  # files left in /work/out: {name, size, media_type, dropped, sha256}
    session: str  # set when the call ran with keep_state
    session_ended: bool


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


def build(socket_path: str, status: m.StatusReply, client_id: str = "", remote: Remote | None = None) -> MCPServer:
    """Over ``remote`` nodes each run goes to one of them (``protocol.nodes``), and the
    client is the key's identity there: ``client_id`` and per-session ids do not apply."""
    client: AsyncClient | AsyncNodes = AsyncNodes(*remote) if remote else AsyncClient(socket_path)
    identity = Identity(client_id)
    sessions = KeptSessions(client)

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            await sessions.close_all()
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
        keep_state: KeepState = False,
        files: Files = [],  # noqa: B006 - never mutated; the schema shows the default
    ) -> Annotated[CallToolResult, RunResult]:
        limits, caps, given = _limits(timeout, floor_ms), _capabilities(capabilities), _files(files)
        for refused in (limits, caps, given):
            if isinstance(refused, m.ExecuteResult):
                return tool_result(refused)
        assert isinstance(limits, m.Limits) and isinstance(caps, list) and isinstance(given, dict)
        if keep_state:
            if stdin or caps:
                why = "stdin" if stdin else "capabilities"
                return tool_result(_refused(why, f"a keep_state call takes no {why}; pass data as files instead"))
            key = (identity.of(ctx), "", language if language != "auto" else "python", environment)
            result, note = await sessions.run(key, code, limits=limits, files=given)
            return tool_result(result, note)
        result = await client.execute(
            code,
            language,
            stdin=stdin,
            limits=limits,
            capabilities=caps,
            files=given,
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
    socket_path: str | None,
    default_socket: str,
    http_port: int | None,
    config: str | None,
    client_id: str = "",
    remote: Remote | None = None,
) -> int:
    if remote is not None:
        from protocol.nodes import Nodes

        try:
            with Nodes(*remote) as nodes:
                status = nodes.status()
        except ServiceError as exc:
            raise SystemExit(f"cellblock mcp: {exc.error.message}") from None
        _serve(build("", status, client_id, remote), http_port)
        return 0
    return _local(socket_path, default_socket, http_port, config, client_id)


def _serve(server: MCPServer, http_port: int | None) -> None:
    import anyio

    if http_port is None:
        anyio.run(server.run_stdio_async)
    else:
        anyio.run(lambda: server.run_streamable_http_async(host="127.0.0.1", port=http_port))


def _local(
    socket_path: str | None, default_socket: str, http_port: int | None, config: str | None, client_id: str
) -> int:
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
        _serve(build(path, status, client_id), http_port)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0
