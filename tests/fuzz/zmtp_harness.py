"""One real ``protocol.zmtp.Router`` on a listening unix socket, driven as the broker's loop drives it.

Shared by the property-based tests (test_fuzz_zmtp.py) and the coverage-guided
target (atheris_zmtp.py): each connects a real client, sends bytes in chunks,
lets the router read them, and checks what the router may never do: hand over
a message over its caps, hold more than one frame of a peer's unfinished
input, or drop a peer without telling its owner.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator

from protocol.zmtp import Router

MAX_FRAME = 4096
MAX_PARTS = 4
HEADER = 9  # the longest frame header: flags + 8-byte size


class Harness:
    """One real Router on a listening unix socket; each example connects a real client to it."""

    def __init__(self, path: str) -> None:
        self.events: dict[int, int] = {}
        self.router = Router(
            path,
            max_frame=MAX_FRAME,
            max_parts=MAX_PARTS,
            watch=self.events.__setitem__,
            max_held=64 << 10,
            idle_s=60.0,
        )
        self.path = path

    @contextlib.contextmanager
    def connection(self) -> Iterator[tuple[socket.socket, int]]:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(self.path)
        before = set(self.router.by_fd)
        self.router.accept()
        (fd,) = set(self.router.by_fd) - before
        try:
            yield client, fd
        finally:
            client.close()
            peer = self.router.by_fd.get(fd)
            if peer is not None:
                self.router.close(peer)

    def feed(self, client: socket.socket, fd: int, chunks: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
        """Send each chunk and let the router read it, as the broker's loop would."""
        got: list[tuple[bytes, list[bytes]]] = []
        for chunk in chunks:
            if fd not in self.router.by_fd:
                break  # dropped: what the client sends now goes nowhere
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.sendall(chunk)
            got += self.drain(client, fd)
        return got

    def drain(self, client: socket.socket, fd: int) -> list[tuple[bytes, list[bytes]]]:
        got: list[tuple[bytes, list[bytes]]] = []
        for _ in range(1000):
            got += self.router.receive(fd)
            while select.select([client], [], [], 0)[0]:  # take the router's greeting and PONGs
                try:
                    if not client.recv(1 << 16):
                        break
                except ConnectionResetError:
                    break
            if fd not in self.router.backlog:
                break
        self.check_bounds(fd, got)
        return got

    def check_bounds(self, fd: int, got: list[tuple[bytes, list[bytes]]]) -> None:
        for _, parts in got:
            assert 1 <= len(parts) <= MAX_PARTS
            assert sum(len(p) for p in parts) <= MAX_FRAME
        peer = self.router.by_fd.get(fd)
        if peer is not None:
            # Never more than one frame's worth of unfinished input held for a peer.
            assert peer.held <= MAX_FRAME
            assert len(peer.inbox) <= max(64, HEADER + MAX_FRAME)
        else:
            assert self.events.get(fd) == 0  # the owner's loop was told it is gone
