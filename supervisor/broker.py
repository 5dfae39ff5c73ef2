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
import select
import signal
import sys
import time
from collections.abc import Callable

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo, error_info
from protocol.profile import Profile
from protocol.wire import (
    MAX_CLIENT_FRAME,
    MAX_WORKER_FRAME,
    broker_client_codec,
    broker_worker_codec,
    explain_bad_request,
)
from protocol.zmtp import Router
from supervisor.catalogue import Catalogue
from supervisor.config import Config, pool_targets
from supervisor.dispatch import Dispatcher, Effects, Ticket
from supervisor.identity import drop_privileges, expose
from supervisor.intake import Intake
from supervisor.link import EgressLink, LauncherLink
from supervisor.log import logger
from supervisor.policy import Policy
from supervisor.sessions import Sessions
from supervisor.signals import SignalQueue, drain_wakeup
from supervisor.status import status_reply

VERSION = "0.1.0"
CLOSE_LINGER_MS = 2000


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    rundir: str
    statedir: str
    profile: Profile
    config: Config
    ready_fd: int = -1
    drop_to: int = -1  # root mode: the broker's own uid, taken before any socket is bound
    supervisor_fd: int = -1  # EOF when supervisor main is gone: drain as on SIGTERM


_log = logger("broker")


class Broker:
    def __init__(self, cfg: BrokerConfig) -> None:
        self.cfg = cfg
        self.profile = cfg.profile
        self.started = time.monotonic()
        self.client_codec = broker_client_codec()
        self.worker_codec = broker_worker_codec()
        self.counters: collections.Counter[str] = collections.Counter()
        self.signals = SignalQueue(self)
        self.draining = False
        self.drain_deadline = 0.0
        self.dues: tuple[float | None, ...] = ()  # when the dispatcher and intake next need a tick
        self.next_sweep = 0.0
        self.ready_sent = False
        self.dispatcher = Dispatcher(
            effects=Effects(
                send_job=self._send_job,
                taken=self._taken,
                kill=self._kill,
                finish=self._finish,
                reserve=self._reserve,
                held_lost=lambda worker, detail: self.sessions.held_lost(worker, detail),
            ),
            clock=time.monotonic,
            queue_limit=cfg.config.service.queue_limit,
            queue_wait_s=cfg.config.service.queue_wait_s,
        )
        self.catalogue = Catalogue(cfg.profile, self.dispatcher.fail_queued)
        self.policy = Policy(
            cfg.config, cfg.profile, cfg.statedir, time.time, relay_uid=cfg.drop_to if cfg.drop_to >= 0 else None
        )
        self.egress = EgressLink(cfg.rundir)
        self.launcher = LauncherLink(cfg.rundir, self._forget)
        self.launcher_mask = 0
        self.pools = pool_targets(cfg.config, cfg.profile)
        self.dispatcher.cold = frozenset(kind for kind, warm in self.pools.items() if warm == 0)
        self.sessions = Sessions(cfg.config, self.dispatcher, self.policy, self.catalogue, self._reply)
        self.intake = Intake(
            self.policy,
            self.dispatcher,
            self._reply,
            self.catalogue.resolve_request,
            self.catalogue.version,
            cfg.config.service.queue_wait_s,
            self.egress,
            self.sessions,
            self.catalogue.hints,
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
                path, max_frame=max_frame, watch=self._watch, socket_types=kinds, max_peers=max_peers,
                max_held=max_held, by_uid=name == "client.sock",  # each client's uid from the kernel: policy/peers.py
            )
            expose(path, self.cfg.config.service.client_group if name == "client.sock" else "")
            if name == "client.sock" and self.cfg.drop_to >= 0:  # the gateway, at the broker's uid, connects
                os.chown(path, self.cfg.drop_to, -1)
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

    def _tick(self) -> None:
        self.dues = ()  # if a tick fails, the loop still wakes within a second
        self.dues = (self.dispatcher.tick(), self.intake.tick(), self.sessions.tick())
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + 1.0
            self.clients.sweep()
            self.workers.sweep()

    def _watch_launcher(self) -> None:
        """Connect when not connected; watch for writability while datagrams wait."""
        sock = self.launcher.connect_nowait(time.monotonic())
        if sock is not None:
            self.launcher_mask = select.EPOLLIN
            self._listen(sock.fileno(), select.EPOLLIN, self._on_launcher_event)
        if self.launcher.sock is not None:
            mask = select.EPOLLIN | (select.EPOLLOUT if self.launcher.pending else 0)
            if mask != self.launcher_mask:
                self.launcher_mask = mask
                self.epoll.modify(self.launcher.sock.fileno(), mask)

    def _after_launcher_loss(self) -> None:
        if self.launcher.lost:
            self.launcher.lost = False
            self.dispatcher.launcher_lost()

    # --- effects for the dispatcher ----------------------------------------------------

    def _send_job(self, worker_id: str, job: m.Job) -> bool:
        return self.workers.send(worker_id.encode(), self.worker_codec.encode(job))

    def _taken(self, worker_id: str) -> None:
        self.launcher.send(m.Taken(worker=worker_id))

    def _kill(self, worker_id: str, reason: str) -> None:
        self.launcher.send(m.Kill(worker=worker_id, reason=reason))

    def _reserve(self, reservation: m.Reserve) -> None:
        if not self.launcher.connected:
            self.dispatcher.reserve_failed(
                reservation.run, ErrorCode.RUNTIME_UNAVAILABLE, "the launcher is not connected; retry shortly"
            )
            return
        self.launcher.send(reservation)

    def _reply(self, client: bytes, reply: m.Reply) -> None:
        if not self.clients.send(client, self.client_codec.encode(reply)):
            self.counters["reply_undeliverable"] += 1

    def _finish(self, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        ticket.owner.finish(ticket, raw, error)

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
                    reply = explain_bad_request(body, exc)
                except Exception:  # noqa: BLE001 - only the message's wording is at stake
                    reply = m.ErrorReply(error=ErrorInfo(code=ErrorCode.BAD_FRAME, message="frame could not be read"))
                self.counters[f"bad_input_{reply.error.code.value}"] += 1
                self._reply(client, reply)
                continue
            try:
                self._handle(client, request)
            except CellblockError as exc:  # the client's mistake (a bad grant, say): theirs to fix, not ours
                self.counters[f"client_error_{exc.code.value}"] += 1
                self._reply(client, m.ErrorReply(id=request.id, error=exc.info()))
            except Exception as exc:  # noqa: BLE001 - a bug must not take the broker down
                _log(f"internal error handling {type(request).__name__}: {exc!r}")
                self.counters["internal_error"] += 1
                self._reply(client, m.ErrorReply(id=request.id, error=error_info(exc)))

    def _handle(self, client: bytes, request: m.ClientRequest) -> None:
        match request:
            case m.ExecuteRequest():
                self.intake.execute(client, request)
            case m.StatusRequest(id=rid):
                self._reply(client, self.status(rid, client))
            case m.GrantRequest() | m.RevokeRequest() | m.GrantsRequest() | m.HistoryRequest():
                self._reply(client, self.policy.admin(request, client.hex()))
            case m.SessionOpen():
                self.sessions.open(client, request)  # its reply comes when the session's sandbox is ready
            case m.SessionClose():
                self._reply(client, self.sessions.close(client, request))
            case m.SessionList():
                self._reply(client, self.sessions.listing(client, request))

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
                    self_test = self.catalogue.self_test_ticket(runtime)
                    if self_test is not None:  # ahead of the clients' runs, which wait for it
                        self.dispatcher.submit(self_test, urgent=True)
                case m.WorkerChunk():
                    self._chunk(worker_id, message)
                case m.WorkerResult():
                    self.dispatcher.result(worker_id, message)

    def _chunk(self, worker_id: str, chunk: m.WorkerChunk) -> None:
        ticket = self.dispatcher.chunk_ticket(worker_id, chunk.id)
        if ticket is not None:
            ticket.owner.chunk(chunk)

    # --- the launcher -----------------------------------------------------------------------------

    def _on_launcher_event(self, fd: int, events: int) -> None:
        if events & select.EPOLLOUT:
            self.launcher.flush()
        if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            self._on_launcher(self.launcher.receive())

    def _on_launcher(self, message: m.LauncherToBroker | None) -> None:
        match message:
            case m.LauncherHello():
                self.catalogue.hello(message)
                self.dispatcher.new_generation(message.generation)
            case m.Spawned(worker=worker_id, runtime=runtime, pid=pid):
                self.dispatcher.spawned(worker_id, runtime, pid, message.reserved_for)
            case m.ReserveFailed(run=run_id, code=code, reason=reason):
                self.dispatcher.reserve_failed(run_id, code, reason)
            case m.Exited(worker=worker_id, detail=detail):
                self.dispatcher.exited(worker_id, detail)
            case m.Health():
                self.catalogue.health(message)

    # --- status ----------------------------------------------------------------------------------

    def status(self, request_id: str, client: bytes = b"") -> m.StatusReply:
        return status_reply(request_id, VERSION, self, client.hex())

    def _maybe_ready(self) -> None:
        if self.ready_sent or self.cfg.ready_fd < 0 or not self.catalogue.runtimes:
            return
        if self.catalogue.self_tests_pending and time.monotonic() - self.started < 20:
            return
        try:
            os.write(self.cfg.ready_fd, b"R")
            os.close(self.cfg.ready_fd)
        except OSError:
            pass
        self.ready_sent = True

    # --- the loop ---------------------------------------------------------------------------------

    def handle_sigterm(self) -> None:
        if not self.draining:
            self.draining = self.intake.draining = True
            self.sessions.close_all("the service is stopping")
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
        wake_r = self.signals.install((signal.SIGTERM, signal.SIGINT), ignore=(signal.SIGHUP,))
        self._listen(wake_r, select.EPOLLIN, lambda fd, ev: drain_wakeup(fd))
        if self.cfg.supervisor_fd >= 0:
            self._listen(self.cfg.supervisor_fd, select.EPOLLIN, self._supervisor_gone)
        while True:
            self._watch_launcher()
            self._guarded(self._after_launcher_loss)
            self._guarded(self._tick)
            dues = [t for t in self.dues if t is not None]
            timeout = 1.0 if not dues else max(0.0, min(dues) - time.monotonic())
            if not self.launcher.connected or self.draining:
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
            self.signals.dispatch()
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
