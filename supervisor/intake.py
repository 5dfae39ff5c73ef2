"""From an execute request to its one final reply, on the broker's side.

``Intake`` admits a request through the policy, turns it into a job for the
dispatcher, holds it while its client is at its concurrency limit (when the
config says to wait), forwards streamed output through the redactor, and
builds the final result: exactly one per request, whatever happened.

A request that names a session is that session's next cell
(``supervisor.sessions``): it is admitted like a run (rate, concurrency,
limits; not grants of paths or network, which a session cannot hold), runs
in the session's language and under its memory limit, and goes to the
session's worker alone.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo
from supervisor import results
from supervisor.dispatch import Dispatcher, Ticket
from supervisor.policy import Admitted, Policy, Refused, Resolved, Streams, Wait
from supervisor.sessions import Session, Sessions

Reply = Callable[[bytes, m.Reply], None]
Resolve = Callable[[m.ExecuteRequest], Resolved]  # the request's kind of worker, or raises CellblockError


class Egress(Protocol):
    """The broker's link to the egress proxy."""

    def open(self, run_id: str, allow: list[str]) -> str:
        """The host path of the run's proxy socket; raises CellblockError."""

    def close(self, run_id: str) -> list[m.NetDecision]:
        """Close the run's socket; what the proxy decided for it."""


@dataclass
class Request:
    """The broker's state for one admitted execute request: the owner of its ticket."""

    intake: Intake
    client: bytes
    request: m.ExecuteRequest
    client_key: str
    runtime: str
    received: float  # wall clock, for history
    seq: int = 0
    streams: Streams = field(default_factory=Streams)
    findings: list[m.Finding] = field(default_factory=list)
    capabilities: list[m.Capability] = field(default_factory=list)
    egress: bool = False  # the egress proxy holds a socket for this run

    def chunk(self, chunk: m.WorkerChunk) -> None:
        self.intake.chunk(self, chunk)

    def finish(self, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        self.intake.finish(self, ticket, raw, error)


@dataclass
class Waiting:
    client: bytes
    request: m.ExecuteRequest
    run_id: str
    received: float
    deadline: float


class Intake:
    def __init__(
        self,
        policy: Policy,
        dispatcher: Dispatcher,
        reply: Reply,
        resolve: Resolve,
        version: Callable[[str], str],
        queue_wait_s: float,
        egress: Egress,
        sessions: Sessions,
        hints: Callable[[str, m.ExecuteResult], list[m.Finding]] = lambda kind, result: [],
    ) -> None:
        self.sessions = sessions
        self.hints = hints  # what a finished run's output suggests (a module it lacked)
        self.egress = egress
        self.policy = policy
        self.dispatcher = dispatcher
        self.reply = reply
        self.resolve = resolve
        self.version = version
        self.queue_wait_s = queue_wait_s
        self.active: dict[tuple[bytes, str], str] = {}  # (client, request id) -> run id
        self.waiting: dict[str, collections.deque[Waiting]] = collections.defaultdict(collections.deque)
        self.counters: collections.Counter[str] = collections.Counter()
        self.draining = False
        self._resuming: set[str] = set()

    # --- a new request ------------------------------------------------------------------------

    def _refuse(
        self, client: bytes, request: m.ExecuteRequest, run_id: str, result: m.ExecuteResult, client_key: str = ""
    ) -> None:
        result = msgspec.structs.replace(result, id=request.id, run_id=run_id, language=request.language)
        if self.active.get((client, request.id)) == run_id:  # a waiting request, answered now
            del self.active[(client, request.id)]
        self.counters[f"status_{result.status.value}"] += 1
        self.reply(client, result)
        if client_key:
            self.policy.finished(client_key, request, result, [], time.time(), client.hex())

    def _fail(
        self,
        client: bytes,
        request: m.ExecuteRequest,
        run_id: str,
        code: ErrorCode,
        message: str,
        client_key: str = "",
        field: str = "",
        **extra: object,
    ) -> None:
        error = ErrorInfo(code=code, message=message, field=field)
        self._refuse(client, request, run_id, results.from_error("", "", "", error, **extra), client_key)

    def execute(self, client: bytes, request: m.ExecuteRequest, waited: Waiting | None = None) -> None:
        run_id = waited.run_id if waited else secrets.token_hex(8)
        received = waited.received if waited else time.time()
        key = (client, request.id)
        if self.draining:
            self._fail(client, request, run_id, ErrorCode.SHUTTING_DOWN, "the service is shutting down; retry shortly")
            return
        if waited is None and key in self.active:
            message = "a request with this id is already running"
            self._fail(client, request, run_id, ErrorCode.INVALID_REQUEST, message, field="id")
            return
        resolve = self.resolve
        session = None
        if request.session:
            try:
                session = self.sessions.for_cell(client, request)
            except CellblockError as exc:
                self._fail(client, request, run_id, exc.code, exc.message, field=exc.field)
                return
            request = msgspec.structs.replace(request, language=session.language, environment=session.environment)
            resolve = lambda _request: (session.runtime, None)  # noqa: E731 - the session's kind, whatever it asks
        match self.policy.admit(client.hex(), request, resolve):
            case Refused(client_key=client_key, result=result):
                if result.status is m.Status.REJECTED and result.error is not None:
                    self.counters[f"rejected_{result.error.code.value}"] += 1
                self._refuse(client, request, run_id, result, client_key)
            case Wait(client_key=client_key):
                self.active[key] = run_id
                deadline = waited.deadline if waited else time.monotonic() + self.queue_wait_s
                self.waiting[client_key].append(Waiting(client, request, run_id, received, deadline))
                self.counters["waited_for_concurrency"] += 1
            case Admitted() as admitted:
                self._dispatch(client, run_id, admitted, received, session)

    def _dispatch(
        self, client: bytes, run_id: str, admitted: Admitted, received: float, session: Session | None = None
    ) -> None:
        request = admitted.request
        fixed = self.policy.profile.fixed
        job = m.Job(
            id=run_id,
            code=request.code,
            stdin=request.stdin,
            limits=admitted.limits,
            stream=request.stream,
            language=request.language.lower(),
            files=request.files,
            artifact_bytes=fixed.artifact_bytes,
            artifacts_bytes=fixed.artifacts_bytes,
            artifact_count=fixed.artifact_count,
        )
        state = Request(
            intake=self,
            client=client,
            request=request,
            client_key=admitted.client_key,
            runtime=admitted.runtime,
            received=received,
            findings=admitted.findings,
            capabilities=admitted.capabilities,
        )
        try:
            if session is not None:
                job = self._cell_job(job, admitted, session)
            reserve = self._reserve(state, run_id, admitted)
        except CellblockError as exc:
            self.policy.released(admitted.client_key)
            self._fail(client, request, run_id, exc.code, exc.message, admitted.client_key, exc.field)
            self._resume(admitted.client_key)
            return
        now = time.monotonic()
        ticket = Ticket(
            run_id=run_id,
            runtime=admitted.runtime,
            job=job,
            owner=state,
            queued_at=now,
            wait_deadline=now + self.queue_wait_s,
            reserve=reserve,
        )
        self.active[(client, request.id)] = run_id
        if not self._submit(ticket, session):
            self.active.pop((client, request.id), None)
            self.policy.released(admitted.client_key)
            if state.egress:
                self.egress.close(run_id)
            if session is not None:
                code, message = ErrorCode.SESSION_NOT_FOUND, f"session {session.session_id} ended: its sandbox is gone"
            else:
                code = ErrorCode.OVERLOADED
                message = f"all sandboxes are busy and {self.dispatcher.queue_limit} requests are queued; retry later"
            self._fail(client, request, run_id, code, message, admitted.client_key, retry_after_s=1.0)
            self._resume(admitted.client_key)  # its place in the client's concurrency is free again
            return
        # The job has gone out (or waits in the queue): the analysis, an AST
        # walk of ~0.1 ms for a line and more for long code, runs while the
        # worker runs the code instead of before it. Nothing can finish the
        # run before this returns: the broker has one thread.
        state.findings.extend(self.policy.analyse(admitted.runtime, request.code))

    def _cell_job(self, job: m.Job, admitted: Admitted, session: Session) -> m.Job:
        """A session's cell: its job, under the session's memory limit."""
        if admitted.reserve:
            raise CellblockError(
                ErrorCode.INVALID_REQUEST,
                "a session's cells cannot use path or network grants; run this code without a session",
                "capabilities",
            )
        limits = msgspec.structs.replace(job.limits, memory_bytes=session.limits.memory_bytes)
        return msgspec.structs.replace(job, limits=limits, session=True)

    def _submit(self, ticket: Ticket, session: Session | None) -> bool:
        if session is None:
            return self.dispatcher.submit(ticket)
        if not self.dispatcher.submit_to(session.worker, ticket):
            self.sessions.end(session, "its sandbox is gone")
            return False
        self.sessions.cell_started(session)
        return True

    def _reserve(self, state: Request, run_id: str, admitted: Admitted) -> m.Reserve | None:
        """A run with grants gets a worker of its own: the Reserve for it, its egress
        socket opened (CellblockError when the proxy cannot); None when it needs none."""
        if not admitted.reserve:
            return None
        path = self.egress.open(run_id, admitted.net) if admitted.net else ""
        state.egress = bool(path)
        return m.Reserve(run=run_id, runtime=admitted.runtime, binds=admitted.binds, egress=path)

    # --- output and the end of a run -----------------------------------------------------------

    def chunk(self, state: Request, chunk: m.WorkerChunk) -> None:
        if not state.request.stream:
            return
        self._send_chunk(state, chunk.stream, self.policy.stream_text(state.streams, chunk.stream, chunk.data))

    def _send_chunk(self, state: Request, stream: str, text: str) -> None:
        if text:
            self.reply(state.client, m.OutputChunk(id=state.request.id, stream=stream, seq=state.seq, data=text))  # type: ignore[arg-type]
            state.seq += 1

    def finish(self, state: Request, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        request = state.request
        self.active.pop((state.client, request.id), None)
        if request.stream:  # what the line-wise stream redactor still holds
            for name in ("stdout", "stderr"):
                self._send_chunk(state, name, self.policy.stream_text(state.streams, name, b"", final=True))
        if raw is not None:
            result = results.from_worker(
                request.id,
                ticket.run_id,
                request.language,
                self.version(state.runtime),
                (ticket.worker or "")[:8],
                raw,
                state.streams.result_redactor(self.policy.redactor),
            )
            findings = state.findings + self.hints(state.runtime, result)
            result = msgspec.structs.replace(result, findings=findings)
        else:
            assert error is not None
            result = results.from_error(request.id, ticket.run_id, request.language, error, findings=state.findings)
        if state.egress:
            result = msgspec.structs.replace(result, network=self.egress.close(ticket.run_id))
        if request.session:
            ended = self.sessions.cell_done(request.session, raw)
            result = msgspec.structs.replace(result, session=request.session, session_ended=ended)
        self.policy.released(state.client_key)
        self.counters[f"status_{result.status.value}"] += 1
        self.reply(state.client, result)  # first: the history row is not the client's wait
        self.policy.finished(state.client_key, request, result, state.capabilities, state.received, state.client.hex())
        self._resume(state.client_key)

    def _resume(self, client_key: str) -> None:
        """Start the client's next waiting request; if that one is answered at
        once (refused), the one after it, and so on: in a loop, never by
        recursion (a client may have thousands waiting)."""
        if client_key in self._resuming:
            return  # a refusal inside the loop below: the loop goes on
        self._resuming.add(client_key)
        try:
            while queue := self.waiting.get(client_key):
                waited = queue.popleft()
                if not queue:
                    del self.waiting[client_key]
                self.execute(waited.client, waited.request, waited)
                if (waited.client, waited.request.id) in self.active:
                    return  # running, queued, or waiting again
        finally:
            self._resuming.discard(client_key)

    def tick(self) -> float | None:
        now = time.monotonic()
        due = None
        for client_key, queue in list(self.waiting.items()):
            for waited in [w for w in queue if w.deadline <= now]:
                queue.remove(waited)
                self.active.pop((waited.client, waited.request.id), None)
                message = f"waited {self.queue_wait_s:.0f} s for this client's other runs to end; retry later"
                self._fail(
                    waited.client,
                    waited.request,
                    waited.run_id,
                    ErrorCode.OVERLOADED,
                    message,
                    client_key,
                    retry_after_s=1.0,
                )
            if not queue:
                del self.waiting[client_key]
            elif due is None or queue[0].deadline < due:
                due = queue[0].deadline
        return due

    def fail_waiting(self, error: ErrorInfo) -> None:
        for client_key, queue in list(self.waiting.items()):
            for waited in queue:
                self.active.pop((waited.client, waited.request.id), None)
                self._fail(
                    waited.client, waited.request, waited.run_id, error.code, error.message, client_key, error.field
                )
        self.waiting.clear()

    @property
    def idle(self) -> bool:
        return not self.waiting
