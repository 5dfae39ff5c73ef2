"""Both ends of our ZMTP against real libzmq sockets: the DEALER (monitor, sync client)
against a libzmq ROUTER, and the broker's ROUTER against libzmq DEALERs."""

from __future__ import annotations

import os
import pathlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from protocol.zmtp import Dealer, Parser, Router, ZmtpError, frame_bytes, peer_uid, routing_id


def test_interop_with_libzmq_router(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "r.sock")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvtimeo = 2000
    router.bind(f"ipc://{path}")
    try:
        dealer = Dealer.connect(path, b"worker-7")
        dealer.send([b"CB/1", b"x" * 300, b""])
        assert router.recv_multipart() == [b"worker-7", b"CB/1", b"x" * 300, b""]
        big = b"y" * 70_000
        router.send_multipart([b"worker-7", b"CB/1", big])
        got: list[list[bytes]] = []
        while not got:
            assert select.select([dealer], [], [], 2)[0]
            messages = dealer.recv_available()
            assert messages is not None
            got += messages
        assert got == [[b"CB/1", big]]
        dealer.close()
    finally:
        router.close()
        ctx.term()


def test_parser_handles_split_frames() -> None:
    scratch = Parser()
    wire = frame_bytes([b"a", b"b" * 1000]) + frame_bytes([b"c"])
    for i in range(0, len(wire), 7):
        scratch.feed(wire[i : i + 7])
    assert scratch.take() == [[b"a", b"b" * 1000], [b"c"]]


class Loop:
    """A tiny poll loop around a Router, as the broker drives it."""

    def __init__(self, path: str, **kw: object) -> None:
        self.watched: dict[int, int] = {}
        self.router = Router(path, watch=self._watch, **kw)  # type: ignore[arg-type]

    def _watch(self, fd: int, events: int) -> None:
        if events:
            self.watched[fd] = events
        else:
            self.watched.pop(fd, None)

    def pump(self, seconds: float = 0.3) -> list[tuple[bytes, list[bytes]]]:
        got: list[tuple[bytes, list[bytes]]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            poller = select.poll()
            poller.register(self.router.fileno(), select.POLLIN)
            for fd, events in self.watched.items():
                poller.register(fd, events)
            for fd, event in poller.poll(20):
                if fd == self.router.fileno():
                    self.router.accept()
                    continue
                if event & select.POLLOUT:
                    self.router.flush(fd)
                if event & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    got += self.router.receive(fd)
        return got


class Dealers:
    """libzmq DEALERs that are all closed at the end of the test."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socks: list[zmq.Socket[bytes]] = []

    def connect(self, path: str, **options: int | bytes) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvtimeo = 2000
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        sock.connect(f"ipc://{path}")
        self.socks.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def dealers() -> Iterator[Dealers]:
    made = Dealers()
    yield made
    made.close()


@pytest.fixture
def loops() -> Iterator[list[Loop]]:
    made: list[Loop] = []
    yield made
    for loop in made:
        loop.router.close_all()


def test_router_serves_libzmq_dealers(tmp_path: pathlib.Path, dealers: Dealers, loops: list[Loop]) -> None:
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1 << 20)
    loops.append(loop)
    named = dealers.connect(path, IDENTITY=b"app-1")
    anonymous = dealers.connect(path)
    named.send_multipart([b"CB/1", b"x" * 70_000])
    anonymous.send_multipart([b"CB/1", b"hello"])
    got = dict(loop.pump())
    assert got[b"app-1"] == [b"CB/1", b"x" * 70_000]
    (other,) = [ident for ident in got if ident != b"app-1"]
    assert other[:1] == b"\x00" and got[other] == [b"CB/1", b"hello"]
    big = b"y" * 3_000_000  # more than a socket buffer: goes out as the peer reads
    assert loop.router.send(b"app-1", [b"CB/1", big])
    assert loop.router.send(other, [b"CB/1", b"back"])
    assert not loop.router.send(b"nobody", [b"CB/1", b"lost"])
    loop.pump(0.2)
    assert anonymous.recv_multipart() == [b"CB/1", b"back"]
    received: list[bytes] = []
    end = time.monotonic() + 5
    while not received and time.monotonic() < end:
        loop.pump(0.05)
        if named.poll(0):
            received = named.recv_multipart()
    assert received == [b"CB/1", big]


def test_router_drops_a_peer_over_the_frame_cap(tmp_path: pathlib.Path, dealers: Dealers, loops: list[Loop]) -> None:
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1000)
    loops.append(loop)
    bad = dealers.connect(path)
    good = dealers.connect(path)
    bad.send_multipart([b"CB/1", b"z" * 1001])
    good.send_multipart([b"CB/1", b"ok"])
    got = loop.pump()
    assert [frames for _, frames in got] == [[b"CB/1", b"ok"]]
    assert loop.router.dropped >= 1


def _connect_while_pumping(loop: Loop, path: str, identity: bytes) -> Dealer | Exception:
    """Dealer.connect blocks on the handshake: drive the router meanwhile."""
    outcome: list[Dealer | Exception] = []

    def connect() -> None:
        try:
            outcome.append(Dealer.connect(path, identity, timeout=1.0))
        except (OSError, ZmtpError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    while thread.is_alive():
        loop.pump(0.05)
    thread.join()
    return outcome[0]


def test_router_refuses_garbage_and_a_taken_identity(tmp_path: pathlib.Path, loops: list[Loop]) -> None:
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1000)
    loops.append(loop)
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(path)
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
        loop.pump(0.1)
        received = b""
        while chunk := raw.recv(1024):
            received += chunk
        assert received[:1] == b"\xff"  # our greeting went out, then the connection ended
    first = _connect_while_pumping(loop, path, b"w-1")
    assert isinstance(first, Dealer)
    second = _connect_while_pumping(loop, path, b"w-1")  # taken: the router ends it after READY
    if isinstance(second, Dealer):
        loop.pump(0.1)
        assert second.recv_available() is None
        second.close()
    assert loop.router.dropped == 2
    first.send([b"still", b"here"])
    assert loop.pump() == [(b"w-1", [b"still", b"here"])]
    first.close()


def test_router_by_uid_routes_by_the_kernels_uid_and_the_named_identity(
    tmp_path: pathlib.Path, loops: list[Loop]
) -> None:
    """The client socket's router: a connection's routing id is the uid SO_PEERCRED gave
    at accept, then the identity it named (or a random one); replies go by it."""
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1000, by_uid=True)
    loops.append(loop)
    named = _connect_while_pumping(loop, path, b"app")
    anonymous = _connect_while_pumping(loop, path, b"")
    assert isinstance(named, Dealer) and isinstance(anonymous, Dealer)
    named.send([b"hello"])
    anonymous.send([b"hi"])
    got = dict(loop.pump())
    assert got[routing_id(os.getuid(), b"app")] == [b"hello"]
    (other,) = set(got) - {routing_id(os.getuid(), b"app")}
    assert peer_uid(other) == os.getuid() and other[4:5] == b"\x00"  # random: the reserved first byte
    assert loop.router.send(routing_id(os.getuid(), b"app"), [b"back"])
    assert not loop.router.send(b"app", [b"x"])  # the bare name routes nowhere
    loop.pump(0.1)
    assert named.recv_available() == [[b"back"]]
    named.close()
    anonymous.close()


def test_router_answers_heartbeats(tmp_path: pathlib.Path, dealers: Dealers, loops: list[Loop]) -> None:
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1000)
    loops.append(loop)
    sock = dealers.ctx.socket(zmq.DEALER)
    sock.linger = 0
    # A PING every 0.1 s, and no answer for 1 s ends the connection: a second
    # of room for a busy scheduler, and three such timeouts in the pump.
    sock.setsockopt(zmq.HEARTBEAT_IVL, 100)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1000)
    dealers.socks.append(sock)
    sock.sndtimeo = 1000
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(f"ipc://{path}")
        loop.pump(3.0)  # 30 heartbeats: unanswered, libzmq would have dropped the connection
        assert not monitor.poll(0)
        sock.send_multipart([b"alive"])
        assert [frames for _, frames in loop.pump()] == [[b"alive"]]
    finally:  # an open monitor socket would hold the context's term() forever
        sock.disable_monitor()
        monitor.close(linger=0)


def test_router_ends_stalled_handshakes_and_caps_connections(tmp_path: pathlib.Path, loops: list[Loop]) -> None:
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1000, max_peers=2, idle_s=0.2)
    loops.append(loop)
    socks = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    try:
        for sock in socks:
            sock.connect(path)
        loop.pump(0.1)
        assert len(loop.router.by_fd) == 2 and loop.router.refused == 1  # the third was closed at once
        time.sleep(0.25)
        loop.router.sweep()  # the two never sent a greeting
        assert loop.router.by_fd == {} and loop.router.dropped == 2
        for sock in socks:
            sock.settimeout(1)
            received = b""
            while chunk := sock.recv(1024):
                received += chunk
    finally:
        for sock in socks:
            sock.close()


def _handshaken(path: str) -> socket.socket:
    """A raw connection that has done a DEALER's handshake and then never reads."""
    from protocol.zmtp import _COMMAND, _GREETING, _frame, _property

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.setblocking(False)
    sock.sendall(_GREETING + _frame(_COMMAND, b"\x05READY" + _property(b"Socket-Type", b"DEALER")))
    return sock


def test_router_bounds_a_client_that_floods_and_never_reads(tmp_path: pathlib.Path, loops: list[Loop]) -> None:
    from protocol.zmtp import _COMMAND, _frame

    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1 << 16, max_outbox=1 << 20, pause_outbox=1 << 18)
    loops.append(loop)
    sock = _handshaken(path)
    try:
        loop.pump(0.1)
        # PINGs with oversized contexts, then a flood of tiny messages, each answered
        ping = _frame(_COMMAND, b"\x04PING" + b"\x00\x01" + b"c" * 1000)
        flood = ping * 2000 + b"\x00\x00" * 200_000
        sent = 0
        got = 0
        (peer,) = loop.router.by_fd.values()
        # Until the router stops reading it (its replies piled up past
        # pause_outbox), however long a busy machine takes to get there.
        end = time.monotonic() + 60
        while peer.events & select.POLLIN and time.monotonic() < end and sent < len(flood):
            try:
                sent += sock.send(flood[sent : sent + 65536])
            except BlockingIOError:
                pass
            for ident, _ in loop.pump(0.01):
                got += 1
                loop.router.send(ident, [b"reply-" + b"r" * 100])
        assert got > 1000  # it was served until its replies piled up
        for ident, _ in loop.pump(0.5):  # what it had sent before the pause
            loop.router.send(ident, [b"reply-" + b"r" * 100])
        assert list(loop.router.by_fd.values()) == [peer]
        assert len(peer.outbox) <= (1 << 20) + 4096  # capped, though the client never reads
        assert not peer.events & select.POLLIN  # and it is no longer read until it does
    finally:
        sock.close()


def test_router_takes_a_bounded_batch_and_comes_back_for_the_rest(tmp_path: pathlib.Path, loops: list[Loop]) -> None:
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1000)
    loops.append(loop)
    sock = _handshaken(path)
    try:
        loop.pump(0.1)
        sock.setblocking(True)
        sock.sendall(b"\x00\x01x" * (Router.BATCH * 3))
        time.sleep(0.1)
        (fd,) = loop.router.by_fd
        first = loop.router.receive(fd)
        assert len(first) == Router.BATCH and fd in loop.router.backlog
        rest = loop.router.receive(fd) + loop.router.receive(fd)
        assert len(rest) == 2 * Router.BATCH and fd not in loop.router.backlog
    finally:
        sock.close()


def test_router_takes_nothing_from_a_paused_peer_until_it_reads(tmp_path: pathlib.Path, loops: list[Loop]) -> None:
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1000, pause_outbox=1000)
    loops.append(loop)
    sock = _handshaken(path)
    try:
        loop.pump(0.1)
        (fd,) = loop.router.by_fd
        sock.setblocking(True)
        sock.sendall(b"\x00\x01a")
        (ident, _), *_ = loop.pump(0.1)
        assert loop.router.send(ident, [b"z" * 400_000])  # more than the socket takes: queued, paused
        sock.sendall(b"\x00\x01b" * 10)
        assert loop.pump(0.2) == [] and fd not in loop.router.backlog  # not read, and no busy loop
        received, taken = 0, []
        while received < 400_000:  # the client reads its reply; the router takes its messages again
            received += len(sock.recv(1 << 16))
            taken += loop.pump(0.01)
        taken += loop.pump(0.2)
        assert [frames for _, frames in taken] == [[b"b"]] * 10
    finally:
        sock.close()


def _feed(loop: Loop, sock: socket.socket, data: bytes) -> tuple[bool, list[list[bytes]]]:
    """Send ``data`` while the loop reads it: whether it all went before the
    router closed the connection, and the messages the loop took meanwhile."""
    sock.setblocking(False)
    sent, got = 0, []
    end = time.monotonic() + 5
    while sent < len(data) and time.monotonic() < end:
        try:
            sent += sock.send(data[sent : sent + 65536])
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            break
        got += [frames for _, frames in loop.pump(0.01)]
    got += [frames for _, frames in loop.pump(0.1)]
    return sent == len(data), got


def test_router_bounds_what_all_unfinished_messages_hold(tmp_path: pathlib.Path, loops: list[Loop]) -> None:
    # Each peer sends most of a large frame and stops: one may, but not so many
    # that together they hold more than max_held. Whole messages still pass.
    path = str(tmp_path / "r.sock")
    loop = Loop(path, max_frame=1 << 20, max_held=1 << 20)
    loops.append(loop)
    first, second, small = _handshaken(path), _handshaken(path), _handshaken(path)
    try:
        loop.pump(0.1)
        header = b"\x02" + (900_000).to_bytes(8, "big")  # a long frame, last of its message
        assert _feed(loop, first, header + b"p" * 600_000) == (True, [])
        _feed(loop, second, header + b"p" * 600_000)
        held = sorted(len(peer.inbox) for peer in loop.router.by_fd.values())
        assert held == [0, 600_009], held  # the second went over the budget and was dropped
        assert loop.router.dropped == 1
        assert _feed(loop, small, b"\x00\x02ok") == (True, [[b"ok"]])
        # The first may still finish its message.
        assert _feed(loop, first, b"p" * 300_000) == (True, [[b"p" * 900_000]])
        assert loop.router.dropped == 1
    finally:
        for sock in (first, second, small):
            sock.close()
