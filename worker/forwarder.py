"""The egress forwarder: the sandbox's loopback door to the egress proxy.

A run that holds a network grant still has no network of its own: its
network namespace has only loopback. The monitor forks this process after
the privilege drop; it listens on 127.0.0.1:3128 inside the sandbox and
relays every connection, byte for byte, to ``/mnt/egress.sock``, the unix
socket of the supervisor's egress proxy bound into this sandbox alone. The
payload's HTTP_PROXY and HTTPS_PROXY point here, so urllib, requests and
curl go through the proxy without being told.

The forwarder decides nothing: the proxy, outside the sandbox, checks every
host. The code could talk to ``/mnt/egress.sock`` itself and gain nothing.
It holds no descriptor of the monitor's (the broker connection is closed
first) and runs under the runtime's seccomp filters.
"""

from __future__ import annotations

import os
import selectors
import socket
from typing import NoReturn

from worker import syscalls as sc

HOST, PORT = "127.0.0.1", 3128
PROXY_URL = f"http://{HOST}:{PORT}"
ENVIRONMENT = {
    "HTTP_PROXY": PROXY_URL,
    "HTTPS_PROXY": PROXY_URL,
    "http_proxy": PROXY_URL,
    "https_proxy": PROXY_URL,
    "NO_PROXY": "localhost,127.0.0.1,::1",
    "no_proxy": "localhost,127.0.0.1,::1",
}
BUFFER = 256 * 1024  # per direction; reading stops while this much waits to be written


class _Side:
    """One socket of a relayed connection and the bytes waiting to be written to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""
        self.eof = False  # nothing more will be read from it
        self.shut = False  # its write half is shut: the peer's eof was passed on
        self.events = 0  # what the selector watches for it (0: not registered)
        self.peer: _Side


def start(socket_path: str, filters: list[sc.CompiledFilter] | None) -> int:
    """Listen, then fork the forwarder; return its pid (in the monitor)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, PORT))
    listener.listen(64)
    pid = os.fork()
    if pid == 0:
        _become_forwarder(listener, socket_path, filters)
    listener.close()
    return pid


def _become_forwarder(listener: socket.socket, socket_path: str, filters: list[sc.CompiledFilter] | None) -> NoReturn:
    try:
        fd = os.dup(listener.fileno())
        os.dup2(fd, 3, inheritable=False)
        null = os.open("/dev/null", os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        sc.close_range(4)  # the broker connection, the lifeline, the monitor's pipes
        os.setsid()
        if filters is not None:
            for flt in filters:
                flt.load()
        _serve(socket.socket(fileno=3), socket_path)
    finally:
        os._exit(0)


def _serve(listener: socket.socket, socket_path: str) -> None:
    selector = selectors.DefaultSelector()
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, events in selector.select():
            side: _Side | None = key.data
            if side is None:
                _accept(selector, listener, socket_path)
                continue
            if events & selectors.EVENT_READ:
                _read(side)
            if events & selectors.EVENT_WRITE:
                _write(side)
            for one in (side, side.peer):
                _update(selector, one)


def _accept(selector: selectors.BaseSelector, listener: socket.socket, socket_path: str) -> None:
    try:
        inner, _ = listener.accept()
    except OSError:
        return
    outer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        outer.connect(socket_path)
    except OSError:
        inner.close()
        outer.close()
        return
    a, b = _Side(inner), _Side(outer)
    a.peer, b.peer = b, a
    for side in (a, b):
        side.sock.setblocking(False)
        selector.register(side.sock, selectors.EVENT_READ, side)
        side.events = selectors.EVENT_READ


def _read(side: _Side) -> None:
    try:
        data = side.sock.recv(65536)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        side.peer.pending += data
    else:
        side.eof = True


def _write(side: _Side) -> None:
    try:
        sent = side.sock.send(side.pending)
    except BlockingIOError:
        return
    except OSError:  # its reader is gone: drop what was for it, stop reading for it
        side.pending = b""
        side.eof = side.peer.eof = True
        return
    side.pending = side.pending[sent:]


def _update(selector: selectors.BaseSelector, side: _Side) -> None:
    if side.sock.fileno() < 0:
        return
    if side.peer.eof and not side.pending and not side.shut:
        # The other end said all it will say, and it has been delivered.
        side.shut = True
        try:
            side.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    if side.eof and side.peer.eof and not side.pending and not side.peer.pending:
        for one in (side, side.peer):
            if one.events:
                selector.unregister(one.sock)
                one.events = 0
            one.sock.close()
        return
    events = 0
    if not side.eof and len(side.peer.pending) < BUFFER:
        events |= selectors.EVENT_READ
    if side.pending:
        events |= selectors.EVENT_WRITE
    if events == side.events:
        return
    if not events:
        selector.unregister(side.sock)
    elif not side.events:
        selector.register(side.sock, events, side)
    else:
        selector.modify(side.sock, events, side)
    side.events = events
