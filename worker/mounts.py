"""The filesystem a sandbox sees.

The launcher builds read-only *template* roots at start, in its private
mount namespace: a small tmpfs holding read-only binds of what the runtimes
need (/usr, the interpreters' prefixes, a few /etc files), the five harmless
/dev nodes, and empty mount points. Runtimes that need only a few programs
(bash: a fixed set of coreutils) get a root of their own instead, with no
/usr bind: those programs and the shared libraries they link are copied into
its tmpfs at their host paths, symlinks on the way recreated. Each worker
then only:

1. makes its mount tree private and bind-mounts the template onto itself
   (the copy is owned by the worker's namespace, so pivot_root accepts it
   even in a user namespace, where inherited mounts are locked);
2. mounts a size-capped tmpfs on /tmp and on /work, and /proc of its own
   pid namespace, all nosuid, nodev, noexec;
3. pivot_root()s into it and detaches the old root (no put_old directory).

Nothing of the host is left: no home directories, no /root, no runtime
directory, no broker socket. Binds are nosuid and nodev; the /dev nodes are
binds of the host's null, zero, full, random and urandom.

A run that holds path grants or a network grant gets a worker of its own
(see ``supervisor.launcher``), whose root also has, before pivot_root, a
small tmpfs on /mnt holding:

* ``/mnt/host/<host path>``: each granted path, bound from an O_PATH
  descriptor whose resolved path was checked against the grant and the
  operator's grant roots (so a symlink swapped in cannot redirect the bind),
  not recursive (mounts below it stay out), nosuid, nodev, noexec, and
  read-only unless write was granted. In root mode a writable bind is an
  idmapped mount: files of the path's owner appear as the sandbox user's,
  so the run can write without any change to the host's ownership;
* ``/mnt/egress.sock``: the run's egress proxy socket (see
  ``worker.forwarder``).

Symlinks inside a granted folder resolve in the sandbox's own root, so a
link to /etc leads to the sandbox's /etc, never the host's.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import subprocess

import msgspec

from protocol.messages import HostBind
from worker import syscalls as sc

MiB = 1 << 20

RO_BIND = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
SCRATCH = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
DEV_NODES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "shm": "/tmp",
}
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
MOUNT_POINTS = ("proc", "tmp", "work", "dev", "etc", "mnt")
HOST_DIR = "/mnt/host"  # granted host paths appear here under their own path
EGRESS_SOCKET = "/mnt/egress.sock"
SYSTEM_BINDS = (
    ("/usr", False),
    ("/etc/ld.so.cache", True),
    ("/etc/alternatives", True),
    ("/etc/localtime", True),
    ("/etc/ssl/certs", True),
)


class Bind(msgspec.Struct, frozen=True):
    src: str
    dst: str
    optional: bool = False


class Template(msgspec.Struct, frozen=True, kw_only=True):
    root: str
    binds: list[Bind]
    skipped: list[str]


def _mkdirs(root: str, path: str, mode: int) -> str:
    """Create ``path`` under ``root``; new intermediate dirs are 0111: passed through, never
    listed, not even by their owner (unprivileged, the template's owner is the uid the
    sandbox user maps to)."""
    current = root
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        if not os.path.lexists(current):
            os.mkdir(current, mode if i == len(parts) - 1 else 0o111)
    return current


def _bind_ro(src: str, target: str) -> None:
    sc.mount(src, target, None, sc.MS_BIND | sc.MS_REC)
    sc.mount(None, target, None, RO_BIND)


def etc_files(hostname: str, uids: range) -> dict[str, str]:
    """/etc of the sandbox; every worker uid (one per slot in root mode) is "sandbox"."""
    users = "".join(f"sandbox:x:{uid}:{uid}:sandbox:/work:/bin/sh\n" for uid in uids)
    groups = "".join(f"sandbox:x:{uid}:\n" for uid in uids)
    return {
        "passwd": (
            "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
            + users
            + "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": "root:x:0:\n" + groups + "nogroup:x:65534:\n",
        "hosts": f"127.0.0.1 localhost {hostname}\n::1 localhost ip6-localhost\n",
        "hostname": f"{hostname}\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    }


def linked_libraries(programs: list[str]) -> list[str]:
    """The shared libraries ``programs`` load (dynamic loaders included), as ldd
    names them: one ldd for all of them (one each cost ~0.5 s of start-up)."""
    try:
        out = subprocess.run(["ldd", *programs], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    paths = []
    for line in out.splitlines():
        if "(0x" not in line:
            continue  # a "program:" heading, or "statically linked"
        words = line.split()
        if "=>" in words:
            words = words[words.index("=>") + 1 :]
        if words and words[0].startswith("/"):
            paths.append(words[0])
    return paths


def _replicate(root: str, path: str, depth: int = 0) -> None:
    """Make ``path`` resolve under ``root`` as it does on the host: each
    directory made, each symlink on the way recreated as it is, the file copied
    (mode bits beyond 0755 dropped)."""
    if depth > 16:
        raise OSError(f"too many symbolic links resolving {path}")
    parts = [p for p in path.split("/") if p]
    current = "/"
    for i, part in enumerate(parts):
        host = posixpath.join(current, part)
        inside = root + host
        info = os.lstat(host)
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(host)
            if not os.path.lexists(inside):
                os.symlink(target, inside)
            rest = "/".join(parts[i + 1 :])
            resolved = posixpath.normpath(posixpath.join(current, target))
            _replicate(root, posixpath.join(resolved, rest) if rest else resolved, depth + 1)
            return
        if stat.S_ISDIR(info.st_mode):
            if not os.path.lexists(inside):
                os.mkdir(inside, 0o755)
            current = host
            continue
        if not stat.S_ISREG(info.st_mode) or i != len(parts) - 1:
            raise OSError(f"{host} is not a regular file")
        if not os.path.lexists(inside):
            shutil.copyfile(host, inside)
            os.chmod(inside, info.st_mode & 0o755)
        return


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def tool_files(programs: list[str]) -> list[str]:
    """``programs`` and every library they link, each once."""
    return list(dict.fromkeys([*programs, *linked_libraries(programs)]))


def build_template(root: str, binds: list[Bind], etc: dict[str, str], tools: list[str] | None = None) -> Template:
    """Build the read-only template root at ``root`` (launcher, once).

    With ``tools``, the root holds only those programs and their libraries
    (copied), and no top-level directory of the host is bound whole.
    """
    files = tool_files(tools) if tools is not None else []
    skipped: list[str] = []
    size = 4 * MiB + sum(_size(path) for path in files)
    os.makedirs(root, mode=0o755, exist_ok=True)
    sc.mount("tmpfs", root, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"size={size // 1024}k,mode=0755")
    for name in MOUNT_POINTS:
        os.mkdir(os.path.join(root, name), 0o755)
    for name in TOP_LINKS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), os.path.join(root, name))
        elif os.path.isdir(host) and tools is None:
            binds = [*binds, Bind(host, host, optional=True)]
    for path in files:
        try:
            _replicate(root, path)
        except OSError as exc:  # that tool is missing from the root; its runtime's self-test says if it matters
            skipped.append(f"{path} ({exc})")
    for name, text in etc.items():
        with open(os.path.join(root, "etc", name), "w", encoding="utf-8") as out:
            out.write(text)
    for name in DEV_NODES:
        target = os.path.join(root, "dev", name)
        open(target, "w").close()
        sc.mount("/dev/" + name, target, None, sc.MS_BIND)
    for name, dest in DEV_LINKS.items():
        os.symlink(dest, os.path.join(root, "dev", name))
    done: set[str] = set()
    for bind in binds:
        if bind.dst in done:
            continue
        try:
            info = os.stat(bind.src)
        except OSError:
            if bind.optional:
                skipped.append(bind.src)
                continue
            raise
        if stat.S_ISDIR(info.st_mode):
            target = _mkdirs(root, bind.dst, 0o755)
        else:
            parent = _mkdirs(root, os.path.dirname(bind.dst), 0o755)
            target = os.path.join(parent, os.path.basename(bind.dst))
            if not os.path.lexists(target):
                open(target, "w").close()
        _bind_ro(bind.src, target)
        done.add(bind.dst)
    sc.mount(None, root, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)
    return Template(root=root, binds=binds, skipped=skipped)


def build_templates(
    rundir: str, needs: dict[str, tuple[list[str] | None, list[Bind]]], operator: list[Bind], etc: dict[str, str]
) -> tuple[dict[str, str], str]:
    """Every runtime's read-only root: (runtime -> root, what the layer is).

    ``needs`` is each runtime's (tools, binds beyond /usr). Runtimes that need
    only /usr share one root. One that names binds of its own (Swift's
    toolchain) gets a root of its own with /usr and them, so no other runtime's
    sandbox sees them; one that names tools (bash) gets a root holding only
    those programs and the libraries they link, and no /usr.
    """
    shared = os.path.join(rundir, "root")
    system = [Bind(src, src, optional) for src, optional in SYSTEM_BINDS]
    templates: dict[str, str] = {}
    details = []
    for name, (tools, extra) in needs.items():
        if tools is None and not extra:
            templates[name] = shared
            continue
        own = templates[name] = os.path.join(rundir, f"root-{name}")
        if tools is None:
            build_template(own, system + extra + operator, etc)
            details.append(f"{name}: /usr and {', '.join(b.dst for b in extra)}")
        else:  # /etc/alternatives is recreated per tool as needed
            bare = [b for b in system if b.src not in ("/usr", "/etc/alternatives")]
            build_template(own, bare + extra + operator, etc, tools)
            details.append(f"{name}: {len(tools)} programs, no /usr")
    template = build_template(shared, system + operator, etc)
    detail = f"read-only template root, {len(template.binds)} binds" + "".join(f"; {d}" for d in details)
    return templates, detail + ", tmpfs /tmp and /work, pivot_root"


# What container runtimes mask in /proc, and what tells a kernel exploit where
# the kernel is (kallsyms shows real addresses where kptr_restrict is 0): an
# empty file (/dev/null) over each, an empty read-only directory over the
# directories, whatever the host's sysctls say. /sys is not in the sandbox at all.
PROC_MASKED = (
    "kallsyms kcore keys key-users timer_list sched_debug modules kmsg kpagecount kpageflags kpagecgroup "
    "iomem ioports vmallocinfo slabinfo config.gz latency_stats timer_stats sysrq-trigger"
).split()
PROC_MASKED_DIRS = ("acpi", "scsi", "asound", "driver")
PROC_READ_ONLY = ("sys", "irq", "bus", "fs")


def mask_proc(proc: str) -> None:
    """Over a fresh /proc: mask what leaks the kernel's layout or reaches its internals.
    (~24 mounts, ~0.3 ms of a worker's making; a name this kernel lacks is skipped.)"""
    for names, source, fstype, flags, data in (
        (PROC_MASKED, "/dev/null", None, sc.MS_BIND, None),
        (PROC_MASKED_DIRS, "tmpfs", "tmpfs", SCRATCH | sc.MS_RDONLY, "size=4k,nr_inodes=1,mode=0555"),
        (PROC_READ_ONLY, "", None, sc.MS_BIND | sc.MS_REC, None),
    ):
        for name in names:
            path = f"{proc}/{name}"
            try:
                sc.mount(source or path, path, fstype, flags, data)
            except FileNotFoundError:
                continue
            if not source:  # a bind of itself, now made read-only
                sc.mount(None, path, None, RO_BIND | sc.MS_NOEXEC)


def hide_monitor() -> None:
    """/proc/1 (the monitor) covered by an empty read-only tmpfs: the code sees nothing of
    its monitor, not even the list of its descriptors. (Unprivileged, the monitor's /proc
    files belong to the sandbox uid: the zygote's memory was made in the launcher's user
    namespace, whose root is the uid the sandbox maps to.) The last mount of the worker's
    making; the monitor reads its own status through a descriptor opened before it."""
    sc.mount("tmpfs", "/proc/1", "tmpfs", SCRATCH | sc.MS_RDONLY, "size=4k,nr_inodes=1,mode=0555")


def inodes(size_mb: int) -> int:
    """Files a scratch tmpfs may hold: one per 4 KiB of its size, at least 1024."""
    return max(1024, size_mb * 256)


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def open_granted(bind: HostBind, roots: list[str]) -> int:
    """An O_PATH descriptor of ``bind.host``, after checking where it really leads.

    What the descriptor resolves to (symlinks and ``..`` followed by the
    kernel) must lie inside the grant's path (itself resolved) and inside one
    of the operator's grant roots. Raises PermissionError saying why not.
    """
    fd = os.open(bind.host, os.O_PATH | os.O_CLOEXEC)
    try:
        actual = os.readlink(f"/proc/self/fd/{fd}")
        within = os.path.realpath(bind.within)
        if not _inside(actual, within):
            raise PermissionError(f"{bind.host} leads to {actual}, outside the grant {bind.within}")
        if not any(_inside(actual, os.path.realpath(root)) for root in roots):
            raise PermissionError(f"{bind.host} leads to {actual}, outside the operator's grant roots")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _owner_namespace(proc: str, owner_uid: int, owner_gid: int, uid: int, gid: int) -> int:
    """A user namespace mapping the path's owner to the sandbox user, for an idmapped mount."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(done_r, 1)  # EOF: the parent has what it needs
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError("the id-mapping helper did not start")
        for name, line in (("uid_map", f"{owner_uid} {uid} 1\n"), ("gid_map", f"{owner_gid} {gid} 1\n")):
            with open(f"{proc}/{pid}/{name}", "w", encoding="ascii") as out:
                out.write(line)
        return os.open(f"{proc}/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def _bind_granted(proc: str, fd: int, target: str, writable: bool, idmap: tuple[int, int] | None) -> None:
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (0 if writable else sc.MS_RDONLY)
    if writable and idmap is not None:
        info = os.fstat(fd)
        try:
            userns = _owner_namespace(proc, info.st_uid, info.st_gid, *idmap)
            try:
                tree = sc.clone_tree(fd)
                try:
                    attrs = sc.MOUNT_ATTR_IDMAP | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC
                    sc.set_mount_attr(tree, attrs, userns)
                    sc.move_mount(tree, target)
                    return
                finally:
                    os.close(tree)
            finally:
                os.close(userns)
        except OSError as exc:  # a filesystem without idmapped mounts: host permissions apply
            os.write(2, f"cellblock worker: idmapped mount of {target} failed ({exc}); plain bind\n".encode())
    sc.mount(f"/proc/self/fd/{fd}", target, None, sc.MS_BIND)
    sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags)


def mount_grants(
    template: str, binds: list[HostBind], roots: list[str], egress: str, idmap: tuple[int, int] | None
) -> None:
    """Fill /mnt of the template copy with this run's granted paths and egress socket.

    ``idmap`` is the sandbox (uid, gid) in root mode, where writable binds are
    idmapped to it; None in a user namespace, where the sandbox user already
    is the invoking user. Called before pivot_root, while host paths are in
    view, and after the sandbox's own /proc is mounted (pids of this pid
    namespace are looked up there).
    """
    mnt = template + "/mnt"
    sc.mount("tmpfs", mnt, "tmpfs", SCRATCH, "size=1m,nr_inodes=4096,mode=0755")
    for bind in sorted(binds, key=lambda b: b.host):
        fd = open_granted(bind, roots)
        try:
            host = posixpath.normpath(bind.host)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                target = _mkdirs(mnt, "host" + host, 0o755)
            else:
                parent = _mkdirs(mnt, "host" + posixpath.dirname(host), 0o755)
                target = os.path.join(parent, posixpath.basename(host))
                open(target, "w").close()
            _bind_granted(template + "/proc", fd, target, bind.writable, idmap)
        finally:
            os.close(fd)
    if egress:
        if not stat.S_ISSOCK(os.stat(egress).st_mode):
            raise PermissionError(f"{egress} is not the egress proxy's socket")
        target = template + EGRESS_SOCKET
        open(target, "w").close()
        sc.mount(egress, target, None, sc.MS_BIND)
    sc.mount(None, mnt, None, sc.MS_REMOUNT | sc.MS_RDONLY | SCRATCH)


def enter_root(
    template: str,
    tmp_mb: int,
    work_mb: int,
    uid: int,
    gid: int,
    grants: tuple[list[HostBind], list[str], str, tuple[int, int] | None] | None = None,
) -> None:
    """Give the calling (worker) process its own root built on the template."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount(template, template, None, sc.MS_BIND | sc.MS_REC)
    # nr_inodes too: empty files cost kernel memory that no size= counts.
    sc.mount("tmpfs", template + "/tmp", "tmpfs", SCRATCH, f"size={tmp_mb}m,nr_inodes={inodes(tmp_mb)},mode=1777")
    work = f"size={work_mb}m,nr_inodes={inodes(work_mb)},mode=0700,uid={uid},gid={gid}"
    sc.mount("tmpfs", template + "/work", "tmpfs", SCRATCH, work)
    sc.mount("proc", template + "/proc", "proc", SCRATCH)
    mask_proc(template + "/proc")
    if grants is not None:
        mount_grants(template, *grants)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching
    # "." then drops it, with no put_old directory left in the sandbox's view.
    os.chdir(template)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
