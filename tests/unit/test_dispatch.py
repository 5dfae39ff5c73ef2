"""Dispatcher logic with a fake clock and no processes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from protocol import messages as m
from protocol.errors import ErrorCode, ErrorInfo
from supervisor import dispatch
from supervisor.dispatch import Dispatcher, Effects, Ticket


@dataclass
class Recorder:
    now: float = 100.0
    sent: list[tuple[str, str]] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)
    killed: list[tuple[str, str]] = field(default_factory=list)
    finished: list[tuple[str, m.WorkerResult | None, ErrorInfo | None]] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)
    reserved: list[m.Reserve] = field(default_factory=list)

    def send_job(self, worker: str, job: m.Job) -> bool:
        if worker in self.unreachable:
            return False
        self.sent.append((worker, job.id))
        return True

    def finish(self, ticket: Ticket, result: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        self.finished.append((ticket.run_id, result, error))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def disp(rec: Recorder) -> Dispatcher:
    effects = Effects(
        send_job=rec.send_job,
        taken=rec.taken.append,
        kill=lambda w, r: rec.killed.append((w, r)),
        finish=rec.finish,
        reserve=rec.reserved.append,
    )
    return Dispatcher(effects=effects, clock=lambda: rec.now, queue_limit=2, queue_wait_s=30)


def ticket(run_id: str, timeout_ms: int = 1000, runtime: str = "python", now: float = 100.0) -> Ticket:
    limits = m.JobLimits(timeout_ms=timeout_ms, cpu_ms=1000, memory_bytes=1, output_bytes=1)
    job = m.Job(id=run_id, code="1", limits=limits)
    owner = None  # the effects' finish is this test's recorder; no owner is asked
    return Ticket(run_id=run_id, runtime=runtime, job=job, owner=owner, queued_at=now, wait_deadline=now + 30)  # type: ignore[arg-type]


def warm(disp: Dispatcher, worker: str, runtime: str = "python") -> None:
    disp.spawned(worker, runtime, 1)
    disp.ready(worker, runtime, 1)


def result(run_id: str) -> m.WorkerResult:
    return m.WorkerResult(id=run_id, status=m.Status.OK)


def test_job_goes_to_a_warm_worker_once(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    assert disp.submit(ticket("j1"))
    assert rec.sent == [("w1", "j1")]
    assert rec.taken == ["w1"]  # its replacement is asked for as the run starts, not after it
    assert disp.result("w1", result("j1"))
    assert [f[0] for f in rec.finished] == ["j1"]
    assert rec.taken == ["w1"]  # once
    assert not disp.result("w1", result("j1"))  # a second result is dropped


def test_queue_then_overloaded(disp: Dispatcher, rec: Recorder) -> None:
    assert disp.submit(ticket("a")) and disp.submit(ticket("b"))
    assert not disp.submit(ticket("c"))  # queue_limit=2
    warm(disp, "w1")
    assert rec.sent == [("w1", "a")]
    assert disp.statistics().queued == 1


def test_an_urgent_ticket_goes_first_even_when_the_queue_is_full(disp: Dispatcher, rec: Recorder) -> None:
    assert disp.submit(ticket("a")) and disp.submit(ticket("b"))
    assert not disp.submit(ticket("c"))  # queue_limit=2: a client is refused
    assert disp.submit(ticket("self-test"), urgent=True)  # the service's own is not
    warm(disp, "w1")
    assert rec.sent == [("w1", "self-test")]


def test_results_only_from_the_worker_dispatched_to(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    warm(disp, "w2")
    disp.submit(ticket("j1"))
    assert not disp.result("w2", result("j1"))
    assert disp.counters["forged_or_late_result"] == 1
    assert rec.finished == []
    assert disp.chunk_ticket("w2", "j1") is None


def test_ready_before_spawned_is_kept_briefly(disp: Dispatcher, rec: Recorder) -> None:
    disp.ready("w1", "python", 1)
    disp.submit(ticket("j1"))
    assert rec.sent == []
    disp.spawned("w1", "python", 1)
    assert rec.sent == [("w1", "j1")]


def test_unknown_ready_expires(disp: Dispatcher, rec: Recorder) -> None:
    disp.ready("ghost", "python", 1)
    rec.now += dispatch.READY_STASH_S + 1
    disp.tick()
    assert disp.counters["unknown_worker"] == 1


def test_worker_death_mid_run_gives_one_error_after_grace(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    disp.submit(ticket("j1", timeout_ms=60_000))
    disp.exited("w1", "killed by SIGKILL")
    disp.tick()
    assert rec.finished == []  # the result may still be on its way
    rec.now += dispatch.EXIT_GRACE_S + 0.01
    disp.tick()
    ((run_id, res, err),) = rec.finished
    assert run_id == "j1" and res is None and err is not None
    assert err.code is ErrorCode.WORKER_LOST and "SIGKILL" in err.message
    disp.tick()
    assert len(rec.finished) == 1


def test_result_within_grace_wins(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    disp.submit(ticket("j1"))
    disp.exited("w1", "done")
    assert disp.result("w1", result("j1"))
    rec.now += 10
    disp.tick()
    assert len(rec.finished) == 1 and rec.finished[0][1] is not None


def test_broker_deadline_kills_and_replies(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    disp.submit(ticket("j1", timeout_ms=1000))
    rec.now += 1 + dispatch.DEADLINE_MARGIN_S + 0.01
    disp.tick()
    assert rec.killed and rec.killed[0][0] == "w1"
    assert rec.finished[0][2] is not None and rec.finished[0][2].code is ErrorCode.WORKER_LOST


def test_queue_wait_runs_out(disp: Dispatcher, rec: Recorder) -> None:
    disp.submit(ticket("j1"))
    rec.now += 31
    disp.tick()
    assert rec.finished[0][2] is not None and rec.finished[0][2].code is ErrorCode.OVERLOADED


def test_unreachable_worker_is_skipped(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "dead")
    warm(disp, "w2")
    rec.unreachable.add("dead")
    disp.submit(ticket("j1"))
    assert rec.sent == [("w2", "j1")]


def test_new_launcher_generation_keeps_running_jobs(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    warm(disp, "w2")
    disp.submit(ticket("j1"))
    disp.new_generation(2)
    assert disp.statistics().warm == {}  # w2 will not serve the new generation
    assert disp.result("w1", result("j1"))  # the old worker still reports
    assert rec.finished[0][1] is not None


def test_fail_all_answers_everyone(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    disp.submit(ticket("a"))
    disp.submit(ticket("b"))
    disp.fail_all(ErrorInfo(code=ErrorCode.SHUTTING_DOWN, message="stop"))
    assert sorted(f[0] for f in rec.finished) == ["a", "b"]
    assert disp.idle


# --- runs with a worker of their own (grants) ---------------------------------


def reserved_ticket(run_id: str) -> Ticket:
    t = ticket(run_id)
    t.reserve = m.Reserve(run=run_id, runtime="python", egress="/run/x.sock")
    return t


def test_reserved_run_goes_only_to_its_own_worker(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w-pool")
    assert disp.submit(reserved_ticket("r1"))
    assert [r.run for r in rec.reserved] == ["r1"]
    assert rec.sent == []  # the warm pool worker is not used
    disp.spawned("w-own", "python", 7, reserved_for="r1")
    disp.ready("w-own", "python", 7)
    assert rec.sent == [("w-own", "r1")]
    # The worker made for r1 is never handed to another job.
    assert disp.submit(ticket("j2"))
    assert rec.sent[-1] == ("w-pool", "j2")


def test_a_kind_kept_warm_by_no_worker_gets_one_made_for_each_run(disp: Dispatcher, rec: Recorder) -> None:
    disp.cold = frozenset({"python:data"})
    warm(disp, "w-pool")  # a warm worker of another kind is never used for it
    assert disp.submit(ticket("r1", runtime="python:data"))
    assert [(r.run, r.runtime) for r in rec.reserved] == [("r1", "python:data")] and rec.sent == []
    disp.spawned("w-own", "python:data", 7, reserved_for="r1")
    disp.ready("w-own", "python:data", 7)
    assert rec.sent == [("w-own", "r1")]
    assert disp.submit(ticket("j2"))  # a kind with warm workers still takes one
    assert rec.sent[-1] == ("w-pool", "j2") and len(rec.reserved) == 1


def test_reserve_failure_ends_the_run_with_the_launchers_reason(disp: Dispatcher, rec: Recorder) -> None:
    disp.submit(reserved_ticket("r1"))
    disp.reserve_failed("r1", ErrorCode.PERMISSION_REQUIRED, "/data leads to /etc, outside the grant /data")
    (run_id, res, error), *_ = rec.finished
    assert run_id == "r1" and res is None and error is not None
    assert error.code is ErrorCode.PERMISSION_REQUIRED and "/etc" in error.message
    assert disp.idle


def test_reserved_worker_dying_before_ready_ends_the_run(disp: Dispatcher, rec: Recorder) -> None:
    disp.submit(reserved_ticket("r1"))
    disp.spawned("w-own", "python", 7, reserved_for="r1")
    disp.exited("w-own", "sandbox step 'mounts' failed")
    (_, _, error), *_ = rec.finished
    assert error is not None and error.code is ErrorCode.WORKER_LOST and "mounts" in error.message
    assert disp.idle


def test_reserved_worker_for_a_finished_run_is_killed(disp: Dispatcher, rec: Recorder) -> None:
    disp.submit(reserved_ticket("r1"))
    rec.now += 31  # past the wait deadline: the run ends as overloaded
    disp.tick()
    assert rec.finished[0][2] is not None and rec.finished[0][2].code is ErrorCode.OVERLOADED
    disp.spawned("w-late", "python", 7, reserved_for="r1")
    disp.ready("w-late", "python", 7)
    assert ("w-late", "its run is over") in rec.killed
    assert rec.sent == []


def test_launcher_loss_fails_runs_waiting_for_their_worker(disp: Dispatcher, rec: Recorder) -> None:
    disp.submit(reserved_ticket("r1"))
    disp.launcher_lost()
    assert rec.finished[0][2] is not None and rec.finished[0][2].code is ErrorCode.WORKER_LOST


def test_a_kill_that_loses_the_launcher_mid_tick_still_ends_the_run_once(rec: Recorder) -> None:
    holder: list[Dispatcher] = []

    def kill(worker: str, reason: str) -> None:
        rec.killed.append((worker, reason))
        holder[0].launcher_lost()  # the link broke while sending the kill

    effects = Effects(
        send_job=rec.send_job, taken=rec.taken.append, kill=kill, finish=rec.finish, reserve=rec.reserved.append
    )
    d = Dispatcher(effects=effects, clock=lambda: rec.now, queue_limit=4, queue_wait_s=30)
    holder.append(d)
    d.submit(reserved_ticket("r1"))
    d.spawned("w-own", "python", 7, reserved_for="r1")
    d.spawned("w-other", "python", 8, reserved_for="r1")
    rec.now += 31
    d.tick()
    assert [run for run, _, _ in rec.finished] == ["r1"]
    assert d.idle


# --- a session's worker ----------------------------------------------------------------------------


def session_ticket(run_id: str) -> Ticket:
    plain = ticket(run_id)
    plain.job = m.Job(id=run_id, code="1", limits=plain.job.limits, session=True)
    return plain


def alive(run_id: str) -> m.WorkerResult:
    return m.WorkerResult(id=run_id, status=m.Status.OK, alive=True)


def test_a_session_worker_is_held_after_its_result_and_takes_only_its_cells(disp: Dispatcher, rec: Recorder) -> None:
    warm(disp, "w1")
    warm(disp, "w2")
    assert disp.submit(session_ticket("open"))
    assert disp.result("w1", alive("open"))
    assert disp.workers["w1"].state is dispatch.WorkerState.HELD
    assert disp.statistics().held == 1
    # An ordinary run never lands on a held worker...
    assert disp.submit(ticket("plain")) and rec.sent[-1] == ("w2", "plain")
    # ...and a cell goes to it alone, once at a time.
    assert disp.submit_to("w1", session_ticket("cell-1"))
    assert not disp.submit_to("w1", session_ticket("cell-2")), "a held worker runs one cell at a time"
    assert rec.taken == ["w1", "w2"], "a cell does not ask the launcher for a replacement again"
    assert disp.result("w1", alive("cell-1"))
    assert disp.workers["w1"].state is dispatch.WorkerState.HELD


def test_a_session_result_that_is_not_alive_lets_the_worker_go(disp: Dispatcher) -> None:
    warm(disp, "w1")
    disp.submit(session_ticket("open"))
    disp.result("w1", alive("open"))
    disp.submit_to("w1", session_ticket("cell"))
    disp.result("w1", m.WorkerResult(id="cell", status=m.Status.TIMEOUT, alive=False))
    assert "w1" not in disp.workers


def test_a_held_worker_that_dies_is_reported_and_released_ones_are_killed(rec: Recorder) -> None:
    lost: list[tuple[str, str]] = []
    effects = Effects(
        send_job=rec.send_job,
        taken=rec.taken.append,
        kill=lambda w, r: rec.killed.append((w, r)),
        finish=rec.finish,
        reserve=rec.reserved.append,
        held_lost=lambda w, d: lost.append((w, d)),
    )
    disp = Dispatcher(effects=effects, clock=lambda: rec.now, queue_limit=2, queue_wait_s=30)
    for worker, run in (("w1", "a"), ("w2", "b")):
        warm(disp, worker)
        disp.submit(session_ticket(run))
        disp.result(worker, alive(run))
    disp.exited("w1", "killed by SIGKILL")
    assert lost == [("w1", "killed by SIGKILL")] and "w1" not in disp.workers
    disp.release("w2", "closed")
    assert rec.killed == [("w2", "closed")] and "w2" not in disp.workers
    assert not disp.submit_to("w2", session_ticket("late"))
