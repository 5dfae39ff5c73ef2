"""The console's HTTP API: JSON in, JSON (or a stream of server-sent events) out.

Every handler is a thin translation to one protocol request through
``AsyncClient``; the console holds no state of its own except the results
it streams. The broker keeps no output, so an export is made from the
result the page holds and posts back, by the same code as ``cellblock
export``. Errors are ``{"error": {"code", "message"}}``: the service's own
code and message where it gave one (those are written for clients), a fixed
sentence otherwise. Nothing of the console's or the service's internals (a
traceback, a socket path) is put in a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from protocol import messages as m
from protocol.client import AsyncClient, ServiceError
from protocol.errors import ErrorCode, ErrorInfo
from protocol.wire import to_builtins
from supervisor.policy import findings
from supervisor.policy.detect import detect
from supervisor.tools.export import export_text
from supervisor.tools.kept import KeptSessions

log = logging.getLogger("cellblock.console")

MiB = 1024 * 1024
Code = Annotated[str, msgspec.Meta(max_length=2 * MiB)]
Small = Annotated[str, msgspec.Meta(max_length=256)]
ONCE_GRACE_S = 60  # an "allow once" grant also expires by itself, should the revoke never come
PAGE_MAX = 500
T = TypeVar("T")
EXAMPLE_NAME = re.compile(r"^[a-z0-9-]{1,40}$")

# --- request bodies (the console's own HTTP API, not the cellblock protocol) ---------------


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Block(Body, frozen=True):
    code: Code
    hint: Small = ""  # the code fence's info string


class AnalyseBody(Body, frozen=True):
    blocks: Annotated[list[Block], msgspec.Meta(max_length=500)]


class FileBody(Body, frozen=True):
    name: Small
    data: bytes  # base64 in the JSON


class RunBody(Body, frozen=True):
    code: Code
    language: Small = "auto"
    stdin: Code = ""
    capabilities: Annotated[list[m.Capability], msgspec.Meta(max_length=32)] = []
    conversation_id: Small = ""
    allow_once: Annotated[list[m.Capability], msgspec.Meta(max_length=32)] = []  # granted for this run only
    keep_state: bool = False  # run in this conversation's session for the language
    files: Annotated[list[FileBody], msgspec.Meta(max_length=64)] = []  # written into /work first


class GrantBody(Body, frozen=True):
    capability: m.Capability
    scope: Literal["conversation", "client"]
    conversation_id: Small = ""


class ExportBody(Body, frozen=True):
    result: m.ExecuteResult
    format: Literal["json", "markdown"]


class BadRequest(Exception):
    pass


# --- helpers -------------------------------------------------------------------------------


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


SERVICE_GONE = "the cellblock service is not answering (has it stopped?)"
HTTP_STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONNECTION_LOST: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 502,
}


def service_error(info: ErrorInfo) -> JSONResponse:
    message = SERVICE_GONE if info.code is ErrorCode.CONNECTION_LOST else info.message
    return error(HTTP_STATUS.get(info.code, 400), info.code.value, message)


def public_result(result: m.ExecuteResult) -> m.ExecuteResult:
    """A lost connection's message names the socket: the page gets a plain sentence."""
    if result.error is not None and result.error.code is ErrorCode.CONNECTION_LOST:
        return msgspec.structs.replace(result, error=ErrorInfo(code=ErrorCode.CONNECTION_LOST, message=SERVICE_GONE))
    return result


async def decode(request: Request, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.body(), type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"bad request body: {exc}") from None


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Console:
    """The handlers, over one service connection, acting as one cellblock client id."""

    def __init__(self, client: Callable[[], AsyncClient], client_id: str) -> None:
        self._client = client
        self.client_id = client_id
        self._runs: set[asyncio.Task[m.ExecuteResult]] = set()  # runs outlive a closed page
        self._kept: KeptSessions | None = None

    @property
    def kept(self) -> KeptSessions:
        """Each conversation's session per language (the page's "keep state")."""
        if self._kept is None or self._kept.client is not self.client:
            self._kept = KeptSessions(self.client)
        return self._kept

    async def close(self) -> None:
        if self._kept is not None:
            await self._kept.close_all()

    @property
    def client(self) -> AsyncClient:
        return self._client()

    def routes(self) -> list[tuple[str, Callable[[Request], Any], list[str]]]:
        return [
            ("/api/info", self.info, ["GET"]),
            ("/api/examples", self.examples, ["GET"]),
            ("/api/examples/{name}", self.example, ["GET"]),
            ("/api/analyse", self.analyse, ["POST"]),
            ("/api/run", self.run, ["POST"]),
            ("/api/grants", self.grants, ["GET"]),
            ("/api/grants", self.grant, ["POST"]),
            ("/api/grants/{grant_id}", self.revoke, ["DELETE"]),
            ("/api/history", self.history, ["GET"]),
            ("/api/status", self.status, ["GET"]),
            ("/api/export", self.export, ["POST"]),
        ]

    # --- read-only -----------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        status = await self.client.status()
        return JSONResponse(
            {
                "client_id": self.client_id,
                "version": status.version,
                "languages": [rt.name for rt in status.runtimes if rt.offered],
                "limits": status.limits,
                "max_limits": status.max_limits,
            }
        )

    async def status(self, request: Request) -> Response:
        return JSONResponse(to_builtins(await self.client.status()))

    async def examples(self, request: Request) -> Response:
        found = []
        for item in sorted(resources.files(__package__).joinpath("examples").iterdir(), key=lambda p: p.name):
            if item.name.endswith(".md"):
                title = re.search(r"^title:\s*(.+)$", item.read_text("utf-8"), re.M)
                name = item.name.removesuffix(".md")
                found.append({"name": name, "title": title.group(1).strip() if title else name})
        return JSONResponse({"examples": found})

    async def example(self, request: Request) -> Response:
        name = request.path_params["name"]
        item = resources.files(__package__).joinpath("examples", f"{name}.md")
        if not EXAMPLE_NAME.match(name) or not item.is_file():
            return error(404, "not_found", "no example by that name")
        return Response(item.read_text("utf-8"), media_type="text/markdown; charset=utf-8")

    async def analyse(self, request: Request) -> Response:
        """Each block's language (the broker's own detector) and what it looks like it will need."""
        body = await decode(request, AnalyseBody)
        return JSONResponse({"blocks": await run_in_threadpool(lambda: [_analyse(b) for b in body.blocks])})

    # --- runs ------------------------------------------------------------------------------

    async def run(self, request: Request) -> Response:
        """A stream of events: ``queued``, then ``chunk`` as output comes, then ``result``."""
        body = await decode(request, RunBody)
        if not body.code.strip():
            raise BadRequest("the block has no code")
        if body.allow_once and not body.conversation_id:
            raise BadRequest("allow once needs the conversation id the grant is scoped to")
        chunks: asyncio.Queue[m.OutputChunk | None] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._execute(body, chunks.put_nowait))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        task.add_done_callback(lambda _: chunks.put_nowait(None))
        return StreamingResponse(
            self._events(task, chunks), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    async def _execute(self, body: RunBody, on_chunk: Callable[[m.OutputChunk], None]) -> m.ExecuteResult:
        """The run, with its one-time grants made before and revoked after, whatever happens."""
        once: list[int] = []
        try:
            for cap in body.allow_once:
                reply = await self.client.grant(self.client_id, cap, body.conversation_id, ONCE_GRACE_S)
                once.append(_newest(reply.grants, body.conversation_id).grant_id)
        except ServiceError as exc:
            await self._revoke_all(once)
            return m.ExecuteResult(id="", status=m.Status.REJECTED, error=exc.error)
        files = {f.name: f.data for f in body.files}
        try:
            if body.keep_state:
                return await self._in_session(body, files, on_chunk)
            return await self.client.execute(
                body.code,
                body.language,
                stdin=body.stdin,
                capabilities=[*body.capabilities, *body.allow_once],
                client_id=self.client_id,
                conversation_id=body.conversation_id,
                files=files,
                on_chunk=on_chunk,
            )
        finally:
            await self._revoke_all(once)

    async def _in_session(
        self, body: RunBody, files: dict[str, bytes], on_chunk: Callable[[m.OutputChunk], None]
    ) -> m.ExecuteResult:
        """The block as the next cell of the conversation's session for its language."""
        language = body.language
        if language in ("", "auto"):
            language = detect(body.code, "").language or "python"
        if body.stdin or body.capabilities or body.allow_once:
            why = "stdin" if body.stdin else "grants of network or host folders"
            info = ErrorInfo(code=ErrorCode.INVALID_REQUEST, message=f"a block that keeps state cannot use {why}")
            return m.ExecuteResult(id="", status=m.Status.REJECTED, error=info)
        key = (self.client_id, body.conversation_id, language, "")
        result, note = await self.kept.run(key, body.code, files=files, on_chunk=on_chunk)
        if note:  # the conversation's earlier state is gone: say so beside the result
            finding = m.Finding(rule="new_session", line=0, severity="warning", message=note)
            result = msgspec.structs.replace(result, findings=[finding, *result.findings])
        return result

    async def _revoke_all(self, grant_ids: list[int]) -> None:
        for grant_id in grant_ids:
            try:
                await self.client.revoke(grant_id)
            except ServiceError as exc:
                log.warning("could not revoke one-time grant #%d: %s (it expires by itself)", grant_id, exc)

    async def _events(
        self, task: asyncio.Task[m.ExecuteResult], chunks: asyncio.Queue[m.OutputChunk | None]
    ) -> AsyncIterator[bytes]:
        yield sse("queued", {"at": time.time()})
        running = False
        while (chunk := await chunks.get()) is not None:
            if not running:
                running = True
                yield sse("running", {"at": time.time()})
            yield sse("chunk", {"stream": chunk.stream, "seq": chunk.seq, "data": chunk.data})
        try:
            result = task.result()
        except Exception:
            log.exception("a run failed in the console")
            info = ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message="the console failed to run this block")
            result = m.ExecuteResult(id="", status=m.Status.INTERNAL_ERROR, error=info)
        yield sse("result", to_builtins(public_result(result)))

    # --- grants ----------------------------------------------------------------------------

    async def grants(self, request: Request) -> Response:
        client_id = request.query_params.get("client", "")
        reply = await self.client.grants(client_id)
        return JSONResponse({"client_id": self.client_id, "grants": to_builtins(reply)["grants"]})

    async def grant(self, request: Request) -> Response:
        body = await decode(request, GrantBody)
        conversation = body.conversation_id if body.scope == "conversation" else ""
        if body.scope == "conversation" and not conversation:
            raise BadRequest("a grant for this conversation needs its conversation id")
        reply = await self.client.grant(self.client_id, body.capability, conversation)
        made = _newest(reply.grants, conversation)
        return JSONResponse({"grant": to_builtins(made)})

    async def revoke(self, request: Request) -> Response:
        raw = request.path_params["grant_id"]
        if not raw.isdigit() or not 0 < int(raw) < 2**62:
            raise BadRequest("a grant id is a positive number")
        await self.client.revoke(int(raw))
        return JSONResponse({"revoked": int(raw)})

    # --- history and export ------------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        filters = _history_filters(request.query_params)
        limit = filters.pop("limit")
        reply = await self.client.history(limit=limit + 1, **filters)  # one more: is there an older page?
        entries = to_builtins(reply)["entries"]
        return JSONResponse({"entries": entries[:limit], "more": len(entries) > limit})

    async def export(self, request: Request) -> Response:
        body = await decode(request, ExportBody)
        text = export_text(body.result, body.format)
        name = re.sub(r"[^A-Za-z0-9_-]", "", body.result.run_id or body.result.id)[:64] or "result"
        kind, suffix = ("text/markdown", "md") if body.format == "markdown" else ("application/json", "json")
        return Response(
            text,
            media_type=f"{kind}; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="cellblock-{name}.{suffix}"'},
        )


def _newest(grants: list[m.Grant], conversation_id: str) -> m.Grant:
    """The grant just made: the broker answers a grant with the client's grants, made in
    one turn of its single thread, so the newest of this scope is the one."""
    return max((g for g in grants if g.conversation_id == conversation_id), key=lambda g: g.grant_id)


def _analyse(block: Block) -> dict[str, Any]:
    guess = detect(block.code, block.hint)
    language = guess.language or ""
    needs: dict[tuple[str, str], m.Capability] = {}
    for finding in findings.analyse(language, block.code) if language else []:
        if finding.implies is not None:
            needs[(finding.implies.kind.value, finding.implies.target)] = finding.implies
    return {
        "language": language,
        "confidence": guess.confidence,
        "reason": guess.reason,
        "alternatives": guess.alternatives,
        "capabilities": [to_builtins(c) for c in needs.values()],
    }


def _history_filters(params: Any) -> dict[str, Any]:
    known = {"client", "conversation", "status", "language", "since", "until", "before", "before_run_id", "limit"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadRequest(f"unknown history filter {unknown[0]!r}")
    out: dict[str, Any] = {
        "client_id": params.get("client", ""),
        "conversation_id": params.get("conversation", ""),
        "language": params.get("language", ""),
        "before_run_id": params.get("before_run_id", ""),
    }
    for name in ("client_id", "conversation_id", "language", "before_run_id"):
        if len(out[name]) > 256:
            raise BadRequest(f"history filter {name} is longer than 256 characters")
    if params.get("status"):
        try:
            out["status"] = m.Status(params["status"])
        except ValueError:
            raise BadRequest(f"no run status {params['status']!r}") from None
    times: dict[str, float] = {}
    for name in ("since", "until", "before"):
        if params.get(name):
            try:
                times[name] = float(params[name])
            except ValueError:
                raise BadRequest(f"history filter {name} is a time in seconds since the epoch") from None
    if "since" in times:
        out["since"] = times["since"]
    # "until" is a cursor without a run id; a page cursor inside it is older still.
    if "before" in times or "until" in times:
        out["before"] = min(t for k, t in times.items() if k in ("before", "until"))
        if "before" not in times or ("until" in times and times["until"] < times["before"]):
            out["before_run_id"] = ""
    try:
        limit = int(params.get("limit", "100"))
    except ValueError:
        raise BadRequest("history limit is a number") from None
    if not 1 <= limit <= PAGE_MAX:
        raise BadRequest(f"history limit is 1 to {PAGE_MAX}")
    out["limit"] = limit
    return out
