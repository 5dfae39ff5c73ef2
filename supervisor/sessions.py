"""Sessions: one sandbox that lives longer than a run, for one client.

A session is opened by a job of its own: an empty first cell, sent to a
warm worker like any run (so opening costs what a run costs, and a sandbox
that cannot start says so at once). Its result comes back ``alive``, and
the dispatcher holds the worker for the session's next cell. Each cell is
an execute request naming the session (``supervisor.intake``); it goes to
that worker alone, one at a time.

A session belongs to the client key that opened it, and to its
conversation when it named one: anyone else gets ``session_not_found``,
worded the same whether the session exists or not. It ends when closed,
when idle for ``[sessions] idle_timeout_s``, when older than
``max_lifetime_s`` (after the cell it is running), when a cell does not
stop at its deadline, when its interpreter exits, and when the service
stops. Its worker is then killed by the launcher: nothing of it survives.
Its owner learns why at its next request (a short memory of ended
sessions; a restarted service has none, and says sessions end with it).
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo
from supervisor.catalogue import Catalogue
from supervisor.config import Config
from supervisor.dispatch import Dispatcher, Ticket
from supervisor.policy import Policy

Reply = Callable[[bytes, m.Reply], None]
REMEMBERED = 1024  # ended sessions whose owners are told why at their next request


@dataclass
class Session:
    session_id: str
    client_key: str
    conversation_id: str
    language: str  # the runtime ("python")
    runtime: str  # the kind of worker ("python:data")
    environment: str
    limits: m.JobLimits
    opened: float
    last_used: float
    worker: str = ""
    state: str = "opening"  # opening, idle, running
    cells: int = 0
    memory_bytes: int = 0
    expiring: str = ""  # why it ends once the running cell is over


@dataclass
class Opening:
    """The owner of a session's first (empty) cell: its result opens the session."""

    table: Sessions
    session: Session
    client: bytes
    request_id: str

    def chunk(self, chunk: m.WorkerChunk) -> None:
        pass

    def finish(self, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        self.table.opened(self, ticket, raw, error)


class Sessions:
    def __init__(
        self,
        config: Config,
        dispatcher: Dispatcher,
        policy: Policy,
        catalogue: Catalogue,
        reply: Reply,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config.sessions
        self.queue_wait_s = config.service.queue_wait_s
        self.dispatcher = dispatcher
        self.policy = policy
        self.catalogue = catalogue
        self.reply = reply
        self.clock = clock
        self.by_id: dict[str, Session] = {}
        self.ended: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self.counters: collections.Counter[str] = collections.Counter()

    # --- opening -------------------------------------------------------------------------

    def open(self, client: bytes, request: m.SessionOpen) -> None:
        """Start opening a session; its SessionReply (or ErrorReply) follows. Raises
        CellblockError for a request that cannot be a session."""
        key = self.policy.client_key(client.hex(), request)
        if not self.config.enabled:
            raise CellblockError(ErrorCode.INVALID_REQUEST, "sessions are off in this service ([sessions] enabled)")
        probe = m.ExecuteRequest(
            id=request.id, code="", language=request.language, environment=request.environment, client_id=key
        )
        kind, _ = self.catalogue.resolve_request(probe)
        language = kind.partition(":")[0]
        if not self.catalogue.keeps_state(kind):
            raise CellblockError(
                ErrorCode.INVALID_REQUEST,
                f"{language} cannot keep state between cells; run its code without a session",
                "language",
            )
        limits = self.policy.session_limits(key, request)
        self._check_room(key)
        now = self.clock()
        session = Session(
            session_id="s-" + secrets.token_hex(10),
            client_key=key,
            conversation_id=request.conversation_id,
            language=language,
            runtime=kind,
            environment=kind.partition(":")[2],
            limits=limits,
            opened=now,
            last_used=now,
        )
        job = m.Job(id=session.session_id, code="", limits=limits, session=True, language=language)
        owner = Opening(self, session, client, request.id)
        ticket = Ticket(session.session_id, kind, job, owner, now, now + self.queue_wait_s)
        self.by_id[session.session_id] = session
        if not self.dispatcher.submit(ticket):
            del self.by_id[session.session_id]
            raise CellblockError(ErrorCode.OVERLOADED, "every sandbox is busy and the queue is full; retry shortly")
        self.counters["sessions_opening"] += 1

    def _check_room(self, key: str) -> None:
        mine = sum(1 for s in self.by_id.values() if s.client_key == key)
        if mine >= self.config.per_client:
            raise CellblockError(
                ErrorCode.RATE_LIMITED,
                f"client {key!r} has {mine} sessions open, its most ([sessions] per_client); close one first",
            )
        if len(self.by_id) >= self.config.total:
            raise CellblockError(
                ErrorCode.OVERLOADED,
                f"the service has {len(self.by_id)} sessions open, its most ([sessions] total); retry later",
            )

    def opened(self, opening: Opening, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        session = opening.session
        current = self.by_id.get(session.session_id) is session
        if raw is not None and raw.alive and current and ticket.worker is not None:
            session.worker = ticket.worker
            session.state = "idle"
            session.last_used = self.clock()
            session.memory_bytes = raw.memory_bytes
            self.counters["sessions_opened"] += 1
            self.reply(opening.client, m.SessionReply(id=opening.request_id, session=self.info(session)))
            return
        if raw is not None and raw.alive and ticket.worker is not None:
            self.dispatcher.release(ticket.worker, "its session was closed while it opened")
        self.by_id.pop(session.session_id, None)
        self.counters["sessions_failed"] += 1
        why = error.message if error is not None else (raw.reason if raw is not None else "") or "it did not start"
        code = error.code if error is not None else ErrorCode.WORKER_LOST
        if not current:
            code, why = ErrorCode.SESSION_NOT_FOUND, "it was closed before it opened"
        self.reply(
            opening.client,
            m.ErrorReply(id=opening.request_id, error=ErrorInfo(code=code, message=f"no session: {why}")),
        )

    # --- cells --------------------------------------------------------------------------------

    def for_cell(self, client: bytes, request: m.ExecuteRequest) -> Session:
        """The session a cell names, if the cell's client owns it and it is free; the
        request's language must be the session's (or none)."""
        session = self._owned(self.policy.client_key(client.hex(), request), request.session, request.conversation_id)
        if session.state != "idle":
            doing = "still opening" if session.state == "opening" else "running another cell"
            raise CellblockError(
                ErrorCode.SESSION_BUSY, f"session {session.session_id} is {doing}; send the next cell when it ends"
            )
        if request.language.lower() not in ("", "auto"):
            asked = self.catalogue.resolve(request.language)
            if asked != session.language:
                raise CellblockError(
                    ErrorCode.INVALID_REQUEST,
                    f"session {session.session_id} runs {session.language}, not {asked}",
                    "language",
                )
        if request.stdin:
            raise CellblockError(
                ErrorCode.INVALID_REQUEST, "a session's cells read no stdin; hand the data in as a file", "stdin"
            )
        return session

    def cell_started(self, session: Session) -> None:
        session.state = "running"

    def cell_done(self, session_id: str, raw: m.WorkerResult | None) -> bool:
        """A cell is over; True when the session ended with it."""
        session = self.by_id.get(session_id)
        if session is None:
            return True
        session.cells += 1
        session.last_used = self.clock()
        if raw is None or not raw.alive:
            why = raw.reason if raw is not None else "its sandbox was lost"
            self._forget(session, f"its cell ended it ({why})")
            return True
        session.state = "idle"
        session.memory_bytes = raw.memory_bytes
        if session.expiring:
            self.end(session, session.expiring)
            return True
        return False

    # --- ending -------------------------------------------------------------------------------

    def close(self, client: bytes, request: m.SessionClose) -> m.SessionReply:
        session = self._owned(self.policy.client_key(client.hex(), request), request.session, "", any_conversation=True)
        info = self.info(session)
        self.end(session, "closed by its client")
        return m.SessionReply(id=request.id, session=msgspec.structs.replace(info, state="ended", ended="closed"))

    def end(self, session: Session, reason: str) -> None:
        """End a session now: its worker killed (a running cell then ends as lost)."""
        self._forget(session, reason)
        if session.worker:
            self.dispatcher.release(session.worker, f"session ended: {reason}")

    def _forget(self, session: Session, reason: str) -> None:
        if self.by_id.pop(session.session_id, None) is None:
            return
        self.counters["sessions_ended"] += 1
        self.ended[session.session_id] = (session.client_key, reason)
        while len(self.ended) > REMEMBERED:
            self.ended.popitem(last=False)

    def held_lost(self, worker_id: str, detail: str) -> None:
        """A session's worker died between cells."""
        for session in list(self.by_id.values()):
            if session.worker == worker_id:
                self._forget(session, f"its sandbox ended ({detail})")

    def close_all(self, reason: str) -> None:
        for session in list(self.by_id.values()):
            self.end(session, reason)

    def tick(self) -> float | None:
        """End idle and old sessions; return when the next one is due."""
        now = self.clock()
        idle_s, life_s = self.config.idle_timeout_s, self.config.max_lifetime_s
        due: list[float] = []
        for session in list(self.by_id.values()):
            if session.state == "opening":
                continue
            if now - session.opened >= life_s and not session.expiring:
                session.expiring = f"older than {life_s:.0f} s (the service's [sessions] max_lifetime_s)"
                self.counters["sessions_expired"] += 1
            if session.state == "idle" and session.expiring:
                self.end(session, session.expiring)
            elif session.state == "idle" and now - session.last_used >= idle_s:
                self.counters["sessions_idle_ended"] += 1
                self.end(session, f"idle for {idle_s:.0f} s (the service's [sessions] idle_timeout_s)")
            else:
                due += [session.opened + life_s] + ([session.last_used + idle_s] if session.state == "idle" else [])
        return min(due) if due else None

    # --- what clients see ----------------------------------------------------------------------

    def _owned(self, key: str, session_id: str, conversation: str, any_conversation: bool = False) -> Session:
        session = self.by_id.get(session_id)
        if (
            session is not None
            and session.client_key == key
            and (any_conversation or not session.conversation_id or session.conversation_id == conversation)
        ):
            return session
        owner, reason = self.ended.get(session_id, ("", ""))
        said = f"; it ended: {reason}" if owner == key and reason else ""
        if not said:
            said = (
                " (a session ends when closed, after "
                f"{self.config.idle_timeout_s:.0f} s idle or {self.config.max_lifetime_s:.0f} s in all, "
                "and when the service restarts; open a new one)"
            )
        raise CellblockError(ErrorCode.SESSION_NOT_FOUND, f"no session {session_id!r} for this client{said}", "session")

    def info(self, session: Session) -> m.SessionInfo:
        now = self.clock()
        return m.SessionInfo(
            session=session.session_id,
            language=session.language,
            environment=session.environment,
            client_id=session.client_key,
            conversation_id=session.conversation_id,
            state=session.state,
            age_s=round(now - session.opened, 3),
            idle_s=round(now - session.last_used, 3) if session.state == "idle" else 0.0,
            cells=session.cells,
            memory_bytes=session.memory_bytes,
            memory_limit_bytes=session.limits.memory_bytes,
            timeout_ms=session.limits.timeout_ms,
            idle_timeout_s=self.config.idle_timeout_s,
            max_lifetime_s=self.config.max_lifetime_s,
        )

    def listing(self, client: bytes, request: m.SessionList) -> m.SessionsReply:
        key = self.policy.client_key(client.hex(), request)
        mine = [self.info(s) for s in self.by_id.values() if s.client_key == key]
        return m.SessionsReply(id=request.id, sessions=mine)

    def everyone(self) -> list[m.SessionInfo]:
        return [self.info(s) for s in self.by_id.values()]
