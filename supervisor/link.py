"""A SOCK_SEQPACKET link that never blocks its sender.

A unix SOCK_SEQPACKET socket holds a few hundred small datagrams (its send
buffer) for a reader that is busy; past that a blocking send waits. The
broker and the launcher each send to the other, so two blocking senders,
each waiting for the other to read, deadlock under load (seen: both timed
out after 5 s, the link was dropped and every warm worker with it). Each side instead keeps
what the peer cannot take yet and sends it when the socket is writable.
"""

from __future__ import annotations

import collections
import socket

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
