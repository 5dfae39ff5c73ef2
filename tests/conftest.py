"""Shared fixtures: real services in private runtime directories.

Nothing here fakes the sandbox. ``service`` starts the real ``cellblock
serve`` (main, launcher, broker, workers) once per session; tests that kill
parts of it use ``fresh_service``. Every service is stopped at teardown:
SIGTERM, wait, then SIGKILL of its whole process group.
"""

from __future__ import annotations

import os
import pathlib
import signal
import textwrap
from collections.abc import Callable, Iterator

import psutil
import pytest

from protocol import messages as m
from protocol.client import Client
from protocol.profile import load_profile
from supervisor.tools.embedded import Embedded

ROOT = os.geteuid() == 0

# Wall-clock checks on a shared 2-core machine. A run must end by its deadline
# plus the kill grace: that is measured on the result's own wall_ms (the
# monitor's clock, from the job's start to the payload's end), with SLACK_MS
# for a scheduler busy with other work. What the client sees also includes
# dispatch and the reply, so it only has to come within CLIENT_SLACK_S.
KILL_GRACE_MS = load_profile("default").fixed.kill_grace_ms
SLACK_MS = 1000
CLIENT_SLACK_S = 5.0


def assert_ended_by_deadline(
    result: m.ExecuteResult, timeout_ms: int, elapsed_s: float, grace_ms: int = KILL_GRACE_MS
) -> None:
    """A timed-out run ended no earlier than its deadline and no later than deadline + grace (+ slack)."""
    where = f"status={result.status} reason={result.reason!r} wall_ms={result.wall_ms} elapsed={elapsed_s:.2f}s"
    assert result.status is m.Status.TIMEOUT, where
    assert timeout_ms <= result.wall_ms <= timeout_ms + grace_ms + SLACK_MS, where
    assert elapsed_s < (timeout_ms + grace_ms) / 1000 + CLIENT_SLACK_S, where


RELAXED_POLICY = "rate_per_minute = 100000\nconcurrency = 1000\n"


def write_config(
    directory: pathlib.Path,
    policy: str = RELAXED_POLICY,
    extra: str = "",
    state_dir: pathlib.Path | None = None,
    service: str = "",
) -> str:
    """A config for a test service: private state, and (unless a test says
    otherwise) no rate or concurrency limit getting in the way."""
    path = directory / "cellblock.toml"
    state = state_dir or directory / "state"
    if "pool" not in service:  # one warm worker of the data environment: most tests never use it
        service += '\npool = {"python:data" = 1}\n'
    path.write_text(
        f'[service]\nstate_dir = "{state}"\nqueue_wait_s = 60\n{service}\n[policy]\n{policy}\n' + textwrap.dedent(extra)
    )
    return str(path)


class Service:
    """A running service and what a test needs to poke at it."""

    def __init__(self, embedded: Embedded, socket: str, directory: pathlib.Path) -> None:
        self.embedded = embedded
        self.socket = socket
        self.directory = directory
        self.rundir = embedded.rundir

    @property
    def main(self) -> psutil.Process:
        assert self.embedded.proc is not None
        return psutil.Process(self.embedded.proc.pid)

    def child(self, module: str) -> psutil.Process:
        for proc in self.main.children():
            if module in " ".join(proc.cmdline()):
                return proc
        raise LookupError(module)

    @property
    def launcher(self) -> psutil.Process:
        return self.child("cellblock-launcher")  # its title after start-up

    @property
    def broker(self) -> psutil.Process:
        return self.child("supervisor.broker")

    def workers(self) -> list[psutil.Process]:
        """Worker monitors (children of the launcher)."""
        try:
            return self.launcher.children()
        except LookupError:
            return []

    def client(self) -> Client:
        return Client(self.socket)

    def status(self) -> m.StatusReply:
        with self.client() as client:
            return client.status()

    def wait_warm(self, runtime: str = "python", at_least: int = 1, timeout: float = 20.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except Exception:  # noqa: BLE001 - not answering yet is what we wait out
                status = None
            if status is not None:
                for rt in status.runtimes:
                    if rt.name == runtime and rt.offered and rt.warm >= at_least:
                        return
            time.sleep(0.05)
        raise TimeoutError(f"no warm {runtime} worker within {timeout} s")

    def stop(self) -> None:
        proc = self.embedded.proc
        pgid = proc.pid if proc is not None else None
        self.embedded.stop()
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# Root mode gives sandbox slot N of a service the uid worker_uid_base + N, and
# RLIMIT_NPROC (the profile's pids) counts every process of a uid on the host.
# Services with the same base (the default) share those counts: a fork bomb or
# a warm worker of one eats the process budget of the other's runs. So every
# service a test session starts gets a range of its own, away from the default
# 600000 of other services on this machine (another session's, a daemon's).
UID_RANGE = 1024  # above ServiceSection's most slots (4096 would not fit; tests use the default 256)


def _uid_bases() -> Iterator[int]:
    first = 1_000_000 + (os.getpid() % 4096) * 64 * UID_RANGE
    for k in range(10_000):
        yield first + (k % 64) * UID_RANGE


@pytest.fixture(scope="session")
def service_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []
    uid_bases = _uid_bases()

    def start(
        pool: int = 2,
        profile: str | None = None,
        policy: str = RELAXED_POLICY,
        extra: str = "",
        state_dir: pathlib.Path | None = None,
        service: str = "",
    ) -> Service:
        directory = tmp_path_factory.mktemp("svc")
        os.chmod(directory, 0o711)
        if "worker_uid_base" not in service:
            service += f"\nworker_uid_base = {next(uid_bases)}\n"
        config = write_config(directory, policy, extra, state_dir, service)
        embedded = Embedded(config=config, pool=pool, profile=profile)
        socket = embedded.start()
        service = Service(embedded, socket, directory)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory(pool=3)


@pytest.fixture
def fresh_service(service_factory: Callable[..., Service]) -> Iterator[Service]:
    svc = service_factory(pool=2)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def client(service: Service) -> Iterator[Client]:
    with service.client() as c:
        yield c


@pytest.fixture
def run(client: Client) -> Callable[..., m.ExecuteResult]:
    def execute(code: str, **kwargs: object) -> m.ExecuteResult:
        return client.execute(textwrap.dedent(code), **kwargs)  # type: ignore[arg-type]

    return execute
