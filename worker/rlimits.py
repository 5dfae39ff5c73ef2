"""rlimits: per-process limits the kernel enforces on the payload.

Set by the monitor's child before it runs anything of a job, with hard
limits at the profile's maximum; the job's own (lower) values are applied as
soft and hard limits before the code starts, and nothing in the sandbox can
raise a hard limit again. RLIMIT_NPROC counts per uid, and every worker has
its own uid (or user namespace), so it is a per-run process cap. RLIMIT_AS
is the memory fallback where no memory cgroup can be written.
"""

from __future__ import annotations

import math
import resource

from protocol.profile import MiB, Profile


def _set(which: int, soft: int, hard: int | None = None, pid: int = 0) -> None:
    hard = soft if hard is None else hard
    _, current_hard = resource.prlimit(pid, which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    resource.prlimit(pid, which, (soft, hard))


def cpu_seconds(cpu_ms: int) -> int:
    return max(1, math.ceil(cpu_ms / 1000))


def apply_payload(profile: Profile, memory_fallback: bool, allowance: int = 0) -> None:
    """Profile-wide limits, at the moment the payload is made. ``allowance``:
    address space the runtime maps beyond what the code allocates."""
    fixed = profile.fixed
    _set(resource.RLIMIT_CORE, 0)
    _set(resource.RLIMIT_NOFILE, fixed.open_files)
    _set(resource.RLIMIT_FSIZE, fixed.file_size_mb * MiB)
    _set(resource.RLIMIT_NPROC, fixed.pids)
    _set(resource.RLIMIT_MSGQUEUE, 0)
    _set(resource.RLIMIT_MEMLOCK, 64 * 1024)
    # SIGXCPU at the soft limit, SIGKILL one second later at the hard limit.
    # The hard limit leaves room for a session (``apply_session``); a one-shot
    # job lowers both to its own (``apply_job``).
    max_cpu = cpu_seconds(profile.max.cpu_ms)
    _set(resource.RLIMIT_CPU, max_cpu, max(max_cpu, fixed.session_cpu_s) + 1)
    if memory_fallback:
        _set(resource.RLIMIT_AS, profile.max.in_bytes().memory_bytes + allowance)


def apply_session(memory_bytes: int, memory_fallback: bool) -> None:
    """A session's payload: its cpu time over every cell up to the profile's
    ``session_cpu_s`` (each cell's own is the monitor's to watch), and its memory."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        _set(resource.RLIMIT_CPU, max(1, hard - 1), hard)
    if memory_fallback:
        _set(resource.RLIMIT_AS, memory_bytes)


def apply_job(cpu_ms: int, memory_bytes: int, memory_fallback: bool, pid: int = 0) -> None:
    """The job's own limits, on this process or (``pid``) its child; they can only go down."""
    seconds = cpu_seconds(cpu_ms)
    _set(resource.RLIMIT_CPU, seconds, seconds + 1, pid)
    if memory_fallback:
        _set(resource.RLIMIT_AS, memory_bytes, None, pid)
