"""Per-client rate and concurrency limits.

The rate is a sliding 60-second window of runs started; the concurrency is
the number of runs in flight. Both default from ``[policy]`` and can be set
per client under ``[policy.clients."<id>"]``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.config import PolicySection

WINDOW_S = 60.0


@dataclass
class ClientState:
    starts: collections.deque[float] = field(default_factory=collections.deque)
    running: int = 0


class Limiter:
    def __init__(self, policy: PolicySection, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.clients: dict[str, ClientState] = collections.defaultdict(ClientState)

    def limits(self, key: str) -> tuple[int, int]:
        override = self.policy.clients.get(key)
        rate = override.rate_per_minute if override and override.rate_per_minute else self.policy.rate_per_minute
        conc = override.concurrency if override and override.concurrency else self.policy.concurrency
        return rate, conc

    def retry_after(self, key: str) -> float | None:
        """Seconds until this client may start another run; None if it may now."""
        rate, _ = self.limits(key)
        state = self.clients[key]
        now = self.clock()
        while state.starts and state.starts[0] <= now - WINDOW_S:
            state.starts.popleft()
        if len(state.starts) < rate:
            return None
        return max(0.001, state.starts[0] + WINDOW_S - now)

    def busy(self, key: str) -> bool:
        return self.clients[key].running >= self.limits(key)[1]

    def start(self, key: str) -> None:
        state = self.clients[key]
        state.starts.append(self.clock())
        state.running += 1

    def finish(self, key: str) -> None:
        state = self.clients.get(key)
        if state is not None and state.running > 0:
            state.running -= 1
