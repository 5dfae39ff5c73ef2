"""Layer: the pid namespace.

The sandbox sees only its own processes: the monitor as pid 1, the payload
as pid 2, and what the payload starts. Signals to pid 1 are dropped by the
kernel (it is the namespace's init), ``kill(-1)`` reaches nothing outside,
and the host's processes (the service's main, broker, launcher, other
workers, this test) have no pid in the sandbox.
"""

from __future__ import annotations

import json
import os

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox


def test_monitor_ignores_every_signal_from_the_sandbox(run):
    result = run(
        """
        import os, signal, time
        pidfd = os.pidfd_open(1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGSTOP,
                    signal.SIGSEGV, signal.SIGKILL):
            os.kill(1, sig)
            signal.pidfd_send_signal(pidfd, sig)
        print("SENT", flush=True)
        time.sleep(0.3)
        os.kill(1, 0)  # still there (its /proc entry is hidden from the sandbox)
        print("MONITOR-ALIVE", flush=True)
        try:
            os.kill(-1, signal.SIGKILL)  # everything this process may signal
        except ProcessLookupError:
            pass
        time.sleep(0.2)
        print("STILL-RUNNING", flush=True)
        """
    )
    assert result.status == m.Status.OK, show(result)
    assert "SENT" in result.stdout, show(result)
    assert "MONITOR-ALIVE" in result.stdout, show(result)
    # Not stopped either: a stopped monitor could not report the result below.
    assert "STILL-RUNNING" in result.stdout, show(result)
    # The monitor lived to report: a normal result, not a lost worker.
    assert result.error is None and result.exit_code == 0, show(result)


def test_host_processes_are_not_visible(run, service):
    host = {
        "main": service.main.pid,
        "broker": service.broker.pid,
        "launcher": service.launcher.pid,
        "test": os.getpid(),
    }
    for index, worker in enumerate(service.workers()):
        host[f"worker{index}"] = worker.pid
    assert all(pid > 2 for pid in host.values()), host
    result = run(
        f"""
        import errno, json, os
        outcome = {{}}
        for name, pid in {host!r}.items():
            try:
                os.kill(pid, 0)
                outcome[name] = "SIGNALLABLE"
            except OSError as exc:
                outcome[name] = errno.errorcode[exc.errno]
            try:
                os.close(os.pidfd_open(pid))
                outcome[name + " pidfd"] = "OPENED"
            except OSError as exc:
                outcome[name + " pidfd"] = errno.errorcode[exc.errno]
            outcome[name + " /proc"] = os.path.exists(f"/proc/{{pid}}")
        print(json.dumps(outcome))
        """
    )
    assert result.status == m.Status.OK, show(result)
    outcome = json.loads(result.stdout.splitlines()[-1])
    for name in host:
        assert outcome[name] == "ESRCH", f"{name}: {outcome[name]}"
        assert outcome[name + " pidfd"] == "ESRCH", f"{name}: {outcome[name + ' pidfd']}"
        assert outcome[name + " /proc"] is False, name
    # The service is unharmed.
    assert service.main.is_running() and service.broker.is_running() and service.launcher.is_running()


def test_proc_lists_only_the_sandbox(run):
    result = run(
        """
        import json, os, subprocess, time
        child = subprocess.Popen(["/usr/bin/sleep", "30"])
        for _ in range(100):  # until the child has exec'd
            if open(f"/proc/{child.pid}/comm").read().strip() == "sleep":
                break
            time.sleep(0.02)
        tasks = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    status = dict(l.split(":", 1) for l in open(f"/proc/{entry}/status"))
                except FileNotFoundError:  # pid 1, the monitor: its directory is covered
                    tasks[entry] = "hidden"
                    continue
                tasks[entry] = {"ppid": status["PPid"].strip(), "name": status["Name"].strip()}
        child.kill()
        child.wait()
        print(json.dumps({"me": os.getpid(), "child": child.pid, "tasks": tasks}))
        """
    )
    assert result.status == m.Status.OK, show(result)
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["me"] == 2, seen
    assert set(seen["tasks"]) == {"1", "2", str(seen["child"])}, seen
    assert seen["tasks"]["1"] == "hidden", seen  # the monitor: nothing of it shows
    assert seen["tasks"]["2"]["ppid"] == "1", seen
    assert seen["tasks"][str(seen["child"])] == {"ppid": "2", "name": "sleep"}, seen
