"""cgroups: memory (hard, no swap), pids and cpu limits per worker, v1 or v2.

Each controller is taken from cgroup v2 when the unified hierarchy offers it,
else from its v1 hierarchy (this development machine: memory, pids and cpu
on v1; most current distributions: v2 only). Where the parents go (root's
own, or a subtree delegated to the user) is ``worker.cgroup_parents``; where
no cgroup can be had the launcher falls back to rlimits and ``cellblock
status`` says so.

The launcher owns a directory per *slot* (``w<N>``) under its parent and
reuses it for the next worker of that slot; the worker joins it with its
first step, opens the few files it needs while it still may, and reads or
writes them through those descriptors after it has dropped privileges.
"""

from __future__ import annotations

import os

import msgspec

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")  # cpuacct: v1 only; v2 keeps usage in cpu.stat
CPU_PERIOD_US = 100_000
# CPU weight of a worker making itself ready (low) and running a job (high):
# on a small machine, sandbox set-up then yields to the runs already going,
# and a run is not slowed by the replacements being made for it.
WEIGHT_IDLE = {1: "16", 2: "2"}  # cpu.shares (v1) / cpu.weight (v2)
WEIGHT_RUN = {1: "8192", 2: "800"}
WEIGHT_LAUNCHER = {1: "128", 2: "12"}


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    """Where each controller lives: controller -> (version, parent directory)."""

    parents: dict[str, tuple[int, str]]
    detail: str
    home: str = ""  # the cpu cgroup the launcher returns to before its own group is removed

    def version(self, controller: str) -> int | None:
        entry = self.parents.get(controller)
        return entry[0] if entry else None

    def describe(self) -> str:
        parts = [f"{c}=v{v}" for c, (v, _) in sorted(self.parents.items())]
        return ", ".join(parts)


def read_text(path: str) -> str:
    with open(path, encoding="ascii") as src:
        return src.read()


def write_text(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def v2_controllers(path: str) -> set[str]:
    try:
        return set(read_text(os.path.join(path, "cgroup.controllers")).split())
    except OSError:
        return set()


def slot_dirs(layout: Layout, index: int) -> dict[str, str]:
    return {c: os.path.join(parent, f"w{index}") for c, (_, parent) in layout.parents.items()}


def set_memory_limit(version: int, directory: str, limit: int) -> None:
    if version == 2:
        write_text(os.path.join(directory, "memory.max"), str(limit))
        try:
            write_text(os.path.join(directory, "memory.swap.max"), "0")
        except OSError:
            pass  # no swap accounting: nothing to limit
        return
    # v1 insists memsw >= mem at every step: order the two writes accordingly.
    mem = os.path.join(directory, "memory.limit_in_bytes")
    memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
    has_memsw = os.path.exists(memsw)
    try:
        write_text(mem, str(limit))
        if has_memsw:
            write_text(memsw, str(limit))
    except OSError:
        if not has_memsw:
            raise
        write_text(memsw, str(limit))
        write_text(mem, str(limit))


def prepare_slot(layout: Layout, index: int, memory_bytes: int, pids: int, cpu_quota: float) -> dict[str, str]:
    """Create (or reuse) the slot's cgroups and write the profile's limits."""
    dirs = slot_dirs(layout, index)
    for controller, directory in dirs.items():
        version = layout.parents[controller][0]
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if controller == "memory":
            set_memory_limit(version, directory, memory_bytes)
        elif controller == "pids":
            write_text(os.path.join(directory, "pids.max"), str(pids))
        elif controller == "cpu":
            quota = int(cpu_quota * CPU_PERIOD_US)
            if version == 2:
                write_text(os.path.join(directory, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
                write_text(os.path.join(directory, "cpu.weight"), WEIGHT_IDLE[2])
            else:
                write_text(os.path.join(directory, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                write_text(os.path.join(directory, "cpu.cfs_quota_us"), str(quota))
                write_text(os.path.join(directory, "cpu.shares"), WEIGHT_IDLE[1])
    return dirs


def join(layout: Layout, dirs: dict[str, str]) -> None:
    """Move the calling (single-threaded) process into every controller's slot.

    On v1 the move goes through ``tasks`` with "0": moving only the calling
    thread skips the global threadgroup lock, whose RCU grace period made
    every ``cgroup.procs`` move cost ~13 ms and serialised all of them. The
    worker has one thread at this point, so the thread is the process.
    """
    versions = {directory: layout.parents[c][0] for c, directory in dirs.items()}
    for directory in sorted(versions):
        name = "tasks" if versions[directory] == 1 else "cgroup.procs"
        write_text(os.path.join(directory, name), "0")


def _oom_kills(text: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


class Meter:
    """The worker's handles on its own memory cgroup, opened before the privilege drop."""

    def __init__(self, layout: Layout, dirs: dict[str, str]) -> None:
        self.version = layout.version("memory")
        self._dir = dirs.get("memory", "")
        self._limit_fd = self._peak_fd = self._events_fd = self._memsw_fd = self._cpu_fd = self._usage_fd = -1
        self._cpu_v2 = False
        self._peak_resettable = False
        self._weight_fd = -1
        cpu_version = layout.version("cpu")
        if cpu_version is not None:
            name = "cpu.weight" if cpu_version == 2 else "cpu.shares"
            self._weight_fd = os.open(os.path.join(dirs["cpu"], name), os.O_RDWR | os.O_CLOEXEC)
            self._weights = (WEIGHT_IDLE[cpu_version].encode(), WEIGHT_RUN[cpu_version].encode())
        if layout.version("cpu") == 2:
            self._cpu_fd = os.open(os.path.join(dirs["cpu"], "cpu.stat"), os.O_RDONLY | os.O_CLOEXEC)
            self._cpu_v2 = True
        elif "cpuacct" in dirs:
            self._cpu_fd = os.open(os.path.join(dirs["cpuacct"], "cpuacct.usage"), os.O_RDONLY | os.O_CLOEXEC)
        if self.version is None:
            return
        v2 = self.version == 2
        self._limit_fd = os.open(
            os.path.join(self._dir, "memory.max" if v2 else "memory.limit_in_bytes"), os.O_RDWR | os.O_CLOEXEC
        )
        peak = "memory.peak" if v2 else "memory.max_usage_in_bytes"
        try:
            self._peak_fd = os.open(os.path.join(self._dir, peak), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self._peak_fd = -1
        usage = "memory.current" if v2 else "memory.usage_in_bytes"
        self._usage_fd = os.open(os.path.join(self._dir, usage), os.O_RDONLY | os.O_CLOEXEC)
        events = "memory.events" if v2 else "memory.oom_control"
        self._events_fd = os.open(os.path.join(self._dir, events), os.O_RDONLY | os.O_CLOEXEC)
        if not v2:
            try:
                self._memsw_fd = os.open(
                    os.path.join(self._dir, "memory.memsw.limit_in_bytes"), os.O_RDWR | os.O_CLOEXEC
                )
            except OSError:
                self._memsw_fd = -1

    @property
    def active(self) -> bool:
        return self.version is not None

    def set_limit(self, limit: int) -> None:
        if not self.active:
            return
        value = str(limit).encode()
        if self._memsw_fd >= 0:
            try:
                os.pwrite(self._limit_fd, value, 0)
                os.pwrite(self._memsw_fd, value, 0)
            except OSError:
                os.pwrite(self._memsw_fd, value, 0)
                os.pwrite(self._limit_fd, value, 0)
        else:
            os.pwrite(self._limit_fd, value, 0)

    def reset_peak(self) -> None:
        if self._peak_fd < 0:
            return
        try:
            os.pwrite(self._peak_fd, b"0" if self.version == 1 else b"reset", 0)
            self._peak_resettable = True
        except OSError:
            self._peak_resettable = False

    def peak(self) -> int | None:
        """Peak bytes charged since reset_peak(); None if the kernel cannot say."""
        if self._peak_fd < 0 or not self._peak_resettable:
            return None
        return int(os.pread(self._peak_fd, 64, 0).split()[0])

    def usage(self) -> int | None:
        """Bytes the worker's processes hold now (a session's, between cells); None without a cgroup."""
        if self._usage_fd < 0:
            return None
        return int(os.pread(self._usage_fd, 64, 0).split()[0])

    def set_running(self, running: bool) -> None:
        """Raise the worker's cpu weight once ready; lower it again after the run."""
        if self._weight_fd >= 0:
            os.pwrite(self._weight_fd, self._weights[1 if running else 0], 0)

    def cpu_ns(self) -> int | None:
        """CPU time of every process in the worker's cgroup, in ns; None without one."""
        if self._cpu_fd < 0:
            return None
        data = os.pread(self._cpu_fd, 4096, 0)
        if not self._cpu_v2:
            return int(data)
        for line in data.split(b"\n"):
            if line.startswith(b"usage_usec "):
                return int(line.split()[1]) * 1000
        return None

    def oom_kills(self) -> int:
        if self._events_fd < 0:
            return 0
        return _oom_kills(os.pread(self._events_fd, 4096, 0).decode("ascii", "replace"))
