"""ZMTP 3.0 (RFC 23), NULL mechanism, on plain unix sockets: both ends of workers.sock.

``Dealer`` is the worker monitor's end. Why not pyzmq there: a libzmq
context starts I/O threads, and the monitor must be single-threaded while it
drops privileges (capabilities, the bounding set, no_new_privs and seccomp
are per-thread), must not leave a send queued in a background thread when it
exits, and is created several hundred times a second.

``Router`` is the broker's end: a non-blocking listening socket driven by the
broker's own poll loop. With libzmq, every message between the broker and a
worker crossed the broker's I/O thread: two more thread wakeups per hop, each
~50-80 us on a 2-vCPU VM whose idle CPUs halt. Here the broker's loop reads
and writes the worker's socket itself.

Both ends speak the real wire format: each is tested against libzmq
(tests/unit/test_zmtp.py).
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_MORE = 0x01
_LONG = 0x02
_COMMAND = 0x04
_NOSIGNAL = socket.MSG_NOSIGNAL  # a closed peer is an error to handle, never SIGPIPE in a host app
POLLIN = select.POLLIN
POLLOUT = select.POLLOUT


class ZmtpError(Exception):
    pass


_PEERCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_UID = struct.Struct(">I")


def routing_id(uid: int, identity: bytes) -> bytes:
    """A connection's routing id on a ``Router`` made ``by_uid``: its peer's uid, then the identity it named."""
    return _UID.pack(uid) + identity


def peer_uid(routing: bytes) -> int | None:
    """The uid the kernel gave for the peer behind a ``by_uid`` routing id (None: not one)."""
    return _UID.unpack_from(routing)[0] if len(routing) > _UID.size else None


def named_part(routing: bytes) -> bytes:
    """What the peer named itself, from a ``by_uid`` routing id."""
    return routing[_UID.size :]


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _frame(flags: int, body: bytes) -> bytes:
    if len(body) > 255:
        return bytes([flags | _LONG]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _header(buf: bytearray, at: int = 0) -> tuple[int, int, int] | None:
    """(flags, where the body starts, its size) of the frame at ``at``, once its header is in."""
    if len(buf) < at + 2:
        return None
    flags = buf[at]
    if not flags & _LONG:
        return flags, at + 2, buf[at + 1]
    if len(buf) < at + 9:
        return None
    return flags, at + 9, struct.unpack_from(">Q", buf, at + 1)[0]


def frame_bytes(frames: list[bytes]) -> bytes:
    """One multipart message as ZMTP frames on the wire."""
    last = len(frames) - 1
    return b"".join(_frame(0 if i == last else _MORE, f) for i, f in enumerate(frames))


class Parser:
    """Turns received ZMTP bytes into messages (commands answered by ``command``)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def command(self, body: bytes) -> None:
        """A ZMTP command arrived (none is expected from a ROUTER without heartbeats)."""

    def take(self) -> list[list[bytes]]:
        """Whole messages from what was fed so far."""
        messages = []
        buf = self._buffer
        while True:
            header = _header(buf)
            if header is None:
                break
            flags, start, size = header
            if len(buf) < start + size:
                break
            body = bytes(buf[start : start + size])
            del buf[: start + size]
            if flags & _COMMAND:
                self.command(body)
                continue
            self._parts.append(body)
            if not flags & _MORE:
                messages.append(self._parts)
                self._parts = []
        return messages


class Dealer(Parser):
    """Blocking DEALER end of one ZMTP connection to a ROUTER."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        # One receive buffer for the connection's life: a fresh large buffer per
        # read is an mmap and page faults each time (the monitor lives for one
        # job). An anonymous mapping: only the pages a read fills are ever made.
        self._scratch = mmap.mmap(-1, 1 << 16)
        self._view = memoryview(self._scratch)

    @classmethod
    def connect(cls, path: str, identity: bytes, timeout: float = 5.0) -> Dealer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            return cls.over(sock, identity, timeout)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def over(cls, sock: socket.socket, identity: bytes, timeout: float = 5.0) -> Dealer:
        """ZMTP handshake on an already connected unix socket."""
        sock.settimeout(timeout)
        dealer = cls(sock)
        dealer._handshake(identity)
        sock.settimeout(None)
        return dealer

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def _read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ZmtpError("connection closed during handshake")
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _handshake(self, identity: bytes) -> None:
        self._sock.sendall(_GREETING, _NOSIGNAL)
        greeting = self._read_exact(64)
        if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3:
            raise ZmtpError("peer is not a ZMTP 3 endpoint")
        if greeting[12:32].rstrip(b"\x00") != b"NULL":
            raise ZmtpError("peer wants a security mechanism other than NULL")
        ready = b"\x05READY" + _property(b"Socket-Type", b"DEALER") + _property(b"Identity", identity)
        self._sock.sendall(_frame(_COMMAND, ready), _NOSIGNAL)
        flags = self._read_exact(1)[0]
        size = struct.unpack(">Q", self._read_exact(8))[0] if flags & _LONG else self._read_exact(1)[0]
        body = self._read_exact(size)
        if not flags & _COMMAND or not body.startswith(b"\x05READY"):
            raise ZmtpError("peer did not answer READY")

    def send(self, frames: list[bytes], timeout: float | None = None) -> None:
        """Send one message; with ``timeout``, raise TimeoutError if the peer
        does not take it in time (the connection is then unusable)."""
        if timeout is None:
            self._sock.sendall(frame_bytes(frames), _NOSIGNAL)
            return
        self._sock.settimeout(max(timeout, 0.001))
        try:
            self._sock.sendall(frame_bytes(frames), _NOSIGNAL)
        finally:
            self._sock.settimeout(None)

    def command(self, body: bytes) -> None:
        if body.startswith(b"\x04PING"):
            # PING: ttl(2) + context; answer PONG with the same context.
            self._sock.sendall(_frame(_COMMAND, b"\x04PONG" + body[7:]), _NOSIGNAL)

    def recv_available(self) -> list[list[bytes]] | None:
        """Read what the socket has now; return whole messages, None on EOF."""
        try:
            count = self._sock.recv_into(self._scratch, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return self.take()  # bytes that came with the handshake, if any
        if not count:
            return None
        self._buffer += self._view[:count]
        return self.take()


def _properties(body: bytes) -> dict[bytes, bytes]:
    """The metadata of a READY command (after its name)."""
    props = {}
    at = 0
    while at < len(body):
        size = body[at]
        name = body[at + 1 : at + 1 + size]
        at += 1 + size
        if at + 4 > len(body):
            raise ZmtpError("truncated READY property")
        (length,) = struct.unpack_from(">I", body, at)
        at += 4
        if at + length > len(body):
            raise ZmtpError("truncated READY property")
        props[name.lower()] = body[at : at + length]
        at += length
    return props


@dataclass(eq=False)
class Peer:
    sock: socket.socket
    fd: int
    identity: bytes = b""
    uid: int = -1  # SO_PEERCRED at accept (``by_uid`` routers only)
    greeted: bool = False  # the peer's 64-byte greeting was read
    ready: bool = False  # its READY command was read
    inbox: bytearray = field(default_factory=bytearray)
    parts: list[bytes] = field(default_factory=list)
    held: int = 0  # bytes in ``parts``
    outbox: bytearray = field(default_factory=bytearray)
    events: int = 0  # what the owner's loop watches it for
    opened: float = 0.0  # monotonic; the handshake must end in time
    partial_since: float = 0.0  # monotonic; a message begun must end in time (0: none begun)


class Router:
    """The ROUTER end of many ZMTP connections, on a non-blocking listening socket.

    The owner's poll loop watches ``fileno()`` (new connections: ``accept``)
    and each connection's descriptor, which ``watch(fd, events)`` announces:
    ``POLLIN`` while it may send, ``POLLOUT`` while output waits, ``0`` just
    before it closes. Readable: ``receive``; writable: ``flush``; and while
    ``backlog`` is not empty, ``receive`` those descriptors again without
    waiting (bytes already read may hold more messages).

    Limits, each ending only the offending connection: a frame over
    ``max_frame`` or a message of more than ``max_parts`` frames (libzmq's
    MAXMSGSIZE does the same); a broken handshake, or one not finished within
    ``idle_s``, or a message begun and not finished within it (``sweep``);
    past ``max_peers`` connections a new one is closed at once; a connection
    holding more than ``SHARE`` bytes of an unfinished message while all of
    them together hold more than ``max_held`` (so many peers each sending
    most of a large frame cannot make the owner hold peers x ``max_frame``:
    at most ``max_held`` plus ``SHARE`` per peer). Output: past
    ``max_outbox`` bytes queued to a peer, ``send`` drops the message and says
    so (libzmq's high-water mark), and past ``pause_outbox`` the peer is not
    read until it takes its replies, so a client that never reads cannot make
    the broker queue without bound. A peer names itself with the READY
    ``Identity`` property, or gets a random one; a second live peer claiming
    a taken identity is refused.

    With ``by_uid`` (the broker's client socket) a connection's routing id is
    :func:`routing_id` of the uid the kernel reports for its peer
    (SO_PEERCRED, read at accept: the peer cannot choose it) and the identity
    it named. So the owner knows which uid sent each message (:func:`peer_uid`),
    and a reply can only reach a connection of the uid that sent the request:
    another uid naming the same identity gets a routing id of its own.
    """

    BATCH = 256  # messages taken from one connection per call
    ACCEPTS = 64  # connections accepted per call
    SHARE = 1 << 16  # unfinished bytes a connection may hold without a look at the total

    def __init__(
        self,
        path: str,
        *,
        max_frame: int,
        watch: Callable[[int, int], None],
        max_parts: int = 8,
        socket_types: tuple[bytes, ...] = (b"DEALER",),
        max_outbox: int = 64 << 20,
        pause_outbox: int = 8 << 20,
        max_peers: int = 512,
        idle_s: float = 30.0,
        max_held: int = 128 << 20,
        by_uid: bool = False,
    ) -> None:
        self.by_uid = by_uid
        self.max_frame = max_frame
        self.max_held = max_held
        self.max_parts = max_parts
        self.max_outbox = max_outbox
        self.pause_outbox = pause_outbox
        self.max_peers = max_peers
        self.idle_s = idle_s
        self.socket_types = socket_types
        self.watch = watch
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.listener.bind(path)
        self.listener.listen(1024)
        self.by_fd: dict[int, Peer] = {}
        self.by_id: dict[bytes, Peer] = {}
        self.backlog: set[int] = set()  # peers with whole messages still unparsed in their inbox
        self.dropped = 0  # connections ended for a protocol error, a timeout or the held-bytes budget
        self.disconnects = 0  # connections the peer closed
        self.refused = 0  # connections over ``max_peers``, closed at once
        self._scratch = bytearray(1 << 18)
        self._view = memoryview(self._scratch)

    def fileno(self) -> int:
        return self.listener.fileno()

    def accept(self) -> None:
        for _ in range(self.ACCEPTS):  # bounded: a connect flood must not hold the loop
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # retried on the next readable poll
                raise
            if len(self.by_fd) >= self.max_peers:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            peer = Peer(sock, sock.fileno(), opened=time.monotonic())
            if self.by_uid:
                try:
                    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                except OSError:
                    self.dropped += 1
                    sock.close()
                    continue
                peer.uid = _PEERCRED.unpack(creds)[1]
            self.by_fd[peer.fd] = peer
            ready = b"\x05READY" + _property(b"Socket-Type", b"ROUTER")
            peer.outbox += _GREETING + _frame(_COMMAND, ready)
            self._flush(peer)

    def receive(self, fd: int) -> list[tuple[bytes, list[bytes]]]:
        """Whole messages from one connection (at most ``BATCH``), each with its sender's identity."""
        self.backlog.discard(fd)  # back on it when un-paused (``_flush``) or when a batch fills
        peer = self.by_fd.get(fd)
        if peer is None or not peer.events & POLLIN:
            return []  # paused: nothing it sent is taken until it reads its replies
        messages: list[tuple[bytes, list[bytes]]] = []
        reads = 0
        while not self._take(peer, messages):
            if reads == 16 or not peer.events & POLLIN:
                break  # bounded (one busy peer must not starve the loop), or paused
            reads += 1
            try:
                count = peer.sock.recv_into(self._scratch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(peer)
                break
            if not count:
                self.disconnects += 1
                self.close(peer)
                break
            peer.inbox += self._view[:count]
            if len(peer.inbox) + peer.held > self.SHARE and self._held() > self.max_held:
                self.dropped += 1
                self.close(peer)
                break
        return messages

    def _held(self) -> int:
        """Bytes of unfinished messages held for every connection."""
        return sum(len(peer.inbox) + peer.held for peer in self.by_fd.values())

    def _take(self, peer: Peer, messages: list[tuple[bytes, list[bytes]]]) -> bool:
        """Parse what ``peer`` sent; True when the loop should stop reading it now."""
        if peer.fd not in self.by_fd:
            return True
        try:
            self._parse(peer, messages)
        except ZmtpError:
            self.dropped += 1
            self.close(peer)
            return True
        if peer.fd not in self.by_fd:
            return True  # closed while answering it (a failed write)
        if len(messages) >= self.BATCH:
            if peer.inbox:
                self.backlog.add(peer.fd)
            return True
        return False

    def _parse(self, peer: Peer, messages: list[tuple[bytes, list[bytes]]]) -> None:
        buf = peer.inbox
        if not peer.greeted:
            if len(buf) >= 1 and buf[0] != 0xFF:
                raise ZmtpError("not a ZMTP greeting")
            if len(buf) < 64:
                return
            if buf[9] != 0x7F or buf[10] < 3 or bytes(buf[12:32]).rstrip(b"\x00") != b"NULL":
                raise ZmtpError("not a ZMTP 3 peer with the NULL mechanism")
            del buf[:64]
            peer.greeted = True
        start_at = 0
        while len(messages) < self.BATCH:
            header = _header(buf, start_at)
            if header is None:
                break
            flags, start, size = header
            if flags & ~(_MORE | _LONG | _COMMAND):
                raise ZmtpError("reserved frame flags set")
            if size > self.max_frame or peer.held + size > self.max_frame:
                raise ZmtpError(f"frame of {size} bytes is over the cap")
            if len(buf) < start + size:
                break
            body = bytes(buf[start : start + size])
            start_at = start + size
            if flags & _COMMAND:
                self._command(peer, body)
                continue
            if not peer.ready:
                raise ZmtpError("message before READY")
            peer.parts.append(body)
            peer.held += size
            if len(peer.parts) > self.max_parts:
                raise ZmtpError("too many frames in one message")
            if not flags & _MORE:
                messages.append((peer.identity, peer.parts))
                peer.parts = []
                peer.held = 0
        del buf[:start_at]
        # A message begun (a frame in part, or parts without the last) must end in time.
        if buf or peer.parts:
            peer.partial_since = peer.partial_since or time.monotonic()
        else:
            peer.partial_since = 0.0

    def _command(self, peer: Peer, body: bytes) -> None:
        if body.startswith(b"\x05READY"):
            if peer.ready:
                raise ZmtpError("a second READY")
            props = _properties(body[6:])
            if props.get(b"socket-type") not in self.socket_types:
                raise ZmtpError(f"socket type {props.get(b'socket-type')!r} cannot talk to this ROUTER")
            named = props.get(b"identity", b"")
            if named and (len(named) > 255 or named[0] == 0):
                raise ZmtpError("identity too long or reserved")
            identity = self._routing(peer, named or b"\x00" + os.urandom(4))
            while not named and identity in self.by_id:
                identity = self._routing(peer, b"\x00" + os.urandom(4))
            if identity in self.by_id:
                raise ZmtpError("identity taken")
            peer.identity = identity
            peer.ready = True
            self.by_id[identity] = peer
        elif body.startswith(b"\x05ERROR"):
            raise ZmtpError("the peer reported an error")
        elif body.startswith(b"\x04PING") and peer.ready and len(peer.outbox) <= self.pause_outbox:
            # PING: ttl (2 bytes) and a context of at most 16 bytes, echoed in PONG.
            peer.outbox += _frame(_COMMAND, b"\x04PONG" + body[7:23])
            self._flush(peer)
        # other commands (PONG, SUBSCRIBE...) have nothing to do here

    def _routing(self, peer: Peer, identity: bytes) -> bytes:
        return routing_id(peer.uid, identity) if self.by_uid else identity

    def send(self, identity: bytes, frames: list[bytes]) -> bool:
        """Queue a message to ``identity``; False if no such peer is connected, or its queue is full."""
        peer = self.by_id.get(identity)
        if peer is None or len(peer.outbox) > self.max_outbox:
            return False
        peer.outbox += frame_bytes(frames)
        self._flush(peer)
        return True

    def flush(self, fd: int) -> None:
        peer = self.by_fd.get(fd)
        if peer is not None:
            self._flush(peer)

    def _flush(self, peer: Peer) -> None:
        while peer.outbox:
            try:
                sent = peer.sock.send(peer.outbox, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(peer)
                return
            del peer.outbox[:sent]
        events = (POLLIN if len(peer.outbox) <= self.pause_outbox else 0) | (POLLOUT if peer.outbox else 0)
        if events != peer.events:
            peer.events = events
            self.watch(peer.fd, events or POLLOUT)  # never 0 here: 0 means closed
            if events & POLLIN and peer.inbox:
                self.backlog.add(peer.fd)  # read again now that it takes its replies

    def linger(self, seconds: float) -> None:
        """Blocking, at shutdown: give queued output up to ``seconds`` to go out."""
        deadline = time.monotonic() + seconds
        while True:
            waiting = {peer.fd: peer for peer in self.by_fd.values() if peer.outbox}
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            poller = select.poll()
            for fd in waiting:
                poller.register(fd, POLLOUT)
            for fd, _ in poller.poll(int(left * 1000) + 1):
                self.flush(fd)

    def sweep(self) -> None:
        """End connections stuck in their handshake, or in a message, for ``idle_s``."""
        late = time.monotonic() - self.idle_s
        for peer in list(self.by_fd.values()):
            if (not peer.ready and peer.opened < late) or (peer.partial_since and peer.partial_since < late):
                self.dropped += 1
                self.close(peer)

    def connected(self, identity: bytes) -> bool:
        return identity in self.by_id

    def close(self, peer: Peer) -> None:
        if self.by_fd.pop(peer.fd, None) is None:
            return
        if self.by_id.get(peer.identity) is peer:
            del self.by_id[peer.identity]
        self.backlog.discard(peer.fd)
        self.watch(peer.fd, 0)
        peer.sock.close()

    def close_all(self) -> None:
        for peer in list(self.by_fd.values()):
            self.close(peer)
        self.listener.close()
