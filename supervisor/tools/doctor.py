"""``cellblock doctor``: what this host is missing for each sandbox layer, and the fix."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys

from supervisor.tools import unit_check
from worker import cgroup_parents
from worker.runtimes.swift import find_frontend

OK, WARN, MISSING = "ok", "warn", "MISSING"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as src:
            return src.read().strip()
    except OSError:
        return None


def _userns_probe() -> tuple[bool, str]:
    """Can this user make a user namespace? Ask a child, so we stay unchanged."""
    code = (
        "import ctypes,sys; l=ctypes.CDLL(None,use_errno=True);"
        "sys.exit(0 if l.unshare(0x10000000|0x20000)==0 else ctypes.get_errno())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10)
    if proc.returncode == 0:
        return True, ""
    return False, os.strerror(proc.returncode) if proc.returncode < 200 else f"exit {proc.returncode}"


def _cgroups(root: bool) -> tuple[str, str, str, str]:
    """Whether runs get a memory cgroup (per run, not per process), and if not, how to delegate one."""
    layout, reason = cgroup_parents.detect("doctor", root)
    if layout is not None and layout.version("memory") is not None:
        return ("cgroups", OK, layout.detail, "")
    which, commands = cgroup_parents.delegation_advice(os.getuid())
    found = layout.detail if layout is not None else reason
    fix = f"{which}:" + "".join(f"\n      {line}" for line in commands)
    fix += "\n    until then each process's memory is bounded (RLIMIT_AS), not each run's"
    return ("cgroups", WARN, f"no memory cgroup ({found})", fix)


def checks() -> list[tuple[str, str, str, str]]:
    """(layer, state, what we found, how to fix)."""
    rows = []
    root = os.geteuid() == 0
    rows.append(("mode", OK, "root: workers get their own uids" if root else "unprivileged: user namespaces", ""))
    if not root:
        ok, why = _userns_probe()
        fix = ""
        if not ok:
            fix = "enable user namespaces: sysctl kernel.unprivileged_userns_clone=1"
            if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
                fix = "sysctl kernel.apparmor_restrict_unprivileged_userns=0, or run the service as root"
            elif _read("/proc/sys/user/max_user_namespaces") == "0":
                fix = "sysctl user.max_user_namespaces=15000"
        rows.append(
            ("namespaces", OK if ok else MISSING, "user namespaces work" if ok else f"unshare failed: {why}", fix)
        )
    else:
        rows.append(("namespaces", OK, "root can create every namespace", ""))
    rows.append(_cgroups(root))
    lib = ctypes.util.find_library("seccomp")
    rows.append(
        (
            "seccomp",
            OK if lib else MISSING,
            f"libseccomp: {lib}" if lib else "libseccomp not found",
            "" if lib else "apt-get install libseccomp2",
        )
    )
    try:
        import prctl  # noqa: F401

        rows.append(("privileges", OK, "python-prctl imports", ""))
    except ImportError:
        rows.append(("privileges", MISSING, "python-prctl missing", "apt-get install libcap-dev; make setup"))
    seccomp_mode = _read("/proc/self/status")
    if seccomp_mode and "NoNewPrivs:\t1" in seccomp_mode:
        rows.append(("privileges", WARN, "this shell already has no_new_privs", "fine; noted for debugging"))
    frontend = find_frontend()
    rows.append(
        (
            "swift",
            OK if frontend else WARN,
            f"toolchain at {os.path.dirname(os.path.dirname(frontend))}" if frontend else "no Swift toolchain",
            ""
            if frontend
            else "optional: unpack a toolchain from https://www.swift.org/install/linux/ into /opt/swift "
            "(or name it in the profile: [runtimes.swift] toolchain = ...); Swift runs are refused until then",
        )
    )
    bwrap = shutil.which("bwrap")
    rows.append(
        (
            "benchmark",
            OK if bwrap else WARN,
            f"bubblewrap at {bwrap}" if bwrap else "no bubblewrap",
            "" if bwrap else "apt-get install bubblewrap (only for the benchmark's baseline)",
        )
    )
    rows += unit_check.rows()  # an installed contrib/cellblock.service, if any
    return rows


def print_cgroup_commands(delegate: int | None, undelegate: int | None) -> int:
    """``--delegate-cgroups UID`` / ``--undelegate-cgroups UID``: root's shell commands, one a
    line, for ``| sh -e`` (the unprivileged test run uses them); cgroup v1 hierarchies only."""
    lines = []
    if delegate is not None:
        lines += cgroup_parents.delegate_commands(delegate)
    if undelegate is not None:
        lines += cgroup_parents.undelegate_commands(undelegate)
    print("\n".join(lines))
    return 0


def run_doctor(socket_path: str) -> int:
    rows = checks()
    width = max(len(r[0]) for r in rows)
    for layer, state, found, fix in rows:
        print(f"[{state:^7}] {layer:<{width}}  {found}")
        if fix:
            print(f"{'':>10}{'':<{width}}  fix: {fix}")
    from protocol.client import Client, ServiceError

    if os.path.exists(socket_path):
        with Client(socket_path, connect_timeout=0.5) as client:
            try:
                status = client.status(timeout=2.0)
            except ServiceError:
                print(f"[  warn ] service  a socket exists at {socket_path} but nothing answers")
            else:
                for rt in status.runtimes:
                    state = OK if rt.offered else MISSING
                    print(f"[{state:^7}] runtime {rt.name}: {'offered' if rt.offered else rt.reason}")
    else:
        print(f"[  info ] service  not running on {socket_path}; `cellblock run` starts one per call")
    return 1 if any(r[1] == MISSING for r in rows) else 0
