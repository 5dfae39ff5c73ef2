"""The broker: the only process that talks to clients. Unprivileged; never forks.

Sockets (all in the 0700 runtime directory):

* ``client.sock``   ZeroMQ ROUTER for clients (host apps, the CLI, the MCP server)
* ``workers.sock``  ZeroMQ ROUTER for worker monitors; never visible in a sandbox
* ``launcher.sock`` the launcher's SEQPACKET socket, which the broker connects to
* ``egress.ctl``    the egress proxy's SEQPACKET socket: open and close a run's
                    proxy socket (a short request and reply, for net runs only)

Both ROUTERs are ``protocol.zmtp.Router``: the ZeroMQ wire protocol (ZMTP 3,
any libzmq DEALER connects), read and written by this single-threaded epoll
loop itself. A libzmq socket would put its I/O thread between the loop and
every message: two more thread wakeups per hop, ~50-80 us each on a small VM.

Every client frame is decoded by the client codec (version first); anything
that cannot be read gets an error reply and is counted, and the loop goes on.
Every execute request ends in exactly one ``ExecuteResult``.
"""

from __future__ import annotations

import collections
import os
import resource
import secrets
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo, error_info
from protocol.profile import Profile, RunLimits
from protocol.wire import (
    MAX_CLIENT_FRAME,
    MAX_LAUNCHER_DATAGRAM,
    MAX_WORKER_FRAME,
    broker_client_codec,
    broker_egress_codec,
    broker_launcher_codec,
    broker_worker_codec,
)
from protocol.zmtp import Router
from supervisor.config import Config, pool_targets
from supervisor.dispatch import Dispatcher, Effects, Ticket
from supervisor.identity import drop_privileges
from supervisor.intake import Intake
from supervisor.link import Outbox
from supervisor.log import logger
from supervisor.policy import Policy

VERSION = "0.1.0"
CLOSE_LINGER_MS = 2000
_ALL_TAGS = {
    str(info.tag)
    for cls in (m.Request, m.Reply, m.Internal)
    for sub in cls.__subclasses__()
    for info in [msgspec.inspect.type_info(sub)]
    if isinstance(info, msgspec.inspect.StructType) and info.tag
}


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    rundir: str
    statedir: str
    profile: Profile
    config: Config
    ready_fd: int = -1
    drop_to: int = -1  # root mode: the broker's own uid, taken before any socket is bound
    supervisor_fd: int = -1  # EOF when supervisor main is gone: drain as on SIGTERM


@dataclass(frozen=True)
class SelfTest:
    """Ticket context of a runtime's self-test run (no client waits for it)."""

    runtime: str


@dataclass
class RuntimeView:
    info: m.RuntimeInfo
    healthy: bool = True
    reason: str = ""
    restarts: int = 0
    setup_failures: int = 0
    self_test: str = "pending"  # pending | running | passed | failed
    self_test_detail: str = ""

    @property
    def offered(self) -> bool:
        return self.info.available and self.self_test == "passed"


def _limit_values(limits: RunLimits) -> dict[str, int]:
    return msgspec.structs.asdict(limits.in_bytes())


_log = logger("broker")


class EgressLink:
    """The broker's side of ``egress.ctl``: one request, one reply, in order.

    Blocking, with a short timeout: the proxy answers from memory (it only
    creates or removes a socket), and only runs holding a net grant ask.
    """

    TIMEOUT_S = 2.0

    def __init__(self, rundir: str) -> None:
        self.path = os.path.join(rundir, "egress.ctl")
        self.codec = broker_egress_codec()
        self.sock: socket.socket | None = None

    def _call(self, message: m.Internal, run_id: str) -> m.EgressToBroker:
        for attempt in (1, 2):  # a restarted proxy: reconnect once
            if self.sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                sock.settimeout(self.TIMEOUT_S)
                try:
                    sock.connect(self.path)
                except OSError as exc:
                    sock.close()
                    raise CellblockError(
                        ErrorCode.INTERNAL_ERROR, f"the egress proxy is not running ({exc.strerror})"
                    ) from None
                self.sock = sock
            try:
                self.sock.send(self.codec.encode_datagram(message))
                data = self.sock.recv(MAX_LAUNCHER_DATAGRAM)
                if not data:
                    raise ConnectionResetError
                reply = self.codec.decode_datagram(data)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.sock.close()  # a late reply must never be read as the next one's
                self.sock = None
                if attempt == 1 and isinstance(exc, ConnectionError | BrokenPipeError):
                    continue
                raise CellblockError(ErrorCode.INTERNAL_ERROR, "the egress proxy did not answer") from None
            if reply.run != run_id:
                raise CellblockError(ErrorCode.INTERNAL_ERROR, "the egress proxy answered for another run")
            return reply
        raise CellblockError(ErrorCode.INTERNAL_ERROR, "the egress proxy did not answer")

    def open(self, run_id: str, allow: list[str]) -> str:
        reply = self._call(m.EgressOpen(run=run_id, allow=allow), run_id)
        assert isinstance(reply, m.EgressOpened)
        return reply.path

    def close(self, run_id: str) -> list[m.NetDecision]:
        try:
            reply = self._call(m.EgressClose(run=run_id), run_id)
        except CellblockError as exc:
            _log(f"egress close for run {run_id}: {exc.message}")
            return []
        return reply.decisions if isinstance(reply, m.EgressReport) else []


class Broker:
    def __init__(self, cfg: BrokerConfig) -> None:
        self.cfg = cfg
        self.profile = cfg.profile
        self.started = time.monotonic()
        self.client_codec = broker_client_codec()
        self.worker_codec = broker_worker_codec()
        self.launcher_codec = broker_launcher_codec()
        self.counters: collections.Counter[str] = collections.Counter()
        self.runtimes: dict[str, RuntimeView] = {}
        self.languages: dict[str, str] = {}
        self.layers: list[m.LayerStatus] = []
        self.mode = ""
        self.generation = 0
        self.signals: collections.deque[int] = collections.deque()
        self.draining = False
        self.drain_deadline = 0.0
        self.launcher: socket.socket | None = None
        self.launcher_gone = False  # lost, and the dispatcher not yet told
        self.dues: tuple[float | None, ...] = ()  # when the dispatcher and intake next need a tick
        self.launcher_retry = 0.0
        self.next_sweep = 0.0
        self.ready_sent = False
        self.dispatcher = Dispatcher(
            effects=Effects(
                send_job=self._send_job, taken=self._taken, kill=self._kill, finish=self._finish, reserve=self._reserve
            ),
            clock=time.monotonic,
            queue_limit=cfg.config.service.queue_limit,
            queue_wait_s=cfg.config.service.queue_wait_s,
        )
        self.policy = Policy(cfg.config, cfg.profile, cfg.statedir, time.time)
        self.egress = EgressLink(cfg.rundir)
        self.pools = pool_targets(cfg.config, cfg.profile)
        self.intake = Intake(
            self.policy,
            self.dispatcher,
            self._reply,
            self._resolve,
            self._version,
            cfg.config.service.queue_wait_s,
            self.egress,
        )

    # --- sockets -----------------------------------------------------------------------

    def bind(self) -> None:
        # Every client and every worker is a descriptor here: take the hard
        # limit, and keep the peer caps below it (a full table would make the
        # listening sockets readable forever).
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        max_peers = max(8, min(1024, (soft - 64) // 2))
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[int, int], None]] = {}
        routers = {}
        # Unfinished messages held across all clients: eight of the largest at
        # once. Workers are ours and bounded by the pool: no budget beyond theirs.
        for name, max_frame, kinds, max_held in (
            ("client.sock", MAX_CLIENT_FRAME, (b"DEALER",), 8 * MAX_CLIENT_FRAME),  # not REQ: no delimiter in replies
            ("workers.sock", MAX_WORKER_FRAME, (b"DEALER",), max_peers * MAX_WORKER_FRAME),
        ):
            path = os.path.join(self.cfg.rundir, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            routers[name] = Router(
                path, max_frame=max_frame, watch=self._watch, socket_types=kinds, max_peers=max_peers, max_held=max_held
            )
            os.chmod(path, 0o600)
        self.clients, self.workers = routers["client.sock"], routers["workers.sock"]
        self._listen(self.clients.fileno(), select.EPOLLIN, lambda fd, ev: self.clients.accept())
        self._listen(self.workers.fileno(), select.EPOLLIN, lambda fd, ev: self.workers.accept())

    def _listen(self, fd: int, events: int, handler: Callable[[int, int], None]) -> None:
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def _forget(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def _watch(self, fd: int, events: int) -> None:
        """A router's connection opened (or wants POLLOUT), or is about to close (0)."""
        if not events:
            self._forget(fd)
        elif fd in self.handlers:
            self.epoll.modify(fd, events)
        else:
            handler = self._on_client if fd in self.clients.by_fd else self._on_worker
            self._listen(fd, events, handler)

    def _connect_launcher(self) -> None:
        now = time.monotonic()
        if self.launcher is not None or now < self.launcher_retry:
            return
        self.launcher_retry = now + 0.1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(os.path.join(self.cfg.rundir, "launcher.sock"))
        except OSError:
            sock.close()
            return
        self.launcher = sock
        self.launcher_out = Outbox(sock)
        self.launcher_mask = select.EPOLLIN
        self._listen(sock.fileno(), select.EPOLLIN, self._on_launcher_event)

    def _launcher_send(self, message: m.Internal) -> None:
        if self.launcher is None:
            return
        try:
            self.launcher_out.send(self.launcher_codec.encode_datagram(message))
        except OSError as exc:
            self._launcher_lost(f"send failed: {exc!r}")

    def _launcher_flush(self) -> None:
        try:
            self.launcher_out.flush()
        except OSError as exc:
            self._launcher_lost(f"send failed: {exc!r}")

    def _launcher_lost(self, why: str) -> None:
        """Close the link now; the dispatcher hears of it from the loop (``_after_launcher_loss``),
        never from inside one of its own effects, whose caller is mid-update."""
        if self.launcher is not None:
            self._forget(self.launcher.fileno())
            self.launcher.close()
            self.launcher = None
            self.launcher_gone = True
            _log(f"launcher link lost ({why}); reconnecting")

    def _tick(self) -> None:
        self.dues = ()  # if a tick fails, the loop still wakes within a second
        self.dues = (self.dispatcher.tick(), self.intake.tick())
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + 1.0
            self.clients.sweep()
            self.workers.sweep()

    def _after_launcher_loss(self) -> None:
        if self.launcher_gone:
            self.launcher_gone = False
            self.dispatcher.launcher_lost()

    # --- effects for the dispatcher ----------------------------------------------------

    def _send_job(self, worker_id: str, job: m.Job) -> bool:
        return self.workers.send(worker_id.encode(), self.worker_codec.encode(job))

    def _taken(self, worker_id: str) -> None:
        self._launcher_send(m.Taken(worker=worker_id))

    def _kill(self, worker_id: str, reason: str) -> None:
        self._launcher_send(m.Kill(worker=worker_id, reason=reason))

    def _reserve(self, reservation: m.Reserve) -> None:
        if self.launcher is None:
            self.dispatcher.reserve_failed(
                reservation.run, ErrorCode.RUNTIME_UNAVAILABLE, "the launcher is not connected; retry shortly"
            )
            return
        self._launcher_send(reservation)

    def _reply(self, client: bytes, reply: m.Reply) -> None:
        if not self.clients.send(client, self.client_codec.encode(reply)):
            self.counters["reply_undeliverable"] += 1

    def _finish(self, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        if isinstance(ticket.context, SelfTest):
            self._self_test_done(ticket.context.runtime, raw, error)
        else:
            self.intake.finish(ticket, raw, error)

    def _resolve(self, language: str) -> str:
        runtime = self.languages.get(language.lower())
        if runtime is None:
            if not self.runtimes:
                raise CellblockError(
                    ErrorCode.RUNTIME_UNAVAILABLE, "the service is starting; no runtime is ready yet", "language"
                )
            known = ", ".join(sorted(self.languages))
            raise CellblockError(
                ErrorCode.UNKNOWN_LANGUAGE, f"unknown language {language!r}; known: {known}", "language"
            )
        view = self.runtimes[runtime]
        if view.self_test == "failed":
            raise CellblockError(
                ErrorCode.RUNTIME_UNAVAILABLE,
                f"{runtime} is not available on this host: {view.self_test_detail}",
                "language",
            )
        return runtime

    def _version(self, runtime: str) -> str:
        view = self.runtimes.get(runtime)
        return view.info.version if view else runtime

    # --- runtimes and the self-test --------------------------------------------------------

    def _hello(self, hello: m.LauncherHello) -> None:
        self.generation = hello.generation
        self.mode = hello.mode
        self.layers = hello.layers
        self.dispatcher.new_generation(hello.generation)
        old = self.runtimes
        self.runtimes = {}
        self.languages = {}
        for info in hello.runtimes:
            view = RuntimeView(info=info)
            previous = old.get(info.name)
            if previous is not None and previous.self_test == "passed":
                view.self_test = "passed"
            if not info.available:
                view.self_test = "failed"
                view.self_test_detail = info.reason
            self.runtimes[info.name] = view
            for alias in info.languages:
                self.languages[alias] = info.name

    def _self_test_start(self, runtime: str) -> None:
        view = self.runtimes.get(runtime)
        if view is None or view.self_test != "pending" or not view.info.self_test:
            if view is not None and view.self_test == "pending" and not view.info.self_test:
                view.self_test = "passed"
            return
        view.self_test = "running"
        run_id = "st-" + secrets.token_hex(6)
        limits = msgspec.structs.replace(self.profile.limits.in_bytes(), output_bytes=4096)
        job = m.Job(id=run_id, code=view.info.self_test, limits=limits)
        now = time.monotonic()
        self.dispatcher.submit(
            Ticket(
                run_id=run_id,
                runtime=runtime,
                job=job,
                context=SelfTest(runtime),
                queued_at=now,
                wait_deadline=now + 60,
            ),
            urgent=True,  # ahead of the clients' runs, which wait for it to be offered
        )

    def _self_test_done(self, runtime: str, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        view = self.runtimes.get(runtime)
        if view is None:
            return
        expect = view.info.self_test_expect
        if raw is not None and raw.status is m.Status.OK and raw.stdout_head + raw.stdout_tail == expect.encode():
            view.self_test = "passed"
            view.self_test_detail = ""
            return
        if raw is None:
            # No result: the sandbox died (a restart), the runtime went unhealthy
            # while it waited, or the service is stopping. That says nothing of
            # the runtime itself: try again with the next worker to be ready.
            view.self_test = "pending"
            return
        detail = error.message if error else f"status {raw.status.value if raw else '?'}"
        if raw is not None and raw.stderr_head:
            detail += ": " + raw.stderr_head.decode("utf-8", "replace").strip().splitlines()[-1][:200]
        view.self_test = "failed"
        view.self_test_detail = f"self-test failed ({detail})"
        _log(f"runtime {runtime} not offered: {view.self_test_detail}")
        self.dispatcher.fail_queued(
            runtime,
            ErrorInfo(
                code=ErrorCode.RUNTIME_UNAVAILABLE, message=f"{runtime} is not available: {view.self_test_detail}"
            ),
        )

    # --- client requests ---------------------------------------------------------------------

    def _on_client(self, fd: int, events: int) -> None:
        if events & select.EPOLLOUT:
            self.clients.flush(fd)
        if not events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            return
        for client, body in self.clients.receive(fd):
            try:
                request = self.client_codec.decode(body)
            except Exception as exc:  # noqa: BLE001 - a bug must not take the broker down
                try:
                    info = self._bad_input(body, exc)
                except Exception:  # noqa: BLE001 - only the message's wording is at stake
                    info = ErrorInfo(code=ErrorCode.BAD_FRAME, message="frame could not be read")
                self.counters[f"bad_input_{info.code.value}"] += 1
                self._reply(client, m.ErrorReply(id="", error=info))
                continue
            try:
                self._handle(client, request)
            except Exception as exc:  # noqa: BLE001 - a bug must not take the broker down
                _log(f"internal error handling {type(request).__name__}: {exc!r}")
                self.counters["internal_error"] += 1
                self._reply(client, m.ErrorReply(id=getattr(request, "id", ""), error=error_info(exc)))

    def _bad_input(self, body: list[bytes], exc: Exception) -> ErrorInfo:
        info = error_info(exc)
        if info.code == ErrorCode.BAD_MESSAGE and len(body) == 2:
            try:
                raw = msgspec.msgpack.decode(body[1])
            except Exception:  # noqa: BLE001 - counted and dropped; a worker cannot get replies
                return info
            tag = raw.get("type") if isinstance(raw, dict) else None
            if tag in _ALL_TAGS and tag not in {"execute", "status", "grant", "revoke", "grants", "history"}:
                return ErrorInfo(
                    code=ErrorCode.UNEXPECTED_MESSAGE,
                    message=f"message type {tag!r} is not accepted on the client socket",
                    field="type",
                )
        return info

    def _handle(self, client: bytes, request: m.ClientRequest) -> None:
        match request:
            case m.ExecuteRequest():
                self.intake.execute(client, request)
            case m.StatusRequest(id=rid):
                self._reply(client, self.status(rid))
            case m.GrantRequest() | m.RevokeRequest() | m.GrantsRequest() | m.HistoryRequest():
                self._reply(client, self.policy.admin(request))

    # --- workers -------------------------------------------------------------------------------

    def _on_worker(self, fd: int, events: int) -> None:
        if events & select.EPOLLOUT:
            self.workers.flush(fd)
        if not events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            return
        for identity, frames in self.workers.receive(fd):
            worker_id = identity.decode("ascii", "replace")
            try:
                message = self.worker_codec.decode(frames)
            except Exception:  # noqa: BLE001 - counted and dropped; a worker cannot get replies
                self.counters["bad_worker_frame"] += 1
                continue
            match message:
                case m.Ready(runtime=runtime, pid=pid):
                    self.dispatcher.ready(worker_id, runtime, pid)
                    view = self.runtimes.get(runtime)
                    if view is not None and view.self_test == "pending":
                        self._self_test_start(runtime)
                case m.WorkerChunk():
                    self._chunk(worker_id, message)
                case m.WorkerResult():
                    self.dispatcher.result(worker_id, message)

    def _chunk(self, worker_id: str, chunk: m.WorkerChunk) -> None:
        ticket = self.dispatcher.chunk_ticket(worker_id, chunk.id)
        if ticket is not None and not isinstance(ticket.context, SelfTest):
            self.intake.chunk(ticket.context, chunk)

    # --- the launcher -----------------------------------------------------------------------------

    def _on_launcher_event(self, fd: int, events: int) -> None:
        if events & select.EPOLLOUT:
            self._launcher_flush()
        if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP) and self.launcher is not None:
            self._on_launcher()

    def _on_launcher(self) -> None:
        assert self.launcher is not None
        try:
            data = self.launcher.recv(MAX_LAUNCHER_DATAGRAM)
        except BlockingIOError:
            return
        except OSError as exc:
            self._launcher_lost(f"receive failed: {exc!r}")
            return
        if not data:
            self._launcher_lost("the launcher closed it")
            return
        try:
            message = self.launcher_codec.decode_datagram(data)
        except Exception:  # noqa: BLE001
            self.counters["bad_launcher_datagram"] += 1
            return
        match message:
            case m.LauncherHello():
                self._hello(message)
            case m.Spawned(worker=worker_id, runtime=runtime, pid=pid):
                self.dispatcher.spawned(worker_id, runtime, pid, message.reserved_for)
            case m.ReserveFailed(run=run_id, code=code, reason=reason):
                self.dispatcher.reserve_failed(run_id, code, reason)
            case m.Exited(worker=worker_id, detail=detail):
                self.dispatcher.exited(worker_id, detail)
            case m.Health(runtime=runtime):
                view = self.runtimes.get(runtime)
                if view is not None:
                    view.healthy = message.healthy
                    view.reason = message.reason
                    view.restarts = message.restarts
                    view.setup_failures = message.setup_failures
                    if not message.healthy:
                        _log(f"runtime {runtime} unhealthy: {message.reason}")
                        self.dispatcher.fail_queued(
                            runtime,
                            ErrorInfo(
                                code=ErrorCode.RUNTIME_UNAVAILABLE,
                                message=f"{runtime} sandboxes cannot be created right now: {message.reason}",
                            ),
                        )

    # --- status ----------------------------------------------------------------------------------

    def status(self, request_id: str) -> m.StatusReply:
        stats = self.dispatcher.statistics()
        runtimes = []
        for name, view in sorted(self.runtimes.items()):
            reason = view.self_test_detail or view.info.reason
            if not view.healthy:
                reason = view.reason
            elif view.self_test in ("pending", "running"):
                reason = "self-test pending"
            runtimes.append(
                m.RuntimeStatus(
                    name=name,
                    version=view.info.version,
                    offered=view.offered and view.healthy,
                    reason=reason,
                    warm=stats.warm.get(name, 0),
                    busy=stats.busy.get(name, 0),
                    starting=stats.starting.get(name, 0),
                    target=self.pools.get(name, 0),
                    restarts=view.restarts,
                    setup_failures=view.setup_failures,
                )
            )
        counters = dict(self.counters)
        counters["client_disconnects"] = self.clients.disconnects + self.clients.dropped
        counters["client_protocol_errors"] = self.clients.dropped
        counters["worker_protocol_errors"] = self.workers.dropped
        counters["client_connections_refused"] = self.clients.refused
        counters.update(self.intake.counters)
        counters.update({f"dispatch_{k}": v for k, v in stats.counters.items()})
        broker_layer = m.LayerStatus(
            name="broker", active=os.geteuid() != 0, detail=f"uid {os.geteuid()}; validates, queues, redacts, records"
        )
        return m.StatusReply(
            id=request_id,
            version=VERSION,
            uptime_s=round(time.monotonic() - self.started, 3),
            mode=self.mode or "starting",
            profile=self.profile.name,
            runtimes=runtimes,
            layers=[*self.layers, broker_layer],
            queue=stats.queued,
            queue_limit=stats.queue_limit,
            in_flight=stats.in_flight,
            counters=counters,
            launcher_generation=self.generation,
            limits=_limit_values(self.profile.limits),
            max_limits=_limit_values(self.profile.max),
        )

    def _maybe_ready(self) -> None:
        if self.ready_sent or self.cfg.ready_fd < 0 or not self.runtimes:
            return
        # An unhealthy runtime's self-test cannot run (no worker of it gets ready): not waited for.
        waiting = ("pending", "running")
        pending = [v for v in self.runtimes.values() if v.info.available and v.healthy and v.self_test in waiting]
        if pending and time.monotonic() - self.started < 20:
            return
        try:
            os.write(self.cfg.ready_fd, b"R")
            os.close(self.cfg.ready_fd)
        except OSError:
            pass
        self.ready_sent = True

    # --- the loop ---------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def handle_sigterm(self) -> None:
        if not self.draining:
            self.draining = self.intake.draining = True
            self.drain_deadline = time.monotonic() + self.cfg.config.service.drain_s
            _log(
                f"draining: {self.dispatcher.statistics().in_flight} running, "
                f"{self.dispatcher.statistics().queued} queued"
            )

    handle_sigint = handle_sigterm

    def _supervisor_gone(self, fd: int, events: int) -> None:
        self._forget(fd)
        _log("supervisor main is gone; draining")
        self.handle_sigterm()

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._listen(wake_r, select.EPOLLIN, lambda fd, ev: _drain_pipe(fd))
        if self.cfg.supervisor_fd >= 0:
            self._listen(self.cfg.supervisor_fd, select.EPOLLIN, self._supervisor_gone)
        while True:
            self._connect_launcher()
            if self.launcher is not None:
                mask = select.EPOLLIN | (select.EPOLLOUT if self.launcher_out.pending else 0)
                if mask != self.launcher_mask:
                    self.launcher_mask = mask
                    self.epoll.modify(self.launcher.fileno(), mask)
            self._guarded(self._after_launcher_loss)
            self._guarded(self._tick)
            dues = [t for t in self.dues if t is not None]
            timeout = 1.0 if not dues else max(0.0, min(dues) - time.monotonic())
            if self.launcher is None or self.draining:
                timeout = min(timeout, 0.1)
            backlog = self.clients.backlog or self.workers.backlog
            for fd, events in self.epoll.poll(0 if backlog else timeout + 0.0005):
                handler = self.handlers.get(fd)
                if handler is not None:  # else closed by an earlier handler of this batch
                    self._guarded(handler, fd, events)
            # Connections that sent more whole messages than one turn takes.
            for router in (self.clients, self.workers):
                for fd in list(router.backlog):
                    handler = self.handlers.get(fd)
                    if handler is not None:
                        self._guarded(handler, fd, select.EPOLLIN)
            while self.signals:
                name = signal.Signals(self.signals.popleft()).name.lower()
                getattr(self, f"handle_{name}", self.handle_sigterm)()
            self._guarded(self._after_launcher_loss)
            self._maybe_ready()
            if self.draining:
                if self.dispatcher.idle and self.intake.idle:
                    return 0
                if time.monotonic() >= self.drain_deadline:
                    stopped = ErrorInfo(
                        code=ErrorCode.SHUTTING_DOWN, message="the service stopped before this run finished"
                    )
                    self.intake.fail_waiting(stopped)
                    self.dispatcher.fail_all(stopped)
                    return 0

    def _guarded(self, handle: Callable[..., None], *args: int) -> None:
        """A bug in one handler must not take the broker (and every client) down."""
        try:
            handle(*args)
        except Exception as exc:  # noqa: BLE001 - a bug in one handler must not stop the loop
            self.counters["internal_error"] += 1
            _log(f"internal error in {handle.__name__}: {exc!r}")

    def close(self) -> None:
        if self.egress.sock is not None:
            self.egress.sock.close()
        self.policy.close()
        # Replies just queued (the last runs of a drain) still go out.
        self.clients.linger(CLOSE_LINGER_MS / 1000)
        self.clients.close_all()
        self.workers.close_all()
        self.epoll.close()


def _drain_pipe(fd: int) -> None:
    try:
        os.read(fd, 512)
    except BlockingIOError:
        pass


def main() -> int:
    with os.fdopen(int(sys.argv[1]), "rb") as src:
        cfg = msgspec.msgpack.decode(src.read(), type=BrokerConfig)
    # Root mode: open the history database and bind the sockets first (their
    # directories need not be reachable by the broker's uid), then drop for good.
    broker = Broker(cfg)
    broker.bind()
    if cfg.drop_to >= 0:
        broker.policy.store.hand_over(cfg.drop_to)
        drop_privileges(cfg.drop_to)
    try:
        return broker.run()
    finally:
        broker.close()


if __name__ == "__main__":
    sys.exit(main())
