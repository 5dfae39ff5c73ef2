"""Broker policy: everything the trusted side decides about a request.

``Policy`` is the broker's one entry point; each concern lives in its own
module (validation, rate limits, grants, findings, redaction, history).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import messages as m
from protocol.profile import Profile
from supervisor.config import Config
from supervisor.policy import validation
from supervisor.policy.validation import Resolved


@dataclass
class Admitted:
    client_key: str
    limits: Resolved | None = None
    reply: m.ExecuteResult | None = None  # a final refusal
    findings: list[m.Finding] = field(default_factory=list)
    capabilities: list[m.Capability] = field(default_factory=list)


class Policy:
    def __init__(
        self, config: Config, profile: Profile, state_dir: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.profile = profile
        self.clock = clock
        self.redactor = None

    def admit(self, connection: str, request: m.ExecuteRequest) -> Admitted:
        key = request.client_id or f"conn:{connection}"
        validation.check_sizes(self.profile, request)
        for i, cap in enumerate(request.capabilities):
            validation.check_capability(cap, i)
        limits, _ = validation.resolve_limits(self.profile, request.limits)
        return Admitted(client_key=key, limits=limits)

    def released(self, client_key: str) -> None:
        pass

    def finished(
        self,
        client_key: str,
        request: m.ExecuteRequest,
        run_id: str,
        result: m.ExecuteResult,
        capabilities: list[m.Capability],
        received: float,
    ) -> None:
        pass

    def stream_text(self, streams: dict[str, object], name: str, data: bytes) -> str:
        return data.decode("utf-8", "replace")

    def admin(self, request: m.Request) -> m.Reply:
        from protocol.errors import ErrorCode, ErrorInfo

        return m.ErrorReply(
            id=getattr(request, "id", ""), error=ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message="not available yet")
        )

    def close(self) -> None:
        pass
