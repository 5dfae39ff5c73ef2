"""A client for many nodes: TCP with CURVE (libzmq's), each run sent to one node.

    with Nodes(["tcp://10.0.0.5:7878", "tcp://10.0.0.6:7878"],
               server_key="server.key", client_key="me.key_secret") as nodes:
        result = nodes.execute("print(1)")

``AsyncNodes`` is the asyncio client (the MCP server uses it); ``Nodes`` runs
it on an event loop of its own for synchronous callers.

How a run finds a node:

* Each endpoint has its own DEALER (CURVE client, ZMTP heartbeats) and a
  socket monitor: a node is *up* once its handshake succeeded, and down when
  its connection drops, its heartbeats stop (``timeout_s``), or it refuses the
  handshake (the key is not in its authorized_keys; a wrong server key).
* A run goes to the up node with the fewest calls waiting on it (ties in
  turn). If that node answers ``overloaded`` or ``shutting_down`` the run was
  not started there, and the same request (the same id) goes to the next node.
* If the node is lost while the run waits (the connection dropped, no
  heartbeat, no reply in time), the run may have started there. It is never
  sent elsewhere unless the caller allowed retries (``retries=True``, or
  ``retry=True`` for one call): without, the call ends with
  ``connection_lost`` naming the node, never a hang; with, the same request
  goes to another node, and may run twice.
* A session lives on the node that opened it. Its id, as this client gives
  it out, is ``<the node's id>@<host>:<port>``: the cells of
  ``execute(session=...)`` go to that endpoint only, whichever process holds
  the id, and an id naming an endpoint this client was not given is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, Unpack

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from protocol import messages as m
from protocol.client import (
    DEFAULT_TIMEOUT_S,
    OPEN_TIMEOUT_S,
    RunOptions,
    ServiceError,
    SessionOptions,
    _as_result,
    _execute_request,
    _grant_request,
    _new_id,
    _over_cap,
    _reply_wait,
    _session_open,
    lost,
)
from protocol.curve import load_pair, load_public
from protocol.errors import ErrorCode, ErrorInfo
from protocol.wire import MAX_WORKER_FRAME, client_codec

R = TypeVar("R")
NOT_RUN = (ErrorCode.OVERLOADED, ErrorCode.SHUTTING_DOWN)  # refused before it started: safe to send elsewhere
_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


class Lost(msgspec.Struct, frozen=True):
    reason: str
    sent: bool = True  # False: it never left this client, so it cannot have run


@dataclass
class Waiting:
    future: asyncio.Future[m.ClientReply | Lost]
    on_chunk: Callable[[m.OutputChunk], None] | None = None


@dataclass
class Node:
    endpoint: str
    sock: zmq.asyncio.Socket
    monitor: zmq.asyncio.Socket
    up: bool = False
    refused: str = ""  # why its handshake failed, until one succeeds
    quiet_until: float = 0.0  # a node that let a call time out is passed over until then
    waiting: dict[str, Waiting] = field(default_factory=dict)
    served: int = 0  # final replies it gave (for spreading figures)

    @property
    def hostport(self) -> str:
        return self.endpoint.removeprefix("tcp://")


def expand(endpoints: Iterable[str]) -> list[str]:
    """Each ``tcp://NAME:PORT`` becomes one endpoint per address NAME resolves to (a
    headless Service's DNS name gives every node's); addresses stay as they are."""
    out: list[str] = []
    for endpoint in endpoints:
        host, sep, port = endpoint.removeprefix("tcp://").rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            literal = True
        except ValueError:
            literal = False
        if literal or not sep or not port.isdigit():
            out.append(endpoint)
            continue
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError:
            out.append(endpoint)  # libzmq resolves it again when it connects
            continue
        for info in infos:
            address = str(info[4][0])
            out.append(f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}")
    return list(dict.fromkeys(out))


def session_id(node: Node, session: str) -> str:
    return f"{session}@{node.hostport}" if session else session


class AsyncNodes:
    def __init__(
        self,
        endpoints: Iterable[str],
        server_key: str,
        client_key: str,
        *,
        timeout_s: float = 3.0,
        connect_timeout: float = 5.0,
        retries: bool = False,
    ) -> None:
        """``server_key``: the nodes' public key (Z85 or base64, or a ``.key`` file);
        ``client_key``: this client's ``.key_secret`` file. ``timeout_s``: a node whose
        heartbeats stop this long is down. A name is resolved once, here (``expand``)."""
        self.endpoints = expand(endpoints)
        if not self.endpoints:
            raise ValueError("no endpoint given")
        self.server_key = load_public(server_key)
        self.public, self.secret = load_pair(client_key)
        self.timeout_s = timeout_s
        self.connect_timeout = connect_timeout
        self.retries = retries
        self._codec = client_codec()
        self._ctx: zmq.asyncio.Context | None = None
        self.nodes: list[Node] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: asyncio.Event | None = None
        self._turn = 0

    # --- connections ------------------------------------------------------------------------

    def _start(self) -> None:
        if self._ctx is not None:
            return
        self._ctx = zmq.asyncio.Context()
        self._changed = asyncio.Event()
        beat = max(100, int(self.timeout_s * 1000 / 3))
        for endpoint in self.endpoints:
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.immediate = 1  # a send to a node that is not connected fails at once: try another
            sock.maxmsgsize = MAX_WORKER_FRAME
            sock.curve_serverkey = self.server_key
            sock.curve_publickey, sock.curve_secretkey = self.public, self.secret
            sock.heartbeat_ivl, sock.heartbeat_timeout = beat, int(self.timeout_s * 1000)
            sock.reconnect_ivl, sock.reconnect_ivl_max = 200, 2000
            monitor = sock.get_monitor_socket(_EVENTS)
            sock.connect(endpoint)
            node = Node(endpoint, sock, monitor)
            self.nodes.append(node)
            loop = asyncio.get_running_loop()
            self._tasks += [loop.create_task(self._read(node)), loop.create_task(self._watch(node))]

    def _route(self, node: Node, frames: list[bytes]) -> None:
        try:
            reply = self._codec.decode(frames)
        except Exception:  # noqa: BLE001 - a reply this client cannot read is skipped, the call times out
            return
        waiting = node.waiting.get(getattr(reply, "id", ""))
        if waiting is None:
            return
        if isinstance(reply, m.OutputChunk):
            if waiting.on_chunk is not None:
                waiting.on_chunk(reply)
        elif not waiting.future.done():
            waiting.future.set_result(reply)

    async def _read(self, node: Node) -> None:
        while True:
            self._route(node, await node.sock.recv_multipart())

    def _drain(self, node: Node) -> None:
        """Replies already here are routed before a lost connection fails what waits
        (read through a plain shadow of the socket: the asyncio one answers with futures)."""
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(node.sock.underlying)
        while True:
            try:
                frames = raw.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._route(node, frames)

    async def _watch(self, node: Node) -> None:
        assert self._changed is not None
        while True:
            event = parse_monitor_message(await node.monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                node.up, node.refused = True, ""
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                node.up, node.refused = False, "it refused this client's key (not in its authorized_keys)"
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                node.up, node.refused = False, "the CURVE handshake failed (is the server key this node's?)"
            elif kind == zmq.EVENT_DISCONNECTED and node.up:
                node.up = False
                self._drain(node)
                for waiting in node.waiting.values():
                    if not waiting.future.done():
                        waiting.future.set_result(Lost("its connection dropped (or its heartbeats stopped)"))
            self._changed.set()
            self._changed = asyncio.Event()

    async def _pick(self, tried: set[str], only: Node | None = None) -> Node | None:
        """The up node with the fewest calls waiting, not yet tried; waits up to
        ``connect_timeout`` for one to come up."""
        self._start()
        deadline = time.monotonic() + self.connect_timeout
        while True:
            now = time.monotonic()
            pool = [only] if only is not None else self.nodes
            up = [n for n in pool if n.up and n.endpoint not in tried and n.quiet_until <= now]
            if up:
                self._turn += 1
                order = up[self._turn % len(up) :] + up[: self._turn % len(up)]
                return min(order, key=lambda n: len(n.waiting))
            left = [n for n in pool if n.endpoint not in tried and not n.refused]
            if not left or now >= deadline:
                return None
            assert self._changed is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(0.2, deadline - now))

    def _none_left(self, request_id: str, tried: set[str]) -> m.ExecuteResult:
        why = "; ".join(
            f"{n.endpoint}: {n.refused or ('tried' if n.endpoint in tried else 'not connected')}" for n in self.nodes
        )
        return lost(request_id, f"no node took the run ({why})")

    async def _call(
        self, node: Node, request_id: str, frames: list[bytes], wait_s: float, on_chunk: Any = None
    ) -> m.ClientReply | Lost:
        future: asyncio.Future[m.ClientReply | Lost] = asyncio.get_running_loop().create_future()
        node.waiting[request_id] = Waiting(future, on_chunk)
        try:
            try:
                await node.sock.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                return Lost("not connected", sent=False)
            try:
                outcome = await asyncio.wait_for(future, wait_s)
            except TimeoutError:
                node.quiet_until = time.monotonic() + self.timeout_s
                return Lost(f"no reply within {wait_s:.0f} s")
            if not isinstance(outcome, Lost):
                node.served += 1
            return outcome
        finally:
            node.waiting.pop(request_id, None)

    # --- runs -------------------------------------------------------------------------------

    def _session_node(self, session: str) -> tuple[Node | None, str]:
        sid, sep, hostport = session.rpartition("@")
        self._start()
        for node in self.nodes:
            if sep and node.hostport == hostport:
                return node, sid
        return None, sid

    async def execute(
        self,
        code: str,
        language: str | None = None,
        *,
        on_chunk: Callable[[m.OutputChunk], None] | None = None,
        retry: bool | None = None,
        **options: Unpack[RunOptions],
    ) -> m.ExecuteResult:
        """Run ``code`` on one node (see the module docstring for which, and what a loss does)."""
        only: Node | None = None
        if options.get("session"):
            only, sid = self._session_node(options["session"])
            if only is None:
                error = ErrorInfo(
                    code=ErrorCode.SESSION_NOT_FOUND, message="no such session on this client's nodes", field="session"
                )
                return m.ExecuteResult(id="", status=m.Status.REJECTED, error=error)
            options["session"] = sid
        request = _execute_request(code, language, on_chunk is not None, options)
        frames = self._codec.encode(request)
        refused = _over_cap(request, frames)
        if refused is not None:
            return _as_result(request.id, refused, "")
        result = await self._send_run(request.id, frames, _reply_wait(request.limits), on_chunk, retry, only)
        if only is not None and result.session:
            result = msgspec.structs.replace(result, session=session_id(only, result.session))
        return result

    async def _send_run(
        self, request_id: str, frames: list[bytes], wait_s: float, on_chunk: Any, retry: bool | None, only: Node | None
    ) -> m.ExecuteResult:
        retries = self.retries if retry is None else retry
        tried: set[str] = set()
        last: m.ExecuteResult | None = None
        while True:
            node = await self._pick(tried, only)
            if node is None:
                return last or self._none_left(request_id, tried)
            tried.add(node.endpoint)
            outcome = await self._call(node, request_id, frames, wait_s, on_chunk)
            if isinstance(outcome, Lost):
                if not outcome.sent or (retries and only is None):
                    continue  # never left this client, or the caller allows a second run
                return lost(
                    request_id,
                    f"node {node.endpoint} was lost while the run waited ({outcome.reason}); it may have "
                    "started there, and was not sent to another node (retries not allowed)",
                )
            result = _as_result(request_id, outcome, "")
            if result.error is not None and result.error.code in NOT_RUN and only is None:
                last = result  # refused before it started: the same request goes to the next node
                continue
            return result

    async def request(self, request: m.Request, expect: type[R], timeout: float = DEFAULT_TIMEOUT_S) -> R:
        """A non-run request to one node (the first that answers)."""
        request_id = request.id  # type: ignore[attr-defined]
        frames = self._codec.encode(request)
        tried: set[str] = set()
        only = None
        if isinstance(request, m.SessionClose):
            only, sid = self._session_node(request.session)
            if only is None:
                raise ServiceError(ErrorInfo(code=ErrorCode.SESSION_NOT_FOUND, message="no such session"))
            frames = self._codec.encode(msgspec.structs.replace(request, session=sid))
        while True:
            node = await self._pick(tried, only)
            if node is None:
                raise ServiceError(self._none_left(request_id, tried).error)  # type: ignore[arg-type]
            tried.add(node.endpoint)
            reply = await self._call(node, request_id, frames, timeout)
            if isinstance(reply, Lost):
                if reply.sent and not isinstance(request, m.StatusRequest | m.GrantsRequest | m.HistoryRequest):
                    raise ServiceError(
                        ErrorInfo(code=ErrorCode.CONNECTION_LOST, message=f"{node.endpoint}: {reply.reason}")
                    )
                continue  # reads are safe to ask again elsewhere
            if isinstance(reply, m.ErrorReply):
                raise ServiceError(reply.error)
            if not isinstance(reply, expect):
                raise ServiceError(
                    ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=f"unexpected {type(reply).__name__}")
                )
            if isinstance(reply, m.SessionReply):
                info = msgspec.structs.replace(reply.session, session=session_id(node, reply.session.session))
                return msgspec.structs.replace(reply, session=info)  # type: ignore[return-value]
            return reply

    async def status(self, timeout: float = DEFAULT_TIMEOUT_S) -> m.StatusReply:
        return await self.request(m.StatusRequest(id=_new_id()), m.StatusReply, timeout)

    async def session_open(self, language: str = "python", **options: Unpack[SessionOptions]) -> m.SessionInfo:
        """Open a session on one node; its id names that node (``<id>@<host>:<port>``)."""
        reply = await self.request(_session_open(language, options), m.SessionReply, OPEN_TIMEOUT_S)
        return reply.session

    async def session_close(self, session: str, client_id: str = "") -> m.SessionInfo:
        request = m.SessionClose(id=_new_id(), session=session, client_id=client_id)
        return (await self.request(request, m.SessionReply)).session

    async def sessions(self, client_id: str = "") -> list[m.SessionInfo]:
        """Every node's sessions of this client (nodes that do not answer are left out)."""
        self._start()
        found: list[m.SessionInfo] = []
        for node in self.nodes:
            if not node.up:
                continue
            request = m.SessionList(id=_new_id(), client_id=client_id)
            reply = await self._call(node, request.id, self._codec.encode(request), DEFAULT_TIMEOUT_S)
            if isinstance(reply, m.SessionsReply):
                found += [msgspec.structs.replace(s, session=session_id(node, s.session)) for s in reply.sessions]
        return found

    async def grants(self, client_id: str = "") -> m.GrantsReply:
        return await self.request(m.GrantsRequest(id=_new_id(), client_id=client_id), m.GrantsReply)

    async def grant(
        self, client_id: str, capability: m.Capability, conversation_id: str = "", expires_in_s: int | None = None
    ) -> m.GrantsReply:
        return await self.request(_grant_request(client_id, capability, conversation_id, expires_in_s), m.GrantsReply)

    async def history(self, **filters: Any) -> m.HistoryReply:
        return await self.request(m.HistoryRequest(id=_new_id(), **filters), m.HistoryReply)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for node in self.nodes:
            node.monitor.close(linger=0)
            node.sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


class Nodes:
    """The synchronous face of ``AsyncNodes``, on an event loop of its own. Not thread-safe."""

    def __init__(self, endpoints: Iterable[str], server_key: str, client_key: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self.nodes = AsyncNodes(endpoints, server_key, client_key, **kwargs)

    def _run(self, call: Any) -> Any:
        return self._loop.run_until_complete(call)

    def execute(
        self,
        code: str,
        language: str | None = None,
        *,
        on_chunk: Callable[[m.OutputChunk], None] | None = None,
        retry: bool | None = None,
        **options: Unpack[RunOptions],
    ) -> m.ExecuteResult:
        result: m.ExecuteResult = self._run(
            self.nodes.execute(code, language, on_chunk=on_chunk, retry=retry, **options)
        )
        return result

    def status(self, timeout: float = DEFAULT_TIMEOUT_S) -> m.StatusReply:
        reply: m.StatusReply = self._run(self.nodes.status(timeout))
        return reply

    def session_open(self, language: str = "python", **options: Unpack[SessionOptions]) -> m.SessionInfo:
        info: m.SessionInfo = self._run(self.nodes.session_open(language, **options))
        return info

    def session_close(self, session: str, client_id: str = "") -> m.SessionInfo:
        info: m.SessionInfo = self._run(self.nodes.session_close(session, client_id))
        return info

    def sessions(self, client_id: str = "") -> list[m.SessionInfo]:
        found: list[m.SessionInfo] = self._run(self.nodes.sessions(client_id))
        return found

    def grants(self, client_id: str = "") -> m.GrantsReply:
        reply: m.GrantsReply = self._run(self.nodes.grants(client_id))
        return reply

    def grant(
        self, client_id: str, capability: m.Capability, conversation_id: str = "", expires_in_s: int | None = None
    ) -> m.GrantsReply:
        reply: m.GrantsReply = self._run(self.nodes.grant(client_id, capability, conversation_id, expires_in_s))
        return reply

    def history(self, **filters: Any) -> m.HistoryReply:
        reply: m.HistoryReply = self._run(self.nodes.history(**filters))
        return reply

    def close(self) -> None:
        async def shut() -> None:
            self.nodes.close()

        self._run(shut())
        self._loop.close()

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
