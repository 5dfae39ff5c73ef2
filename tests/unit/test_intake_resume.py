"""A client over its concurrency limit waits its turn; a turn that ends at once passes to the next."""

from __future__ import annotations

import time

from protocol import messages as m
from protocol.profile import Profile
from supervisor.dispatch import Dispatcher, Effects
from supervisor.intake import Intake
from supervisor.policy import Admission, Admitted, Wait

LIMITS = m.JobLimits(timeout_ms=1000, cpu_ms=1000, memory_bytes=1, output_bytes=100)


class OneAtATime:
    """A policy that lets each client run one request at a time; the rest wait."""

    redactor = None

    def __init__(self) -> None:
        self.running: dict[str, int] = {}

    def admit(self, client: str, request: m.ExecuteRequest, resolve: object) -> Admission:
        key = request.client_id
        if self.running.get(key, 0) >= 1:
            return Wait(key)
        self.running[key] = self.running.get(key, 0) + 1
        return Admitted(key, request, "python", LIMITS)

    def released(self, key: str) -> None:
        self.running[key] -= 1

    def finished(self, *args: object) -> None:
        pass

    def analyse(self, runtime: str, code: str) -> list[m.Finding]:
        return []

    profile = Profile()


def setup(queue_limit: int) -> tuple[Intake, Dispatcher, OneAtATime, list[m.Reply]]:
    replies: list[m.Reply] = []
    policy = OneAtATime()
    intake: Intake
    effects = Effects(
        send_job=lambda worker, job: True,
        taken=lambda worker: None,
        kill=lambda worker, reason: None,
        finish=lambda ticket, raw, error: ticket.owner.finish(ticket, raw, error),
        reserve=lambda reservation: None,
    )
    dispatcher = Dispatcher(effects=effects, clock=time.monotonic, queue_limit=queue_limit, queue_wait_s=30)
    intake = Intake(
        policy,  # type: ignore[arg-type]
        dispatcher,
        lambda client, reply: replies.append(reply),
        lambda request: ("python", None),
        lambda runtime: "3",
        30.0,
        egress=None,  # type: ignore[arg-type]
        sessions=None,  # type: ignore[arg-type]
    )
    return intake, dispatcher, policy, replies


def request(request_id: str, client_id: str) -> m.ExecuteRequest:
    return m.ExecuteRequest(id=request_id, code="1", client_id=client_id)


def test_a_resumed_request_refused_at_once_resumes_the_next_one() -> None:
    intake, dispatcher, policy, replies = setup(queue_limit=1)
    dispatcher.spawned("w1", "python", 1)
    dispatcher.ready("w1", "python", 1)
    intake.execute(b"x", request("A", "X"))  # runs on w1
    intake.execute(b"x", request("B", "X"))  # X at its limit: waits
    intake.execute(b"x", request("C", "X"))  # waits
    intake.execute(b"y", request("D", "Y"))  # another client's run fills the dispatcher's queue
    (ticket,) = dispatcher.running.values()
    dispatcher.result("w1", m.WorkerResult(id=ticket.run_id, status=m.Status.OK))
    # A is done; B is resumed and refused (the queue is full), so C is resumed
    # too, now, not after its 30 s wait with a wrong reason.
    answered = {r.id: r for r in replies if isinstance(r, m.ExecuteResult)}
    assert answered["A"].status is m.Status.OK
    assert answered["B"].error is not None and answered["B"].error.code == "overloaded"
    assert answered["C"].error is not None and answered["C"].error.code == "overloaded"
    assert not intake.waiting.get("X") and policy.running["X"] == 0
    assert not [key for key in intake.active if key[1] in ("B", "C")]  # nothing left behind


def test_thousands_waiting_are_resumed_in_a_loop_not_by_recursion() -> None:
    intake, dispatcher, _, replies = setup(queue_limit=1)
    dispatcher.spawned("w1", "python", 1)
    dispatcher.ready("w1", "python", 1)
    intake.execute(b"x", request("first", "X"))
    for i in range(3000):
        intake.execute(b"x", request(f"r{i}", "X"))
    intake.execute(b"y", request("filler", "Y"))
    (ticket,) = dispatcher.running.values()
    dispatcher.result("w1", m.WorkerResult(id=ticket.run_id, status=m.Status.OK))
    answered = [r for r in replies if isinstance(r, m.ExecuteResult)]
    assert len(answered) == 3001  # every one answered (overloaded), none lost to a RecursionError
