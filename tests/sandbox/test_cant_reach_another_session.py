"""Layer: a session's sandbox is its own, for its life and no longer.

Two sessions run side by side. The second looks for everything of the
first it could reach: its files in /work and /tmp, its processes (by the
token in their command line, by the host pid the test hands it), their
memory and environment through /proc, and signals to every process it can
name. It finds none of it, and the first session goes on untouched. Then
a closed session leaves nothing on the host: no process, no mount
namespace still held, no process in its cgroups, no file of its own.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from protocol import messages as m
from protocol.client import Client
from tests.conftest import Service

pytestmark = pytest.mark.sandbox

FIRST = """
import os, subprocess
secret = "{token}-variable"
open("/work/{token}-work.txt", "w").write("first session's file")
open("/tmp/{token}-tmp.txt", "w").write("first session's tmp file")
keeper = subprocess.Popen(["/usr/bin/sleep", "300"], env={{"MARK": "{token}"}})
print(os.getpid(), keeper.pid)
"""

SECOND = """
import glob, os, signal
token = "{token}"
found = []
for pattern in ("/work/*", "/tmp/*", "/work/**/*", "/tmp/**/*"):
    found += [p for p in glob.glob(pattern, recursive=True) if token in p]
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for what in ("cmdline", "environ"):
        try:
            if token.encode() in open(f"/proc/{{pid}}/{{what}}", "rb").read():
                found.append(f"process {{pid}} {{what}}")
        except OSError:
            pass
for host_pid in {host_pids}:
    for path in (f"/proc/{{host_pid}}/mem", f"/proc/{{host_pid}}/environ", f"/proc/{{host_pid}}/maps"):
        try:
            open(path, "rb").read(64)
            found.append("read " + path)
        except OSError:
            pass
    try:
        os.kill(host_pid, signal.SIGKILL)
        found.append(f"signalled {{host_pid}}")
    except OSError:
        pass
try:
    os.kill(-1, signal.SIGKILL)  # everything this sandbox can signal (its own processes only)
except OSError:
    pass
print("FOUND", found)
"""


@pytest.fixture(scope="module")
def svc(service_factory: Callable[..., Service]) -> Service:
    service = service_factory(pool=2)
    service.wait_warm("python")
    return service


@pytest.fixture
def client(svc: Service) -> Iterator[Client]:
    with svc.client() as c:
        yield c


def _host_processes(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if token in " ".join(proc.cmdline()) or token in proc.environ().get("MARK", ""):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _session_processes(svc: Service, payload_token: str) -> list[psutil.Process]:
    """The session's worker processes on the host: the monitor under the launcher whose tree holds the token."""
    for monitor in svc.workers():
        try:
            tree = [monitor, *monitor.children(recursive=True)]
            if any(payload_token in proc.environ().get("MARK", "") for proc in tree):
                return tree
        except psutil.Error:
            continue
    return []


def test_cant_see_or_touch_another_sessions_files_processes_or_memory(svc: Service, client: Client) -> None:
    token = f"cellblock-sess-{secrets.token_hex(5)}"
    first = client.session_open("python", environment="none", client_id="first").session
    made = client.execute(FIRST.format(token=token), session=first, client_id="first")
    assert made.status is m.Status.OK, made.stderr
    host = _host_processes(token)
    assert host, "the first session's process must be visible on the host (the search works)"
    host_pids = [proc.pid for proc in host] + [proc.pid for proc in _session_processes(svc, token)]
    second = client.session_open("python", environment="none", client_id="second").session
    looked = client.execute(
        SECOND.format(token=token, host_pids=sorted(set(host_pids))), session=second, client_id="second"
    )
    assert looked.status in (m.Status.OK, m.Status.KILLED), looked.stderr
    if looked.status is m.Status.OK:
        assert "FOUND []" in looked.stdout, looked.stdout
    # The first session goes on: its variable, its files and its process are all still there.
    check = (
        f"import os\nprint(secret, open('/work/{token}-work.txt').read(), "
        f"os.path.exists('/tmp/{token}-tmp.txt'), keeper.poll())"
    )
    after = client.execute(check, session=first, client_id="first")
    assert after.stdout == f"{token}-variable first session's file True None\n", (after.stdout, after.stderr)
    for session, owner in ((first, "first"), (second, "second")):
        try:
            client.session_close(session, client_id=owner)
        except Exception:  # noqa: BLE001 - the second may have ended itself (kill -1)
            pass


def _namespaces(procs: list[psutil.Process]) -> set[str]:
    found = set()
    for proc in procs:
        try:
            found.add(os.readlink(f"/proc/{proc.pid}/ns/mnt"))
        except OSError:
            continue
    return found


def _cgroup_dirs(procs: list[psutil.Process]) -> set[str]:
    dirs = set()
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/cgroup") as src:
                for line in src:
                    _, controllers, path = line.rstrip("\n").split(":", 2)
                    name = controllers.split(",")[0] or "unified"
                    root = "/sys/fs/cgroup" if name == "unified" else f"/sys/fs/cgroup/{name}"
                    if not os.path.isdir(root + path):
                        root = f"/sys/fs/cgroup/{controllers}"
                    dirs.add(root + path)
        except OSError:
            continue
    return {d for d in dirs if "cellblock" in d and os.path.isdir(d)}


def _members(cgroup: str) -> list[str]:
    with open(cgroup + "/cgroup.procs") as src:
        return src.read().split()


def _mount_namespaces_in_use() -> set[str]:
    used = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                used.add(os.readlink(f"/proc/{entry}/ns/mnt"))
            except OSError:
                continue
    return used


def _files_named(token: str, trees: list[str], folders: list[str]) -> list[str]:
    """Files named with the token: anywhere in ``trees``, at the top of ``folders``."""
    found = []
    for root in trees:
        for folder, _, names in os.walk(root):
            found += [os.path.join(folder, n) for n in names if token in n]
    for folder in folders:
        found += [os.path.join(folder, n) for n in os.listdir(folder) if token in n]
    return found


def test_cant_leave_anything_behind_when_closed(svc: Service, client: Client) -> None:
    token = f"cellblock-left-{secrets.token_hex(5)}"
    session = client.session_open("python", environment="none", client_id="leaver").session
    made = client.execute(FIRST.format(token=token), session=session, client_id="leaver")
    assert made.status is m.Status.OK, made.stderr
    procs = _session_processes(svc, token)
    assert len(procs) >= 3, "the session's monitor, payload and its child must be found on the host"
    namespaces = _namespaces(procs)
    cgroups = _cgroup_dirs(procs)
    assert namespaces and namespaces.isdisjoint({os.readlink("/proc/self/ns/mnt")})
    client.session_close(session, client_id="leaver")
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == [], alive
    assert _host_processes(token) == []
    assert namespaces.isdisjoint(_mount_namespaces_in_use()), "a mount namespace of the session is still held"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_members(d) for d in cgroups):
        time.sleep(0.05)
    for directory in cgroups:  # slot cgroups are kept for the next worker, with nothing in them
        assert _members(directory) == [], directory
    folders = [f for f in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(f)]
    assert _files_named(token, [str(svc.directory), svc.rundir], folders) == []
