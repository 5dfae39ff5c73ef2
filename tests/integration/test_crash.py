"""Killing parts of the service mid-run: every waiting client gets a final reply,
and the service recovers by itself."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from protocol import messages as m
from protocol.client import Client

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]
SLOW = "import time; time.sleep(3); print('finished')"


def start_run(socket: str, code: str = SLOW) -> tuple[threading.Thread, list[m.ExecuteResult]]:
    out: list[m.ExecuteResult] = []

    def go() -> None:
        with Client(socket) as client:
            out.append(client.execute(code))

    thread = threading.Thread(target=go)
    thread.start()
    return thread, out


def wait_busy(service: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.status()  # type: ignore[attr-defined]
        if status.in_flight:
            return
        time.sleep(0.02)
    raise TimeoutError("the run never started")


def recovers(service: object) -> None:
    deadline = time.monotonic() + 20
    while True:
        with Client(service.socket) as client:  # type: ignore[attr-defined]
            result = client.execute("print('again')")
        if result.status is m.Status.OK:
            assert result.stdout == "again\n"
            return
        assert time.monotonic() < deadline, result
        time.sleep(0.2)


def test_sigkill_of_the_worker(fresh_service: object) -> None:
    thread, out = start_run(fresh_service.socket)  # type: ignore[attr-defined]
    wait_busy(fresh_service)
    for worker in fresh_service.workers():  # type: ignore[attr-defined]
        with contextlib.suppress(psutil.NoSuchProcess):  # one may end between the listing and the kill
            worker.kill()
    thread.join(15)
    (result,) = out
    assert result.status is m.Status.INTERNAL_ERROR
    assert result.error is not None and result.error.code == "worker_lost"
    recovers(fresh_service)


def test_sigkill_of_the_launcher(fresh_service: object) -> None:
    launcher = fresh_service.launcher  # type: ignore[attr-defined]
    thread, out = start_run(fresh_service.socket)  # type: ignore[attr-defined]
    wait_busy(fresh_service)
    launcher.kill()
    thread.join(15)
    (result,) = out
    # The run's sandbox does not depend on the launcher: it finishes and reports.
    assert result.status is m.Status.OK and result.stdout == "finished\n"
    recovers(fresh_service)
    assert fresh_service.launcher.pid != launcher.pid  # type: ignore[attr-defined]


def test_sigkill_of_the_broker(fresh_service: object) -> None:
    broker = fresh_service.broker  # type: ignore[attr-defined]
    thread, out = start_run(fresh_service.socket)  # type: ignore[attr-defined]
    wait_busy(fresh_service)
    broker.kill()
    thread.join(15)
    (result,) = out
    assert result.status is m.Status.INTERNAL_ERROR
    assert result.error is not None and result.error.code == "connection_lost"
    recovers(fresh_service)
    assert fresh_service.broker.pid != broker.pid  # type: ignore[attr-defined]


def test_sigterm_drains_then_stops_everything(fresh_service: object) -> None:
    thread, out = start_run(fresh_service.socket, "import time; time.sleep(1); print('drained')")  # type: ignore[attr-defined]
    wait_busy(fresh_service)
    main = fresh_service.main  # type: ignore[attr-defined]
    tree = [main, *main.children(recursive=True)]
    os.kill(main.pid, signal.SIGTERM)
    thread.join(15)
    (result,) = out
    assert result.status is m.Status.OK and result.stdout == "drained\n"
    assert fresh_service.embedded.proc.wait(20) == 0  # type: ignore[attr-defined]
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == []


def test_sigkill_of_supervisor_main_stops_everything(fresh_service: object) -> None:
    # Nobody would restart or reap an orphaned launcher, broker or proxy: each
    # sees main's lifeline close and stops; a run in flight still gets a reply.
    thread, out = start_run(fresh_service.socket, "import time; time.sleep(1); print('drained')")  # type: ignore[attr-defined]
    wait_busy(fresh_service)
    main = fresh_service.main  # type: ignore[attr-defined]
    tree = main.children(recursive=True)
    assert len(tree) >= 3  # launcher, broker, egress proxy (and workers)
    os.kill(main.pid, signal.SIGKILL)
    thread.join(15)
    (result,) = out
    assert result.status is m.Status.OK and result.stdout == "drained\n"
    _, alive = psutil.wait_procs(tree, timeout=20)
    assert alive == [], f"left running after main was killed: {alive}"


def test_a_runtime_whose_sandboxes_keep_failing_is_marked_unhealthy(
    service_factory: Callable[..., object], tmp_path: pathlib.Path
) -> None:
    """A real crash loop: a Swift "toolchain" that answers its probe but whose compiler
    dies in every sandbox. Each worker exits runtime_missing; after the budget (5 in
    30 s) the launcher stops making them and the runtime is reported unhealthy, while
    Python goes on serving."""
    fake = tmp_path / "fake-swift"
    (fake / "bin").mkdir(parents=True)
    frontend = fake / "bin" / "swift-frontend"
    # It answers --version and "builds" the module cache on the host; in a
    # sandbox (its source is the pipe /dev/fd/3) it dies at once.
    frontend.write_text(
        '#!/bin/sh\ncase "$1 $4" in --version*) echo "Swift version 0.0 (fake)";; *" /dev/fd/"*) exit 3;; esac\n'
    )
    frontend.chmod(0o755)
    for path in (tmp_path, fake, fake / "bin"):
        path.chmod(0o755)
    profile = tmp_path / "broken-swift.toml"
    default = (ROOT / "profiles" / "default.toml").read_text()
    profile.write_text(default.replace("[runtimes.swift]", f'[runtimes.swift]\ntoolchain = "{fake}"'))
    service = service_factory(profile=str(profile), service=f'cache_dir = "{tmp_path / "cache"}"')
    deadline = time.monotonic() + 60
    while True:
        swift = {r.name: r for r in service.status().runtimes}["swift"]  # type: ignore[attr-defined]
        if swift.reason.startswith("runtime missing in the sandbox") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not swift.offered and swift.setup_failures >= 5, swift
    with Client(service.socket) as client:  # type: ignore[attr-defined]
        refused = client.execute('print("x")', "swift")
        assert refused.status is m.Status.REJECTED and refused.error is not None
        assert refused.error.code == "runtime_unavailable" and "runtime missing" in refused.error.message
        assert client.execute("print('still here')").stdout == "still here\n"
    # Backing off: one probe at most in the next second, not a respawn loop.
    spawned = swift.setup_failures
    time.sleep(1.0)
    assert {r.name: r for r in service.status().runtimes}["swift"].setup_failures <= spawned + 1  # type: ignore[attr-defined]


def test_an_embedded_service_stops_when_its_starter_is_killed() -> None:
    # The host app (here a child process) starts an embedded service and dies
    # without stopping it: the service must not live on.
    import subprocess
    import sys

    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from supervisor.tools.embedded import Embedded\n"
            "e = Embedded()\n"
            "e.start()\n"
            "print(e.proc.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    main_pid = int(starter.stdout.readline())
    service = psutil.Process(main_pid)
    tree = [service, *service.children(recursive=True)]
    assert len(tree) >= 4  # main, launcher, broker, egress proxy (and workers)
    starter.kill()
    starter.wait()
    starter.stdout.close()
    _, alive = psutil.wait_procs(tree, timeout=20)
    assert alive == [], f"left running after its starter died: {alive}"
