"""Layer: the filesystem view (template root, pivot_root) and /proc of pid 1.

The sandbox sees a small read-only root of its own: /usr and a few /etc
files from the host, synthesised passwd/group/hosts, five /dev nodes, its
own /proc and two scratch tmpfs. Host secrets, home directories, /sys, the
service's runtime directory and the repository are not there, and the
monitor's (pid 1) environment, memory and descriptors cannot be read.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPECTED_ROOT = {"bin", "dev", "etc", "lib", "lib64", "mnt", "proc", "sbin", "tmp", "usr", "work"}


def _probe(run, paths: list[str], **kwargs: object) -> dict[str, str]:
    """For each path: its errno name when opening/listing fails, else "READABLE"."""
    result = run(
        f"""
        import errno, json, os
        outcome = {{}}
        for path in {paths!r}:
            try:
                if os.path.isdir(path):
                    os.listdir(path)
                else:
                    with open(path, "rb") as src:
                        src.read(1)
                outcome[path] = "READABLE"
            except OSError as exc:
                outcome[path] = errno.errorcode[exc.errno]
        print("PROBED")
        print(json.dumps(outcome))
        """,
        **kwargs,
    )
    assert result.status == m.Status.OK and "PROBED" in result.stdout, show(result)
    return json.loads(result.stdout.splitlines()[-1])


def test_host_secrets_and_homes_are_absent(run):
    paths = [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/sudoers",
        "/etc/ssh",
        "/root",
        "/home",
        "/var",
        "/opt",
        "/srv",
        "/mnt/host",
        "/media",
        "/boot",
        "/run",
        "/sys",
        "/sys/kernel",
    ]
    outcome = _probe(run, paths, environment="none")
    assert outcome == {path: "ENOENT" for path in paths}
    # A package environment adds only itself, read-only, under /opt: nothing of the host's /opt.
    data = _probe(run, ["/opt/swift", "/opt/cellblock/envs"], environment="data")
    if data["/opt/cellblock/envs"] != "ENOENT":  # the data environment is built here
        assert data == {"/opt/swift": "ENOENT", "/opt/cellblock/envs": "EACCES"}, data
    # /mnt is the sandbox's own empty mount point (granted paths appear under
    # /mnt/host only in a run that holds them), never the host's /mnt.
    assert run("import os; print(os.listdir('/mnt'))").stdout.strip() == "[]"


def test_service_runtime_dir_and_repository_are_absent(run, service):
    paths = [
        service.rundir,
        os.path.join(service.rundir, "root"),
        str(service.directory),
        service.embedded.tmp,
        REPO,
        os.path.join(REPO, "worker", "sandbox.py"),
        os.path.dirname(sys.executable),
        os.path.expanduser("~"),
    ]
    paths = sorted({p for p in paths if p.startswith("/") and p not in ("/", "/work", "/tmp")})
    outcome = _probe(run, paths)
    assert outcome == {path: "ENOENT" for path in paths}


def test_root_holds_only_the_template(run):
    result = run(
        """
        import json, os
        print(json.dumps({"root": sorted(os.listdir("/")), "dev": sorted(os.listdir("/dev")),
                          "etc": sorted(os.listdir("/etc"))}))
        """,
        environment="none",
    )
    assert result.status == m.Status.OK, show(result)
    listing = json.loads(result.stdout)
    extra = {os.path.realpath(sys.base_prefix).split("/")[1]} - {"usr"}  # an interpreter prefix
    assert EXPECTED_ROOT <= set(listing["root"]) <= EXPECTED_ROOT | {"lib32", "libx32"} | extra
    assert set(listing["dev"]) == {
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "fd",
        "stdin",
        "stdout",
        "stderr",
        "shm",
    }
    assert set(listing["etc"]) <= {
        "passwd",
        "group",
        "hosts",
        "hostname",
        "nsswitch.conf",
        "ld.so.cache",
        "alternatives",
        "localtime",
        "ssl",
    }


def test_host_account_and_name_files_are_not_shown(run):
    result = run(
        """
        import os, pwd
        for name in ("passwd", "group", "hostname", "hosts"):
            print("=====", name)
            print(open("/etc/" + name).read(), end="")
        print("===== me")
        print(pwd.getpwuid(os.getuid()).pw_name)
        """
    )
    assert result.status == m.Status.OK, show(result)
    sections = {}
    for block in result.stdout.split("===== ")[1:]:
        name, _, text = block.partition("\n")
        sections[name] = text
    assert set(sections) == {"passwd", "group", "hostname", "hosts", "me"}, show(result)
    assert sections.pop("me") == "sandbox\n"  # the run's own uid has a name
    with open("/etc/passwd", encoding="utf-8") as src:
        host_passwd = src.read()
    # Only the synthesised accounts (one "sandbox" per worker uid); no host
    # account line or name shows.
    names = list(dict.fromkeys(line.split(":")[0] for line in sections["passwd"].splitlines()))
    assert names == ["root", "sandbox", "nobody"], sections["passwd"]
    assert sections["passwd"] != host_passwd
    groups = list(dict.fromkeys(line.split(":")[0] for line in sections["group"].splitlines()))
    assert groups == ["root", "sandbox", "nogroup"], sections["group"]
    # No host line shows as it is (nobody's is the same everywhere).
    shown = set(sections["passwd"].splitlines())
    for line in host_passwd.splitlines():
        if not line.startswith("nobody:"):
            assert line not in shown, f"host account line visible: {line!r}"
    host_name = socket.gethostname()
    assert sections["hostname"] == "cellblock\n"
    if host_name != "cellblock":
        assert host_name not in sections["hosts"]


def test_monitor_process_cannot_be_inspected(run):
    """pid 1 is the monitor (it holds the broker connection): not dumpable, and its /proc
    directory covered by an empty one (unprivileged, its files would be the sandbox uid's)."""
    result = run(
        """
        import errno, os
        print("ME", os.getpid(), "PARENT", os.getppid())
        for name in ("environ", "mem", "maps", "auxv", "stack", "syscall", "fd", "fdinfo",
                     "root", "cwd", "exe", "map_files"):
            path = "/proc/1/" + name
            try:
                if name in ("fd", "fdinfo", "root", "map_files"):
                    os.listdir(path)
                elif name in ("cwd", "exe"):
                    os.readlink(path)
                else:
                    with open(path, "rb") as src:
                        src.read(16)
                print(name, "READABLE")
            except OSError as exc:
                print(name, errno.errorcode[exc.errno])
        for fd in range(3, 16):
            try:
                os.close(os.open(f"/proc/1/fd/{fd}", os.O_RDONLY))
                print("fd", fd, "OPENED")
            except OSError:
                pass
        """
    )
    assert result.status == m.Status.OK, show(result)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["ME"].startswith("2 PARENT 1"), show(result)  # the payload, child of pid 1
    for name in (
        "environ",
        "mem",
        "maps",
        "auxv",
        "stack",
        "syscall",
        "fd",
        "fdinfo",
        "root",
        "cwd",
        "exe",
        "map_files",
    ):
        assert lines.get(name) == "ENOENT", f"/proc/1/{name}: {lines.get(name)}\n{show(result)}"
    assert "OPENED" not in result.stdout, show(result)


def test_mount_table_does_not_name_host_paths(run, service):
    result = run("print(open('/proc/self/mountinfo').read())")
    assert result.status == m.Status.OK, show(result)
    assert " / / " in result.stdout, show(result)  # the real mount table was read
    for host_path in (service.rundir, service.embedded.tmp, REPO):
        assert host_path not in result.stdout, f"{host_path} named in mountinfo"


BASE_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "TMPDIR": "/tmp",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
    "LANG": "C.UTF-8",
}


def test_environment_is_built_from_nothing(run):
    result = run("import json, os\nprint(json.dumps(dict(os.environ)))", environment="none")
    assert result.status == m.Status.OK, show(result)
    assert json.loads(result.stdout) == BASE_ENVIRONMENT


def test_a_package_environment_adds_only_its_documented_settings(run, service):
    from worker.environments import environment_variables

    offered = {rt.name for rt in service.status().runtimes if rt.offered}
    if "python:data" not in offered:
        pytest.skip("the data environment is not built on this host (cellblock env build)")
    result = run("import json, os\nprint(json.dumps(dict(os.environ)))", environment="data")
    assert result.status == m.Status.OK, show(result)
    assert json.loads(result.stdout) == {**BASE_ENVIRONMENT, **environment_variables("data")}


def test_process_start_block_does_not_name_host_paths(run, service):
    """/proc/self/environ and /proc/self/cmdline show what the kernel kept
    from the exec that started this process (the launcher's), whatever
    os.environ says now: they must not name the host's repository or
    runtime directory either."""
    result = run(
        """
        for name in ("environ", "cmdline"):
            data = open("/proc/self/" + name, "rb").read().replace(b"\\0", b" ")
            print(name.upper(), data.decode(errors="replace"))
        """
    )
    assert result.status == m.Status.OK, show(result)
    assert "CMDLINE" in result.stdout, show(result)
    for host_path in (REPO, service.rundir, service.embedded.tmp):
        assert host_path not in result.stdout, f"{host_path} visible:\n{result.stdout}"
