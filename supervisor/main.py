"""``cellblock serve``: start the launcher, the broker and the egress proxy; keep them running.

The supervisor main process holds no socket of its own. It prepares the
runtime and state directories, starts the launcher (root or, unprivileged,
the invoking user), the egress proxy and the broker (both drop to the
broker's uid at once), restarts any of them when it dies, within a restart
budget, and turns SIGTERM and SIGINT into the shutdown path: the broker
drains (every request still gets its reply), then the egress proxy and the
launcher stop.

Signal handlers only enqueue; the loop dispatches ``handle_<signame>``.
"""

from __future__ import annotations

import collections
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time
import uuid

import msgspec
import prctl

from protocol.curve import KeyProblem, load_pair, read_authorized
from protocol.profile import ConfigError, Profile
from supervisor import broker as broker_mod
from supervisor import egress as egress_mod
from supervisor import gateway as gateway_mod
from supervisor import launcher as launcher_mod
from supervisor.config import GATEWAY_STATUS_FILE, Config, cache_dir, pool_targets, runtime_dir, state_dir
from supervisor.log import logger
from supervisor.signals import SignalQueue, drain_wakeup

PROJECT_ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": PROJECT_ROOT}
RESTARTS = 5  # per child within RESTART_WINDOW_S, then the service gives up
RESTART_WINDOW_S = 60.0


log = logger("")


class ServiceRunning(Exception):
    pass


def notify_systemd(state: bytes) -> None:
    """sd_notify(3) without libsystemd: under a Type=notify unit, tell systemd READY=1 once
    the broker serves (so `systemctl start` returns then) and STOPPING=1 when the drain begins."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state, address)
    except OSError as exc:
        log(f"could not notify systemd ({exc})")


def _socket_answers(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        return False
    finally:
        sock.close()
    return True


class Child:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: collections.deque[float] = collections.deque()


class Supervisor:
    def __init__(self, config: Config, profile: Profile, ready_fd: int = -1, lifeline_fd: int = -1) -> None:
        self.config = config
        self.profile = profile
        self.root = os.geteuid() == 0
        self.rundir = runtime_dir(config)
        self.statedir = state_dir(config)
        self.ready_fd = ready_fd
        self.lifeline_fd = lifeline_fd  # embedded: EOF when the process that started us is gone
        self.instance = uuid.uuid4().hex[:12]
        self.signals = SignalQueue(self)
        self.launcher = Child("launcher")
        self.broker = Child("broker")
        self.egress = Child("egress")
        self.gateway = Child("gateway")
        self.server_keys: tuple[bytes, bytes] | None = None  # (public, secret) when [service] listen
        self.stopping = False
        self.exit_code = 0
        self.ready_r = -1
        # To the children: only main holds the write end, so its EOF tells a
        # child that main died (even by SIGKILL) and it should stop.
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)

    # --- directories ------------------------------------------------------------------

    def prepare(self) -> None:
        client_sock = os.path.join(self.rundir, "client.sock")
        if _socket_answers(client_sock):
            raise ServiceRunning(f"a cellblock service already answers on {client_sock}")
        os.makedirs(os.path.dirname(self.rundir), mode=0o755, exist_ok=True)
        # 0711 when other users may connect to client.sock: they can pass through to it,
        # not list the directory; every other socket in it is 0600 (supervisor.identity.expose).
        mode = 0o711 if self.config.service.client_group else 0o700
        os.makedirs(self.rundir, mode=mode, exist_ok=True)
        os.chmod(self.rundir, mode)
        os.makedirs(self.statedir, mode=0o700, exist_ok=True)
        if self.root:
            uid = self.config.service.broker_uid
            for path in (self.rundir, self.statedir):
                os.chown(path, uid, uid)
            for name in os.listdir(self.statedir):
                os.chown(os.path.join(self.statedir, name), uid, uid)
        self._check_keys()

    def _check_keys(self) -> None:
        """A TCP listener's keys are read now, so a bad file stops the start and names itself."""
        service = self.config.service
        if not service.listen:
            return
        try:
            self.server_keys = load_pair(service.server_key)
            read_authorized(service.authorized_keys)
        except KeyProblem as exc:
            raise ConfigError("service.listen", "", str(exc)) from None

    # --- children ---------------------------------------------------------------------------

    def _spawn(self, child: Child, module: str, payload: bytes) -> None:
        read_fd, write_fd = os.pipe()
        os.set_inheritable(self.lifeline_r, True)
        extra = [self.lifeline_r]
        if child is self.broker:
            if self.ready_r >= 0:
                os.close(self.ready_r)
            self.ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            os.set_inheritable(ready_w, True)
            extra.append(ready_w)
            cfg = msgspec.msgpack.decode(payload, type=broker_mod.BrokerConfig)
            payload = msgspec.msgpack.encode(msgspec.structs.replace(cfg, ready_fd=ready_w))
        child.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(read_fd)],
            pass_fds=[read_fd, *extra],
            env=CHILD_ENV,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
        os.close(read_fd)
        for fd in extra[1:]:
            os.close(fd)
        os.set_inheritable(self.lifeline_r, False)
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        child.starts.append(time.monotonic())

    def _launcher_payload(self) -> bytes:
        service = self.config.service
        pools = pool_targets(self.config, self.profile)
        return msgspec.msgpack.encode(
            launcher_mod.LauncherConfig(
                rundir=self.rundir,
                profile=self.profile,
                pools=pools,
                unprivileged=not self.root,
                broker_uid=service.broker_uid if self.root else 0,
                worker_uid_base=service.worker_uid_base,
                slots=service.slots,
                cgroup_parent=self.config.cgroups.parent,
                instance=self.instance,
                grant_roots=self.config.policy.grant_roots,
                cache_dir=cache_dir(self.config),
                environments=self.config.environments,
                supervisor_fd=self.lifeline_r,
                drain_s=self.config.service.drain_s,
            )
        )

    def _egress_payload(self) -> bytes:
        return msgspec.msgpack.encode(
            egress_mod.EgressConfig(
                rundir=self.rundir,
                egress=self.config.egress,
                broker_uid=self.config.service.broker_uid if self.root else os.getuid(),
                drop_to=self.config.service.broker_uid if self.root else -1,
                supervisor_fd=self.lifeline_r,
                drain_s=self.config.service.drain_s,
            )
        )

    def _broker_payload(self) -> bytes:
        return msgspec.msgpack.encode(
            broker_mod.BrokerConfig(
                rundir=self.rundir,
                statedir=self.statedir,
                profile=self.profile,
                config=self.config,
                drop_to=self.config.service.broker_uid if self.root else -1,
                supervisor_fd=self.lifeline_r,
            )
        )

    def _gateway_payload(self) -> bytes:
        service = self.config.service
        assert self.server_keys is not None
        return msgspec.msgpack.encode(
            gateway_mod.GatewayConfig(
                rundir=self.rundir,
                listen=service.listen,
                public_key=self.server_keys[0],
                secret_key=self.server_keys[1],
                authorized_keys=service.authorized_keys,
                max_peers=service.max_remote_peers,
                heartbeat_s=service.heartbeat_s,
                drop_to=service.broker_uid if self.root else -1,
                supervisor_fd=self.lifeline_r,
                drain_s=service.drain_s,
            )
        )

    def start_gateway(self) -> None:
        if self.server_keys is not None:
            self._spawn(self.gateway, "supervisor.gateway", self._gateway_payload())

    def start_launcher(self) -> None:
        self._spawn(self.launcher, "supervisor.launcher", self._launcher_payload())

    def start_broker(self) -> None:
        self._spawn(self.broker, "supervisor.broker", self._broker_payload())

    def start_egress(self) -> None:
        if self.config.egress.enabled:
            self._spawn(self.egress, "supervisor.egress", self._egress_payload())

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        prctl.set_child_subreaper(1)  # orphaned workers come back to us to be reaped
        wake_r = self.signals.install((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP))
        self.start_launcher()
        self.start_egress()
        self.start_broker()
        self.start_gateway()
        ready_pending = True
        while True:
            watch = [wake_r]
            if ready_pending and self.ready_r >= 0:
                watch.append(self.ready_r)
            if self.lifeline_fd >= 0:
                watch.append(self.lifeline_fd)
            readable, _, _ = select.select(watch, [], [], 1.0)
            if self.lifeline_fd >= 0 and self.lifeline_fd in readable:
                log("the process that started this embedded service is gone; stopping")
                os.close(self.lifeline_fd)
                self.lifeline_fd = -1
                self.stopping = True
            if wake_r in readable:
                drain_wakeup(wake_r)
            if ready_pending and self.ready_r >= 0 and self.ready_r in readable:
                ready = os.read(self.ready_r, 1) == b"R"
                os.close(self.ready_r)
                self.ready_r = -1  # a restarted broker gets a new pipe
            else:
                ready = False
            if ready_pending and ready:
                ready_pending = False
                tcp = "".join(f" and {endpoint} (CURVE)" for endpoint in self.config.service.listen)
                log(
                    f"serving on ipc://{os.path.join(self.rundir, 'client.sock')}{tcp} (profile {self.profile.name}, "
                    f"{'root' if self.root else 'unprivileged'} mode)"
                )
                notify_systemd(b"READY=1")
                if self.ready_fd >= 0:
                    os.write(self.ready_fd, b"R")
                    os.close(self.ready_fd)
                    self.ready_fd = -1
            self.signals.dispatch()
            if self.stopping:
                return self._shutdown()

    def handle_sigterm(self) -> None:
        self.stopping = True

    handle_sigint = handle_sigterm

    def handle_sighup(self) -> None:
        """The gateway reads authorized_keys again; nothing else reloads (restart for that)."""
        proc = self.gateway.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGHUP)

    def handle_sigchld(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child, restart in (
                (self.launcher, self.start_launcher),
                (self.broker, self.start_broker),
                (self.egress, self.start_egress),
                (self.gateway, self.start_gateway),
            ):
                if child.proc is not None and child.proc.pid == pid:
                    child.proc.returncode = os.waitstatus_to_exitcode(status)
                    if not self.stopping:
                        self._restart(child, restart, child.proc.returncode)

    def _restart(self, child: Child, start: object, code: int) -> None:
        now = time.monotonic()
        while child.starts and child.starts[0] < now - RESTART_WINDOW_S:
            child.starts.popleft()
        if len(child.starts) >= RESTARTS:
            log(
                f"{child.name} died {len(child.starts)} times within {RESTART_WINDOW_S:.0f} s "
                f"(last exit {code}); giving up"
            )
            self.exit_code = 1
            self.stopping = True
            return
        log(f"{child.name} exited ({code}); restarting")
        start()  # type: ignore[operator]

    def _wait(self, child: Child, timeout: float) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.01)
        proc.kill()
        try:
            os.waitpid(proc.pid, 0)
        except ChildProcessError:
            pass

    def _shutdown(self) -> int:
        notify_systemd(b"STOPPING=1")
        # The broker drains first: each request in flight still gets its reply, through the
        # gateway too for remote clients, so the gateway stops only after the broker.
        for child, timeout in (
            (self.broker, self.config.service.drain_s + 5),
            (self.gateway, 5.0),
            (self.egress, 5.0),
            (self.launcher, 10.0),
        ):
            proc = child.proc
            if proc is not None and proc.returncode is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                self._wait(child, timeout)
        while True:  # orphans (workers of a dead launcher) we adopted as subreaper
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        for name in ("client.sock", "workers.sock", "launcher.sock", "egress.ctl", GATEWAY_STATUS_FILE):
            try:
                os.unlink(os.path.join(self.rundir, name))
            except OSError:
                pass
        log("stopped")
        return self.exit_code


def serve(config: Config, profile: Profile, ready_fd: int = -1, lifeline_fd: int = -1) -> int:
    supervisor = Supervisor(config, profile, ready_fd, lifeline_fd)
    supervisor.prepare()
    return supervisor.run()
