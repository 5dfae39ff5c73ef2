"""Privilege drop: from (namespace) root to a sandbox uid with nothing left.

The order matters. securebits and the bounding set need CAP_SETPCAP, and
the uid change needs CAP_SETUID, so they come first; the capability sets are
emptied after the uid change; no_new_privs and "not dumpable" close the
door behind. The result is checked against /proc/self/status, and any bit
left over fails the worker (fail closed).
"""

from __future__ import annotations

import os

import prctl

from worker import syscalls as sc

_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
# noroot + locked, keep_caps locked (off), no ambient raise + locked. We keep
# the setuid fixup, so the uid change itself clears the capability sets.
_SECUREBITS = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 6) | (1 << 7)


def cap_last() -> int:
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as src:
        return int(src.read())


def drop(uid: int, gid: int, in_user_namespace: bool, last_cap: int) -> None:
    # python-prctl refuses the ambient-raise bits it does not know; set them directly.
    sc.prctl(_PR_SET_SECUREBITS, _SECUREBITS)
    for cap in range(last_cap + 1):
        prctl.capbset_drop(cap)
    sc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    if not in_user_namespace:  # setgroups is denied inside our user namespace
        os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    sc.clear_capabilities()
    prctl.set_no_new_privs(1)


def protect_from_oom(in_user_namespace: bool) -> None:
    """Where allowed, the monitor is never the OOM killer's choice.

    Lowering oom_score_adj needs CAP_SYS_RESOURCE in the initial namespace,
    which a user-namespace worker (and root in some containers) lacks; the
    payload's own +1000 still makes it the first choice, so this is best
    effort on top of that.
    """
    if in_user_namespace:
        return
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    try:
        os.write(fd, b"-1000")
    except PermissionError:
        pass
    finally:
        os.close(fd)


def make_undumpable() -> None:
    """No ptrace attach, no /proc/<pid>/mem or fd access by the same uid."""
    prctl.set_dumpable(0)


def _status_field(status: bytes, key: bytes) -> list[bytes]:
    start = status.find(b"\n" + key + b":")
    if start < 0:
        raise PermissionError(f"{key.decode()} missing from /proc/self/status")
    start += len(key) + 2
    return status[start : status.find(b"\n", start)].split()


def open_status() -> int:
    """/proc/self/status, opened while it can be (``mounts.hide_monitor`` covers it next);
    read by ``verify`` after the drop, and closed there."""
    return os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)


def verify(uid: int, gid: int, fd: int) -> None:
    # Raw bytes and five look-ups: a text file and a dict of every line cost
    # ~60 copy-on-write faults more in a freshly cloned worker.
    try:
        status = b"\n" + os.pread(fd, 1 << 14, 0)
    finally:
        os.close(fd)
    for key in (b"CapInh", b"CapPrm", b"CapEff", b"CapBnd", b"CapAmb"):
        if int(_status_field(status, key)[0], 16) != 0:
            raise PermissionError(f"{key.decode()} not empty after the drop")
    if _status_field(status, b"NoNewPrivs") != [b"1"]:
        raise PermissionError("no_new_privs not set")
    uids, gids = _status_field(status, b"Uid"), _status_field(status, b"Gid")
    if {int(x) for x in uids} != {uid} or {int(x) for x in gids} != {gid}:
        raise PermissionError("uid or gid not fully changed")
    if any(int(group) != gid for group in _status_field(status, b"Groups")):
        raise PermissionError("supplementary groups left")
