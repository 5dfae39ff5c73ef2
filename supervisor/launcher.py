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
import subprocess
import sys
import time

import msgspec

from protocol import messages as m
from protocol.errors import ErrorCode
from protocol.profile import Profile
from protocol.wire import MAX_LAUNCHER_DATAGRAM, launcher_codec
from supervisor.link import Outbox, read_datagram
from supervisor.log import logger
from supervisor.pool import Pool, SpawnDeferred
from supervisor.signals import SignalQueue
from worker import cgroups, monitor, mounts, namespaces, payload, privileges, sandbox, seccomp, syscalls
from worker.runtimes import RUNTIMES
from worker.runtimes.base import Runtime

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
    cache_dir: str = ""  # what runtimes build once per host (Swift's module cache)
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
        self.runtimes: dict[str, Runtime] = {}
        self.stopping = False
        self.orphaned_until = 0.0  # set when supervisor main is gone
        self.slot_dirs: dict[int, dict[str, str]] = {}

    # --- start-up ----------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        profile = self.profile
        namespaces.enter_launcher_namespaces(cfg.unprivileged)
        self.layers.append(
            m.LayerStatus(
                name="namespaces",
                active=True,
                detail="pid, mount, net, ipc, uts, cgroup" + (", user" if cfg.unprivileged else ""),
            )
        )
        # Runtimes the profile enables and the host has.
        for name, policy in profile.runtimes.items():
            cls = RUNTIMES.get(name)
            if cls is None or not policy.enabled:
                continue
            runtime = cls.for_policy(policy)
            ok, detail = runtime.probe()
            if ok:
                try:
                    runtime.prepare_host(cfg.cache_dir)
                except (OSError, subprocess.SubprocessError) as exc:
                    ok, detail = False, f"could not prepare {name}: {exc}"
            self.runtime_info.append(
                m.RuntimeInfo(
                    name=name,
                    version=detail if ok else "",
                    languages=list(cls.languages),
                    available=ok,
                    reason="" if ok else detail,
                    self_test=cls.self_test[0],
                    self_test_expect=cls.self_test[1],
                )
            )
            if ok:
                self.runtimes[name] = runtime
        # cgroups, or the rlimit fallback.
        layout = None
        if profile.layers.cgroups != "off":
            layout, reason = cgroups.detect(cfg.instance, not cfg.unprivileged, cfg.cgroup_parent)
            if layout is not None:
                try:
                    cgroups.create_parents(layout)
                    cgroups.place_launcher(layout)
                except OSError as exc:
                    layout, reason = None, f"cannot create cgroups ({exc.strerror})"
            if layout is None and profile.layers.cgroups == "required":
                self._unavailable(f"cgroups are required by the profile but {reason}")
            self.layers.append(
                m.LayerStatus(name="cgroups", active=True, detail=layout.detail)
                if layout
                else m.LayerStatus(name="cgroups", active=False, detail=f"fell back to rlimits: {reason}")
            )
        else:
            self.layers.append(m.LayerStatus(name="cgroups", active=False, detail="off in the profile; rlimits only"))
        self.layout = layout
        self.layers.append(
            m.LayerStatus(
                name="rlimits",
                active=True,
                detail="cpu, nofile, fsize, nproc, core"
                + ("" if layout and layout.version("memory") else ", as (memory)"),
            )
        )
        # The template roots: one for the interpreters that see /usr, and one
        # of its own for each runtime that names the few programs it needs.
        operator = [mounts.Bind(x.src, x.target, x.optional) for x in profile.mounts]
        uids = (
            range(SANDBOX_UID_IN_USERNS, SANDBOX_UID_IN_USERNS + 1)
            if cfg.unprivileged
            else range(cfg.worker_uid_base, cfg.worker_uid_base + cfg.slots)
        )
        etc = mounts.etc_files(profile.sandbox.hostname, uids)
        shared = os.path.join(cfg.rundir, "root")
        binds = [mounts.Bind(src, src, optional) for src, optional in mounts.SYSTEM_BINDS]
        templates: dict[str, str] = {}
        details = []
        for name, runtime in self.runtimes.items():
            tools = runtime.tools()
            extra = [mounts.Bind(src, dst) for src, dst in runtime.host_paths()]
            if tools is None and not extra:
                templates[name] = shared
                continue
            # A root of its own: what this runtime needs beyond /usr (Swift's
            # toolchain) is never in another runtime's sandbox.
            own = os.path.join(cfg.rundir, f"root-{name}")
            if tools is None:
                mounts.build_template(own, binds + extra + operator, etc)
                details.append(f"{name}: /usr and {', '.join(b.dst for b in extra)}")
            else:
                system = [mounts.Bind(src, src, optional) for src, optional in mounts.SYSTEM_BINDS if src != "/usr"]
                system = [b for b in system if b.src != "/etc/alternatives"]  # recreated per tool as needed
                mounts.build_template(own, system + extra + operator, etc, tools)
                details.append(f"{name}: {len(tools)} programs, no /usr")
            templates[name] = own
        template = mounts.build_template(shared, binds + operator, etc)
        self.layers.append(
            m.LayerStatus(
                name="filesystem",
                active=True,
                detail=f"read-only template root, {len(template.binds)} binds"
                + "".join(f"; {d}" for d in details)
                + ", tmpfs /tmp and /work, pivot_root",
            )
        )
        self.layers.append(
            m.LayerStatus(
                name="network",
                active=True,
                detail={
                    "loopback": "own network namespace, loopback only",
                    "none": "own network namespace, no interfaces up",
                }[profile.sandbox.network],
            )
        )
        self.layers.append(
            m.LayerStatus(
                name="privileges",
                active=True,
                detail=(
                    "user namespace, sandbox uid 1000 inside" if cfg.unprivileged else f"uid {cfg.worker_uid_base}+slot"
                )
                + "; no capabilities, no_new_privs, securebits locked",
            )
        )
        # seccomp, compiled once in a helper so libseccomp never enters this heap.
        filters = None
        if profile.layers.seccomp != "off":
            policies = [seccomp.monitor_policy()]
            for name, runtime in self.runtimes.items():
                policy = profile.runtimes[name]
                policies.append(
                    seccomp.Policy(
                        name=name,
                        extra_allow=runtime.extra_syscalls,
                        exec=policy.exec or runtime.needs_exec_syscall,
                        socket_families=tuple(policy.socket_families),
                    )
                )
            try:
                compiled = seccomp.build_in_helper(policies).filters
                # The monitor's allowlist already leaves out every never-allowed
                # call; the payload also gets the deny filter (argument checks).
                filters = {
                    name: [syscalls.CompiledFilter(allow)]
                    if name == "@monitor"
                    else [syscalls.CompiledFilter(allow), syscalls.CompiledFilter(deny)]
                    for name, (allow, deny) in compiled.items()
                }
                self.layers.append(
                    m.LayerStatus(
                        name="seccomp",
                        active=True,
                        detail="allowlist per runtime + deny filter; x32 and foreign arches killed",
                    )
                )
            except RuntimeError as exc:
                if profile.layers.seccomp == "required":
                    self._unavailable(f"seccomp is required by the profile but {exc}")
                self.layers.append(m.LayerStatus(name="seccomp", active=False, detail=str(exc)))
        else:
            self.layers.append(m.LayerStatus(name="seccomp", active=False, detail="off in the profile"))
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)
        self.context = sandbox.Context(
            profile=profile,
            templates=templates,
            broker_socket=os.path.join(cfg.rundir, "workers.sock"),
            user_namespace=cfg.unprivileged,
            layout=layout,
            filters=filters,
            last_cap=privileges.cap_last(),
            lifeline=self.lifeline_r,
            grant_roots=[os.path.realpath(root) for root in cfg.grant_roots],
        )
        targets = {name: cfg.pools.get(name, 2) for name in self.runtimes}
        self.pool = Pool(
            targets,
            spawn=self._spawn,
            kill=self._kill,
            report=self._send,
            clock=time.monotonic,
            slots=cfg.slots,
        )

    def _unavailable(self, reason: str) -> None:
        self.runtime_info = [
            msgspec.structs.replace(info, available=False, reason=reason) for info in self.runtime_info
        ]
        self.runtimes.clear()

    # --- effects the pool asks for ---------------------------------------------------

    def _spawn(self, runtime: str, slot: int, reservation: m.Reserve | None = None) -> tuple[str, int]:
        cfg = self.config
        worker_id = os.urandom(8).hex()
        uid = SANDBOX_UID_IN_USERNS if cfg.unprivileged else cfg.worker_uid_base + slot
        dirs: dict[str, str] = self.slot_dirs.get(slot, {})
        if self.layout is not None and not dirs:
            # Once per slot: later workers of the slot reuse it (each run sets
            # its own memory limit, and resets it before its worker exits).
            dirs = self.slot_dirs[slot] = cgroups.prepare_slot(
                self.layout,
                slot,
                self.profile.limits.in_bytes().memory_bytes,
                self.profile.fixed.pids,
                self.profile.fixed.cpu_quota,
            )
        spec = sandbox.WorkerSpec(
            worker_id=worker_id,
            runtime=runtime,
            uid=uid,
            gid=uid,
            cgroup_dirs=dirs,
            binds=reservation.binds if reservation else [],
            egress=reservation.egress if reservation else "",
        )
        # Connected here, in the host's network namespace, and handed over.
        broker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            broker.connect(self.context.broker_socket)
        except OSError as exc:
            broker.close()
            raise SpawnDeferred(str(exc)) from exc
        try:
            pid = sandbox.spawn(spec, self.context, self.runtimes[runtime], broker.fileno())
        finally:
            broker.close()
        return worker_id, pid

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
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python's own KeyboardInterrupt handler
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        signals = syscalls.signalfd(SIGNALS)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        self.selector.register(signals, selectors.EVENT_READ, "signal")
        if cfg.supervisor_fd >= 0:
            self.selector.register(cfg.supervisor_fd, selectors.EVENT_READ, "supervisor")
        self.listener = listener
        for runtime in self.runtimes.values():
            try:
                monitor.warm_job_path(runtime)
            except Exception as exc:  # noqa: BLE001 - an optimisation: workers rehearse on their own too
                _log(f"could not warm the {runtime.name} job path: {exc!r}")
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
        if reservation.runtime not in self.runtimes:
            reason = f"{reservation.runtime} is not available"
        for bind in reservation.binds:
            if reason:
                break
            try:
                os.close(mounts.open_granted(bind, self.context.grant_roots))
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
        if self.layout is not None:
            for slot in range(self.config.slots):
                cgroups.remove_slot(cgroups.slot_dirs(self.layout, slot))
            cgroups.remove_parents(self.layout)
        return 0


def main() -> int:
    fd = int(sys.argv[1])
    with os.fdopen(fd, "rb") as src:
        config = msgspec.msgpack.decode(src.read(), type=LauncherConfig)
    # Every worker is a fork of this process: its environment is already the
    # sandbox's, and nothing of how it was started (paths, variables) stays
    # readable in /proc/<pid>/cmdline or environ.
    syscalls.scrub_start_block(payload.ENVIRONMENT)
    launcher = Launcher(config)
    try:
        launcher.setup()
    except Exception as exc:  # noqa: BLE001 - say why, exit non-zero; main decides
        _log(f"start-up failed: {exc}")
        return 3
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
