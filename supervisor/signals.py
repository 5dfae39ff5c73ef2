"""Signals in the service's processes: handlers only enqueue; the loop dispatches.

Each process owns one ``SignalQueue``. Python-level handlers (main, broker)
append the signal number and wake the loop through a pipe
(``signal.set_wakeup_fd``); the launcher, which installs no handler, feeds
the queue from a signalfd. The loop then calls ``dispatch()``, which runs
``owner.handle_<signame>()`` for each, in order; a signal with no handler of
its own takes the shutdown path (``handle_sigterm``).
"""

from __future__ import annotations

import collections
import os
import signal


class SignalQueue:
    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.pending: collections.deque[int] = collections.deque()

    def install(self, catch: tuple[int, ...], ignore: tuple[int, ...] = ()) -> int:
        """Handlers that only enqueue, for ``catch``; ``ignore`` ignored. Returns the read end
        of the wakeup pipe: readable whenever a signal came (drain it with ``drain_wakeup``)."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in catch:
            signal.signal(sig, self._enqueue)
        for sig in ignore:
            signal.signal(sig, signal.SIG_IGN)
        return wake_r

    def _enqueue(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def push(self, signum: int) -> None:
        self.pending.append(signum)

    def dispatch(self) -> None:
        while self.pending:
            name = signal.Signals(self.pending.popleft()).name.lower()
            getattr(self.owner, f"handle_{name}", getattr(self.owner, "handle_sigterm"))()  # noqa: B009


def drain_wakeup(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
