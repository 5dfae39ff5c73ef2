"""Layer: the monitor's deadline and the kernel's cpu limit.

The payload cannot outlast its wall clock limit by ignoring or blocking
SIGTERM (SIGKILL follows after the grace), by spreading over children, by
stopping itself, or outlast its cpu limit by ignoring SIGXCPU (the hard
rlimit's SIGKILL follows one second later).
"""

from __future__ import annotations

import time

import pytest

from protocol import messages as m
from tests.conftest import CLIENT_SLACK_S, assert_ended_by_deadline
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox


def _timed(run, code: str, **kwargs: object) -> tuple[m.ExecuteResult, float]:
    started = time.monotonic()
    result = run(code, **kwargs)
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    "evasion",
    [
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
        "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})",
        "signal.signal(signal.SIGTERM, lambda *a: print('TERM-CAUGHT', flush=True))",
        "[signal.signal(s, signal.SIG_IGN) for s in set(signal.Signals)"
        " - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}]",
    ],
    ids=["ignore-sigterm", "block-all", "catch-sigterm", "ignore-all"],
)
def test_wall_clock_limit_cannot_be_evaded(run, evasion):
    result, elapsed = _timed(
        run,
        f"""
        import os, signal
        {evasion}
        print("SPINNING", flush=True)
        while True:
            pass
        """,
        limits=m.Limits(timeout_ms=1000),
    )
    assert "SPINNING" in result.stdout, show(result)
    assert result.reason == "wall clock limit of 1000 ms", show(result)
    assert_ended_by_deadline(result, 1000, elapsed)


def test_spinning_children_do_not_keep_the_run_alive(run):
    result, elapsed = _timed(
        run,
        """
        import os, signal
        for _ in range(4):
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    pass
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("SPINNING", flush=True)
        os.wait()
        """,
        limits=m.Limits(timeout_ms=1000),
    )
    assert "SPINNING" in result.stdout, show(result)
    assert_ended_by_deadline(result, 1000, elapsed)


def test_stopping_itself_does_not_stop_the_clock(run):
    result, elapsed = _timed(
        run,
        """
        import os, signal
        print("STOPPING", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        print("RESUMED", flush=True)
        """,
        limits=m.Limits(timeout_ms=1000),
    )
    assert "STOPPING" in result.stdout and "RESUMED" not in result.stdout, show(result)
    assert_ended_by_deadline(result, 1000, elapsed)


def test_ignoring_sigxcpu_does_not_lift_the_cpu_limit(run):
    result, elapsed = _timed(
        run,
        """
        import resource, signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))  # soft up to hard: allowed
        print("CPU-LIMIT", hard, flush=True)
        while True:
            pass
        """,
        limits=m.Limits(cpu_ms=1000, timeout_ms=10_000),
    )
    assert "CPU-LIMIT 2" in result.stdout, show(result)
    assert result.status == m.Status.TIMEOUT, show(result)
    assert result.reason == "cpu time limit of 1000 ms", show(result)
    assert result.signal == 9, show(result)
    # The hard rlimit (2 s of cpu) killed it. cpu time is the run's own, so a
    # busy machine stretches only the wall clock, which has 10 s here.
    assert 1000 <= result.cpu_ms <= 2000 + 500, show(result)
    assert elapsed < 10 + CLIENT_SLACK_S, f"took {elapsed:.2f} s\n{show(result)}"
