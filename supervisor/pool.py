"""The pool: spawn, reap, respawn and kill workers; owns the worker table.

Runs inside the launcher. It keeps ``target`` idle (not yet taken) workers
per runtime, refills when the broker takes one (once runs pause for
``REFILL_QUIET_S``, or at once when a quarter or less is left), reaps every exit in a loop
and classifies it, and stops a crash loop: more than ``max_failures`` setup
failures of a runtime within ``window`` seconds mark it unhealthy, and it is
probed again after a backoff that doubles up to ``max_backoff``.

All effects go through injected callables (spawn, kill, waitpid, clock,
report), so the logic is tested with a fake clock and a fake waitpid.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol import messages as m
from protocol.errors import ErrorCode
from worker.exits import WorkerExit, describe

SpawnFn = Callable[[str, int], tuple[str, int]]  # (runtime, slot) -> (worker id, pid)
ReserveFn = Callable[[str, int, m.Reserve], tuple[str, int]]


class SpawnDeferred(Exception):
    """Not now, and not the sandbox's fault (the broker is not reachable)."""


WaitFn = Callable[[int, int], tuple[int, int]]
REFILL_QUIET_S = 0.005
SPAWN_RETRY_S = 0.5  # after a clone() that failed (EAGAIN, ENOMEM) while the runtime is still healthy


@dataclass
class Worker:
    worker_id: str
    runtime: str
    pid: int
    slot: int
    started: float
    taken: bool = False
    kill_reason: str = ""
    reserved_for: str = ""  # made for one run; not part of the warm pool


@dataclass
class RuntimeState:
    target: int
    healthy: bool = True
    reason: str = ""
    failures: collections.deque[float] = field(default_factory=collections.deque)
    setup_failures: int = 0
    crashes: int = 0
    spawned: int = 0
    retry_at: float = 0.0
    backoff: float = 0.0
    refill_at: float = 0.0  # a taken worker's replacement waits for a quiet moment until then


def classify(status: int, kill_reason: str) -> tuple[m.ExitKind, int | None, int | None, str]:
    """Turn a wait status into (kind, exit code, signal, detail)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        if kill_reason:
            return m.ExitKind.KILLED, None, sig, kill_reason
        return m.ExitKind.CRASHED, None, sig, f"killed by {name}"
    code = os.WEXITSTATUS(status)
    if code == WorkerExit.DONE or code in (WorkerExit.BROKER_LOST, WorkerExit.PAYLOAD_LOST):
        return m.ExitKind.DONE, code, None, describe(code)
    if code == WorkerExit.RUNTIME_MISSING:
        return m.ExitKind.RUNTIME_MISSING, code, None, "runtime missing in the sandbox"
    try:
        named = WorkerExit(code)
    except ValueError:
        return m.ExitKind.CRASHED, code, None, describe(code)
    if named.is_setup_failure:
        return m.ExitKind.SETUP_FAILED, code, None, f"sandbox step '{named.step}' failed"
    return m.ExitKind.CRASHED, code, None, describe(code)


class Pool:
    def __init__(
        self,
        targets: dict[str, int],
        *,
        spawn: SpawnFn,
        kill: Callable[[int, int], None],
        report: Callable[[m.Internal], None],
        clock: Callable[[], float],
        slots: int,
        waitpid: WaitFn = os.waitpid,
        others: Callable[[int, int], None] = lambda pid, status: None,
        max_failures: int = 5,
        window: float = 30.0,
        first_backoff: float = 5.0,
        max_backoff: float = 300.0,
    ) -> None:
        self.runtimes = {name: RuntimeState(target=t) for name, t in targets.items()}
        self.workers: dict[int, Worker] = {}
        self.by_id: dict[str, Worker] = {}
        self._spawn = spawn
        self._kill = kill
        self._report = report
        self._clock = clock
        self._waitpid = waitpid
        self._others = others  # a child that is not a worker (a zygote, a helper) exited
        self._free_slots = collections.deque(range(slots))
        self.max_failures = max_failures
        self.window = window
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.stopping = False
        self.paused = True  # until a broker is connected: workers would have nobody to talk to
        self._wake_at: float | None = None

    # --- filling ---------------------------------------------------------------

    def reserve(self, reservation: m.Reserve, spawn: ReserveFn) -> tuple[ErrorCode, str] | None:
        """Make a worker for one run now; None on success, else an error code and why."""
        if self.stopping or self.paused:
            return ErrorCode.SHUTTING_DOWN, "the launcher is not serving a broker"
        if not self._free_slots:
            return ErrorCode.OVERLOADED, "every sandbox slot is in use"
        slot = self._free_slots.popleft()
        try:
            worker_id, pid = spawn(reservation.runtime, slot, reservation)
        except (SpawnDeferred, OSError) as exc:
            self._free_slots.appendleft(slot)
            return ErrorCode.INTERNAL_ERROR, f"the sandbox could not be made ({exc})"
        worker = Worker(worker_id, reservation.runtime, pid, slot, self._clock(), taken=True)
        worker.reserved_for = reservation.run
        self.workers[pid] = worker
        self.by_id[worker_id] = worker
        self._report(m.Spawned(worker=worker_id, runtime=reservation.runtime, pid=pid, reserved_for=reservation.run))
        return None

    def idle(self, runtime: str) -> int:
        return sum(1 for w in self.workers.values() if w.runtime == runtime and not w.taken)

    def fill(self) -> None:
        """Spawn what is missing now; remember when deferred work falls due (``next_wakeup``)."""
        self._wake_at = None
        if self.stopping or self.paused:
            return
        now = self._clock()
        for name, state in self.runtimes.items():
            if not state.healthy:
                if self.idle(name):
                    continue  # its probe is out: taken or exited, it calls fill() again
                if now < state.retry_at:
                    self._wake(state.retry_at)
                    continue
                want = 1  # one probe
            else:
                idle = self.idle(name)
                if now < state.refill_at and idle > state.target // 4:
                    if idle < state.target:
                        self._wake(state.refill_at)
                    continue  # enough left: let the runs just started have the CPUs
                want = state.target - idle
            for _ in range(want):
                if not self._free_slots:
                    return
                slot = self._free_slots.popleft()
                try:
                    worker_id, pid = self._spawn(name, slot)
                except SpawnDeferred:
                    self._free_slots.appendleft(slot)
                    return
                except OSError as exc:
                    self._free_slots.appendleft(slot)
                    self._setup_failed(name, now, f"clone failed: {exc.strerror}")
                    # No worker, no exit to reap: only a time brings the next try.
                    self._wake(state.retry_at if not state.healthy else now + SPAWN_RETRY_S)
                    break
                worker = Worker(worker_id, name, pid, slot, now)
                self.workers[pid] = worker
                self.by_id[worker_id] = worker
                state.spawned += 1
                self._report(m.Spawned(worker=worker_id, runtime=name, pid=pid))
                if self.paused or self.stopping:
                    return  # the report lost the broker link: no worker may go unannounced

    def _wake(self, at: float) -> None:
        self._wake_at = at if self._wake_at is None else min(self._wake_at, at)

    def next_wakeup(self) -> float | None:
        """When the last fill() deferred something (a refill, a probe), the time it falls due.

        Set by fill() from the clock it read, so a moment that passes before
        the caller goes to sleep is still returned (a sleep of 0, then fill()
        again) rather than dropped; nothing is returned for work that only an
        event can unblock (a probe out, no free slot), so the loop never spins.
        """
        return self._wake_at

    # --- the broker's requests ----------------------------------------------

    def taken(self, worker_id: str) -> None:
        worker = self.by_id.get(worker_id)
        if worker is not None:
            worker.taken = True
            state = self.runtimes[worker.runtime]
            if not state.healthy:
                self._set_health(worker.runtime, True, "")
            # Making a sandbox takes ~5-10 ms of CPU; started now it competes
            # with the run that took the worker. While a quarter of the pool
            # is still warm, it waits until runs pause for REFILL_QUIET_S.
            state.refill_at = self._clock() + REFILL_QUIET_S
        self.fill()

    def kill(self, worker_id: str, reason: str) -> None:
        worker = self.by_id.get(worker_id)
        if worker is None:
            return
        worker.kill_reason = worker.kill_reason or reason
        self._kill(worker.pid, signal.SIGKILL)

    def kill_all(self, reason: str) -> None:
        for worker in list(self.workers.values()):
            worker.kill_reason = worker.kill_reason or reason
            self._kill(worker.pid, signal.SIGKILL)

    # --- reaping ---------------------------------------------------------------

    def reap(self) -> list[m.Exited]:
        exits = []
        while True:
            try:
                pid, status = self._waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                self._others(pid, status)
                continue
            self.by_id.pop(worker.worker_id, None)
            self._free_slots.append(worker.slot)
            kind, code, sig, detail = classify(status, worker.kill_reason)
            exited = m.Exited(
                worker=worker.worker_id, runtime=worker.runtime, kind=kind, code=code, signal=sig, detail=detail
            )
            exits.append(exited)
            self._account(worker, exited)
            self._report(exited)
        self.fill()
        return exits

    def _account(self, worker: Worker, exited: m.Exited) -> None:
        if worker.reserved_for:
            return  # one run's grants (a path gone, say) say nothing of the runtime's health
        state = self.runtimes[worker.runtime]
        now = self._clock()
        if exited.kind in (m.ExitKind.SETUP_FAILED, m.ExitKind.RUNTIME_MISSING):
            self._setup_failed(worker.runtime, now, exited.detail)
        elif exited.kind == m.ExitKind.CRASHED:
            state.crashes += 1
            if not worker.taken:
                self._setup_failed(worker.runtime, now, exited.detail)

    def _setup_failed(self, runtime: str, now: float, detail: str) -> None:
        state = self.runtimes[runtime]
        state.setup_failures += 1
        state.failures.append(now)
        while state.failures and state.failures[0] < now - self.window:
            state.failures.popleft()
        if not state.healthy:
            state.backoff = min(self.max_backoff, state.backoff * 2)
            state.retry_at = now + state.backoff
            state.reason = detail
            self._report(self.health(runtime))
        elif len(state.failures) >= self.max_failures:
            state.backoff = self.first_backoff
            state.retry_at = now + state.backoff
            self._set_health(runtime, False, f"{detail} ({len(state.failures)} times in {self.window:.0f} s)")

    def _set_health(self, runtime: str, healthy: bool, reason: str) -> None:
        state = self.runtimes[runtime]
        state.healthy = healthy
        state.reason = reason
        if healthy:
            state.failures.clear()
            state.backoff = 0.0
        self._report(self.health(runtime))

    def health(self, runtime: str) -> m.Health:
        """What the broker is told of a runtime: on every change, and whole to a broker that (re)connects."""
        state = self.runtimes[runtime]
        return m.Health(
            runtime=runtime,
            healthy=state.healthy,
            reason=state.reason,
            restarts=state.crashes,
            setup_failures=state.setup_failures,
        )
