"""The filesystem a sandbox sees.

The launcher builds one read-only *template* root per profile at start, in
its private mount namespace: a small tmpfs holding read-only binds of what
the runtimes need (/usr, the interpreters' prefixes, a few /etc files), the
five harmless /dev nodes, and empty mount points. Each worker then only:

1. makes its mount tree private and bind-mounts the template onto itself
   (the copy is owned by the worker's namespace, so pivot_root accepts it
   even in a user namespace, where inherited mounts are locked);
2. mounts a size-capped tmpfs on /tmp and on /work, and /proc of its own
   pid namespace, all nosuid, nodev, noexec;
3. pivot_root()s into it and detaches the old root (no put_old directory).

Nothing of the host is left: no home directories, no /root, no runtime
directory, no broker socket. Binds are nosuid and nodev; the /dev nodes are
binds of the host's null, zero, full, random and urandom.
"""

from __future__ import annotations

import os
import stat

import msgspec

from worker import syscalls as sc

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
MOUNT_POINTS = ("proc", "tmp", "work", "dev", "etc")
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
    """Create ``path`` under ``root``; new intermediate dirs are 0711 (no listing)."""
    current = root
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        if not os.path.lexists(current):
            os.mkdir(current, mode if i == len(parts) - 1 else 0o711)
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


def build_template(root: str, binds: list[Bind], etc: dict[str, str]) -> Template:
    """Build the read-only template root at ``root`` (launcher, once)."""
    os.makedirs(root, mode=0o755, exist_ok=True)
    sc.mount("tmpfs", root, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=4m,mode=0755")
    for name in MOUNT_POINTS:
        os.mkdir(os.path.join(root, name), 0o755)
    for name in TOP_LINKS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), os.path.join(root, name))
        elif os.path.isdir(host):
            binds = [*binds, Bind(host, host, optional=True)]
    for name, text in etc.items():
        with open(os.path.join(root, "etc", name), "w", encoding="utf-8") as out:
            out.write(text)
    for name in DEV_NODES:
        target = os.path.join(root, "dev", name)
        open(target, "w").close()
        sc.mount("/dev/" + name, target, None, sc.MS_BIND)
    for name, dest in DEV_LINKS.items():
        os.symlink(dest, os.path.join(root, "dev", name))
    skipped = []
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


def inodes(size_mb: int) -> int:
    """Files a scratch tmpfs may hold: one per 4 KiB of its size, at least 1024."""
    return max(1024, size_mb * 256)


def enter_root(template: str, tmp_mb: int, work_mb: int, uid: int, gid: int) -> None:
    """Give the calling (worker) process its own root built on the template."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount(template, template, None, sc.MS_BIND | sc.MS_REC)
    # nr_inodes too: empty files cost kernel memory that no size= counts.
    sc.mount("tmpfs", template + "/tmp", "tmpfs", SCRATCH, f"size={tmp_mb}m,nr_inodes={inodes(tmp_mb)},mode=1777")
    work = f"size={work_mb}m,nr_inodes={inodes(work_mb)},mode=0700,uid={uid},gid={gid}"
    sc.mount("tmpfs", template + "/work", "tmpfs", SCRATCH, work)
    sc.mount("proc", template + "/proc", "proc", SCRATCH)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching
    # "." then drops it, with no put_old directory left in the sandbox's view.
    os.chdir(template)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
