"""From an execute request to its one final reply, on the broker's side.

``Intake`` admits a request through the policy, turns it into a job for the
dispatcher, holds it while its client is at its concurrency limit (when the
config says to wait), forwards streamed output through the redactor, and
builds the final result: exactly one per request, whatever happened.
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
from supervisor.policy import Admitted, Policy, Streams
from supervisor.policy.detect import detect

Reply = Callable[[bytes, m.Reply], None]
Resolve = Callable[[str], str]  # language -> runtime name, or raises CellblockError


class Egress(Protocol):
    """The broker's link to the egress proxy."""

    def open(self, run_id: str, allow: list[str]) -> str:
        """The host path of the run's proxy socket; raises CellblockError."""

    def close(self, run_id: str) -> list[m.NetDecision]:
        """Close the run's socket; what the proxy decided for it."""


@dataclass
class Request:
    """The broker's state for one admitted execute request."""

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
    ) -> None:
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
            self.policy.finished(client_key, request, result, [], time.time())

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
        detected = None
        if request.language.lower() in ("", "auto"):
            detected = detect(request.code)
            if detected.language is None:
                choices = f" ({' or '.join(detected.alternatives)})" if detected.alternatives else ""
                message = f"cannot tell which language this is: {detected.reason}{choices}; set language"
                self._fail(client, request, run_id, ErrorCode.INVALID_REQUEST, message, field="language")
                return
            request = msgspec.structs.replace(request, language=detected.language)
        try:
            runtime = self.resolve(request.language)
            admitted = self.policy.admit(client.hex(), request, runtime)
        except CellblockError as exc:
            self.counters[f"rejected_{exc.code.value}"] += 1
            key_of = self.policy.client_key(client.hex(), request)
            self._fail(client, request, run_id, exc.code, exc.message, key_of, exc.field)
            return
        if admitted.reply is not None:
            self._refuse(client, request, run_id, admitted.reply, admitted.client_key)
            return
        if detected is not None:
            admitted.findings.insert(
                0,
                m.Finding(
                    rule="language_detected",
                    line=0,
                    severity="info",
                    message=f"ran as {detected.language} ({detected.confidence}: {detected.reason})",
                ),
            )
        if admitted.wait:
            self.active[key] = run_id
            now = time.monotonic()
            self.waiting[admitted.client_key].append(
                Waiting(client, request, run_id, received, waited.deadline if waited else now + self.queue_wait_s)
            )
            self.counters["waited_for_concurrency"] += 1
            return
        self._dispatch(client, request, run_id, runtime, admitted, received)

    def _dispatch(
        self, client: bytes, request: m.ExecuteRequest, run_id: str, runtime: str, admitted: Admitted, received: float
    ) -> None:
        limits = admitted.limits
        assert limits is not None  # admitted without a reply means limits were resolved
        job = m.Job(
            id=run_id,
            code=request.code,
            stdin=request.stdin,
            timeout_ms=limits.timeout_ms,
            cpu_ms=limits.cpu_ms,
            memory_bytes=limits.memory_bytes,
            output_bytes=limits.output_bytes,
            stream=request.stream,
            language=request.language.lower(),
        )
        state = Request(
            client=client,
            request=request,
            client_key=admitted.client_key,
            runtime=runtime,
            received=received,
            findings=admitted.findings,
            capabilities=admitted.capabilities,
        )
        reserve = None
        if admitted.reserve:
            try:
                path = self.egress.open(run_id, admitted.net) if admitted.net else ""
            except CellblockError as exc:
                self.policy.released(admitted.client_key)
                self._fail(client, request, run_id, exc.code, exc.message, admitted.client_key, exc.field)
                self._resume(admitted.client_key)
                return
            state.egress = bool(path)
            reserve = m.Reserve(run=run_id, runtime=runtime, binds=admitted.binds, egress=path)
        now = time.monotonic()
        ticket = Ticket(
            run_id=run_id,
            runtime=runtime,
            job=job,
            context=state,
            queued_at=now,
            wait_deadline=now + self.queue_wait_s,
            reserve=reserve,
        )
        self.active[(client, request.id)] = run_id
        if not self.dispatcher.submit(ticket):
            self.active.pop((client, request.id), None)
            self.policy.released(admitted.client_key)
            if state.egress:
                self.egress.close(run_id)
            message = f"all sandboxes are busy and {self.dispatcher.queue_limit} requests are queued; retry later"
            self._fail(client, request, run_id, ErrorCode.OVERLOADED, message, admitted.client_key, retry_after_s=1.0)
            self._resume(admitted.client_key)  # its place in the client's concurrency is free again
            return
        # The job has gone out (or waits in the queue): the analysis, an AST
        # walk of ~0.1 ms for a line and more for long code, runs while the
        # worker runs the code instead of before it. Nothing can finish the
        # run before this returns: the broker has one thread.
        state.findings.extend(self.policy.analyse(runtime, request.code))

    # --- output and the end of a run -----------------------------------------------------------

    def chunk(self, state: Request, chunk: m.WorkerChunk) -> None:
        if not state.request.stream:
            return
        self._send_chunk(state, chunk.stream, self.policy.stream_text(state.streams, chunk.stream, chunk.data))

    def _send_chunk(self, state: Request, stream: str, text: str) -> None:
        if text:
            self.reply(state.client, m.OutputChunk(id=state.request.id, stream=stream, seq=state.seq, data=text))  # type: ignore[arg-type]
            state.seq += 1

    def finish(self, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        state: Request = ticket.context
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
            result = msgspec.structs.replace(result, findings=state.findings)
        else:
            assert error is not None
            result = results.from_error(request.id, ticket.run_id, request.language, error, findings=state.findings)
        if state.egress:
            result = msgspec.structs.replace(result, network=self.egress.close(ticket.run_id))
        self.policy.released(state.client_key)
        self.counters[f"status_{result.status.value}"] += 1
        self.reply(state.client, result)  # first: the history row is not the client's wait
        self.policy.finished(state.client_key, request, result, state.capabilities, state.received)
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
