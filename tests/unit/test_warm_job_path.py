"""The launcher rehearses the monitor's job path before it forks workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_warming_specialises_the_job_path_and_leaves_nothing_open() -> None:
    if not hasattr(compile("0", "", "eval"), "_co_code_adaptive"):
        pytest.skip(f"this Python ({sys.version.split()[0]}) does not specialise bytecode in place")
    # A fresh interpreter, so no earlier test has run the monitor's code.
    check = textwrap.dedent(
        """
        import os
        from worker.monitor import Monitor, warm_job_path
        from worker.runtimes.python import PythonRuntime

        codes = [Monitor.run.__code__, Monitor._pump.__code__, Monitor.wait_job.__code__]
        assert all(c._co_code_adaptive == c.co_code for c in codes), "specialised before the warm-up"
        fds = sorted(os.listdir("/proc/self/fd"))
        warm_job_path(PythonRuntime())
        assert sorted(os.listdir("/proc/self/fd")) == fds, "a descriptor left open"
        assert all(c._co_code_adaptive != c.co_code for c in codes), "not specialised by the warm-up"
        print("warmed")
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "warmed"
