"""A runtime's self-test: only the runtime's own answer can fail it."""

from __future__ import annotations

import types

import pytest

from protocol import messages as m
from protocol.errors import ErrorCode, ErrorInfo
from supervisor.broker import Broker, RuntimeView


class Dispatcher:
    def __init__(self) -> None:
        self.failed: list[tuple[str, ErrorInfo]] = []

    def fail_queued(self, runtime: str, error: ErrorInfo) -> None:
        self.failed.append((runtime, error))


def broker_with(view: RuntimeView) -> types.SimpleNamespace:
    return types.SimpleNamespace(runtimes={"python": view}, dispatcher=Dispatcher())


def view() -> RuntimeView:
    info = m.RuntimeInfo(name="python", version="3", languages=["python"], available=True, self_test_expect="ok\n")
    return RuntimeView(info=info, self_test="running")


@pytest.mark.parametrize(
    "code",
    [ErrorCode.WORKER_LOST, ErrorCode.OVERLOADED, ErrorCode.RUNTIME_UNAVAILABLE, ErrorCode.SHUTTING_DOWN],
)
def test_no_result_leaves_the_self_test_pending_not_failed(code: ErrorCode) -> None:
    # e.g. OVERLOADED: it waited out its time in a queue full of clients' runs at start-up.
    v = view()
    broker = broker_with(v)
    Broker._self_test_done(broker, "python", None, ErrorInfo(code=code, message="m"))  # type: ignore[arg-type]
    assert v.self_test == "pending" and not broker.dispatcher.failed


def test_a_wrong_answer_fails_it_and_the_queued_runs() -> None:
    v = view()
    broker = broker_with(v)
    raw = m.WorkerResult(id="st", status=m.Status.OK, stdout_head=b"no\n")
    Broker._self_test_done(broker, "python", raw, None)  # type: ignore[arg-type]
    assert v.self_test == "failed" and broker.dispatcher.failed[0][0] == "python"


def test_the_right_answer_passes_it() -> None:
    v = view()
    raw = m.WorkerResult(id="st", status=m.Status.OK, stdout_head=b"ok\n")
    Broker._self_test_done(broker_with(v), "python", raw, None)  # type: ignore[arg-type]
    assert v.self_test == "passed" and v.offered
