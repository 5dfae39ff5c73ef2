"""The SOCK_SEQPACKET links between service processes.

``Outbox``: a link that never blocks its sender. ``LauncherLink``: the
broker's side of ``launcher.sock``. ``EgressLink``: the broker's
request-and-reply link to the egress proxy. ``read_datagram``: the
one way a datagram is decoded, where a bad one is dropped, never fatal.


A unix SOCK_SEQPACKET socket holds a few hundred small datagrams (its send
buffer) for a reader that is busy; past that a blocking send waits. The
broker and the launcher each send to the other, so two blocking senders,
each waiting for the other to read, deadlock under load (seen: both timed
out after 5 s, the link was dropped and every warm worker with it). Each side instead keeps
what the peer cannot take yet and sends it when the socket is writable.
"""

from __future__ import annotations

import collections
import os
import socket
from collections.abc import Callable
from typing import TypeVar

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode
from protocol.wire import MAX_LAUNCHER_DATAGRAM, Codec, broker_egress_codec, broker_launcher_codec
from supervisor.log import logger

T = TypeVar("T")
_log = logger("broker")

LIMIT = 100_000  # datagrams waiting; past it the peer has stopped reading


class Outbox:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.queue: collections.deque[bytes] = collections.deque()

    @property
    def pending(self) -> bool:
        return bool(self.queue)

    def send(self, data: bytes) -> None:
        """Send now, or keep for later. Raises OSError when the link is dead."""
        self.queue.append(data)
        self.flush()

    def flush(self) -> None:
        while self.queue:
            try:
                self.sock.send(self.queue[0])
            except BlockingIOError:
                if len(self.queue) > LIMIT:
                    raise OSError(f"the peer has not read {len(self.queue)} datagrams") from None
                return
            self.queue.popleft()


def read_datagram(codec: Codec[T], data: bytes, dropped: Callable[[str], None]) -> T | None:
    """``data`` decoded, or None after telling ``dropped`` why: a peer's bad datagram never ends a link."""
    try:
        return codec.decode_datagram(data)
    except Exception as exc:  # noqa: BLE001 - whatever the decoder says, the datagram is dropped
        dropped(str(exc))
        return None


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


class LauncherLink:
    """The broker's side of ``launcher.sock``: connects (and reconnects, at most every
    0.1 s), never blocks on a send, and says once that it was lost."""

    RETRY_S = 0.1

    def __init__(self, rundir: str, forget: Callable[[int], None]) -> None:
        self.path = os.path.join(rundir, "launcher.sock")
        self.codec = broker_launcher_codec()
        self.forget = forget  # the broker's loop stops watching a descriptor
        self.sock: socket.socket | None = None
        self.outbox: Outbox | None = None
        self.retry_at = 0.0
        self.lost = False  # lost, and the dispatcher not yet told
        self.bad_datagrams = 0

    @property
    def connected(self) -> bool:
        return self.sock is not None

    @property
    def pending(self) -> bool:
        return self.outbox is not None and self.outbox.pending

    def connect_nowait(self, now: float) -> socket.socket | None:
        """A new connection for the loop to watch, or None (connected, or not yet)."""
        if self.sock is not None or now < self.retry_at:
            return None
        self.retry_at = now + self.RETRY_S
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return None
        self.sock, self.outbox = sock, Outbox(sock)
        return sock

    def send(self, message: m.Internal) -> None:
        if self.outbox is not None:
            try:
                self.outbox.send(self.codec.encode_datagram(message))
            except OSError as exc:
                self.drop(f"send failed: {exc!r}")

    def flush(self) -> None:
        if self.outbox is not None:
            try:
                self.outbox.flush()
            except OSError as exc:
                self.drop(f"send failed: {exc!r}")

    def receive(self) -> m.LauncherToBroker | None:
        """The next message, or None (nothing yet, a bad datagram dropped, or the link lost)."""
        if self.sock is None:
            return None
        try:
            data = self.sock.recv(MAX_LAUNCHER_DATAGRAM)
        except BlockingIOError:
            return None
        except OSError as exc:
            self.drop(f"receive failed: {exc!r}")
            return None
        if not data:
            self.drop("the launcher closed it")
            return None
        return read_datagram(self.codec, data, lambda why: self._bad())

    def _bad(self) -> None:
        self.bad_datagrams += 1

    def drop(self, why: str) -> None:
        """Close the link now; the dispatcher hears of it from the loop (``lost``), never from
        inside one of its own effects, whose caller is mid-update."""
        if self.sock is not None:
            self.forget(self.sock.fileno())
            self.sock.close()
            self.sock = self.outbox = None
            self.lost = True
            _log(f"launcher link lost ({why}); reconnecting")
