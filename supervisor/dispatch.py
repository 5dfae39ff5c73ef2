"""The broker's worker table, job queue and deadlines. No sockets here.

A job goes to exactly one warm worker, or waits in a bounded queue until
one is ready; past the bound it is refused as overloaded. A job whose run
holds path or network grants instead asks the launcher for a worker of its
own (``Reserve``) and goes only to that worker, which no other job can get. Every job ends in
exactly one call to ``finish``: with the worker's result, or with an error
when the worker dies, a deadline passes, the launcher is lost or the queue
wait runs out. Results are accepted only from the worker the job was sent
to, for that job; anything else is counted and dropped.

A session's worker outlives its job: when its result says it is alive the
worker is held (``HELD``) for the session's next cell, which goes to it
alone (``submit_to``). It leaves the table when the session ends
(``release``, which has the launcher kill it) or when it dies; a held
worker that dies is reported through ``Effects.held_lost``.

Effects go through the ``Effects`` callables, so the logic is unit-tested
with a fake clock and no processes.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from protocol import messages as m
from protocol.errors import ErrorCode, ErrorInfo

# Extra time the broker allows past a job's own deadline before it decides
# the monitor (which owns the real deadline) is wedged.
DEADLINE_MARGIN_S = 5.0
READY_STASH_S = 10.0
# A worker's result can reach the broker just after the launcher reports the
# worker's exit (two sockets); wait this long before calling the job lost.
EXIT_GRACE_S = 1.0


class WorkerState(enum.Enum):
    STARTING = "starting"
    WARM = "warm"
    BUSY = "busy"
    HELD = "held"  # a session's, between cells


@dataclass
class WorkerEntry:
    worker_id: str
    runtime: str
    pid: int
    generation: int
    state: WorkerState = WorkerState.STARTING
    job: str | None = None
    reserved_for: str = ""


class Owner(Protocol):
    """Who a job's output and its one final result go to: a client's request
    (``supervisor.intake``) or a runtime's self-test (``supervisor.catalogue``)."""

    def chunk(self, chunk: m.WorkerChunk) -> None: ...

    def finish(self, ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None: ...


@dataclass
class Ticket:
    """One job from the moment it is accepted until its one final reply."""

    run_id: str
    runtime: str
    job: m.Job
    owner: Owner
    queued_at: float
    wait_deadline: float
    worker: str | None = None
    started: float = 0.0
    deadline: float = 0.0
    lost: str = ""  # why the worker is gone, once the launcher said so
    reserve: m.Reserve | None = None  # set: the run gets a worker made for it alone


@dataclass
class Effects:
    send_job: Callable[[str, m.Job], bool]  # False: the worker is unreachable
    taken: Callable[[str], None]
    kill: Callable[[str, str], None]
    finish: Callable[[Ticket, m.WorkerResult | None, ErrorInfo | None], None]
    reserve: Callable[[m.Reserve], None]
    held_lost: Callable[[str, str], None] = lambda worker, detail: None  # a session's worker died between cells


class Statistics(msgspec.Struct, frozen=True, kw_only=True):
    queued: int
    queue_limit: int
    in_flight: int
    warm: dict[str, int]
    busy: dict[str, int]
    starting: dict[str, int]
    counters: dict[str, int]
    held: int = 0  # sessions' workers between cells


@dataclass
class Dispatcher:
    effects: Effects
    clock: Callable[[], float]
    queue_limit: int = 64
    queue_wait_s: float = 30.0
    generation: int = 0
    workers: dict[str, WorkerEntry] = field(default_factory=dict)
    warm: dict[str, collections.deque[str]] = field(default_factory=dict)
    queue: collections.deque[Ticket] = field(default_factory=collections.deque)
    running: dict[str, Ticket] = field(default_factory=dict)
    stash: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    reserved: dict[str, Ticket] = field(default_factory=dict)  # run id -> waiting for its own worker
    # Kinds no worker is kept warm for (``pool`` 0 in the config): each of their
    # runs and sessions gets a worker made for it, as a run with grants does.
    cold: frozenset[str] = frozenset()
    counters: collections.Counter[str] = field(default_factory=collections.Counter)

    # --- jobs ---------------------------------------------------------------------

    def submit(self, ticket: Ticket, urgent: bool = False) -> bool:
        """Dispatch now or queue; False means overloaded (caller replies).

        ``urgent`` (the service's own self-test): first in the queue, and
        never refused for a full one, so client load cannot starve it."""
        if ticket.reserve is None and ticket.runtime in self.cold:
            ticket.reserve = m.Reserve(run=ticket.run_id, runtime=ticket.runtime)
        if ticket.reserve is not None:
            if len(self.queue) + len(self.reserved) >= self.queue_limit:
                self.counters["overloaded"] += 1
                return False
            self.reserved[ticket.run_id] = ticket
            self.counters["reserved"] += 1
            self.effects.reserve(ticket.reserve)
            return True
        if self._dispatch(ticket):
            return True
        if urgent:
            self.queue.appendleft(ticket)
            self.counters["queued"] += 1
            return True
        if len(self.queue) + len(self.reserved) >= self.queue_limit:
            self.counters["overloaded"] += 1
            return False
        self.queue.append(ticket)
        self.counters["queued"] += 1
        return True

    def _dispatch(self, ticket: Ticket) -> bool:
        warm = self.warm.get(ticket.runtime)
        while warm:
            entry = self.workers.get(warm.popleft())
            if entry is None or entry.state is not WorkerState.WARM:
                continue
            if self._start(entry, ticket):
                return True
        return False

    def _start(self, entry: WorkerEntry, ticket: Ticket, taken: bool = True) -> bool:
        now = self.clock()
        entry.state = WorkerState.BUSY
        entry.job = ticket.run_id
        ticket.worker = entry.worker_id
        ticket.started = now
        ticket.deadline = now + ticket.job.limits.timeout_ms / 1000 + DEADLINE_MARGIN_S
        self.running[ticket.run_id] = ticket
        if not self.effects.send_job(entry.worker_id, ticket.job):
            # Gone between ready and now: forget it (the caller tries another).
            self.counters["unreachable_worker"] += 1
            del self.running[ticket.run_id]
            self.workers.pop(entry.worker_id, None)
            ticket.worker = None
            return False
        self.counters["dispatched"] += 1
        # The launcher makes its replacement now, so a long run does not hold
        # a place in the warm pool (runs beyond the pool would queue behind it).
        # The launcher waits for a pause in runs before it does, while enough
        # of the pool is left (supervisor.pool.REFILL_QUIET_S).
        # (A session's later cells go to a worker already taken.)
        if taken:
            self.effects.taken(entry.worker_id)
        return True

    def submit_to(self, worker_id: str, ticket: Ticket) -> bool:
        """A session's cell, to the session's held worker; False when it is not held
        (running another cell, or gone)."""
        entry = self.workers.get(worker_id)
        if entry is None or entry.state is not WorkerState.HELD:
            return False
        return self._start(entry, ticket, taken=False)

    def release(self, worker_id: str, reason: str) -> None:
        """A session ended: its worker leaves the table and the launcher kills it."""
        if self.workers.pop(worker_id, None) is not None:
            self.effects.kill(worker_id, reason)

    def _end(self, ticket: Ticket, result: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        self.running.pop(ticket.run_id, None)
        entry = self.workers.get(ticket.worker) if ticket.worker is not None else None
        if entry is not None and result is not None and result.alive and ticket.job.session:
            entry.state = WorkerState.HELD  # the session's next cell goes to it
            entry.job = None
        elif ticket.worker is not None:
            self.workers.pop(ticket.worker, None)
        self.counters["finished"] += 1
        self.effects.finish(ticket, result, error)

    # --- workers ----------------------------------------------------------------

    def spawned(self, worker_id: str, runtime: str, pid: int, reserved_for: str = "") -> None:
        self.workers[worker_id] = WorkerEntry(worker_id, runtime, pid, self.generation, reserved_for=reserved_for)
        stashed = self.stash.pop(worker_id, None)
        if stashed is not None:
            self.ready(worker_id, stashed[0], stashed[1])

    def ready(self, worker_id: str, runtime: str, pid: int) -> None:
        entry = self.workers.get(worker_id)
        if entry is None:
            # The launcher's Spawned may still be on its way: keep it briefly.
            self.stash[worker_id] = (runtime, pid, self.clock())
            return
        if entry.state is not WorkerState.STARTING or entry.runtime != runtime:
            self.counters["unexpected_ready"] += 1
            return
        if entry.reserved_for:
            self._ready_reserved(entry)
            return
        entry.state = WorkerState.WARM
        self.warm.setdefault(runtime, collections.deque()).append(worker_id)
        for ticket in list(self.queue):
            if ticket.runtime == runtime:
                self.queue.remove(ticket)
                if self._dispatch(ticket):
                    return
                self.queue.appendleft(ticket)
                return

    def _ready_reserved(self, entry: WorkerEntry) -> None:
        ticket = self.reserved.pop(entry.reserved_for, None)
        if ticket is None:  # its run ended (deadline, shutdown) while the worker was made
            self.counters["reserved_orphan"] += 1
            self.workers.pop(entry.worker_id, None)
            self.effects.kill(entry.worker_id, "its run is over")
            return
        if not self._start(entry, ticket):
            self._end(
                ticket,
                None,
                ErrorInfo(code=ErrorCode.WORKER_LOST, message="the sandbox made for this run was gone before it ran"),
            )

    def reserve_failed(self, run_id: str, code: ErrorCode, reason: str) -> None:
        ticket = self.reserved.pop(run_id, None)
        if ticket is not None:
            self.counters["reserve_failed"] += 1
            self._end(ticket, None, ErrorInfo(code=code, message=f"no sandbox could be made for this run: {reason}"))

    def _fail_reserved(self, message: str) -> None:
        for ticket in list(self.reserved.values()):
            del self.reserved[ticket.run_id]
            self._end(ticket, None, ErrorInfo(code=ErrorCode.WORKER_LOST, message=message))

    def result(self, worker_id: str, result: m.WorkerResult) -> bool:
        ticket = self.running.get(result.id)
        if ticket is None or ticket.worker != worker_id:
            self.counters["forged_or_late_result"] += 1
            return False
        self._end(ticket, result, None)
        return True

    def chunk_ticket(self, worker_id: str, job_id: str) -> Ticket | None:
        ticket = self.running.get(job_id)
        if ticket is None or ticket.worker != worker_id:
            self.counters["forged_or_late_chunk"] += 1
            return None
        return ticket

    def exited(self, worker_id: str, detail: str) -> None:
        entry = self.workers.get(worker_id)
        if entry is None:
            return
        if entry.state is WorkerState.HELD:
            del self.workers[worker_id]
            self.effects.held_lost(worker_id, detail)
            return
        ticket = self.running.get(entry.job) if entry.job is not None else None
        if ticket is None:
            self.workers.pop(worker_id, None)
            waiting = self.reserved.pop(entry.reserved_for, None) if entry.reserved_for else None
            if waiting is not None:
                self._end(
                    waiting,
                    None,
                    ErrorInfo(
                        code=ErrorCode.WORKER_LOST,
                        message=f"the sandbox made for this run did not start ({detail})",
                    ),
                )
            return
        ticket.lost = detail
        ticket.deadline = min(ticket.deadline, self.clock() + EXIT_GRACE_S)

    def launcher_lost(self) -> None:
        """Idle workers of the old launcher stop by themselves; busy ones may still
        report. Forget the idle ones so no job goes to a worker about to exit."""
        for entry in list(self.workers.values()):
            if entry.state is not WorkerState.BUSY:
                self._forget_idle(entry, "its launcher went away")
        for warm in self.warm.values():
            warm.clear()
        self._fail_reserved("the launcher making this run's sandbox went away; retry")

    def _forget_idle(self, entry: WorkerEntry, detail: str) -> None:
        self.workers.pop(entry.worker_id, None)
        if entry.state is WorkerState.HELD:  # it stops with its launcher: the session is over
            self.effects.held_lost(entry.worker_id, detail)

    def new_generation(self, generation: int) -> None:
        """A new launcher, or a new link to the same one. Idle workers of the old
        generation are gone or going; busy ones either finish and report (the
        launcher died, its workers did not) or are reported as exited by the
        launcher that killed them, and the broker's deadline covers the rest."""
        self.generation = generation
        for entry in list(self.workers.values()):
            if entry.generation != generation and entry.state is not WorkerState.BUSY:
                self._forget_idle(entry, "its launcher was replaced")
        for warm in self.warm.values():
            warm.clear()
        self._fail_reserved("the launcher making this run's sandbox was replaced; retry")

    # --- time ------------------------------------------------------------------------

    def tick(self) -> float | None:
        """Expire deadlines; return the next time something is due."""
        now = self.clock()
        for ticket in list(self.running.values()):
            if now >= ticket.deadline:
                worker = ticket.worker
                if ticket.lost:
                    self.counters["worker_lost"] += 1
                    message = (
                        f"the sandbox running this job died before reporting ({ticket.lost}); the run did not complete"
                    )
                else:
                    self.counters["broker_deadline"] += 1
                    message = "the sandbox did not report by the deadline and was killed"
                    if worker is not None:
                        self.effects.kill(worker, "no result by the broker's deadline")
                self._end(ticket, None, ErrorInfo(code=ErrorCode.WORKER_LOST, message=message))
        for ticket in list(self.queue):
            if now >= ticket.wait_deadline:
                self.queue.remove(ticket)
                self.counters["queue_timeout"] += 1
                self._end(
                    ticket,
                    None,
                    ErrorInfo(
                        code=ErrorCode.OVERLOADED,
                        message=f"no sandbox became free within {self.queue_wait_s:.0f} s; retry later",
                    ),
                )
        for ticket in list(self.reserved.values()):
            if now >= ticket.wait_deadline:
                del self.reserved[ticket.run_id]
                self.counters["reserve_timeout"] += 1
                for worker_id in [e.worker_id for e in self.workers.values() if e.reserved_for == ticket.run_id]:
                    self.effects.kill(worker_id, "its sandbox took too long to start")
                self._end(
                    ticket,
                    None,
                    ErrorInfo(code=ErrorCode.OVERLOADED, message="the sandbox for this run took too long to start"),
                )
        for worker_id, (_, _, at) in list(self.stash.items()):
            if now - at > READY_STASH_S:
                del self.stash[worker_id]
                self.counters["unknown_worker"] += 1
        times = [t.deadline for t in self.running.values()]
        times += [t.wait_deadline for t in (*self.queue, *self.reserved.values())]
        if self.stash:
            times.append(min(at for _, _, at in self.stash.values()) + READY_STASH_S)
        return min(times) if times else None

    def fail_queued(self, runtime: str, error: ErrorInfo) -> None:
        for ticket in [t for t in self.queue if t.runtime == runtime]:
            self.queue.remove(ticket)
            self._end(ticket, None, error)

    def fail_all(self, error: ErrorInfo) -> None:
        waiting = [*self.queue, *self.reserved.values()]
        self.queue.clear()
        self.reserved.clear()
        for ticket in waiting:
            self._end(ticket, None, error)
        for ticket in list(self.running.values()):
            if ticket.worker is not None:
                self.effects.kill(ticket.worker, "service stopping")
            self._end(ticket, None, error)

    @property
    def idle(self) -> bool:
        return not self.queue and not self.running and not self.reserved

    def statistics(self) -> Statistics:
        warm: collections.Counter[str] = collections.Counter()
        busy: collections.Counter[str] = collections.Counter()
        starting: collections.Counter[str] = collections.Counter()
        held: collections.Counter[str] = collections.Counter()
        states = {
            WorkerState.WARM: warm,
            WorkerState.BUSY: busy,
            WorkerState.STARTING: starting,
            WorkerState.HELD: held,
        }
        for entry in self.workers.values():
            states[entry.state][entry.runtime] += 1
        return Statistics(
            queued=len(self.queue) + len(self.reserved),
            queue_limit=self.queue_limit,
            in_flight=len(self.running),
            warm=dict(warm),
            busy=dict(busy),
            starting=dict(starting),
            counters=dict(self.counters),
            held=sum(held.values()),
        )
