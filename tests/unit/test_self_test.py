"""A runtime's self-test: only the runtime's own answer can fail it."""

from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.errors import ErrorCode, ErrorInfo
from protocol.profile import Profile
from supervisor.catalogue import Catalogue, RuntimeView


def catalogue_with(view: RuntimeView) -> Catalogue:
    failed: list[tuple[str, ErrorInfo]] = []
    catalogue = Catalogue(Profile(), lambda runtime, error: failed.append((runtime, error)))
    catalogue.runtimes["python"] = view
    catalogue.failed = failed  # type: ignore[attr-defined]
    return catalogue


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
    catalogue = catalogue_with(v)
    catalogue.self_test_done("python", None, ErrorInfo(code=code, message="m"))
    assert v.self_test == "pending" and not catalogue.failed  # type: ignore[attr-defined]


def test_a_wrong_answer_fails_it_and_the_queued_runs() -> None:
    v = view()
    catalogue = catalogue_with(v)
    raw = m.WorkerResult(id="st", status=m.Status.OK, stdout_head=b"no\n")
    catalogue.self_test_done("python", raw, None)
    assert v.self_test == "failed" and catalogue.failed[0][0] == "python"  # type: ignore[attr-defined]


def test_the_right_answer_passes_it() -> None:
    v = view()
    raw = m.WorkerResult(id="st", status=m.Status.OK, stdout_head=b"ok\n")
    catalogue_with(v).self_test_done("python", raw, None)
    assert v.self_test == "passed" and v.offered
