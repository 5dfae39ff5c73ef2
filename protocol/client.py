"""A thin client for host apps: one DEALER connection, typed replies.

    with Client("/run/cellblock/client.sock") as client:
        result = client.execute("print(1)")
        print(result.status, result.stdout)

Every call ends in a reply. If the service goes away while a call waits
(its connection drops, or nothing comes back in time), the call returns an
error reply with code ``connection_lost`` instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypedDict, TypeVar, Unpack

import zmq
import zmq.asyncio

from protocol import messages as m
from protocol.errors import ErrorCode, ErrorInfo
from protocol.wire import MAX_CLIENT_FRAME, client_codec
from protocol.zmtp import Dealer, ZmtpError

R = TypeVar("R")
DEFAULT_TIMEOUT_S = 10.0
# Wait this long past a run's own timeout before giving up on the service.
REPLY_MARGIN_S = 30.0


def default_socket() -> str:
    if os.geteuid() == 0:
        return "/run/cellblock/client.sock"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cellblock-{os.geteuid()}"
    return os.path.join(runtime_dir, "cellblock", "client.sock")


def _new_id() -> str:
    return uuid.uuid4().hex


def lost(request_id: str, message: str) -> m.ExecuteResult:
    return m.ExecuteResult(
        id=request_id,
        status=m.Status.INTERNAL_ERROR,
        error=ErrorInfo(code=ErrorCode.CONNECTION_LOST, message=message),
    )


class ServiceError(Exception):
    """A non-execute request failed; carries the service's ErrorInfo."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class RunOptions(TypedDict, total=False):
    """Everything an execute call may set beside the code and its language (both clients)."""

    stdin: str
    limits: m.Limits | None
    capabilities: Iterable[m.Capability]
    client_id: str
    conversation_id: str
    profile: str
    environment: str  # a package environment by name; "" the profile's default, "none" none
    session: str  # run as the next cell of this session (``session_open``)
    files: dict[str, bytes]  # written into /work before the code runs (name -> bytes)


def _execute_request(code: str, language: str | None, stream: bool, options: RunOptions) -> m.ExecuteRequest:
    if language is None:  # python, or a session's cell: the session's own
        language = "" if options.get("session") else "python"
    return m.ExecuteRequest(
        id=_new_id(),
        code=code,
        language=language,
        stdin=options.get("stdin", ""),
        limits=options.get("limits") or m.Limits(),
        capabilities=list(options.get("capabilities", ())),
        client_id=options.get("client_id", ""),
        conversation_id=options.get("conversation_id", ""),
        stream=stream,
        profile=options.get("profile", ""),
        environment=options.get("environment", ""),
        session=options.get("session", ""),
        files=dict(options.get("files", {})),
    )


class SessionOptions(TypedDict, total=False):
    """What a session may be opened with (both clients)."""

    environment: str
    limits: m.Limits | None  # memory for the whole session; timeout and cpu each cell's default
    client_id: str
    conversation_id: str


OPEN_TIMEOUT_S = 90.0  # an open waits for a free sandbox like a run does


def _session_open(language: str, options: SessionOptions) -> m.SessionOpen:
    return m.SessionOpen(
        id=_new_id(),
        language=language,
        environment=options.get("environment", ""),
        limits=options.get("limits") or m.Limits(),
        client_id=options.get("client_id", ""),
        conversation_id=options.get("conversation_id", ""),
    )


def _grant_request(
    client_id: str, capability: m.Capability, conversation_id: str, expires_in_s: int | None
) -> m.GrantRequest:
    return m.GrantRequest(
        id=_new_id(),
        client_id=client_id,
        capability=capability,
        conversation_id=conversation_id,
        expires_in_s=expires_in_s,
    )


def _over_cap(request: m.Request, frames: list[bytes]) -> m.ErrorReply | None:
    """A request the service could never read (over its hard frame cap, where it drops
    the connection): refused here, naming the cap, instead of looking like a lost service."""
    size = sum(len(frame) for frame in frames)
    if size <= MAX_CLIENT_FRAME:
        return None
    message = f"the request is {size} bytes; the service reads at most {MAX_CLIENT_FRAME} bytes in one frame"
    return m.ErrorReply(id=request.id, error=ErrorInfo(code=ErrorCode.TOO_LARGE, message=message))  # type: ignore[attr-defined]


def _as_result(request_id: str, reply: m.ClientReply | None, lost_message: str) -> m.ExecuteResult:
    """What an execute call returns for what came back: the result, a refusal, or a lost reply."""
    if reply is None:
        return lost(request_id, lost_message)
    if isinstance(reply, m.ErrorReply):
        return m.ExecuteResult(id=request_id, status=m.Status.REJECTED, error=reply.error)
    if not isinstance(reply, m.ExecuteResult):
        return lost(request_id, f"the service answered with {type(reply).__name__}, not a result")
    return reply


def _reply_wait(limits: m.Limits) -> float:
    timeout_ms = limits.timeout_ms or 60_000
    return timeout_ms / 1000 + REPLY_MARGIN_S


class Client:
    """Synchronous client. Not thread-safe: one per thread.

    It speaks ZMTP itself on a blocking unix socket (``protocol.zmtp.Dealer``),
    so a call wakes no background thread: a libzmq socket would add its I/O
    thread on both the way out and the way back. Any libzmq DEALER works
    against the service as well (see ``AsyncClient``).
    """

    RECONNECT_S = 0.02

    def __init__(self, socket_path: str | None = None, *, connect_timeout: float = 2.0) -> None:
        self.path = socket_path or default_socket()
        self._codec = client_codec()
        self._dealer: Dealer | None = None
        self._connect_timeout = connect_timeout

    def close(self) -> None:
        if self._dealer is not None:
            self._dealer.close()
            self._dealer = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, deadline: float) -> bool:
        while True:
            try:
                self._dealer = Dealer.connect(self.path, b"", timeout=max(0.05, deadline - time.monotonic()))
                return True
            except (OSError, ZmtpError):
                self._dealer = None
            if time.monotonic() + self.RECONNECT_S >= deadline:
                return False
            time.sleep(self.RECONNECT_S)

    def _send(self, request: m.Request, frames: list[bytes] | None = None) -> bool:
        deadline = time.monotonic() + self._connect_timeout
        frames = frames or self._codec.encode(request)
        for _ in range(2):  # a connection the service has since closed: once more on a new one
            if self._dealer is None and not self._connect(deadline):
                return False
            assert self._dealer is not None
            try:
                # Bounded, never forever: a stalled service must not hang the caller.
                self._dealer.send(frames, timeout=max(deadline - time.monotonic(), DEFAULT_TIMEOUT_S))
                return True
            except OSError:  # TimeoutError included: a part of the frame may be out, so never reuse it
                self.close()
        return False

    def _wait(
        self, request_id: str, wait_s: float, on_chunk: Callable[[m.OutputChunk], None] | None
    ) -> m.ClientReply | None:
        deadline = time.monotonic() + wait_s
        dealer = self._dealer
        assert dealer is not None
        poller = select.poll()  # not select(): a host app may hold descriptors past 1024
        poller.register(dealer.fileno(), select.POLLIN)
        while True:
            try:
                messages = dealer.recv_available()
            except OSError:
                messages = None
            if messages is None:  # the service closed the connection
                self.close()
                return None
            for frames in messages:
                try:
                    reply = self._codec.decode(frames)
                except Exception as exc:  # noqa: BLE001 - a reply this client cannot read still ends the call
                    unreadable = ErrorInfo(
                        code=ErrorCode.BAD_MESSAGE, message=f"the service sent a reply this client cannot read ({exc})"
                    )
                    return m.ErrorReply(id=request_id, error=unreadable)
                if getattr(reply, "id", None) != request_id:
                    continue  # a late reply to an earlier, abandoned call
                if isinstance(reply, m.OutputChunk):
                    if on_chunk is not None:
                        on_chunk(reply)
                    continue
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
                return None

    def execute(
        self,
        code: str,
        language: str | None = None,
        *,
        on_chunk: Callable[[m.OutputChunk], None] | None = None,
        **options: Unpack[RunOptions],
    ) -> m.ExecuteResult:
        """Run ``code``; with ``on_chunk``, output is streamed to it as the run goes."""
        request = _execute_request(code, language, on_chunk is not None, options)
        frames = self._codec.encode(request)
        refused = _over_cap(request, frames)
        if refused is not None:
            return _as_result(request.id, refused, "")
        if not self._send(request, frames):
            return lost(request.id, f"no cellblock service answers on {self.path}")
        reply = self._wait(request.id, _reply_wait(request.limits), on_chunk)
        return _as_result(request.id, reply, "the connection to the service was lost before the result arrived")

    def request(self, request: m.Request, expect: type[R], timeout: float = DEFAULT_TIMEOUT_S) -> R:
        request_id = request.id  # type: ignore[attr-defined]
        if not self._send(request):
            raise ServiceError(
                ErrorInfo(code=ErrorCode.CONNECTION_LOST, message=f"no cellblock service answers on {self.path}")
            )
        reply = self._wait(request_id, timeout, None)
        if reply is None:
            raise ServiceError(ErrorInfo(code=ErrorCode.CONNECTION_LOST, message="no reply from the service"))
        if isinstance(reply, m.ErrorReply):
            raise ServiceError(reply.error)
        if not isinstance(reply, expect):
            raise ServiceError(
                ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=f"unexpected reply {type(reply).__name__}")
            )
        return reply

    def status(self, timeout: float = DEFAULT_TIMEOUT_S) -> m.StatusReply:
        return self.request(m.StatusRequest(id=_new_id()), m.StatusReply, timeout)

    def grant(
        self, client_id: str, capability: m.Capability, conversation_id: str = "", expires_in_s: int | None = None
    ) -> m.GrantsReply:
        return self.request(_grant_request(client_id, capability, conversation_id, expires_in_s), m.GrantsReply)

    def revoke(self, grant_id: int) -> m.GrantsReply:
        return self.request(m.RevokeRequest(id=_new_id(), grant_id=grant_id), m.GrantsReply)

    def grants(self, client_id: str = "") -> m.GrantsReply:
        return self.request(m.GrantsRequest(id=_new_id(), client_id=client_id), m.GrantsReply)

    def history(self, **filters: Any) -> m.HistoryReply:
        return self.request(m.HistoryRequest(id=_new_id(), **filters), m.HistoryReply)

    def session_open(self, language: str = "python", **options: Unpack[SessionOptions]) -> m.SessionInfo:
        """Open a session (raises ServiceError); run cells in it with ``execute(..., session=id)``."""
        return self.request(_session_open(language, options), m.SessionReply, OPEN_TIMEOUT_S).session

    def session_close(self, session: str, client_id: str = "") -> m.SessionInfo:
        request = m.SessionClose(id=_new_id(), session=session, client_id=client_id)
        return self.request(request, m.SessionReply).session

    def sessions(self, client_id: str = "") -> list[m.SessionInfo]:
        return self.request(m.SessionList(id=_new_id(), client_id=client_id), m.SessionsReply).sessions


def service_answers(path: str) -> bool:
    """Does a cellblock service answer a status request on ``path`` (within ~2 s)?"""
    if not os.path.exists(path):
        return False
    with Client(path, connect_timeout=0.5) as client:
        try:
            client.status(timeout=2.0)
        except ServiceError:
            return False
    return True


class AsyncClient:
    """asyncio client (used by the MCP server and the console). One request at a
    time per instance is not required: replies are routed to their waiting call
    by id, and a streamed run's chunks to its ``on_chunk``."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.path = socket_path or default_socket()
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.connect(f"ipc://{self.path}")
        self._codec = client_codec()
        self._waiters: dict[str, asyncio.Queue[m.ClientReply]] = {}
        self._reader: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self._sock.close(linger=0)
        self._ctx.term()

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                reply = self._codec.decode(frames)
            except Exception:  # noqa: BLE001, S112 - a reply we cannot read is skipped
                continue
            queue = self._waiters.get(getattr(reply, "id", ""))
            if queue is not None:
                queue.put_nowait(reply)

    async def _call(
        self, request: m.Request, wait_s: float, on_chunk: Callable[[m.OutputChunk], None] | None = None
    ) -> m.ClientReply | None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        request_id = request.id  # type: ignore[attr-defined]
        queue: asyncio.Queue[m.ClientReply] = asyncio.Queue()
        self._waiters[request_id] = queue
        try:
            await self._sock.send_multipart(self._codec.encode(request))
            deadline = time.monotonic() + wait_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    reply = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    return None
                if isinstance(reply, m.OutputChunk):
                    if on_chunk is not None:
                        on_chunk(reply)
                    continue
                return reply
        finally:
            self._waiters.pop(request_id, None)

    async def execute(
        self,
        code: str,
        language: str | None = None,
        *,
        on_chunk: Callable[[m.OutputChunk], None] | None = None,
        **options: Unpack[RunOptions],
    ) -> m.ExecuteResult:
        """Run ``code``; with ``on_chunk``, output is streamed to it as the run goes."""
        request = _execute_request(code, language, on_chunk is not None, options)
        refused = _over_cap(request, self._codec.encode(request))
        reply = refused or await self._call(request, _reply_wait(request.limits), on_chunk)
        return _as_result(request.id, reply, "no reply from the cellblock service (is it running?)")

    async def request(self, request: m.Request, expect: type[R], timeout: float = DEFAULT_TIMEOUT_S) -> R:
        reply = await self._call(request, timeout)
        if reply is None:
            raise ServiceError(ErrorInfo(code=ErrorCode.CONNECTION_LOST, message="no reply from the service"))
        if isinstance(reply, m.ErrorReply):
            raise ServiceError(reply.error)
        if not isinstance(reply, expect):
            raise ServiceError(
                ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=f"unexpected reply {type(reply).__name__}")
            )
        return reply

    async def status(self, timeout: float = DEFAULT_TIMEOUT_S) -> m.StatusReply:
        return await self.request(m.StatusRequest(id=_new_id()), m.StatusReply, timeout)

    async def grant(
        self, client_id: str, capability: m.Capability, conversation_id: str = "", expires_in_s: int | None = None
    ) -> m.GrantsReply:
        return await self.request(_grant_request(client_id, capability, conversation_id, expires_in_s), m.GrantsReply)

    async def revoke(self, grant_id: int) -> m.GrantsReply:
        return await self.request(m.RevokeRequest(id=_new_id(), grant_id=grant_id), m.GrantsReply)

    async def grants(self, client_id: str = "") -> m.GrantsReply:
        return await self.request(m.GrantsRequest(id=_new_id(), client_id=client_id), m.GrantsReply)

    async def history(self, **filters: Any) -> m.HistoryReply:
        return await self.request(m.HistoryRequest(id=_new_id(), **filters), m.HistoryReply)

    async def session_open(self, language: str = "python", **options: Unpack[SessionOptions]) -> m.SessionInfo:
        return (await self.request(_session_open(language, options), m.SessionReply, OPEN_TIMEOUT_S)).session

    async def session_close(self, session: str, client_id: str = "") -> m.SessionInfo:
        request = m.SessionClose(id=_new_id(), session=session, client_id=client_id)
        return (await self.request(request, m.SessionReply)).session

    async def sessions(self, client_id: str = "") -> list[m.SessionInfo]:
        return (await self.request(m.SessionList(id=_new_id(), client_id=client_id), m.SessionsReply)).sessions
