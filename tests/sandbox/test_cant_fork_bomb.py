"""Layer: the pids limit (pids cgroup as root, RLIMIT_NPROC unprivileged).

A run may not create more than ``fixed.pids`` (64) tasks, counting the
monitor and the payload themselves, whether it forks processes or starts
threads; a real, self-replicating fork bomb is contained and ends, and the
service keeps working afterwards.
"""

from __future__ import annotations

import time

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox

PIDS = 64  # profiles/default.toml [fixed] pids


def _field(stdout: str, name: str) -> str:
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return parts[1]
    raise AssertionError(f"no {name} line in {stdout!r}")


def test_fork_loop_stops_below_the_pids_limit(run):
    started = time.monotonic()
    result = run(
        """
        import errno, os, time
        print("BOMB-START", flush=True)
        children, failure = [], None
        for _ in range(4 * 64):
            try:
                pid = os.fork()
            except OSError as exc:
                failure = exc.errno
                break
            if pid == 0:
                time.sleep(20)  # stay alive: every child holds a pid
                os._exit(0)
            children.append(pid)
        print("FORKS", len(children), flush=True)
        print("ERRNO", errno.errorcode.get(failure, failure), flush=True)
        """
    )
    elapsed = time.monotonic() - started
    assert result.status == m.Status.OK, show(result)
    assert "BOMB-START" in result.stdout, show(result)
    forks = int(_field(result.stdout, "FORKS"))
    # fork worked at first (the code really ran), then the kernel said no.
    assert 0 < forks < PIDS, show(result)
    assert _field(result.stdout, "ERRNO") == "EAGAIN", show(result)
    # The sleeping children did not keep the run alive.
    assert elapsed < 15, f"run took {elapsed:.1f} s\n{show(result)}"


def test_thread_bomb_stops_below_the_pids_limit(run):
    result = run(
        """
        import threading
        threading.stack_size(256 * 1024)  # so memory is not what stops it
        hold = threading.Event()
        started, failure = 0, None
        for _ in range(4 * 64):
            thread = threading.Thread(target=hold.wait, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                failure = str(exc)
                break
            started += 1
        print("THREADS", started, flush=True)
        print("FAILURE", repr(failure), flush=True)
        hold.set()
        """
    )
    assert result.status == m.Status.OK, show(result)
    threads = int(_field(result.stdout, "THREADS"))
    assert 0 < threads < PIDS, show(result)
    assert "can't start new thread" in result.stdout, show(result)


def test_self_replicating_fork_bomb_is_contained(run):
    """Every process forks forever: the run must end at its deadline, and the
    service must answer the next run normally."""
    started = time.monotonic()
    result = run(
        """
        import os
        print("BOMB-START", flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        limits=m.Limits(timeout_ms=2000),
    )
    elapsed = time.monotonic() - started
    assert "BOMB-START" in result.stdout, show(result)
    assert result.status in (m.Status.TIMEOUT, m.Status.KILLED), show(result)
    assert elapsed < 10, f"fork bomb run took {elapsed:.1f} s\n{show(result)}"
    after = run("print('still-alive')")
    assert after.status == m.Status.OK and after.stdout == "still-alive\n", show(after)
