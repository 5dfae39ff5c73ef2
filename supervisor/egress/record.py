"""What the egress proxy decided for one run, and the bytes that flowed under each decision."""

from __future__ import annotations

import asyncio

from protocol import messages as m

MAX_DECISIONS = 100  # different ones recorded per run (the report fits one datagram); the rest counted in one


class Flow:
    """One decision, how often it was made, and the bytes that flowed under it."""

    def __init__(self, host: str, port: int, allowed: bool, reason: str) -> None:
        self.host, self.port, self.allowed, self.reason = host, port, allowed, reason
        self.count = 0
        self.bytes_out = self.bytes_in = 0

    def decision(self) -> m.NetDecision:
        return m.NetDecision(
            host=self.host,
            port=self.port,
            allowed=self.allowed,
            reason=self.reason,
            bytes_out=self.bytes_out,
            bytes_in=self.bytes_in,
            count=self.count,
        )


class Run:
    def __init__(self, run_id: str, allow: list[str], path: str) -> None:
        self.run_id = run_id
        self.allow = allow
        self.path = path
        self.flows: dict[tuple[str, int, bool, str], Flow] = {}
        self.unrecorded = 0  # decisions made after the record was full
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def decided(self, host: str, port: int, allowed: bool, reason: str) -> Flow:
        """Record a decision; one made before (same host, port, verdict, reason) is counted again.

        A decision about a connection rather than a request (a refusal for
        load, a connection cut off before it named a host) has host "" and port 0.
        """
        key = (host, port, allowed, reason)
        flow = self.flows.get(key)
        if flow is None:
            flow = Flow(host, port, allowed, reason)
            if len(self.flows) < MAX_DECISIONS - 1:  # the last place is for the count of the rest
                self.flows[key] = flow
            else:
                self.unrecorded += 1
        flow.count += 1
        return flow

    def decisions(self) -> list[m.NetDecision]:
        recorded = [flow.decision() for flow in self.flows.values()]
        if self.unrecorded:
            why = f"not recorded: decisions beyond the first {MAX_DECISIONS - 1} different ones"
            recorded.append(m.NetDecision(host="", port=0, allowed=False, reason=why, count=self.unrecorded))
        return recorded
