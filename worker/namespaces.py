"""Namespaces: the clone that makes a worker, identity maps, loopback, hostname."""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from worker import syscalls as sc

WORKER_FLAGS = sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFF_RUNNING = 0x40


def clone_worker(user_namespace: bool, parent: bool = False) -> int:
    """clone() into fresh pid, mount, net, ipc and uts namespaces (and user).

    The child is pid 1 of its pid namespace: when it exits, the kernel kills
    everything left inside, so nothing a run starts can outlive the monitor.
    With ``parent`` (a zygote's clone) the child's parent is the caller's
    parent, the launcher, which reaps it.
    """
    flags = WORKER_FLAGS | (sc.CLONE_NEWUSER if user_namespace else 0) | (sc.CLONE_PARENT if parent else 0)
    return sc.clone(flags)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def map_identity(inside_uid: int, inside_gid: int, outside_uid: int, outside_gid: int) -> None:
    """Map one outside id to one inside id for the calling process's new user namespace.

    The kernel lets an unprivileged process write exactly this: a single
    line mapping its own effective ids, after denying setgroups.
    """
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside_uid} {outside_uid} 1\n")
    _write("/proc/self/gid_map", f"{inside_gid} {outside_gid} 1\n")


def enter_launcher_namespaces(unprivileged: bool) -> None:
    """The launcher's own mount namespace (and, unprivileged, a user namespace
    where it is root), so the template mounts never show on the host."""
    uid, gid = os.geteuid(), os.getegid()
    if unprivileged:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        map_identity(0, 0, uid, gid)
    else:
        sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def enter_cgroup_namespace() -> None:
    """After joining the slot's cgroups, so /proc/self/cgroup shows only '/'."""
    sc.unshare(sc.CLONE_NEWCGROUP)


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP | _IFF_RUNNING))


def set_hostname(name: str) -> None:
    sc.sethostname(name)
