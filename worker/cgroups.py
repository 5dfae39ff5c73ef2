"""cgroups: memory (hard, no swap), pids and cpu limits per worker, v1 or v2.

Each controller is taken from cgroup v2 when the unified hierarchy offers it,
else from its v1 hierarchy (this development machine: memory, pids and cpu
on v1; most current distributions: v2 only). Where no writable cgroup exists
(unprivileged, nothing delegated) the launcher falls back to rlimits and
``cellblock status`` says so.

The launcher owns a directory per *slot* (``w<N>``) under its parent and
reuses it for the next worker of that slot; the worker joins it with its
first step, opens the few files it needs while it still may, and reads or
writes them through those descriptors after it has dropped privileges.
"""

from __future__ import annotations

import errno
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

    def version(self, controller: str) -> int | None:
        entry = self.parents.get(controller)
        return entry[0] if entry else None

    def describe(self) -> str:
        parts = [f"{c}=v{v}" for c, (v, _) in sorted(self.parents.items())]
        return ", ".join(parts)


class Mounts(msgspec.Struct, frozen=True):
    v1: dict[str, str]  # controller -> mount point
    v2: str | None


def parse_mountinfo(text: str) -> Mounts:
    v1: dict[str, str] = {}
    v2 = None
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mount_point, fstype, options = fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fstype == "cgroup":
            for controller in CONTROLLERS:
                if controller in options:
                    v1.setdefault(controller, mount_point)
    return Mounts(v1, v2)


def parse_self_cgroup(text: str) -> dict[str, str]:
    """'/proc/self/cgroup' -> controller (or '' for v2) -> path."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths[""] = path
        for controller in controllers.split(","):
            paths[controller] = path
    return paths


def _read(path: str) -> str:
    with open(path, encoding="ascii") as src:
        return src.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _v2_controllers(path: str) -> set[str]:
    try:
        return set(_read(os.path.join(path, "cgroup.controllers")).split())
    except OSError:
        return set()


def detect(
    instance: str,
    is_root: bool,
    parent_hint: str = "",
    mountinfo: str | None = None,
    self_cgroup: str | None = None,
) -> tuple[Layout | None, str]:
    """Choose a writable parent for each controller; (None, reason) if none."""
    mounts = parse_mountinfo(mountinfo if mountinfo is not None else _read("/proc/self/mountinfo"))
    own = parse_self_cgroup(self_cgroup if self_cgroup is not None else _read("/proc/self/cgroup"))
    parents: dict[str, tuple[int, str]] = {}
    v2_root = mounts.v2
    if parent_hint:
        v2_avail = _v2_controllers(parent_hint) if v2_root and parent_hint.startswith(v2_root) else set()
        for controller in CONTROLLERS:
            if controller in v2_avail:
                parents[controller] = (2, os.path.join(parent_hint, instance))
            elif controller in mounts.v1 and parent_hint.startswith(mounts.v1[controller]):
                parents[controller] = (1, os.path.join(parent_hint, instance))
    else:
        v2_avail = _v2_controllers(v2_root) if v2_root and is_root else set()
        for controller in CONTROLLERS:
            if controller in v2_avail and v2_root:
                parents[controller] = (2, os.path.join(v2_root, "cellblock", instance))
            elif controller in mounts.v1:
                base = mounts.v1[controller]
                if is_root:
                    parents[controller] = (1, os.path.join(base, "cellblock", instance))
                else:
                    mine = os.path.join(base, own.get(controller, "/").lstrip("/"))
                    if os.access(mine, os.W_OK):
                        parents[controller] = (1, os.path.join(mine, f"cellblock-{instance}"))
    if not parents:
        if not is_root:
            return None, "not root and no delegated cgroup is writable (set cgroups.parent)"
        return None, "no cgroup hierarchy with memory, pids or cpu is mounted"
    missing = [c for c in CONTROLLERS if c not in parents and not (c == "cpuacct" and parents.get("cpu", (0,))[0] == 2)]
    detail = ", ".join(f"{c}=v{v}" for c, (v, _) in sorted(parents.items()))
    if missing:
        detail += f"; missing: {', '.join(missing)}"
    return Layout(parents=parents, detail=detail), ""


def prepare_host(setting: str, instance: str, is_root: bool, parent: str) -> tuple[Layout | None, str, str]:
    """Parents for the slots' cgroups, made and the caller placed among them:
    (layout or None, what the layer is, why it is missing). ``setting`` is the
    profile's cgroups layer: required, optional or off."""
    if setting == "off":
        return None, "off in the profile; rlimits only", ""
    layout, reason = detect(instance, is_root, parent)
    if layout is not None:
        try:
            create_parents(layout)
            place_launcher(layout)
        except OSError as exc:
            layout, reason = None, f"cannot create cgroups ({exc.strerror})"
    if layout is None:
        return None, f"fell back to rlimits: {reason}", reason
    return layout, layout.detail, ""


def create_parents(layout: Layout) -> None:
    for version, parent in {p for p in layout.parents.values()}:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if version == 2:
            wanted = [c for c, (v, p) in layout.parents.items() if v == 2 and p == parent]
            # Enable the controllers on every level from the hierarchy root down.
            levels = []
            path = parent
            while _v2_controllers(os.path.dirname(path)) and path != os.path.dirname(path):
                levels.append(os.path.dirname(path))
                path = os.path.dirname(path)
            for level in [*reversed(levels), parent]:
                try:
                    _write(os.path.join(level, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.ENOENT):
                        raise


def place_launcher(layout: Layout) -> None:
    """Move the calling launcher into a low-weight cpu group beside the slots.

    Making sandboxes is background work: a run that is waiting to be picked
    up must win the CPU over the launcher's next clone. The weights only
    compare inside the group, so the launcher has to be in it.
    """
    entry = layout.parents.get("cpu")
    if entry is None:
        return
    version, parent = entry
    directory = os.path.join(parent, "launcher")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _write(os.path.join(directory, "cpu.weight" if version == 2 else "cpu.shares"), WEIGHT_LAUNCHER[version])
    _write(os.path.join(directory, "cgroup.procs"), "0")


def slot_dirs(layout: Layout, index: int) -> dict[str, str]:
    return {c: os.path.join(parent, f"w{index}") for c, (_, parent) in layout.parents.items()}


def set_memory_limit(version: int, directory: str, limit: int) -> None:
    if version == 2:
        _write(os.path.join(directory, "memory.max"), str(limit))
        try:
            _write(os.path.join(directory, "memory.swap.max"), "0")
        except OSError:
            pass  # no swap accounting: nothing to limit
        return
    # v1 insists memsw >= mem at every step: order the two writes accordingly.
    mem = os.path.join(directory, "memory.limit_in_bytes")
    memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
    has_memsw = os.path.exists(memsw)
    try:
        _write(mem, str(limit))
        if has_memsw:
            _write(memsw, str(limit))
    except OSError:
        if not has_memsw:
            raise
        _write(memsw, str(limit))
        _write(mem, str(limit))


def prepare_slot(layout: Layout, index: int, memory_bytes: int, pids: int, cpu_quota: float) -> dict[str, str]:
    """Create (or reuse) the slot's cgroups and write the profile's limits."""
    dirs = slot_dirs(layout, index)
    for controller, directory in dirs.items():
        version = layout.parents[controller][0]
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if controller == "memory":
            set_memory_limit(version, directory, memory_bytes)
        elif controller == "pids":
            _write(os.path.join(directory, "pids.max"), str(pids))
        elif controller == "cpu":
            quota = int(cpu_quota * CPU_PERIOD_US)
            if version == 2:
                _write(os.path.join(directory, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
                _write(os.path.join(directory, "cpu.weight"), WEIGHT_IDLE[2])
            else:
                _write(os.path.join(directory, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                _write(os.path.join(directory, "cpu.cfs_quota_us"), str(quota))
                _write(os.path.join(directory, "cpu.shares"), WEIGHT_IDLE[1])
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
        _write(os.path.join(directory, name), "0")


def remove_slot(dirs: dict[str, str]) -> None:
    for directory in set(dirs.values()):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def remove_parents(layout: Layout) -> None:
    for _, parent in {p for p in layout.parents.values()}:
        try:
            launcher = os.path.join(parent, "launcher")
            if os.path.isdir(launcher):
                # Move ourselves out first: a cgroup with a process cannot go.
                _write(os.path.join(os.path.dirname(os.path.dirname(parent)), "cgroup.procs"), "0")
            for name in os.listdir(parent):
                path = os.path.join(parent, name)
                if os.path.isdir(path):
                    os.rmdir(path)
            os.rmdir(parent)
        except OSError:
            pass


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
