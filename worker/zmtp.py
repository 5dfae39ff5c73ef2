"""A ZeroMQ DEALER for the worker monitor: ZMTP 3.0, NULL mechanism, one peer.

Why not pyzmq here: a libzmq context starts I/O threads, and the monitor
must be single-threaded while it drops privileges (capabilities, the bounding
set, no_new_privs and seccomp are per-thread), must not leave a send queued in
a background thread when it exits, and is created several hundred times a
second. A libzmq context in each worker cost ~1 ms and a thread; this is a
blocking unix socket and the wire format of RFC 23 (ZMTP 3.0), which is all a
DEALER with one peer needs. The broker side is a real libzmq ROUTER, and the
interop is tested (tests/unit/test_zmtp.py).
"""

from __future__ import annotations

import socket
import struct

_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_MORE = 0x01
_LONG = 0x02
_COMMAND = 0x04


class ZmtpError(Exception):
    pass


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _frame(flags: int, body: bytes) -> bytes:
    if len(body) > 255:
        return bytes([flags | _LONG]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


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
            if len(buf) < 2:
                break
            flags = buf[0]
            if flags & _LONG:
                if len(buf) < 9:
                    break
                size = struct.unpack_from(">Q", buf, 1)[0]
                start = 9
            else:
                size = buf[1]
                start = 2
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

    @classmethod
    def connect(cls, path: str, identity: bytes, timeout: float = 5.0) -> Dealer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls.over(sock, identity, timeout)

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
        self._sock.sendall(_GREETING)
        greeting = self._read_exact(64)
        if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3:
            raise ZmtpError("peer is not a ZMTP 3 endpoint")
        if greeting[12:32].rstrip(b"\x00") != b"NULL":
            raise ZmtpError("peer wants a security mechanism other than NULL")
        ready = b"\x05READY" + _property(b"Socket-Type", b"DEALER") + _property(b"Identity", identity)
        self._sock.sendall(_frame(_COMMAND, ready))
        flags = self._read_exact(1)[0]
        size = struct.unpack(">Q", self._read_exact(8))[0] if flags & _LONG else self._read_exact(1)[0]
        body = self._read_exact(size)
        if not flags & _COMMAND or not body.startswith(b"\x05READY"):
            raise ZmtpError("peer did not answer READY")

    def send(self, frames: list[bytes]) -> None:
        self._sock.sendall(frame_bytes(frames))

    def command(self, body: bytes) -> None:
        if body.startswith(b"\x04PING"):
            # PING: ttl(2) + context; answer PONG with the same context.
            self._sock.sendall(_frame(_COMMAND, b"\x04PONG" + body[7:]))

    def recv_available(self) -> list[list[bytes]] | None:
        """Read what the socket has now; return whole messages, None on EOF."""
        try:
            chunk = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        self._buffer += chunk
        return self.take()
