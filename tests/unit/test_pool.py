"""Pool logic: refill, reap, classify, restart budget; fake clock and waitpid."""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass, field

from protocol import messages as m
from supervisor.pool import REFILL_QUIET_S, Pool, classify
from worker.exits import WorkerExit


def exited(code: int) -> int:
    return code << 8


def killed(sig: int) -> int:
    return sig


@dataclass
class Fake:
    now: float = 0.0
    next_pid: int = 100
    spawned: list[tuple[str, int]] = field(default_factory=list)
    statuses: list[tuple[int, int]] = field(default_factory=list)
    reports: list[m.Internal] = field(default_factory=list)
    kills: list[tuple[int, int]] = field(default_factory=list)
    clone_errors: list[int] = field(default_factory=list)  # errnos the next spawns fail with

    def spawn(self, runtime: str, slot: int) -> tuple[str, int]:
        if self.clone_errors:
            code = self.clone_errors.pop(0)
            raise OSError(code, os.strerror(code))
        self.next_pid += 1
        self.spawned.append((runtime, slot))
        return f"w{self.next_pid}", self.next_pid

    def waitpid(self, pid: int, flags: int) -> tuple[int, int]:
        assert pid == -1 and flags == os.WNOHANG
        if not self.statuses:
            return 0, 0
        return self.statuses.pop(0)


def make(fake: Fake, target: int = 2, slots: int = 8) -> Pool:
    pool = Pool(
        {"python": target},
        spawn=fake.spawn,
        kill=lambda pid, sig: fake.kills.append((pid, sig)),
        report=fake.reports.append,
        clock=lambda: fake.now,
        slots=slots,
        waitpid=fake.waitpid,
        max_failures=3,
        window=30,
        first_backoff=5,
        max_backoff=40,
    )
    pool.paused = False
    return pool


def test_fill_to_target_and_refill_after_taken() -> None:
    fake = Fake()
    pool = make(fake)
    pool.fill()
    assert len(fake.spawned) == 2
    worker_id = next(iter(pool.by_id))
    pool.taken(worker_id)
    # One is still warm: the replacement waits for a quiet moment, not for long.
    assert len(fake.spawned) == 2 and pool.next_wakeup() == REFILL_QUIET_S
    fake.now += REFILL_QUIET_S
    pool.fill()
    assert len(fake.spawned) == 3 and pool.next_wakeup() is None


def test_refill_waits_while_runs_keep_coming_unless_the_pool_runs_low() -> None:
    fake = Fake()
    pool = make(fake, target=8, slots=16)
    pool.fill()
    taken = list(pool.by_id)
    for worker_id in taken[:5]:  # back to back: 3 left, more than a quarter of 8
        pool.taken(worker_id)
        fake.now += REFILL_QUIET_S / 2
        pool.fill()
    assert len(fake.spawned) == 8
    pool.taken(taken[5])  # 2 left: a quarter; refilled at once, to the target
    assert len(fake.spawned) == 14 and pool.idle("python") == 8


def fail_setup_three_times(fake: Fake, pool: Pool) -> None:
    """Fill, and let each worker die in its mounts step: the runtime's crash loop."""
    pool.fill()
    for _ in range(3):
        (pid,) = pool.workers
        fake.statuses.append((pid, exited(WorkerExit.SETUP_MOUNTS)))
        pool.reap()


def test_a_deferred_refill_still_wakes_the_launcher_after_its_moment_has_passed() -> None:
    fake = Fake()
    pool = make(fake)
    pool.fill()
    pool.taken(next(iter(pool.by_id)))  # one still warm: deferred
    # The launcher is busy (spawning, reaping) past the quiet moment before it
    # asks when to wake: the refill must still be due, not forgotten until
    # some other event comes (seen: a pool one short for a whole minute).
    fake.now += REFILL_QUIET_S * 3
    wake = pool.next_wakeup()
    assert wake is not None and wake <= fake.now
    pool.fill()
    assert len(fake.spawned) == 3 and pool.next_wakeup() is None


def test_an_idle_probe_does_not_keep_the_launcher_awake() -> None:
    fake = Fake()
    pool = make(fake, target=1)
    fail_setup_three_times(fake, pool)
    assert not pool.runtimes["python"].healthy
    assert pool.next_wakeup() == 5  # the backoff's end: then one probe
    fake.now += 5
    pool.fill()
    assert len(pool.workers) == 1
    # The probe waits to be taken (a run) or to exit (a reap): both call
    # fill(). Nothing is due before that; a past time would be a busy loop.
    assert pool.next_wakeup() is None


def test_a_failed_clone_is_tried_again_without_waiting_for_an_event() -> None:
    fake = Fake()
    pool = make(fake)
    fake.clone_errors = [errno.EAGAIN]
    pool.fill()  # no worker made, so no exit will ever wake the launcher for it
    assert len(fake.spawned) == 0 and pool.idle("python") == 0
    wake = pool.next_wakeup()
    assert wake is not None and wake > fake.now
    fake.now = wake
    pool.fill()
    assert len(fake.spawned) == 2


def test_a_runtime_made_unhealthy_by_failed_clones_is_probed_after_its_backoff() -> None:
    fake = Fake()
    pool = make(fake, target=1)
    fake.clone_errors = [errno.ENOMEM] * 3
    for _ in range(3):
        pool.fill()
        fake.now = pool.next_wakeup() or fake.now
    state = pool.runtimes["python"]
    assert not state.healthy and len(fake.spawned) == 0
    assert pool.next_wakeup() == state.retry_at  # not None: nothing else would ever bring the probe
    fake.now = state.retry_at
    pool.fill()
    assert len(fake.spawned) == 1  # the probe


def test_no_worker_is_made_after_the_broker_link_is_lost_mid_fill() -> None:
    fake = Fake()
    pool = make(fake, target=4)

    def report_over_a_link_that_breaks(message: m.Internal) -> None:
        # What the launcher does when a send fails: pause, and kill every worker.
        fake.reports.append(message)
        pool.paused = True
        pool.kill_all("broker link lost")

    pool._report = report_over_a_link_that_breaks
    pool.fill()
    # The one whose Spawned was being sent is killed; none is made after it,
    # to live on unannounced and counted as warm.
    assert len(fake.spawned) == 1 and len(fake.kills) == 1


def test_reap_frees_slot_and_reports() -> None:
    fake = Fake()
    pool = make(fake, target=1, slots=1)
    pool.fill()
    (pid,) = pool.workers
    fake.statuses.append((pid, exited(0)))
    exits = pool.reap()
    assert exits[0].kind is m.ExitKind.DONE
    assert len(fake.spawned) == 2  # the slot came back and was refilled


def test_crash_loop_marks_unhealthy_then_probes_with_backoff() -> None:
    fake = Fake()
    pool = make(fake, target=1)
    fail_setup_three_times(fake, pool)
    health = [r for r in fake.reports if isinstance(r, m.Health)]
    assert health and not health[-1].healthy and "mounts" in health[-1].reason
    spawned = len(fake.spawned)
    pool.fill()
    assert len(fake.spawned) == spawned  # waiting out the backoff
    fake.now += 5
    pool.fill()
    assert len(fake.spawned) == spawned + 1  # one probe
    (pid,) = pool.workers
    fake.statuses.append((pid, exited(WorkerExit.SETUP_MOUNTS)))
    pool.reap()
    assert pool.runtimes["python"].backoff == 10  # doubled
    # What a broker that connects now is told: as it is, not "healthy".
    told = pool.health("python")
    assert not told.healthy and "mounts" in told.reason and told.setup_failures == 4
    fake.now += 10
    pool.fill()
    worker_id = next(iter(pool.by_id))
    pool.taken(worker_id)  # the probe became ready and ran a job
    assert pool.runtimes["python"].healthy and pool.health("python").healthy


def test_kill_marks_reason() -> None:
    fake = Fake()
    pool = make(fake, target=1)
    pool.fill()
    worker_id, worker = next(iter(pool.by_id.items()))
    pool.kill(worker_id, "deadline")
    assert fake.kills == [(worker.pid, signal.SIGKILL)]
    fake.statuses.append((worker.pid, killed(signal.SIGKILL)))
    (ex,) = pool.reap()
    assert ex.kind is m.ExitKind.KILLED and ex.detail == "deadline"


def test_classify() -> None:
    assert classify(exited(0), "")[0] is m.ExitKind.DONE
    assert classify(exited(WorkerExit.SETUP_SECCOMP), "")[0] is m.ExitKind.SETUP_FAILED
    assert classify(exited(WorkerExit.RUNTIME_MISSING), "")[0] is m.ExitKind.RUNTIME_MISSING
    kind, _, sig, detail = classify(killed(signal.SIGSEGV), "")
    assert kind is m.ExitKind.CRASHED and sig == signal.SIGSEGV and "SIGSEGV" in detail
    assert classify(exited(3), "")[0] is m.ExitKind.CRASHED


def test_paused_pool_spawns_nothing() -> None:
    fake = Fake()
    pool = make(fake)
    pool.paused = True
    pool.fill()
    assert fake.spawned == []


def test_a_reserved_worker_is_outside_the_pool_and_its_failures_do_not_count() -> None:
    fake = Fake()
    pool = make(fake, target=1, slots=3)
    pool.fill()
    reservation = m.Reserve(run="r1", runtime="python")
    assert pool.reserve(reservation, lambda rt, slot, res: fake.spawn(rt, slot)) is None
    spawned = [r for r in fake.reports if isinstance(r, m.Spawned)]
    assert spawned[-1].reserved_for == "r1"
    assert pool.idle("python") == 1  # the reserved worker is not an idle pool worker
    # Its setup failing (a bad path, say) leaves the runtime healthy, however often.
    for _ in range(5):
        pid = fake.next_pid
        fake.statuses.append((pid, exited(WorkerExit.SETUP_MOUNTS)))
        pool.reap()
        assert pool.reserve(reservation, lambda rt, slot, res: fake.spawn(rt, slot)) is None
    assert all(r.healthy for r in fake.reports if isinstance(r, m.Health))


def test_reserve_without_a_free_slot_says_so() -> None:
    fake = Fake()
    pool = make(fake, target=2, slots=2)
    pool.fill()
    refused = pool.reserve(m.Reserve(run="r1", runtime="python"), lambda rt, slot, res: fake.spawn(rt, slot))
    assert refused is not None and refused[0] == "overloaded"
