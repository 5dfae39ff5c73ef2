"""The gateway: the service's TCP listener, CURVE only, relaying to the broker's client socket.

    remote client --TCP, CURVE (libzmq)--> gateway ROUTER
        ZAP handler (this loop): the client's key in authorized_keys? else refused, counted
    gateway DEALER per client connection --ipc, client.sock--> broker ROUTER
        routing id "curve:<name>/<suffix>": the broker keys the request by it (policy/principal.py)

All cryptography is libzmq's. The ZAP handler is a REP socket on
``inproc://zeromq.zap.01`` in this same single-threaded loop: libzmq's I/O
thread asks it about every CURVE handshake, and a key it refuses never gets
a message through, so neither this process nor the broker decodes a byte of
an unauthorized client. Handshakes that fail before ZAP (a client without
CURVE, one using another server key) are counted from the socket monitor.

The gateway reads no request: it passes each client message, as its frames,
to that client's own DEALER, and each reply back. It peeks at a reply's tag
(``protocol.wire.peek``) only to know when a request has had its final reply,
so a relay is closed only once nothing is owed through it. Where it must
answer itself (the broker's side is full; the key was removed from
authorized_keys since the handshake), the reply is an ``ErrorReply`` under
the request's own id.

``authorized_keys`` is read again on SIGHUP (supervisor main forwards its
own) and when the file changes (checked each second); a file that no longer
parses keeps the keys in force and says why in status. Status goes to
``<rundir>/gateway.status`` (a ``GatewayStatus``), which the broker reads.

Signals: SIGTERM/SIGINT stop it (main sends it after the broker has
drained, so every reply of the drain went out first); EOF on main's lifeline:
it goes on relaying until nothing is owed or ``drain_s`` passes.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field

import msgspec
import prctl
import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from protocol import messages as m
from protocol.curve import KeyProblem, read_authorized
from protocol.errors import ErrorCode, ErrorInfo
from protocol.wire import MAX_CLIENT_FRAME, client_codec, peek
from supervisor.config import GATEWAY_STATUS_FILE as STATUS_FILE
from supervisor.identity import drop_privileges
from supervisor.log import logger
from supervisor.policy.principal import routing_id
from supervisor.signals import SignalQueue, drain_wakeup

_log = logger("gateway")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
RELAY_HWM = 64  # messages queued towards the broker per client before the gateway answers "overloaded"
IDLE_CLOSE_S = 60.0  # a relay with nothing owed and no traffic this long is closed
STALE_CLOSE_S = 3600.0  # and one with traffic owed but none for this long (a broker that restarted)
MAX_PARTS = 8  # as the broker's ROUTER takes


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True):
    rundir: str
    listen: list[str]
    public_key: bytes  # Z85, this node's
    secret_key: bytes
    authorized_keys: str  # path
    max_peers: int = 256
    heartbeat_s: float = 2.0
    drop_to: int = -1
    supervisor_fd: int = -1
    drain_s: float = 90.0


@dataclass
class Relay:
    """One remote client connection, and its own connection to the broker."""

    routing: bytes  # its routing id on the gateway's ROUTER
    key: bytes  # its CURVE public key (Z85)
    client_id: str
    dealer: zmq.Socket  # type: ignore[type-arg]
    fd: int = -1  # its TCP connection's descriptor (for the monitor's disconnect event)
    owed: int = 0  # requests passed on that have not had their final reply
    last: float = field(default_factory=time.monotonic)


class Gateway:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.codec = client_codec()
        self.signals = SignalQueue(self)
        self.keys: dict[bytes, str] = {}
        self.keys_stamp: tuple[int, int, int] | None = None
        self.keys_loaded = 0.0
        self.keys_error = ""
        self.relays: dict[bytes, Relay] = {}
        self.by_dealer: dict[zmq.Socket, Relay] = {}  # type: ignore[type-arg]
        self.live_fds: set[int] = set()
        self.counters: dict[str, int] = {}
        self.stopping = False
        self.stop_by = 0.0
        self.status_due = 0.0

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- authorized keys ----------------------------------------------------------------

    def load_keys(self, force: bool = False) -> None:
        """Read authorized_keys again when it changed (or ``force``); a bad file keeps the old keys."""
        try:
            st = os.stat(self.cfg.authorized_keys)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError as exc:
            stamp = None
            self.keys_error = f"{self.cfg.authorized_keys}: {exc.strerror}; the keys read before stay in force"
        if stamp is None or (stamp == self.keys_stamp and not force):
            return
        self.keys_stamp = stamp
        try:
            keys = read_authorized(self.cfg.authorized_keys)
        except KeyProblem as exc:
            self.keys_error = f"{exc}; the keys read before stay in force"
            _log(self.keys_error)
            return
        removed = len(set(self.keys) - set(keys))
        self.keys, self.keys_error, self.keys_loaded = keys, "", time.time()
        _log(f"{len(keys)} authorized keys ({removed} removed)")
        self.status_due = 0.0

    def handle_sighup(self) -> None:
        self.load_keys(force=True)

    # --- sockets ------------------------------------------------------------------------

    def bind(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 16 + 4 * self.cfg.max_peers
        if soft < want:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(hard, want), hard)
            )
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.max_sockets = 64 + 2 * self.cfg.max_peers
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.linger = 0
        self.zap.bind(ZAP_ENDPOINT)  # before the listener: no handshake may come before its judge
        router = self.ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.curve_server = True
        router.curve_publickey = self.cfg.public_key
        router.curve_secretkey = self.cfg.secret_key
        router.zap_domain = b"cellblock"
        router.maxmsgsize = MAX_CLIENT_FRAME
        router.router_mandatory = 1  # a reply to a client that left raises, and its relay is closed
        router.sndhwm = router.rcvhwm = RELAY_HWM
        router.handshake_ivl = 10_000
        beat = int(self.cfg.heartbeat_s * 1000)
        router.heartbeat_ivl, router.heartbeat_timeout, router.heartbeat_ttl = beat, 3 * beat, 3 * beat
        self.monitor = router.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_DISCONNECTED
        )
        for endpoint in self.cfg.listen:
            router.bind(endpoint)
        self.router = router
        self.poller = zmq.Poller()
        for sock in (self.zap, self.router, self.monitor):
            self.poller.register(sock, zmq.POLLIN)

    # --- the handshake's judge ----------------------------------------------------------

    def on_zap(self) -> None:
        request = self.zap.recv_multipart()
        request_id = request[1] if len(request) > 1 else b""
        status, text, user = b"400", b"refused", b""
        if len(request) >= 7 and request[5] == b"CURVE" and len(request[6]) == 32:
            key = z85.encode(request[6])
            if key not in self.keys:
                self.count("refused_unknown_key")
                text = b"key not authorized"
            elif len(self.live_fds) >= self.cfg.max_peers:
                self.count("refused_full")
                text = b"too many connections"
            else:
                status, text, user = b"200", b"OK", key
        else:
            self.count("refused_handshake")
        self.zap.send_multipart([b"1.0", request_id, status, text, user, b""])
        self.status_due = 0.0

    def on_monitor(self) -> None:
        event = parse_monitor_message(self.monitor.recv_multipart())
        kind, fd = event["event"], event["value"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.live_fds.add(fd)
        elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            self.count("refused_handshake")
        elif kind == zmq.EVENT_DISCONNECTED and fd in self.live_fds:
            self.live_fds.discard(fd)
            for relay in [r for r in self.relays.values() if r.fd == fd and not r.owed]:
                self.close_relay(relay)  # a request still owed keeps it: its reply finds the client gone
        self.status_due = 0.0

    # --- relaying -------------------------------------------------------------------------

    def answer(self, routing: bytes, frames: list[bytes], code: ErrorCode, message: str) -> None:
        """An error in the broker's stead, under the request's own id."""
        _, request_id = peek(frames)
        reply = m.ErrorReply(id=request_id, error=ErrorInfo(code=code, message=message))
        try:
            self.router.send_multipart([routing, *self.codec.encode(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            self.count("replies_undeliverable")

    def relay_for(self, routing: bytes, key: bytes, fd: int) -> Relay:
        relay = self.relays.get(routing)
        if relay is not None:
            return relay
        client_id = self.keys[key]
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.sndhwm = dealer.rcvhwm = RELAY_HWM
        dealer.identity = routing_id(client_id, routing)
        dealer.connect(f"ipc://{os.path.join(self.cfg.rundir, 'client.sock')}")
        relay = Relay(routing, key, client_id, dealer, fd)
        self.relays[routing] = relay
        self.by_dealer[dealer] = relay
        self.poller.register(dealer, zmq.POLLIN)
        return relay

    def close_relay(self, relay: Relay) -> None:
        self.relays.pop(relay.routing, None)
        self.by_dealer.pop(relay.dealer, None)
        self.poller.unregister(relay.dealer)
        relay.dealer.close(linger=0)

    def on_client(self) -> None:
        parts = self.router.recv_multipart(copy=False)
        routing, frames = parts[0].bytes, [p.bytes for p in parts[1:]]
        key = str(parts[-1].get("User-Id") or "").encode("ascii", "replace")
        if key not in self.keys:  # removed from authorized_keys since its handshake
            self.count("refused_revoked")
            self.answer(routing, frames, ErrorCode.PERMISSION_REQUIRED, "this client's key is no longer authorized")
            return
        if not 1 <= len(frames) <= MAX_PARTS:
            self.count("bad_frames")
            self.answer(routing, [], ErrorCode.BAD_FRAME, f"expected 2 frames (version, body), got {len(frames)}")
            return
        relay = self.relay_for(routing, key, parts[-1].get(zmq.SRCFD))
        try:
            relay.dealer.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.count("overloaded")
            self.answer(
                routing, frames, ErrorCode.OVERLOADED, "this node's gateway has too much waiting for its broker"
            )
            return
        relay.owed += 1
        relay.last = time.monotonic()
        self.count("requests")

    def on_broker(self, dealer: zmq.Socket) -> None:  # type: ignore[type-arg]
        relay = self.by_dealer[dealer]
        frames = dealer.recv_multipart()
        relay.last = time.monotonic()
        if peek(frames)[0] != "chunk":
            relay.owed = max(0, relay.owed - 1)
        try:
            self.router.send_multipart([relay.routing, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.count("replies_undeliverable")
            if exc.errno == zmq.EHOSTUNREACH:  # the client has left: nothing it is owed can reach it
                self.close_relay(relay)

    # --- status and the loop ---------------------------------------------------------------

    def sweep(self, now: float) -> None:
        for relay in list(self.relays.values()):
            idle = now - relay.last
            if (idle > IDLE_CLOSE_S and not relay.owed) or idle > STALE_CLOSE_S:
                self.close_relay(relay)
        self.load_keys()

    def status(self) -> m.GatewayStatus:
        peers: dict[str, int] = {}
        for relay in self.relays.values():
            peers[relay.client_id] = peers.get(relay.client_id, 0) + 1
        counters = dict(self.counters)
        return m.GatewayStatus(
            listen=list(self.cfg.listen),
            pid=os.getpid(),
            updated=time.time(),
            server_key=self.cfg.public_key.decode("ascii"),
            authorized_keys=len(self.keys),
            keys_loaded=self.keys_loaded,
            keys_error=self.keys_error,
            connections=len(self.live_fds),
            peers=[m.GatewayPeer(client_id=k, relays=v) for k, v in sorted(peers.items())],
            refused_unknown_key=counters.pop("refused_unknown_key", 0),
            refused_handshake=counters.pop("refused_handshake", 0),
            refused_full=counters.pop("refused_full", 0),
            counters=counters,
        )

    def write_status(self) -> None:
        path = os.path.join(self.cfg.rundir, STATUS_FILE)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as out:
            out.write(msgspec.msgpack.encode(self.status()))
        os.replace(tmp, path)

    def handle_sigterm(self) -> None:
        self.stopping = True
        self.stop_by = time.monotonic()

    handle_sigint = handle_sigterm

    def run(self) -> int:
        wake_r = self.signals.install((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        self.poller.register(wake_r, zmq.POLLIN)
        if self.cfg.supervisor_fd >= 0:
            self.poller.register(self.cfg.supervisor_fd, zmq.POLLIN)
        _log(f"listening on {', '.join(self.cfg.listen)} (CURVE), {len(self.keys)} authorized keys")
        next_sweep = 0.0
        while True:
            for sock, _ in self.poller.poll(250):
                if sock is self.zap:
                    self.on_zap()
                elif sock is self.monitor:
                    self.on_monitor()
                elif sock is self.router:
                    self.on_client()
                elif sock == wake_r:
                    drain_wakeup(wake_r)
                elif sock == self.cfg.supervisor_fd:
                    self.poller.unregister(self.cfg.supervisor_fd)
                    _log("supervisor main is gone; relaying what is owed, then stopping")
                    self.stopping, self.stop_by = True, time.monotonic() + self.cfg.drain_s + 5
                else:
                    self.on_broker(sock)
            self.signals.dispatch()
            now = time.monotonic()
            if now >= next_sweep or now >= self.status_due:
                if now >= next_sweep:
                    self.sweep(now)
                    next_sweep = now + 1.0
                self.write_status()
                self.status_due = now + 1.0
            if self.stopping and (now >= self.stop_by or not any(r.owed for r in self.relays.values())):
                return 0

    def close(self) -> None:
        for relay in list(self.relays.values()):
            self.close_relay(relay)
        self.router.close(linger=0)
        self.monitor.close(linger=0)
        self.zap.close(linger=0)
        self.ctx.term()
        try:
            os.unlink(os.path.join(self.cfg.rundir, STATUS_FILE))
        except OSError:
            pass


def main() -> int:
    with os.fdopen(int(sys.argv[1]), "rb") as src:
        cfg = msgspec.msgpack.decode(src.read(), type=GatewayConfig)
    gateway = Gateway(cfg)
    gateway.load_keys(force=True)  # as root, before the drop: supervisor main checked it reads
    if cfg.drop_to >= 0:
        drop_privileges(cfg.drop_to)  # before libzmq's thread exists: no thread keeps root
    prctl.set_dumpable(0)  # it holds the node's secret key: no ptrace from the broker's uid
    gateway.bind()
    try:
        return gateway.run()
    finally:
        gateway.close()


if __name__ == "__main__":
    sys.exit(main())
