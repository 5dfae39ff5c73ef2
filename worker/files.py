"""Files into a run's /work, and the files it leaves in /work/out back out.

Both run in the monitor, in the sandbox, as the sandbox's uid: they touch
only what the code itself could touch. The code owns /work, so neither
trusts anything found there: every path is walked one component at a time
from a directory descriptor, never following a symlink (``O_NOFOLLOW``),
and only regular files are read or replaced. A FIFO or a device cannot make
the monitor block (``O_NONBLOCK``, then ``fstat``).

Files in are written under temporary names and renamed into place only
when all of them are written: a request's files arrive whole, or none of
them do. The names were checked by the broker; they are checked again here.
"""

from __future__ import annotations

import os
import stat

from protocol import messages as m
from protocol.files import MAX_DEPTH, TEMPORARY, media_type, name_problem

WORK = "/work"
OUT = "/work/out"
Snapshot = dict[str, tuple[int, int, int]]  # name -> (inode, size, mtime in ns)
MAX_ENTRIES = 4096  # names looked at under /work/out before giving up (a run can make millions)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dirs(root: int, parts: list[str], make: bool = True) -> int:
    """The directory ``parts`` below ``root`` (made where missing, with ``make``); never
    through a symlink: each part is opened with ``O_NOFOLLOW`` from the one before."""
    fd = os.dup(root)
    try:
        for part in parts:
            if make:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def place(files: dict[str, bytes], root: str = WORK) -> str:
    """Write every file under ``root``; "" when all are in place, else why none is."""
    if not files:
        return ""
    for name in files:
        problem = name_problem(name)
        if problem:
            return f"file name {name!r} {problem}"
    top = os.open(root, DIR_FLAGS)
    written: list[tuple[int, str, str]] = []  # (directory, temporary name, final name)
    try:
        for index, (name, data) in enumerate(files.items()):
            *folders, base = name.split("/")
            directory = _open_dirs(top, folders)
            temporary = f"{TEMPORARY}{index}"
            written.append((directory, temporary, base))
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            _check_target(directory, base, name)
        for directory, temporary, base in written:
            os.rename(temporary, base, src_dir_fd=directory, dst_dir_fd=directory)
        return ""
    except OSError as exc:
        for directory, temporary, _ in written:
            try:
                os.unlink(temporary, dir_fd=directory)
            except OSError:
                pass
        return f"the files could not be written into /work: {exc.strerror or exc}"
    finally:
        for directory, _, _ in written:
            os.close(directory)
        os.close(top)


def _check_target(directory: int, base: str, name: str) -> None:
    """Only a regular file (or nothing) may be replaced: not a folder, a link or a device."""
    try:
        st = os.stat(base, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise OSError(0, f"{name} exists in /work and is not a regular file")


class OutDir:
    """/work/out: made before the code runs; what changed in it is collected after."""

    def __init__(self, path: str = OUT) -> None:
        self.path = path

    def make(self) -> None:
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass

    def snapshot(self) -> Snapshot:
        found: Snapshot = {}
        for name, st in self._walk():
            found[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return found

    def collect(self, before: Snapshot, each: int, total: int, count: int) -> tuple[list[m.Artifact], int]:
        """(the files new or changed since ``before``, in name order, with their bytes within
        the caps; how many more there were past ``count``)."""
        changed = []
        for name, st in self._walk():
            if before.get(name) != (st.st_ino, st.st_size, st.st_mtime_ns):
                changed.append((name, st))
        changed.sort(key=lambda item: item[0])
        artifacts = []
        budget = total
        for name, st in changed[:count]:
            data = b""
            if st.st_size <= min(each, budget):
                data = self._read(name, st.st_size)
            dropped = len(data) != st.st_size
            if not dropped:
                budget -= len(data)
            artifacts.append(
                m.Artifact(name=name, size=st.st_size, media_type=media_type(name), data=data, dropped=dropped)
            )
        return artifacts, max(0, len(changed) - count)

    def _walk(self) -> list[tuple[str, os.stat_result]]:
        """Every regular file under /work/out (no links followed), as (relative name, stat)."""
        found: list[tuple[str, os.stat_result]] = []
        try:
            top = os.open(self.path, DIR_FLAGS)
        except OSError:
            return found  # removed, or replaced by something that is not a folder
        seen = 0
        stack = [(top, "", 0)]
        while stack:
            fd, prefix, depth = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        seen += 1
                        if seen > MAX_ENTRIES:
                            break
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            found.append((prefix + entry.name, st))
                        elif stat.S_ISDIR(st.st_mode) and depth + 1 < MAX_DEPTH:
                            try:
                                child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                            except OSError:
                                continue
                            stack.append((child, prefix + entry.name + "/", depth + 1))
            except OSError:
                pass
            finally:
                os.close(fd)
        return found

    def _read(self, name: str, size: int) -> bytes:
        *folders, base = name.split("/")
        try:
            top = os.open(self.path, DIR_FLAGS)
        except OSError:
            return b""
        try:
            directory = _open_dirs(top, folders, make=False)
        except OSError:
            return b""
        finally:
            os.close(top)
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        except OSError:
            return b""
        finally:
            os.close(directory)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return b""
            data = os.read(fd, size + 1)
            return data if len(data) == size else b""  # changed meanwhile: named, not sent
        finally:
            os.close(fd)
