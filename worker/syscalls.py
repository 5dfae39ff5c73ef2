"""The Linux system calls Python 3.11's ``os`` module does not expose.

Thin ctypes wrappers that raise ``OSError`` with the errno. Nothing here
decides policy; the sandbox steps call these in order.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
# PyDLL keeps the GIL across the call: needed for clone(), whose child must
# resume inside the interpreter exactly where the parent is.
_pylibc = ctypes.PyDLL(None, use_errno=True)

CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SIGCHLD = 17

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

_SYS_CLONE = 56
_SYS_PIVOT_ROOT = 155
_SYS_CLOSE_RANGE = 436
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442

OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def clone(flags: int) -> int:
    """fork() that enters new namespaces in the same step.

    Returns 0 in the child and the child's pid in the parent. Unlike
    ``os.fork`` this skips Python's at-fork hooks, so it is only for a
    single-threaded parent (the launcher) whose child never relies on them.
    glibc's cached thread id is stale in the child, which only matters to
    ``pthread_kill``/``raise``; the monitor uses neither (its payload comes
    from ``fork`` below, where glibc's state is right).
    """
    pid: int = _pylibc.syscall(_SYS_CLONE, ctypes.c_ulong(flags | SIGCHLD), None, None, None, None)
    return _check(pid, "clone")


def fork() -> int:
    """glibc's fork() without Python's at-fork hooks, for the single-threaded
    monitor: the hooks (thread and lock re-initialisation) cost ~140
    copy-on-write faults in the payload. Unlike a raw clone, glibc's own state
    (the thread id it caches, its locks) is right in the child. The one hook
    that matters, ``random``'s reseed, the payload does itself."""
    pid: int = _pylibc.fork()
    return _check(pid, "fork")


def signalfd(signals: tuple[int, ...]) -> int:
    """A non-blocking signalfd for ``signals`` (block them first). Each read
    gives 128-byte records whose first four bytes are the signal number."""
    mask = (ctypes.c_uint64 * 16)()  # the kernel's sigset_t is 8 bytes; glibc's is 128
    for sig in signals:
        mask[(sig - 1) // 64] |= 1 << ((sig - 1) % 64)
    fd: int = _libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC)
    return _check(fd, "signalfd")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def clone_tree(fd: int) -> int:
    """open_tree(OPEN_TREE_CLONE): a detached copy of the mount at ``fd`` (Linux 5.2+)."""
    flags = ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH)
    result: int = _libc.syscall(_SYS_OPEN_TREE, fd, b"", flags)
    return _check(result, "open_tree")


def set_mount_attr(fd: int, attr_set: int, userns_fd: int = 0) -> None:
    """mount_setattr() on a detached tree (Linux 5.12+); MOUNT_ATTR_IDMAP needs ``userns_fd``."""
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    flags = ctypes.c_uint(AT_EMPTY_PATH)
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", flags, ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")


def move_mount(fd: int, target: str) -> None:
    flags = ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)
    _check(_libc.syscall(_SYS_MOVE_MOUNT, fd, b"", -100, target.encode(), flags), f"move_mount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        f"prctl({option})",
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def clear_capabilities() -> None:
    """capset(): the effective, permitted and inheritable sets all emptied, in one call."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # version 3 takes two 32-bit halves, all zero
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every descriptor from ``first`` up (Linux 5.9+), else loop."""
    if _libc.syscall(_SYS_CLOSE_RANGE, first, ctypes.c_uint(last), 0) == 0:
        return
    os.closerange(first, min(last, os.sysconf("SC_OPEN_MAX")))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CompiledFilter:
    """A seccomp BPF program kept ready to load (built once per profile)."""

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % 8:
            raise ValueError("seccomp program must be a non-empty array of 8-byte instructions")
        self.program = program
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.cast(self._buffer, ctypes.c_void_p))

    def load(self) -> None:
        """Install on the calling thread. no_new_privs must already be set."""
        _check(
            _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(self._fprog), 0, 0),
            "seccomp",
        )


def scrub_start_block(environment: dict[str, str]) -> None:
    """Leave nothing of how this process was started readable in /proc/self.

    /proc/<pid>/cmdline and /proc/<pid>/environ show the memory the kernel
    wrote at exec time, whatever Python's os.environ says later; every fork
    inherits it. Move the environment to ``environment`` (new strings on the
    heap), then zero the original block, and retitle the command line.
    """
    import prctl

    with open("/proc/self/stat", "rb") as src:
        fields = src.read().rsplit(b")", 1)[1].split()
    # Fields 50 and 51 of stat (1-based) are env_start and env_end; after the
    # ")" split, field n is at index n - 3.
    env_start, env_end = int(fields[50 - 3]), int(fields[51 - 3])
    prctl.set_proctitle("cellblock-launcher")
    os.environ.clear()
    os.environ.update(environment)
    if 0 < env_start < env_end:
        ctypes.memset(env_start, 0, env_end - env_start)
