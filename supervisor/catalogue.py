"""The broker's view of the runtimes: what the launcher offers, each one's health
and self-test, and which runtime a language name means.

A runtime is offered to clients only once its self-test (a tiny program
with a known answer, run under the real profile) has passed on a worker of
this launcher. Only the runtime's own answer can fail it: a self-test that
gets no result (its sandbox died, the service is stopping) is tried again
with the next worker.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo
from protocol.profile import Profile
from supervisor.dispatch import Ticket
from supervisor.log import logger

_log = logger("broker")
SELF_TEST_WAIT_S = 60.0
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([A-Za-z0-9_.]{1,200})'")
_PIP_MARKERS = ("externally-managed-environment", "No matching distribution found", "pip install")
ADD_A_PACKAGE = (
    "An operator adds packages to an environment in the service's config ([environments.<name>] packages) "
    "and runs `cellblock env build`."
)


@dataclass
class RuntimeView:
    info: m.RuntimeInfo
    healthy: bool = True
    reason: str = ""
    restarts: int = 0
    setup_failures: int = 0
    self_test: str = "pending"  # pending | running | passed | failed
    self_test_detail: str = ""

    @property
    def offered(self) -> bool:
        return self.info.available and self.self_test == "passed"


@dataclass(frozen=True)
class SelfTest:
    """The owner of a self-test's ticket: no client waits for it."""

    catalogue: Catalogue
    runtime: str

    def chunk(self, chunk: m.WorkerChunk) -> None:
        pass  # a self-test does not stream

    def finish(self, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        self.catalogue.self_test_done(self.runtime, raw, error)


class Catalogue:
    def __init__(self, profile: Profile, fail_queued: Callable[[str, ErrorInfo], None]) -> None:
        self.profile = profile
        self.fail_queued = fail_queued  # the dispatcher's: a runtime's waiting runs get this error
        self.runtimes: dict[str, RuntimeView] = {}
        self.languages: dict[str, str] = {}
        self.layers: list[m.LayerStatus] = []
        self.mode = ""
        self.generation = 0

    # --- what the launcher says ---------------------------------------------------------

    def hello(self, hello: m.LauncherHello) -> None:
        """A (new) launcher's runtimes and layers. A self-test passed before stays passed."""
        self.generation = hello.generation
        self.mode = hello.mode
        self.layers = hello.layers
        old = self.runtimes
        self.runtimes = {}
        self.languages = {}
        for info in hello.runtimes:
            view = RuntimeView(info=info)
            previous = old.get(info.name)
            if previous is not None and previous.self_test == "passed":
                view.self_test = "passed"
            if not info.available:
                view.self_test = "failed"
                view.self_test_detail = info.reason
            self.runtimes[info.name] = view
            for alias in info.languages:
                self.languages[alias] = info.name

    def health(self, message: m.Health) -> None:
        view = self.runtimes.get(message.runtime)
        if view is None:
            return
        view.healthy = message.healthy
        view.reason = message.reason
        view.restarts = message.restarts
        view.setup_failures = message.setup_failures
        if not message.healthy:
            _log(f"runtime {message.runtime} unhealthy: {message.reason}")
            self.fail_queued(
                message.runtime,
                ErrorInfo(
                    code=ErrorCode.RUNTIME_UNAVAILABLE,
                    message=f"{message.runtime} sandboxes cannot be created right now: {message.reason}",
                ),
            )

    # --- what clients ask for -------------------------------------------------------------

    def resolve_request(self, request: m.ExecuteRequest) -> tuple[str, m.Finding | None]:
        """The kind of worker a request runs on: its language's runtime, in the environment
        it names or the profile's default for that runtime. A default environment that is
        not there is run without (a finding says so); a named one that is not there is an
        error saying why."""
        runtime = self.resolve(request.language)
        policy = self.profile.runtimes.get(runtime)
        environment = request.environment or (policy.environment if policy else "")
        if environment in ("", "none"):
            return runtime, None
        kind = f"{runtime}:{environment}"
        view = self.runtimes.get(kind)
        why = "not configured" if view is None else (view.self_test_detail or view.info.reason)
        if view is not None and view.info.available and view.self_test != "failed":
            return kind, None
        if request.environment:
            offered = sorted(v.info.environment for v in self.runtimes.values() if v.info.environment and v.offered)
            known = ", ".join(offered) or "none"
            raise CellblockError(
                ErrorCode.RUNTIME_UNAVAILABLE if view is not None else ErrorCode.INVALID_REQUEST,
                f"environment {environment!r} is not available for {runtime}: {why}; offered: {known}",
                "environment",
            )
        note = f"ran without the default environment {environment!r} ({why})"
        return runtime, m.Finding(rule="environment_missing", line=0, severity="warning", message=note)

    def keeps_state(self, kind: str) -> bool:
        """Can this kind of worker be a session (keep its interpreter between cells)?"""
        view = self.runtimes.get(kind)
        return view is not None and view.info.sessions

    def hints(self, kind: str, result: m.ExecuteResult) -> list[m.Finding]:
        """After a run: what to do about a module it lacked, or a package it tried to install."""
        found = []
        missing = _MISSING_MODULE.search(result.stderr)
        if missing:
            module = missing[1].split(".")[0]
            have = self.environments_with(module)
            env = kind.partition(":")[2]
            where = f"environment {env!r}" if env else "this run (no package environment)"
            there = "no environment of this service has it"
            if have:
                there = f"environments that have it: {', '.join(have)} (ask for one by name)"
            found.append(
                m.Finding(
                    rule="missing_module",
                    line=0,
                    severity="info",
                    message=f"{module} is not in {where}; {there}. {ADD_A_PACKAGE}",
                )
            )
        if any(marker in result.stderr for marker in _PIP_MARKERS):
            message = f"packages cannot be installed inside a run (it has no network). {ADD_A_PACKAGE}"
            found.append(m.Finding(rule="package_install", line=0, severity="info", message=message))
        return found

    def environments_with(self, module: str) -> list[str]:
        """The environments whose packages provide ``module`` (a top-level name)."""
        return sorted(v.info.environment for v in self.runtimes.values() if module in v.info.modules and v.offered)

    def resolve(self, language: str) -> str:
        """The runtime a language name means; CellblockError when none can run it."""
        runtime = self.languages.get(language.lower())
        if runtime is None:
            if not self.runtimes:
                raise CellblockError(
                    ErrorCode.RUNTIME_UNAVAILABLE, "the service is starting; no runtime is ready yet", "language"
                )
            known = ", ".join(sorted(self.languages))
            raise CellblockError(
                ErrorCode.UNKNOWN_LANGUAGE, f"unknown language {language!r}; known: {known}", "language"
            )
        view = self.runtimes[runtime]
        if view.self_test == "failed":
            raise CellblockError(
                ErrorCode.RUNTIME_UNAVAILABLE,
                f"{runtime} is not available on this host: {view.self_test_detail}",
                "language",
            )
        return runtime

    def version(self, runtime: str) -> str:
        view = self.runtimes.get(runtime)
        return view.info.version if view else runtime

    # --- self-tests ---------------------------------------------------------------------------

    def self_test_ticket(self, runtime: str) -> Ticket | None:
        """The self-test to run now that a worker of ``runtime`` is ready, if one is due."""
        view = self.runtimes.get(runtime)
        if view is None or view.self_test != "pending":
            return None
        if not view.info.self_test:
            view.self_test = "passed"  # a runtime with nothing to test
            return None
        view.self_test = "running"
        run_id = "st-" + secrets.token_hex(6)
        limits = msgspec.structs.replace(self.profile.limits.in_bytes(), output_bytes=4096)
        now = time.monotonic()
        return Ticket(
            run_id=run_id,
            runtime=runtime,
            job=m.Job(id=run_id, code=view.info.self_test, limits=limits),
            owner=SelfTest(self, runtime),
            queued_at=now,
            wait_deadline=now + SELF_TEST_WAIT_S,
        )

    def self_test_done(self, runtime: str, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        view = self.runtimes.get(runtime)
        if view is None:
            return
        expect = view.info.self_test_expect
        if raw is not None and raw.status is m.Status.OK and raw.stdout_head + raw.stdout_tail == expect.encode():
            view.self_test = "passed"
            view.self_test_detail = ""
            return
        if raw is None:
            # No result: the sandbox died (a restart), the runtime went unhealthy
            # while it waited, or the service is stopping. That says nothing of
            # the runtime itself: try again with the next worker to be ready.
            view.self_test = "pending"
            return
        detail = error.message if error else f"status {raw.status.value}"
        if raw.stderr_head:
            detail += ": " + raw.stderr_head.decode("utf-8", "replace").strip().splitlines()[-1][:200]
        view.self_test = "failed"
        view.self_test_detail = f"self-test failed ({detail})"
        _log(f"runtime {runtime} not offered: {view.self_test_detail}")
        self.fail_queued(
            runtime,
            ErrorInfo(
                code=ErrorCode.RUNTIME_UNAVAILABLE, message=f"{runtime} is not available: {view.self_test_detail}"
            ),
        )

    @property
    def self_tests_pending(self) -> bool:
        """A healthy runtime whose self-test has not answered yet (an unhealthy one cannot run it)."""
        waiting = ("pending", "running")
        return any(v.info.available and v.healthy and v.self_test in waiting for v in self.runtimes.values())

    # --- status -------------------------------------------------------------------------------

    def statuses(
        self, warm: dict[str, int], busy: dict[str, int], starting: dict[str, int], pools: dict[str, int]
    ) -> list[m.RuntimeStatus]:
        out = []
        for name, view in sorted(self.runtimes.items()):
            reason = view.self_test_detail or view.info.reason
            if not view.healthy:
                reason = view.reason
            elif view.self_test in ("pending", "running"):
                reason = "self-test pending"
            out.append(
                m.RuntimeStatus(
                    name=name,
                    version=view.info.version,
                    offered=view.offered and view.healthy,
                    environment=view.info.environment,
                    packages=view.info.packages,
                    reason=reason,
                    warm=warm.get(name, 0),
                    busy=busy.get(name, 0),
                    starting=starting.get(name, 0),
                    target=pools.get(name, 0),
                    restarts=view.restarts,
                    setup_failures=view.setup_failures,
                )
            )
        return out
