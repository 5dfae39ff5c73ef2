"""seccomp policy: an allowlist per runtime plus a deny filter, built once.

Each payload loads two stacked filters (the kernel applies the strictest
answer of all installed filters):

1. the *allow* filter: the runtime's allowlist; anything not on it returns
   ENOSYS, so libc and runtimes fall back as they would on an older kernel
   (clone3 must say ENOSYS for glibc to fall back to clone). ``clone`` is
   allowed only without namespace flags, ``socket``/``socketpair`` only for
   the families the profile allows, ``personality`` only to query.
2. the *deny* filter: calls that are never allowed, whatever an allowlist
   says, return EPERM; ``ioctl(TIOCSTI)`` too (this needs its own filter:
   libseccomp cannot say "allow ioctl except one command" in one filter), and
   any mode with the setuid or setgid bit (chmod, open, mkdir and kin).

Both filters kill the process for a foreign architecture, and libseccomp
adds the x32 check (syscall numbers with bit 30 set) to the native filter,
so an x32 call is killed too. Filters are built with pyseccomp in a helper
process at launcher start (``build_programs``) and loaded from their BPF
bytes in each worker, which costs microseconds instead of ~2.5 ms.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable

import msgspec

from protocol.profile import Profile
from worker.runtimes.base import Runtime

# Everything a CPython (or node, or bash) process needs to run ordinary code.
BASE_ALLOW = frozenset(
    """
    read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2
    open openat openat2 close close_range creat lseek dup dup2 dup3 fcntl flock
    stat fstat lstat newfstatat statx statfs fstatfs access faccessat faccessat2
    readlink readlinkat getdents getdents64 getcwd chdir fchdir
    mkdir mkdirat rmdir rename renameat renameat2 unlink unlinkat link linkat
    symlink symlinkat chmod fchmod fchmodat chown fchown fchownat lchown umask mknod mknodat
    truncate ftruncate fallocate fsync fdatasync sync_file_range fadvise64 readahead
    utime utimes utimensat futimesat copy_file_range sendfile splice tee vmsplice
    getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr
    setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr
    pipe pipe2 poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl
    epoll_wait epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4
    timerfd_create timerfd_settime timerfd_gettime inotify_init inotify_init1
    inotify_add_watch inotify_rm_watch memfd_create
    mmap munmap mremap mprotect madvise brk msync mincore mlock mlock2 munlock
    mlockall munlockall membarrier pkey_alloc pkey_free pkey_mprotect get_mempolicy
    futex futex_waitv set_robust_list get_robust_list set_tid_address rseq
    arch_prctl prctl
    fork vfork execve execveat exit exit_group wait4 waitid kill tgkill tkill
    pidfd_open pidfd_send_signal
    rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend
    rt_sigtimedwait rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack pause
    restart_syscall alarm getitimer setitimer
    nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time times
    timer_create timer_settime timer_gettime timer_getoverrun timer_delete
    getpid getppid gettid getuid geteuid getgid getegid getresuid getresgid
    getgroups getpgid getpgrp getsid setsid setpgid getpriority setpriority
    setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid setgroups
    capget capset getrlimit setrlimit prlimit64 getrusage sysinfo uname getcpu
    getrandom sched_yield sched_getaffinity sched_setaffinity sched_getparam
    sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max
    sched_get_priority_min sched_rr_get_interval sched_getattr sched_setattr
    ioprio_get ioprio_set
    connect accept accept4 bind listen getsockname getpeername sendto recvfrom
    sendmsg recvmsg sendmmsg recvmmsg shutdown setsockopt getsockopt
    shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd
    msgrcv msgctl mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify
    mq_getsetattr
    ioctl
    """.split()
)

# Never allowed, whatever a runtime's allowlist says: EPERM.
NEVER = frozenset(
    """
    ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd
    mount umount2 pivot_root chroot unshare setns
    fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr
    open_by_handle_at name_to_handle_at
    bpf perf_event_open userfaultfd fanotify_init lookup_dcookie
    keyctl add_key request_key
    kexec_load kexec_file_load init_module finit_module delete_module
    io_uring_setup io_uring_enter io_uring_register
    reboot swapon swapoff acct quotactl syslog vhangup iopl ioperm
    settimeofday clock_settime clock_adjtime adjtimex
    sethostname setdomainname
    mbind set_mempolicy migrate_pages move_pages
    uselib ustat sysfs nfsservctl
    """.split()
)

# Calls where libc needs ENOSYS (not EPERM) to fall back.
# openat2's mode sits in a struct a filter cannot read (see SETID_MODE_ARGS);
# ENOSYS makes callers fall back to openat, as on an older kernel.
ENOSYS_CALLS = frozenset({"clone3", "openat2"})
# Calls that set a file's mode, and which argument holds it: setuid and
# setgid bits are refused (EPERM), so no run can leave a setuid program in a
# host folder it was granted write to (nosuid holds only inside the sandbox).
SETID_MODE_ARGS = {
    "chmod": 1,
    "fchmod": 1,
    "fchmodat": 2,
    "creat": 1,
    "open": 2,
    "openat": 3,
    "mkdir": 1,
    "mkdirat": 2,
    "mknod": 1,
    "mknodat": 2,
}
S_ISUID, S_ISGID = 0o4000, 0o2000

# Monitor: after setup it only pumps pipes and its broker socket.
MONITOR_REMOVE = frozenset(
    """
    execve execveat fork vfork connect accept accept4 bind listen
    """.split()
)

NAMESPACE_FLAGS = 0x7E020000  # every CLONE_NEW* flag
TIOCSTI = 0x5412
PERSONALITY_QUERY = 0xFFFFFFFF
FAMILIES = {"unix": socket.AF_UNIX, "inet": socket.AF_INET, "inet6": socket.AF_INET6}


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """What to compile for one runtime (or for the monitor)."""

    name: str
    extra_allow: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()
    exec: bool = True
    socket_families: tuple[str, ...] = ("unix", "inet", "inet6")
    allow_clone: bool = True
    allow_socket: bool = True


class Programs(msgspec.Struct, frozen=True):
    """Compiled BPF, by policy name: (allow filter, deny filter)."""

    filters: dict[str, tuple[bytes, bytes]]


def _export(flt: object) -> bytes:
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "wb", closefd=True) as out:
            flt.export_bpf(out)  # type: ignore[attr-defined]
        with os.fdopen(read_fd, "rb", closefd=False) as src:
            return src.read()
    finally:
        os.close(read_fd)


def _optimise(flt: object) -> None:
    """A binary tree of syscall numbers instead of a linear list (libseccomp 2.5+).

    Each call then walks ~log2(n) comparisons instead of up to n, and the
    kernel's per-filter action cache, computed when a worker loads the
    filter by running it once for every syscall number, costs a fraction.
    """
    import pyseccomp as sc

    try:
        flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # type: ignore[attr-defined]
    except (OSError, RuntimeError, ValueError):
        pass  # an older libseccomp: the linear filter is correct, only slower


def _allow_filter(policy: Policy) -> bytes:
    import pyseccomp as sc

    allowed = (BASE_ALLOW | policy.extra_allow) - policy.remove - NEVER - ENOSYS_CALLS
    allowed -= {"socket", "socketpair", "clone", "personality"}
    if not policy.exec:
        allowed -= {"execve", "execveat"}
    flt = sc.SyscallFilter(sc.ERRNO(errno.ENOSYS))
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    _optimise(flt)
    for name in sorted(allowed):
        try:
            flt.add_rule(sc.ALLOW, name)
        except (OSError, RuntimeError, ValueError):
            continue  # not a syscall on this architecture (e.g. epoll_wait_old)
    if policy.allow_clone:
        flt.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, NAMESPACE_FLAGS, 0))
    # ENOSYS_CALLS need no rule: ENOSYS is this filter's default answer.
    if policy.allow_socket:
        for family in policy.socket_families:
            for call in ("socket", "socketpair"):
                flt.add_rule(sc.ALLOW, call, sc.Arg(0, sc.EQ, FAMILIES[family]))
    for value in (PERSONALITY_QUERY, 0):
        flt.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, value))
    return _export(flt)


def _deny_filter() -> bytes:
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    _optimise(flt)
    for name in sorted(NEVER):
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, RuntimeError, ValueError):
            continue
    flt.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    for name, arg in SETID_MODE_ARGS.items():
        for bit in (S_ISUID, S_ISGID):
            flt.add_rule(sc.ERRNO(errno.EPERM), name, sc.Arg(arg, sc.MASKED_EQ, bit, bit))
    for bit in range(32):
        flag = 1 << bit
        if NAMESPACE_FLAGS & flag:
            flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    return _export(flt)


def build_programs(policies: Iterable[Policy]) -> Programs:
    """Compile every policy (imports pyseccomp; meant for a helper process)."""
    deny = _deny_filter()
    return Programs({p.name: (_allow_filter(p), deny) for p in policies})


def runtime_policy(profile: Profile, kind: str, runtime: Runtime) -> Policy:
    """What the payload of a kind of worker may call, from its runtime's adapter and the profile."""
    policy = profile.runtimes[runtime.name]
    return Policy(
        name=kind,
        extra_allow=runtime.extra_syscalls,
        exec=policy.exec or runtime.needs_exec_syscall,
        socket_families=tuple(policy.socket_families),
    )


def monitor_policy() -> Policy:
    return Policy(
        name="@monitor",
        remove=MONITOR_REMOVE,
        exec=False,
        allow_clone=False,
        allow_socket=False,
    )


def build_in_helper(policies: list[Policy]) -> Programs:
    """Run ``build_programs`` in a forked child so the caller never imports pyseccomp.

    The launcher forks every worker; keeping libseccomp and its Python
    wrapper out of its heap keeps each fork cheaper.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the helper child
        code = 0
        try:
            os.close(read_fd)
            data = msgspec.msgpack.encode(build_programs(policies))
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)
        except BaseException as exc:  # noqa: BLE001 - report, then exit non-zero
            os.write(2, f"cellblock: seccomp build failed: {exc!r}\n".encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as src:
        data = src.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        raise RuntimeError("building the seccomp filters failed (is libseccomp installed?)")
    return msgspec.msgpack.decode(data, type=Programs)


def compile_filters(policies: list[Policy]) -> tuple[dict[str, list[bytes]] | None, str]:
    """Every runtime's BPF programs (and the monitor's), compiled once in a helper:
    (programs, "") or (None, why not). The monitor's allowlist already leaves out
    every never-allowed call; a payload also gets the deny filter."""
    try:
        compiled = build_in_helper([monitor_policy(), *policies]).filters
    except RuntimeError as exc:
        return None, str(exc)
    return {name: [allow] if name == "@monitor" else [allow, deny] for name, (allow, deny) in compiled.items()}, ""
