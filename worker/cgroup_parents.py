"""Where a service's cgroups go: chosen, made and removed again (the launcher's side).

Each controller (memory, pids, cpu, cpuacct) is taken from cgroup v2 where
the unified hierarchy offers it, else from its v1 hierarchy. Under the
chosen place the launcher makes a parent of its own (one per service
instance), a low-weight ``launcher`` group beside the slots, and the slots
(``worker.cgroups``); at exit it removes all of it.

Where the parent goes:

* root: ``cellblock/<instance>`` at the top of each hierarchy;
* ``[cgroups] parent`` (root or not): ``<parent>/<instance>``. On v1 each
  controller has a hierarchy of its own, so the parent names a place in one
  of them and the same path in each other hierarchy is used where it exists;
* unprivileged, a subtree delegated to the user:
  - cgroup v2 (systemd): the service's own cgroup, when the user may write
    it, as in ``systemd-run --user --scope -p Delegate=yes cellblock serve``
    or a unit of the user's manager with ``Delegate=yes``. The kernel keeps
    processes out of a cgroup that hands controllers down, so the
    processes in it move to a leaf ``service`` first;
  - cgroup v1: ``cellblock/user-<uid>`` in each hierarchy, a directory root
    made and handed to the user (:func:`delegate_commands`, which
    ``cellblock doctor`` prints), else the service's own cgroup if the
    user may write it.

Nothing here runs in a sandbox: the zygotes and workers only join what this
made (``worker.cgroups.join``).
"""

from __future__ import annotations

import errno
import os
import time

import msgspec

from worker.cgroups import CONTROLLERS, WEIGHT_LAUNCHER, Layout, read_text, v2_controllers, write_text

DELEGATED_V1 = "cellblock/user-{uid}"  # relative to each v1 hierarchy's root
SERVICE_LEAF = "service"  # v2: where the processes of a delegated cgroup move, so it can hand controllers down
REMOVE_WAIT_S = 1.0  # a cgroup whose last process is still exiting refuses rmdir for a moment


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


def _under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def _writable(directory: str, *files: str) -> bool:
    """May this process make cgroups in ``directory`` (and write these files of it)?"""
    return os.access(directory, os.W_OK | os.X_OK) and all(
        os.access(os.path.join(directory, name), os.W_OK) for name in files
    )


def _v2_place(mounts: Mounts, own: dict[str, str], is_root: bool, hint: str, instance: str) -> tuple[str, str] | None:
    """(the v2 cgroup whose controllers the service may use, its parent in it) or None."""
    root = mounts.v2
    if not root:
        return None
    if hint:
        return (hint, os.path.join(hint, instance)) if _under(hint, root) else None
    if is_root:
        return root, os.path.join(root, "cellblock", instance)
    mine = os.path.join(root, own.get("", "/").lstrip("/")).rstrip("/")
    if mine != root.rstrip("/") and _writable(mine, "cgroup.procs", "cgroup.subtree_control"):
        return mine, os.path.join(mine, f"cellblock-{instance}")  # delegated to us (systemd's Delegate=yes)
    return None


def _v1_base(mounts: Mounts, own: dict[str, str], is_root: bool, hint: str, uid: int, controller: str) -> str:
    """The v1 cgroup of ``controller`` to make the parent in, or ""."""
    mount = mounts.v1[controller]
    if hint:
        home = next((m for m in mounts.v1.values() if _under(hint, m)), "")
        if not home:
            return ""
        place = os.path.join(mount, os.path.relpath(hint, home))
        return place if os.path.isdir(place) and (is_root or _writable(place)) else ""
    if is_root:
        return os.path.join(mount, "cellblock")
    places = [os.path.join(mount, DELEGATED_V1.format(uid=uid))]
    if own.get(controller, "/") != "/":  # a hierarchy's root is never the user's
        places.append(os.path.join(mount, own[controller].lstrip("/")))
    return next((place for place in places if os.path.isdir(place) and _writable(place)), "")


def detect(
    instance: str,
    is_root: bool,
    parent_hint: str = "",
    mountinfo: str | None = None,
    self_cgroup: str | None = None,
    uid: int | None = None,
) -> tuple[Layout | None, str]:
    """Choose a parent for each controller (see the module's docstring); (None, reason) if none.
    ``uid`` is the service user's on the host (the launcher itself is uid 0 in its user namespace)."""
    mounts = parse_mountinfo(mountinfo if mountinfo is not None else read_text("/proc/self/mountinfo"))
    own = parse_self_cgroup(self_cgroup if self_cgroup is not None else read_text("/proc/self/cgroup"))
    uid = os.getuid() if uid is None else uid
    parents: dict[str, tuple[int, str]] = {}
    v2 = _v2_place(mounts, own, is_root, parent_hint, instance)
    v2_avail = v2_controllers(v2[0]) if v2 else set()
    for controller in CONTROLLERS:
        if v2 and controller in v2_avail:
            parents[controller] = (2, v2[1])
        elif controller in mounts.v1:
            base = _v1_base(mounts, own, is_root, parent_hint, uid, controller)
            if base:
                parents[controller] = (1, _v1_parent(base, instance, is_root, parent_hint, uid))
    if not parents:
        if not is_root:
            return None, f"not root and no cgroup is delegated to uid {uid} (`cellblock doctor` says how)"
        return None, "no cgroup hierarchy with memory, pids or cpu is mounted"
    missing = [c for c in CONTROLLERS if c not in parents and not (c == "cpuacct" and parents.get("cpu", (0,))[0] == 2)]
    detail = ", ".join(f"{c}=v{v}" for c, (v, _) in sorted(parents.items()))
    if missing:
        detail += f"; missing: {', '.join(missing)}"
    if not is_root:
        where = sorted({os.path.dirname(p) for _, p in parents.values()})
        detail += f"; delegated: {', '.join(where)}"
    return Layout(parents=parents, detail=detail), ""


def _v1_parent(base: str, instance: str, is_root: bool, hint: str, uid: int) -> str:
    """A v1 parent's own name: ``<instance>`` in a place made for cellblock, else ``cellblock-<instance>``."""
    ours = hint or is_root or base.endswith(DELEGATED_V1.format(uid=uid))
    return os.path.join(base, instance if ours else f"cellblock-{instance}")


# --- made and removed -------------------------------------------------------------------------------


def prepare_host(
    setting: str, instance: str, is_root: bool, parent: str, uid: int | None = None
) -> tuple[Layout | None, str, str]:
    """Parents for the slots' cgroups, made and the caller placed among them:
    (layout or None, what the layer is, why it is missing). ``setting`` is the
    profile's cgroups layer: required, optional or off."""
    if setting == "off":
        return None, "off in the profile; rlimits only", ""
    layout, reason = detect(instance, is_root, parent, uid=uid)
    if layout is not None:
        try:
            create_parents(layout)
            layout = msgspec.structs.replace(layout, home=place_launcher(layout))
        except OSError as exc:
            remove_parents(layout)
            layout, reason = None, f"cannot create cgroups ({exc.strerror})"
    if layout is None:
        return None, f"fell back to rlimits: {reason}", reason
    return layout, layout.detail, ""


def create_parents(layout: Layout) -> None:
    for version, parent in {p for p in layout.parents.values()}:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if version == 2:
            wanted = [c for c, (v, p) in layout.parents.items() if v == 2 and p == parent]
            _enable_v2(parent, wanted)


def _enable_v2(parent: str, wanted: list[str]) -> None:
    """Hand ``wanted`` down to ``parent``'s children: at each level from the hierarchy's
    root down to it that does not already. Above a delegated subtree they already are
    (that is what delegation is); a level that holds processes gets them out of the
    way first (into its leaf ``service``)."""
    levels = [parent]
    while v2_controllers(os.path.dirname(levels[-1])) and levels[-1] != os.path.dirname(levels[-1]):
        levels.append(os.path.dirname(levels[-1]))
    levels.reverse()
    change = " ".join("+" + c for c in wanted)
    for level, below in zip(levels, [*levels[1:], None], strict=True):
        if below is not None and set(wanted) <= v2_controllers(below):
            continue
        try:
            write_text(os.path.join(level, "cgroup.subtree_control"), change)
        except OSError as exc:
            if exc.errno != errno.EBUSY or not _evacuate(level):
                raise
            write_text(os.path.join(level, "cgroup.subtree_control"), change)


def _evacuate(level: str) -> bool:
    """Move every process of ``level`` into its leaf ``service``; False if there were none."""
    leaf = os.path.join(level, SERVICE_LEAF)
    moved = False
    for _ in range(10):  # processes forked meanwhile are in ``level`` too: look again
        pids = read_text(os.path.join(level, "cgroup.procs")).split()
        if not pids:
            return moved
        os.makedirs(leaf, mode=0o755, exist_ok=True)
        for pid in pids:
            try:
                write_text(os.path.join(leaf, "cgroup.procs"), pid)
            except ProcessLookupError:
                pass  # gone meanwhile
            moved = True
    return moved


def place_launcher(layout: Layout) -> str:
    """Move the calling launcher into a low-weight cpu group beside the slots; return the
    cgroup it goes back to before its group is removed ("": not moved, since it could not
    get out again: an unprivileged process may only move into cgroups it can write).

    Making sandboxes is background work: a run that is waiting to be picked
    up must win the CPU over the launcher's next clone. The weights only
    compare inside the group, so the launcher has to be in it.
    """
    entry = layout.parents.get("cpu")
    if entry is None:
        return ""
    version, parent = entry
    home = _cgroup_of_self(version, parent)
    if not _may_join(home) and version == 1:
        home = os.path.dirname(parent)  # v1: the delegated place itself (v2 keeps processes out of it)
    if not _may_join(home):
        return ""
    directory = os.path.join(parent, "launcher")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    write_text(os.path.join(directory, "cpu.weight" if version == 2 else "cpu.shares"), WEIGHT_LAUNCHER[version])
    write_text(os.path.join(directory, "cgroup.procs"), "0")
    return home


def _may_join(cgroup: str) -> bool:
    return bool(cgroup) and os.access(os.path.join(cgroup, "cgroup.procs"), os.W_OK)


def _cgroup_of_self(version: int, parent: str) -> str:
    """The calling process's cgroup in the hierarchy ``parent`` is in, as a directory."""
    own = parse_self_cgroup(read_text("/proc/self/cgroup"))
    mounts = parse_mountinfo(read_text("/proc/self/mountinfo"))
    if version == 2:
        root, path = mounts.v2, own.get("")
    else:
        root, path = mounts.v1.get("cpu"), own.get("cpu")
    if not root or path is None or not _under(parent, root):
        return ""
    return os.path.join(root, path.lstrip("/")).rstrip("/")


def remove_parents(layout: Layout) -> None:
    """Every parent and what is left in it (the launcher's group, slots), deepest first.
    The launcher goes back home first: a cgroup with a process in it cannot go."""
    if layout.home:
        try:
            write_text(os.path.join(layout.home, "cgroup.procs"), "0")
        except OSError:
            pass
    deadline = time.monotonic() + REMOVE_WAIT_S
    for _, parent in {p for p in layout.parents.values()}:
        for directory, _, _ in os.walk(parent, topdown=False):  # the parent itself comes last
            _rmdir(directory, deadline)


def _rmdir(path: str, deadline: float) -> None:
    while True:
        try:
            os.rmdir(path)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return  # gone already, or still busy: left (a process in it outlived its worker)
            time.sleep(0.01)


# --- what an administrator does to delegate a subtree ----------------------------------------------


def delegate_commands(uid: int, mountinfo: str | None = None) -> list[str]:
    """Shell commands (for root) that delegate ``cellblock/user-<uid>`` in each v1
    hierarchy with a controller cellblock uses: the directory, its ``tasks`` and
    ``cgroup.procs`` handed to the user; its limits stay root's (a ceiling the
    user cannot raise)."""
    mounts = parse_mountinfo(mountinfo if mountinfo is not None else read_text("/proc/self/mountinfo"))
    commands = []
    for mount in sorted(set(mounts.v1.values())):
        place = os.path.join(mount, DELEGATED_V1.format(uid=uid))
        commands.append(f"mkdir -p {place} && chown {uid} {place} {place}/tasks {place}/cgroup.procs")
    return commands


def undelegate_commands(uid: int, mountinfo: str | None = None) -> list[str]:
    """What undoes :func:`delegate_commands`: each delegated directory and any cgroup a
    service left in it (none holds a process once every service of the user stopped)."""
    mounts = parse_mountinfo(mountinfo if mountinfo is not None else read_text("/proc/self/mountinfo"))
    places = [os.path.join(m, DELEGATED_V1.format(uid=uid)) for m in sorted(set(mounts.v1.values()))]
    return [f"if [ -d {p} ]; then find {p} -depth -type d -exec rmdir {{}} +; fi" for p in places]


def delegation_advice(uid: int, mountinfo: str | None = None) -> tuple[str, list[str]]:
    """Which kind of delegation this host needs for a per-run memory limit, and the exact
    commands that set it up (each line says who runs it)."""
    mounts = parse_mountinfo(mountinfo if mountinfo is not None else read_text("/proc/self/mountinfo"))
    if mounts.v2 and "memory" in v2_controllers(mounts.v2):
        manager = os.path.join(mounts.v2, f"user.slice/user-{uid}.slice/user@{uid}.service")
        commands = []
        if not {"memory", "pids", "cpu"} <= v2_controllers(manager):
            dropin = "/etc/systemd/system/user@.service.d"
            commands += [
                f"(root) mkdir -p {dropin}",
                f"(root) printf '[Service]\\nDelegate=cpu memory pids\\n' > {dropin}/cellblock.conf",
                "(root) systemctl daemon-reload; then log out and in again",
            ]
        commands.append("(you)  systemd-run --user --scope -p Delegate=yes cellblock serve")
        return "cgroup v2: run the service in a cgroup systemd delegates to you", commands
    if "memory" in mounts.v1:
        return "cgroup v1: root makes a subtree and hands it to you", [
            f"(root) {line}" for line in delegate_commands(uid, mountinfo)
        ]
    return "no memory controller is mounted on this host", []
