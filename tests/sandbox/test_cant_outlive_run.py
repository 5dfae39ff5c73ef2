"""Layer: the run's end (the monitor is pid 1 of the run's pid namespace).

A grandchild that double-forks, starts its own session, ignores SIGTERM and
SIGHUP and sleeps for a minute is visible on the host while the run lasts
(the test finds it, which proves the search works) and is gone within five
seconds of the result (it would sleep a minute), whether the run ended
normally or by its deadline.
"""

from __future__ import annotations

import os
import secrets
import time

import pytest

from protocol import messages as m
from tests.conftest import assert_ended_by_deadline
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox

ESCAPE = """
    import os, signal, time
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)  # ignored signals stay ignored across exec
            os.write(write_end, str(os.getpid()).encode())
            os.execv("/usr/bin/sleep", ["{token}", "60"])
        os._exit(0)
    os.waitpid(first, 0)
    os.close(write_end)
    grandchild = int(os.read(read_end, 32))
    deadline = time.monotonic() + 5  # until it has exec'd sleep (bounded; a busy host is slow)
    while "{token}" not in open(f"/proc/{{grandchild}}/cmdline").read() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("GRANDCHILD", grandchild, open(f"/proc/{{grandchild}}/cmdline").read().split("\\0")[0],
          flush=True)
"""


def _host_pids_with(token: str) -> list[int]:
    """Host processes whose command line names the token."""
    found = []
    needle = token.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as src:
                if needle in src.read():
                    found.append(int(entry))
        except OSError:
            continue  # gone meanwhile
    return [pid for pid in found if pid != os.getpid()]


def _gone_within(token: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        left = _host_pids_with(token)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _run_escape(run, tail: str, **kwargs: object) -> tuple[m.ExecuteResult, list[int], float]:
    token = f"cellblock-escapee-{secrets.token_hex(6)}"
    seen_during: list[int] = []

    def look(chunk: m.OutputChunk) -> None:
        if "GRANDCHILD" in chunk.data and not seen_during:
            seen_during.extend(_host_pids_with(token))

    started = time.monotonic()
    result = run(ESCAPE.format(token=token) + tail, on_chunk=look, **kwargs)
    elapsed = time.monotonic() - started
    assert "GRANDCHILD" in result.stdout and token in result.stdout, show(result)
    # The search works: while the run lasted, the host saw the grandchild.
    assert seen_during, f"the host never saw {token} during the run\n{show(result)}"
    left = _gone_within(token, 5.0)
    assert not left, f"processes {left} outlived the run\n{show(result)}"
    return result, seen_during, elapsed


def test_detached_grandchild_dies_with_the_run(run):
    result, _, _ = _run_escape(run, "\n    time.sleep(1)\n    print('PAYLOAD-DONE')\n")
    assert result.status == m.Status.OK, show(result)
    assert "PAYLOAD-DONE" in result.stdout, show(result)


def test_a_timed_out_run_leaves_nothing_behind(run):
    # 2 s: the host has over a second, after the grandchild is reported, to see it.
    result, _, elapsed = _run_escape(run, "\n    while True:\n        pass\n", limits=m.Limits(timeout_ms=2000))
    assert result.reason == "wall clock limit of 2000 ms", show(result)
    assert_ended_by_deadline(result, 2000, elapsed)
