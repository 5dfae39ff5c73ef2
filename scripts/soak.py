#!/usr/bin/env python3
"""A fault soak: steady load with a realistic mix, SIGKILLs at random moments, and a count of what was lost.

    .venv/bin/python scripts/soak.py                      # the full soak (3 minutes)
    .venv/bin/python scripts/soak.py --seconds 30 --json out.json

It starts its own service (``cellblock serve`` through ``Embedded``: its own
config, runtime and state directories, worker uids of its own in root
mode), then for ``--seconds`` (or until ``--max-requests`` are sent):

- load: ``--clients`` clients, each on its own ZMTP connection, each sending
  ``--rate`` requests a second from a mix of Python, JavaScript and bash runs,
  timeouts, memory bombs, output floods, streamed runs, runs through the
  egress proxy (to an HTTP server of its own on loopback), requests with a bad
  field, and, on a side connection, frames that are not cellblock frames;
- faults, one at a time, every ``--fault-every`` seconds or so: SIGKILL of a
  random worker, the launcher, the egress proxy or the broker (never more
  than supervisor main's restart budget allows), each followed by a probe
  that measures how long until the service does that part's work again.

Every request is matched to its replies by id. At the end it waits for what
is still owed, stops the service and looks for what it left on the host.
Counted: requests sent; final replies by status (and error code);
connection_lost (the broker died with the request on its connection: the
client is told, nothing is silent); requests with no reply on a live
connection (must be 0); duplicate final replies (must be 0); processes,
mounts, cgroups and files left afterwards (must be 0); the broker's memory
at start and end; recovery time after each fault. Exit status 1 if any of
the zeros is not zero.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.server
import json
import os
import pathlib
import random
import re
import select
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import psutil  # noqa: E402

from protocol import messages as m  # noqa: E402
from protocol.client import Client  # noqa: E402
from protocol.wire import VERSION, client_codec  # noqa: E402
from protocol.zmtp import Dealer, ZmtpError  # noqa: E402
from supervisor.tools.embedded import Embedded  # noqa: E402

CODEC = client_codec()
NET_HOST = "upstream.test"
NET_CLIENT = "soak-net"
REPLY_MARGIN_S = 60.0  # a request is owed its reply within its timeout + the queue's wait + this
RESTART_BUDGET = 3  # kills of one service process in any 60 s (main gives up at its 5th start)
WORKER_KILLS_PER_30S = 2  # an idle worker killed counts as a setup failure; 5 in 30 s marks a runtime unhealthy


# --- the mix ---------------------------------------------------------------------------------------


@dataclass
class Kind:
    name: str
    weight: int
    language: str
    code: str
    limits: m.Limits = field(default_factory=m.Limits)
    stream: bool = False
    net: bool = False
    bad_field: bool = False  # sent as a request whose "code" is not a string: an error reply under its id
    environment: str = "none"  # Python's standard library only; "" is the profile's default (data: numpy, ...)


def mix(net_port: int, languages: set[str]) -> list[Kind]:
    kinds = [
        Kind("python", 25, "python", "print(sum(range(1000)))"),
        Kind("python_data", 5, "python", "import numpy as np\nprint(int(np.arange(10).sum()))", environment=""),
        Kind("javascript", 10, "javascript", "console.log([1, 2, 3].map(x => x * 2).join(','))"),
        Kind("bash", 10, "bash", "echo hello; ls / | wc -l"),
        Kind("timeout", 8, "python", "import time\ntime.sleep(10)", m.Limits(timeout_ms=300)),
        Kind("memory_bomb", 6, "python", "b = bytearray(400 << 20)\nprint(len(b))", m.Limits(memory_bytes=64 << 20)),
        Kind(
            "output_flood",
            5,
            "python",
            "import sys\nfor _ in range(600):\n    sys.stdout.write('x' * 65536)",
            m.Limits(output_bytes=4096),
        ),
        Kind(
            "streamed",
            10,
            "python",
            "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.05)",
            stream=True,
        ),
        Kind(
            "net",
            5,
            "python",
            f"import urllib.request\nprint(urllib.request.urlopen('http://{NET_HOST}:{net_port}/', timeout=5).read())",
            net=True,
        ),
        Kind("bad_field", 5, "python", "", bad_field=True),
    ]
    return [k for k in kinds if k.language in languages]


def frames_for(kind: Kind, request_id: str) -> list[bytes]:
    if kind.bad_field:
        return [VERSION, msgspec.msgpack.encode({"type": "execute", "id": request_id, "code": 5})]
    caps = [m.Capability(m.CapabilityKind.NET, NET_HOST)] if kind.net else []
    request = m.ExecuteRequest(
        id=request_id,
        code=kind.code,
        language=kind.language,
        limits=kind.limits,
        capabilities=caps,
        client_id=NET_CLIENT if kind.net else "soak",
        stream=kind.stream,
        environment=kind.environment if kind.language == "python" else "",
    )
    return CODEC.encode(request)


# --- what came back --------------------------------------------------------------------------------


class Ledger:
    """Every request sent and every reply received, by id (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: collections.Counter[str] = collections.Counter()
        self.replies: collections.Counter[str] = collections.Counter()  # "kind status[:code]"
        self.statuses: collections.Counter[str] = collections.Counter()
        self.connection_lost = 0
        self.no_reply: list[str] = []
        self.duplicates: list[str] = []
        self.unknown: list[str] = []  # a final reply for an id never sent
        self.chunks = 0
        self.garbage_sent = 0
        self.garbage_answered = 0
        self.garbage_lost = 0
        self.finished: set[str] = set()

    def reply(self, kind: str, request_id: str, reply: m.ClientReply) -> None:
        with self.lock:
            if request_id in self.finished:
                self.duplicates.append(request_id)
                return
            self.finished.add(request_id)
            if isinstance(reply, m.ExecuteResult):
                label = reply.status.value + (f":{reply.error.code.value}" if reply.error else "")
            else:
                label = "error_reply:" + reply.error.code.value  # type: ignore[union-attr]
            self.statuses[label] += 1
            self.replies[f"{kind} {label}"] += 1


# --- clients ---------------------------------------------------------------------------------------


class Loader(threading.Thread):
    """One client: its own connection, a steady rate, every reply matched to its request."""

    def __init__(self, n: int, socket_path: str, kinds: list[Kind], rate: float, ledger: Ledger, stop_at: float,
                 max_requests: int, rng: random.Random) -> None:
        super().__init__(name=f"loader-{n}", daemon=True)
        self.n, self.path, self.kinds, self.rate, self.ledger = n, socket_path, kinds, rate, ledger
        self.stop_at, self.max_requests, self.rng = stop_at, max_requests, rng
        self.pending: dict[str, tuple[str, float]] = {}  # id -> (kind, owed by)
        self.dealer: Dealer | None = None
        self.quiet_until = 0.0

    def connect(self) -> bool:
        try:
            self.dealer = Dealer.connect(self.path, b"", timeout=2.0)
            return True
        except (OSError, ZmtpError):
            self.dealer = None
            return False

    def lost(self) -> None:
        """The connection dropped: each request on it is told so (connection_lost), none is silent."""
        with self.ledger.lock:
            self.ledger.connection_lost += len(self.pending)
            self.ledger.finished.update(self.pending)
        self.pending.clear()
        if self.dealer is not None:
            self.dealer.close()
        self.dealer = None

    def send_one(self) -> None:
        kind = self.rng.choices(self.kinds, [k.weight for k in self.kinds])[0]
        request_id = f"{self.n}-{uuid.uuid4().hex[:12]}"
        if self.dealer is None and not self.connect():
            return  # the broker is down: this moment's request is not sent (and not counted)
        assert self.dealer is not None
        timeout_s = (kind.limits.timeout_ms or 10_000) / 1000
        self.pending[request_id] = (kind.name, time.monotonic() + timeout_s + REPLY_MARGIN_S)
        with self.ledger.lock:
            self.ledger.sent[kind.name] += 1
        try:
            self.dealer.send(frames_for(kind, request_id), timeout=5.0)
        except OSError:
            self.lost()

    def receive(self, wait_s: float) -> None:
        dealer = self.dealer
        if dealer is None:
            time.sleep(min(wait_s, 0.05))
            return
        if wait_s > 0 and not select.select([dealer.fileno()], [], [], wait_s)[0]:
            return
        try:
            messages = dealer.recv_available()
        except OSError:
            messages = None
        if messages is None:
            self.lost()
            return
        for frames in messages:
            self.handle(frames)

    def handle(self, frames: list[bytes]) -> None:
        reply = CODEC.decode(frames)
        request_id = getattr(reply, "id", "")
        if isinstance(reply, m.OutputChunk):
            with self.ledger.lock:
                self.ledger.chunks += 1
            return
        entry = self.pending.pop(request_id, None)
        if entry is None:
            with self.ledger.lock:
                if request_id in self.ledger.finished:
                    self.ledger.duplicates.append(request_id)
                else:
                    self.ledger.unknown.append(request_id)
            return
        self.ledger.reply(entry[0], request_id, reply)

    def run(self) -> None:
        next_send = time.monotonic()
        sent = 0
        while time.monotonic() < self.stop_at and sent < self.max_requests:
            now = time.monotonic()
            if now >= next_send:
                self.send_one()
                sent += 1
                next_send += self.rng.expovariate(self.rate)
            self.receive(max(0.0, min(next_send, self.stop_at) - time.monotonic()))
        self.settle()

    def settle(self) -> None:
        """After the load: wait for what is owed, then a quiet second for any duplicate."""
        while self.pending and time.monotonic() < max(owed for _, owed in self.pending.values()):
            self.receive(0.2)
            if self.dealer is None:
                break  # lost() counted them
        with self.ledger.lock:
            self.ledger.no_reply += list(self.pending)
        quiet = time.monotonic() + 1.0
        while self.dealer is not None and time.monotonic() < quiet:
            self.receive(0.2)
        if self.dealer is not None:
            self.dealer.close()


class Garbage(threading.Thread):
    """Frames that are not cellblock frames, one at a time on a side connection: each is owed one error reply."""

    def __init__(self, socket_path: str, ledger: Ledger, stop_at: float, rng: random.Random) -> None:
        super().__init__(name="garbage", daemon=True)
        self.path, self.ledger, self.stop_at, self.rng = socket_path, ledger, stop_at, rng

    def one(self, dealer: Dealer) -> str:
        """Send one bad frame: "answered", "closed" (the broker died with it) or "silent"."""
        frames = self.rng.choice(
            [[os.urandom(32)], [VERSION, b"\xc1" + os.urandom(16)], [b"CB/9", b"x"], [VERSION, b"", b"extra"]]
        )
        dealer.send(frames, timeout=5.0)  # OSError: the broker is gone, and the frame with it (not counted)
        self.ledger.garbage_sent += 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if select.select([dealer.fileno()], [], [], 0.2)[0]:
                got = dealer.recv_available()
                if got is None:
                    return "closed"
                if got:
                    self.ledger.garbage_answered += len(got)  # more than one per frame would show here
                    return "answered"
        return "silent"

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            try:
                with contextlib.closing(Dealer.connect(self.path, b"", timeout=2.0)) as dealer:
                    while time.monotonic() < self.stop_at:
                        outcome = self.one(dealer)
                        if outcome == "closed":
                            self.ledger.garbage_lost += 1  # told by the closed connection
                            break
                        if outcome == "silent":
                            self.ledger.no_reply.append("garbage frame")
                        time.sleep(self.rng.uniform(0.5, 1.5))
            except (OSError, ZmtpError):
                time.sleep(0.2)


# --- the service -----------------------------------------------------------------------------------


class Upstream:
    """An HTTP server on loopback that the net runs reach through the egress proxy."""

    def __init__(self) -> None:
        class Pong(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name for it
                self.send_response(200)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"pong")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pong)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


IDLE_WCHANS = {"anon_pipe_read", "pipe_read", "pipe_wait", "do_epoll_wait", "ep_poll", "0"}


class Service:
    def __init__(self, tmp: pathlib.Path, pool: int, upstream_port: int) -> None:
        self.uid_base = 300_000_000 + (os.getpid() % 4096) * 1024  # away from the tests' ranges
        config = tmp / "soak.toml"
        config.write_text(
            f'[service]\nstate_dir = "{tmp / "state"}"\nworker_uid_base = {self.uid_base}\nqueue_wait_s = 60\n'
            'pool = {"python:data" = 1}\n\n'
            "[policy]\nrate_per_minute = 1000000\nconcurrency = 1000\n\n"
            f'[egress]\nallow_targets = ["127.0.0.1:{upstream_port}"]\n[egress.resolve]\n"{NET_HOST}" = "127.0.0.1"\n'
        )
        self.embedded = Embedded(config=str(config), pool=pool)
        self.socket = self.embedded.start()
        self.tmp = self.embedded.tmp  # removed by stop(); still there afterwards would be a leftover
        assert self.embedded.proc is not None
        self.main = psutil.Process(self.embedded.proc.pid)
        self.instance = ""

    def child(self, marker: str) -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            for proc in self.main.children():
                with contextlib.suppress(psutil.Error):
                    if marker in " ".join(proc.cmdline()):
                        return proc
        return None

    def workers(self) -> list[psutil.Process]:
        """Worker monitors: the launcher's children that have a payload (zygotes have none)."""
        launcher = self.child("cellblock-launcher")
        found = []
        with contextlib.suppress(psutil.Error):
            for proc in launcher.children() if launcher else []:
                with contextlib.suppress(psutil.Error):
                    if proc.children():
                        found.append(proc)
        return found

    def busy_workers(self) -> list[psutil.Process]:
        """Workers running a job: their payload is doing something other than waiting for one
        (an idle payload sleeps reading its job pipe, or in node's event loop)."""
        busy = []
        for worker in self.workers():
            with contextlib.suppress(psutil.Error, OSError):
                for payload in worker.children():
                    wchan = pathlib.Path(f"/proc/{payload.pid}/wchan").read_text().strip()
                    if payload.status() == psutil.STATUS_RUNNING or wchan not in IDLE_WCHANS:
                        busy.append(worker)
                        break
        return busy

    def tree(self) -> set[tuple[int, float]]:
        with contextlib.suppress(psutil.Error):
            procs = [self.main, *self.main.children(recursive=True)]
            seen = set()
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    seen.add((proc.pid, proc.create_time()))
            return seen
        return set()

    def find_instance(self) -> None:
        """The service's cgroup name, from the launcher's own cgroup (empty where it has none)."""
        launcher = self.child("cellblock-launcher")
        with contextlib.suppress(OSError, AttributeError):
            text = pathlib.Path(f"/proc/{launcher.pid}/cgroup").read_text()  # type: ignore[union-attr]
            found = re.search(r"cellblock[/-]([0-9a-f]{12})\b", text)
            self.instance = found[1] if found else ""

    def stop(self) -> None:
        pgid = self.main.pid
        self.embedded.stop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def python_ok(socket_path: str) -> bool:
    with Client(socket_path, connect_timeout=1.0) as client:
        result = client.execute("print('probe')", limits=m.Limits(timeout_ms=5000), environment="none")
    return result.status is m.Status.OK and result.stdout == "probe\n"


def net_ok(socket_path: str, port: int) -> bool:
    code = f"import urllib.request\nprint(urllib.request.urlopen('http://{NET_HOST}:{port}/', timeout=5).read())"
    caps = [m.Capability(m.CapabilityKind.NET, NET_HOST)]
    with Client(socket_path, connect_timeout=1.0) as client:
        result = client.execute(
            code, limits=m.Limits(timeout_ms=8000), capabilities=caps, client_id=NET_CLIENT, environment="none"
        )
    return result.status is m.Status.OK and "pong" in result.stdout


# --- faults ----------------------------------------------------------------------------------------

MARKERS = {"launcher": "cellblock-launcher", "egress": "supervisor.egress", "broker": "supervisor.broker"}


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the load began
    pid: int
    recovery_s: float | None = None  # None: not back within the probe's limit


class Faults(threading.Thread):
    """One SIGKILL at a time, then a probe until that part does its work again."""

    RECOVERY_LIMIT_S = 60.0

    KINDS = ("worker", "launcher", "egress", "broker")

    def __init__(self, svc: Service, port: int, started: float, stop_at: float, every: float,
                 rng: random.Random, kinds: tuple[str, ...] = KINDS) -> None:
        super().__init__(name="faults", daemon=True)
        self.svc, self.port, self.started, self.stop_at, self.every, self.rng = svc, port, started, stop_at, every, rng
        self.kinds = kinds
        self.done: list[Fault] = []
        self.kills: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def allowed(self, kind: str, now: float) -> bool:
        window, budget = (30.0, WORKER_KILLS_PER_30S) if kind == "worker" else (60.0, RESTART_BUDGET)
        recent = self.kills[kind]
        while recent and recent[0] < now - window:
            recent.popleft()
        return len(recent) < budget

    def victim(self, kind: str) -> psutil.Process | None:
        if kind == "worker":  # one running a job if one comes within 2 s (its client is owed worker_lost)
            deadline = time.monotonic() + 2.0
            while not (workers := self.svc.busy_workers()) and time.monotonic() < deadline:
                time.sleep(0.02)
            workers = workers or self.svc.workers()
            return self.rng.choice(workers) if workers else None
        return self.svc.child(MARKERS[kind])

    def recovered(self, kind: str, old_pid: int) -> bool:
        """That part does its work again: a new process, and a run that needs it. A net run
        needs both the egress proxy and the launcher (its worker is made for it, on request)."""
        if kind in MARKERS:
            proc = self.svc.child(MARKERS[kind])
            if proc is None or proc.pid == old_pid:
                return False
        if kind in ("launcher", "egress"):
            return net_ok(self.svc.socket, self.port)
        return python_ok(self.svc.socket)

    def inflict(self, kind: str) -> Fault | None:
        proc = self.victim(kind)
        if proc is None:
            return None
        killed = time.monotonic()
        with contextlib.suppress(psutil.Error):
            proc.kill()
        self.kills[kind].append(killed)
        fault = Fault(kind, round(killed - self.started, 2), proc.pid)
        while time.monotonic() < killed + self.RECOVERY_LIMIT_S:
            with contextlib.suppress(Exception):  # a probe that cannot connect yet, or is told connection_lost
                if self.recovered(kind, proc.pid):
                    fault.recovery_s = round(time.monotonic() - killed, 3)
                    break
            time.sleep(0.05)
        return fault

    def run(self) -> None:
        """Each kind in turn, in a new random order each round (so a short soak has every kind),
        at random moments; one that its budget does not allow now waits for a later round."""
        time.sleep(self.every * self.rng.uniform(0.5, 1.0))
        order: list[str] = []
        while time.monotonic() < self.stop_at:
            if not order:
                order = list(self.kinds)
                self.rng.shuffle(order)
            kind = order.pop()
            if self.allowed(kind, time.monotonic()):
                fault = self.inflict(kind)
                if fault is not None:
                    self.done.append(fault)
            time.sleep(self.every * self.rng.uniform(0.5, 1.5))


class Watch(threading.Thread):
    """Every process of the service, and the broker's memory, sampled as the soak goes."""

    def __init__(self, svc: Service) -> None:
        super().__init__(name="watch", daemon=True)
        self.svc = svc
        self.seen: set[tuple[int, float]] = set()
        self.rss: list[tuple[float, int, int]] = []  # (when, broker pid, rss)
        self.stopping = threading.Event()

    def sample(self) -> None:
        self.seen |= self.svc.tree()
        broker = self.svc.child(MARKERS["broker"])
        with contextlib.suppress(psutil.Error, AttributeError):
            self.rss.append((time.monotonic(), broker.pid, broker.memory_info().rss))  # type: ignore[union-attr]

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            self.sample()


# --- afterwards ------------------------------------------------------------------------------------


def cgroup_dirs(instance: str) -> list[str]:
    """Cgroup directories named after the service, under every hierarchy."""
    found: list[str] = []
    if not instance:
        return found
    names = {instance, f"cellblock-{instance}"}
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if top.count("/") > 9:  # deep enough for <hierarchy>/<parents>/cellblock/<instance>
            dirs.clear()
            continue
        found += [os.path.join(top, d) for d in dirs if d in names]
        dirs[:] = [d for d in dirs if d not in names]
    return found


def leftovers(svc: Service, seen: set[tuple[int, float]]) -> dict[str, list[str]]:
    """What the stopped service left on the host: each list must be empty."""
    procs = []
    for pid, created in seen:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                procs.append(f"{pid} {' '.join(proc.cmdline())[:80]}")
    uids = range(svc.uid_base, svc.uid_base + 256) if os.geteuid() == 0 else range(0)
    for proc in psutil.process_iter(["pid", "uids", "name"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if proc.info["uids"].real in uids:
                procs.append(f"{proc.pid} {proc.info['name']} (uid {proc.info['uids'].real})")
    mounts = [line for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines() if svc.tmp in line]
    files = [svc.tmp] if os.path.exists(svc.tmp) else []
    for top in ("/tmp", "/dev/shm"):
        with contextlib.suppress(OSError):
            for entry in os.scandir(top):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid in uids:
                        files.append(entry.path)
    return {"processes": sorted(set(procs)), "mounts": mounts, "cgroups": cgroup_dirs(svc.instance), "files": files}


def broker_memory(samples: list[tuple[float, int, int]]) -> dict[str, Any]:
    """RSS at start and end, and each broker's (a killed broker's successor starts afresh)."""
    by_pid: dict[int, list[tuple[float, int]]] = collections.defaultdict(list)
    for when, pid, rss in samples:
        by_pid[pid].append((when, rss))
    generations = [
        {"pid": pid, "lived_s": round(s[-1][0] - s[0][0], 1), "start_mib": round(s[0][1] / 2**20, 1),
         "end_mib": round(s[-1][1] / 2**20, 1), "max_mib": round(max(r for _, r in s) / 2**20, 1)}
        for pid, s in by_pid.items()
    ]
    return {
        "start_mib": round(samples[0][2] / 2**20, 1) if samples else None,
        "end_mib": round(samples[-1][2] / 2**20, 1) if samples else None,
        "generations": generations,
    }


def recovery(faults: list[Fault]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in [*sorted({f.kind for f in faults}), "all"]:
        times = sorted(f.recovery_s for f in faults if f.recovery_s is not None and kind in (f.kind, "all"))
        count = sum(1 for f in faults if kind in (f.kind, "all"))
        if not count:
            continue
        out[kind] = {
            "faults": count,
            "not_recovered": count - len(times),
            "p50_s": round(statistics.median(times), 3) if times else None,
            "p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3) if times else None,
            "max_s": times[-1] if times else None,
        }
    return out


# --- the soak --------------------------------------------------------------------------------------


def wait_warm(svc: Service, timeout: float = 60.0) -> m.StatusReply:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception), Client(svc.socket) as client:
            status = client.status()
            warm = {rt.name: rt.warm for rt in status.runtimes if rt.offered}
            if warm.get("python", 0) >= 1 and python_ok(svc.socket):
                return status
        if time.monotonic() > deadline:
            raise SystemExit("soak: the service did not get warm")
        time.sleep(0.2)


def load(svc: Service, args: argparse.Namespace, port: int, languages: set[str]) -> tuple[Ledger, Faults, float]:
    ledger = Ledger()
    rng = random.Random(args.seed)
    started = time.monotonic()
    stop_at = started + args.seconds
    kinds = mix(port, languages)
    per_client = max(1, args.max_requests // args.clients)
    loaders = [
        Loader(n, svc.socket, kinds, args.rate, ledger, stop_at, per_client, random.Random(rng.random()))
        for n in range(args.clients)
    ]
    garbage = Garbage(svc.socket, ledger, stop_at, random.Random(rng.random()))
    faulted = tuple(args.faults.split(","))
    faults = Faults(svc, port, started, stop_at, args.fault_every, random.Random(rng.random()), faulted)
    threads: list[threading.Thread] = [*loaders, garbage]
    if args.fault_every > 0:
        threads.append(faults)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ledger, faults, time.monotonic() - started


def left_after_stop(svc: Service, seen: set[tuple[int, float]], grace_s: float = 15.0) -> dict[str, list[str]]:
    deadline = time.monotonic() + grace_s
    while True:
        found = leftovers(svc, seen)
        if not any(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    upstream = Upstream()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cellblock-soak-"))
    os.chmod(tmp, 0o711)  # traverse only: the broker's own uid reaches its state dir
    svc = Service(tmp, args.pool, upstream.port)
    watch = Watch(svc)
    try:
        status = wait_warm(svc)
        svc.find_instance()
        languages = {rt.name for rt in status.runtimes if rt.offered} & {"python", "javascript", "bash"}
        with Client(svc.socket) as client:
            client.grant(NET_CLIENT, m.Capability(m.CapabilityKind.NET, NET_HOST))
        watch.sample()
        watch.start()
        ledger, faults, took = load(svc, args, upstream.port, languages)
        watch.stopping.set()
        watch.join()
        watch.sample()
    finally:
        svc.stop()
        upstream.close()
    left = left_after_stop(svc, watch.seen)
    shutil.rmtree(tmp, ignore_errors=True)
    return report(args, ledger, faults, watch, left, took, sorted(languages))


def report(args: argparse.Namespace, ledger: Ledger, faults: Faults, watch: Watch, left: dict[str, list[str]],
           took: float, languages: list[str]) -> dict[str, Any]:
    sent = sum(ledger.sent.values())
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "mode": "root" if os.geteuid() == 0 else "unprivileged",
        "seconds": round(took, 1),
        "clients": args.clients,
        "rate_per_client": args.rate,
        "languages": languages,
        "requests_sent": sent,
        "sent_by_kind": dict(sorted(ledger.sent.items())),
        "replies_by_status": dict(sorted(ledger.statuses.items())),
        "replies_by_kind": dict(sorted(ledger.replies.items())),
        "chunks": ledger.chunks,
        "connection_lost": ledger.connection_lost,
        "no_reply": len(ledger.no_reply),
        "duplicates": len(ledger.duplicates),
        "unknown_ids": len(ledger.unknown),
        "bad_frames": {"sent": ledger.garbage_sent, "answered": ledger.garbage_answered, "lost": ledger.garbage_lost},
        "faults": [f.__dict__ for f in faults.done],
        "recovery": recovery(faults.done),
        "broker_memory": broker_memory(watch.rss),
        "leftovers": left,
        "processes_watched": len(watch.seen),
    }


def failures(result: dict[str, Any]) -> list[str]:
    bad = [f"{key} = {result[key]}" for key in ("no_reply", "duplicates", "unknown_ids") if result[key]]
    bad += [f"left {kind}: {items[:3]}" for kind, items in result["leftovers"].items() if items]
    bad += [f"{f['kind']} killed at {f['at']} s never recovered" for f in result["faults"] if f["recovery_s"] is None]
    if result["bad_frames"]["answered"] > result["bad_frames"]["sent"]:
        bad.append("a bad frame got more than one reply")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the load lasts")
    parser.add_argument("--max-requests", type=int, default=100_000, help="at most this many requests in all")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2.0, help="requests a second, per client")
    parser.add_argument("--fault-every", type=float, default=8.0, help="seconds between faults, about (0: none)")
    parser.add_argument("--faults", default=",".join(Faults.KINDS), help="which parts to kill, in turn")
    parser.add_argument("--pool", type=int, default=4, help="warm Python workers")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    result = soak(args)
    text = json.dumps(result, indent=2)
    if args.json:
        pathlib.Path(args.json).write_text(text + "\n")
    print(text)
    bad = failures(result)
    for line in bad:
        print(f"soak: FAILED: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
