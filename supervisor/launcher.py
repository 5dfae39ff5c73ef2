"""The launcher: the only process that may create sandboxes.

It never reads client input. It talks to one broker over a unix
SOCK_SEQPACKET socket (``launcher.sock``; the peer's uid is checked) and
hears only ``Taken``, ``Kill`` and ``Reserve``. ``Reserve`` asks for a worker
made for one run, outside the warm pool, because that run's grants need
binds: host paths (each checked here, as root, for where it really leads
before the worker checks it again) and the run's egress proxy socket. It is single-threaded and holds no
ZeroMQ context, because it forks: every worker is a clone of this warm
interpreter, so a job pays for no interpreter start.

Start-up, once: its own mount namespace (and user namespace when not root),
cgroup parents, the template root, the seccomp programs (compiled in a
helper process), the runtime probes, the monitor's job path rehearsed (so
every worker inherits its specialised bytecode). Then the loop: signals
(SIGCHLD reaps, SIGTERM/SIGINT stop), the broker link, and pool refills.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time

import msgspec

from protocol import messages as m
from protocol.errors import ErrorCode
from protocol.profile import Environment, Profile
from protocol.wire import MAX_LAUNCHER_DATAGRAM, launcher_codec
from supervisor.link import Outbox, read_datagram
from supervisor.log import logger
from supervisor.pool import Pool, SpawnDeferred
from supervisor.signals import SignalQueue
from worker import host

SANDBOX_UID_IN_USERNS = 1000


class LauncherConfig(msgspec.Struct, frozen=True, kw_only=True):
    rundir: str
    profile: Profile
    pools: dict[str, int]
    unprivileged: bool
    broker_uid: int  # as the launcher sees it (0 in its user namespace)
    worker_uid_base: int
    slots: int
    cgroup_parent: str
    instance: str
    grant_roots: list[str] = []
    cache_dir: str = ""  # what runtimes build once per host (Swift's module cache); built environments
    environments: dict[str, Environment] = {}
    supervisor_fd: int = -1  # EOF when supervisor main is gone: stop once the broker has left
    drain_s: float = 90.0  # how long the broker may drain


SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


_log = logger("launcher")


class Launcher:
    def __init__(self, config: LauncherConfig) -> None:
        self.config = config
        self.profile = config.profile
        self.generation = 0
        self.signals = SignalQueue(self)
        self.broker: socket.socket | None = None
        self.codec = launcher_codec()
        self.layers: list[m.LayerStatus] = []
        self.runtime_info: list[m.RuntimeInfo] = []
        self.kinds: dict[str, host.Kind] = {}  # what workers are made of: a runtime, in an environment or none
        self.stopping = False
        self.orphaned_until = 0.0  # set when supervisor main is gone
        self.slot_dirs: dict[int, dict[str, str]] = {}
        self.zygotes: dict[str, host.Zygote] = {}  # kind -> the process its workers are cloned from

    # --- start-up ----------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        uids = (SANDBOX_UID_IN_USERNS, SANDBOX_UID_IN_USERNS + 1)
        if not cfg.unprivileged:
            uids = (cfg.worker_uid_base, cfg.worker_uid_base + cfg.slots)
        prepared = host.prepare(
            host.Host(
                rundir=cfg.rundir,
                profile=self.profile,
                unprivileged=cfg.unprivileged,
                instance=cfg.instance,
                cgroup_parent=cfg.cgroup_parent,
                cache_dir=cfg.cache_dir,
                uids=uids,
                grant_roots=cfg.grant_roots,
                environments=cfg.environments,
            )
        )
        self.context = prepared.context
        self.kinds = prepared.kinds
        self.runtime_info = prepared.info
        self.layers = prepared.layers
        self.lifeline_w = prepared.lifeline_w
        targets = {name: cfg.pools.get(name, cfg.pools.get(kind.runtime, 2)) for name, kind in self.kinds.items()}
        self.pool = Pool(
            targets,
            spawn=self._spawn,
            kill=self._kill,
            report=self._send,
            clock=time.monotonic,
            slots=cfg.slots,
            others=self._other_exit,
        )

    # --- effects the pool asks for ---------------------------------------------------

    def _spawn(self, runtime: str, slot: int, reservation: m.Reserve | None = None) -> tuple[str, int]:
        cfg = self.config
        worker_id = os.urandom(8).hex()
        uid = SANDBOX_UID_IN_USERNS if cfg.unprivileged else cfg.worker_uid_base + slot
        dirs = self.slot_dirs.get(slot)
        if dirs is None:
            dirs = self.slot_dirs[slot] = host.prepare_slot(self.context, slot)
        spec = m.Spawn(
            worker_id=worker_id,
            runtime=runtime,
            uid=uid,
            gid=uid,
            cgroup_dirs=dirs,
            binds=reservation.binds if reservation else [],
            egress=reservation.egress if reservation else "",
        )
        try:
            reply = self._zygote(runtime).spawn(spec)
        except host.ZygoteLost as exc:
            _log(f"{exc}; starting it again")
            self._restart_zygote(runtime)
            raise OSError(0, str(exc)) from None
        if reply.error:
            if reply.retry:
                raise SpawnDeferred(reply.error)
            raise OSError(0, reply.error)
        return worker_id, reply.pid

    def _zygote(self, kind: str) -> host.Zygote:
        zygote = self.zygotes.get(kind)
        if zygote is None:
            zygote = self.zygotes[kind] = host.Zygote(self.context, kind, self.kinds[kind], self.config.cache_dir)
        return zygote

    def _restart_zygote(self, kind: str) -> None:
        zygote = self.zygotes.pop(kind, None)
        if zygote is not None:
            zygote.stop()

    def _other_exit(self, pid: int, status: int) -> None:
        """A child that is not a worker: a zygote that died is made again when next needed."""
        for kind, zygote in list(self.zygotes.items()):
            if zygote.pid == pid:
                _log(f"the {kind} zygote exited ({os.waitstatus_to_exitcode(status)}); it is made again when needed")
                self.zygotes.pop(kind).stop()

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _send(self, message: m.Internal) -> None:
        if self.broker is None:
            return
        try:
            self.outbox.send(self.codec.encode_datagram(message))
        except OSError as exc:
            _log(f"broker link lost while sending ({exc}); waiting for a new broker")
            self._drop_broker()
            return
        self._watch_broker()

    def _flush(self) -> None:
        try:
            self.outbox.flush()
        except OSError as exc:
            _log(f"broker link lost while sending ({exc}); waiting for a new broker")
            self._drop_broker()
            return
        self._watch_broker()

    def _watch_broker(self) -> None:
        if self.broker is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox.pending else 0)
            if self.selector.get_key(self.broker).events != events:
                self.selector.modify(self.broker, events, "broker")

    # --- the loop ------------------------------------------------------------------------

    def _read_signals(self, fd: int) -> None:
        try:
            records = os.read(fd, 128 * 16)
        except BlockingIOError:
            return
        for offset in range(0, len(records), 128):
            self.signals.push(struct.unpack_from("I", records, offset)[0])

    def run(self) -> int:
        cfg = self.config
        path = os.path.join(cfg.rundir, "launcher.sock")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        listener.bind(path)
        os.chmod(path, 0o600)
        if not cfg.unprivileged:
            os.chown(path, cfg.broker_uid, -1)
        listener.listen(4)
        # Signals come through a signalfd, not Python handlers: a worker is a
        # clone of this process, and with no handler of ours installed it only
        # has to unblock them (see worker.sandbox).
        signals = host.signal_source(SIGNALS)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        self.selector.register(signals, selectors.EVENT_READ, "signal")
        if cfg.supervisor_fd >= 0:
            self.selector.register(cfg.supervisor_fd, selectors.EVENT_READ, "supervisor")
        self.listener = listener
        for name in self.kinds:  # each zygote starts and warms while the loop begins
            self._zygote(name)
        gc.freeze()  # forks then share the heap instead of copying pages the GC touched
        while not self.stopping:
            wake = self.pool.next_wakeup()
            if self.orphaned_until:
                wake = min(wake or self.orphaned_until, self.orphaned_until)
            timeout = None if wake is None else max(0.0, wake - time.monotonic())
            for key, mask in self.selector.select(timeout):
                if key.data == "signal":
                    self._read_signals(signals)
                elif key.data == "supervisor":
                    # Main is gone: nobody would restart or reap us. The broker
                    # drains too; its running workers live until it leaves.
                    self.selector.unregister(cfg.supervisor_fd)
                    self.orphaned_until = time.monotonic() + cfg.drain_s + 30
                    self.pool.paused = True
                    _log("supervisor main is gone; stopping when the broker has drained")
                elif key.data == "listen":
                    self._accept()
                elif key.data == "broker":
                    if mask & selectors.EVENT_WRITE:
                        self._flush()
                    if mask & selectors.EVENT_READ and self.broker is not None:
                        self._from_broker()
            self.signals.dispatch()
            if self.orphaned_until and (self.broker is None or time.monotonic() > self.orphaned_until):
                self.stopping = True
            self.pool.fill()
        return self._shutdown()

    def handle_sigchld(self) -> None:
        self.pool.reap()

    def handle_sigterm(self) -> None:
        self.stopping = True

    handle_sigint = handle_sigterm

    def handle_sighup(self) -> None:
        pass  # configuration is re-read by restarting the service

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != self.config.broker_uid:
            _log(f"refused a launcher connection from uid {uid}")
            conn.close()
            return
        if self.broker is not None:
            self._drop_broker()
        self.generation += 1
        self.broker = conn
        self.outbox = Outbox(conn)
        self.pool.paused = bool(self.orphaned_until)  # orphaned: no new workers
        self.selector.register(conn, selectors.EVENT_READ, "broker")
        self._send(
            m.LauncherHello(
                generation=self.generation,
                mode="unprivileged (user namespaces)" if self.config.unprivileged else "root",
                profile=self.profile.name,
                runtimes=self.runtime_info,
                layers=self.layers,
            )
        )
        for name in self.pool.runtimes:  # as they are: a restarted broker must not offer a runtime in backoff
            self._send(self.pool.health(name))
        self.pool.fill()

    def _drop_broker(self) -> None:
        if self.broker is None:
            return
        try:
            self.selector.unregister(self.broker)
        except (KeyError, ValueError):
            pass
        self.broker.close()
        self.broker = None
        self.pool.paused = True
        # Workers hold connections to that broker; they cannot serve another.
        self.pool.kill_all("broker restarted")

    def _from_broker(self) -> None:
        assert self.broker is not None
        try:
            data = self.broker.recv(MAX_LAUNCHER_DATAGRAM)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            _log("broker closed the link")
            self._drop_broker()
            return
        message = read_datagram(self.codec, data, lambda why: _log(f"dropped a bad datagram from the broker: {why}"))
        if message is None:
            return
        match message:
            case m.Taken(worker=worker_id):
                self.pool.taken(worker_id)
            case m.Kill(worker=worker_id, reason=reason):
                self.pool.kill(worker_id, reason)
            case m.Reserve():
                self._reserve(message)

    def _reserve(self, reservation: m.Reserve) -> None:
        code, reason = ErrorCode.RUNTIME_UNAVAILABLE, ""
        if reservation.runtime not in self.kinds:
            reason = f"{reservation.runtime} is not available"
        for bind in reservation.binds:
            if reason:
                break
            try:
                host.check_bind(bind, self.context.grant_roots)
            except PermissionError as exc:
                code, reason = ErrorCode.PERMISSION_REQUIRED, str(exc)
            except OSError as exc:
                code, reason = ErrorCode.INVALID_REQUEST, f"{bind.host}: {exc.strerror}"
        if not reason and reservation.egress:
            try:
                if not stat.S_ISSOCK(os.stat(reservation.egress).st_mode):
                    raise FileNotFoundError
            except OSError:
                code, reason = ErrorCode.INTERNAL_ERROR, "the run's egress proxy socket is missing"
        if not reason:
            code, reason = self.pool.reserve(reservation, self._spawn) or (code, "")
        if reason:
            self._send(m.ReserveFailed(run=reservation.run, code=code, reason=reason))

    def _shutdown(self) -> int:
        self.pool.stopping = True
        self.pool.kill_all("service stopping")
        deadline = time.monotonic() + 5.0
        while self.pool.workers and time.monotonic() < deadline:
            self.pool.reap()
            time.sleep(0.01)
        # The zygotes go first: they were started in the launcher's own cpu cgroup,
        # which cannot be removed while a process is in it (the soak found every
        # service leaving <cpu>/cellblock/<instance>/launcher behind).
        for zygote in self.zygotes.values():
            zygote.stop()
        for zygote in self.zygotes.values():
            zygote.wait_stopped(5.0)
        host.release(self.context, self.config.slots)
        return 0


def main() -> int:
    fd = int(sys.argv[1])
    with os.fdopen(fd, "rb") as src:
        config = msgspec.msgpack.decode(src.read(), type=LauncherConfig)
    # Every worker is a fork of this process: its environment is already the
    # sandbox's, and nothing of how it was started (paths, variables) stays
    # readable in /proc/<pid>/cmdline or environ.
    host.become_launcher()
    launcher = Launcher(config)
    try:
        launcher.setup()
    except Exception as exc:  # noqa: BLE001 - say why, exit non-zero; main decides
        _log(f"start-up failed: {exc}")
        return 3
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
