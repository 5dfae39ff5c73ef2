"""Swift: the toolchain's JIT (``swift-frontend -interpret``), started before the job.

The payload stays a small parent: after its seccomp filter it starts the
frontend on a source pipe (``/dev/fd/3`` in the frontend), waits until the
frontend is blocked reading it (its start, ~100 ms of loading a 200 MiB
binary, is off the job's path), says Ready, and reads the job as Python's
payload does. It puts the job's rlimits on the frontend, writes the code
into the source pipe, relays the frontend's stderr with the toolchain's own
noise cut (LLVM's stack dump, the runtime's backtrace) and reports the
frontend's exit. Compiler errors name ``main.swift`` and the user's line.

Measured here (2 vCPUs): the frontend straight from its argv 60-80 ms for
``print(1)``, the ``swift`` driver (which execs the same frontend) 100-110
ms, ``swiftc`` then the binary 150-190 ms. So the JIT, and no driver.

The standard library's and Foundation's clang modules are compiled once per
toolchain into a cache the launcher builds (``prepare_host``, ~1.5 s the
first time), bound read-only into Swift's own root at ``MODULE_CACHE``:
without it every run would compile Foundation's modules again (~1.5 s,
230 MiB). Only Swift's root holds the toolchain; Python's and Node's never
see it.

Where the toolchain is: the profile's ``[runtimes.swift] toolchain`` (its
prefix, or its ``swift`` or ``swift-frontend``), else ``swift`` on PATH,
else /opt/swift. The tests ask ``find_frontend`` too, so they and the
service never disagree.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import subprocess
import tempfile
import time

from protocol.messages import Job
from protocol.profile import MiB, Profile, RuntimePolicy
from worker import syscalls as sc
from worker.runtimes.base import Runtime

# The service's own PATH (it never inherits a user's), then where swift.org's
# toolchains are usually unpacked.
SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
WELL_KNOWN = ("/opt/swift/usr/bin", "/usr/share/swift/usr/bin", "/usr/local/swift/usr/bin")
# Where the sandbox sees the module cache. Clang writes this path into every
# module it compiles and refuses a module found under another, so the
# launcher builds the cache with it mounted here too, in a mount namespace
# of the build's own (a tmpfs over /run there; nothing of the host changes).
MODULE_CACHE = "/run/swift-module-cache"
SOURCE_FD = 3
SOURCE = f"/dev/fd/{SOURCE_FD}"  # a pipe the payload writes the code into
START_S = 30.0  # the frontend has this long to block on the job pipe
# Modules a snippet reaches for; their clang modules go into the cache.
WARM_SOURCE = "import Foundation\nimport Dispatch\nimport Glibc\nprint(1)\n"
# Print's buffer is flushed per line (coreutils' stdbuf shim): a program
# that traps loses nothing it printed before the trap, as in Python.
STDBUF = "/usr/libexec/coreutils/libstdbuf.so"


def find_frontend(configured: str = "", path: str = SEARCH_PATH) -> str | None:
    """The toolchain's ``swift-frontend``: the configured one, else PATH's, else a well-known prefix."""
    if configured:
        candidates = [configured, os.path.join(configured, "bin"), os.path.join(configured, "usr", "bin")]
        for candidate in candidates:
            directory = candidate if os.path.isdir(candidate) else os.path.dirname(candidate)
            frontend = os.path.join(directory, "swift-frontend")
            if os.access(frontend, os.X_OK):
                return os.path.realpath(frontend)
        return None
    driver = shutil.which("swift", path=os.pathsep.join([path, *WELL_KNOWN]))
    if driver is None:
        return None
    frontend = os.path.join(os.path.dirname(os.path.realpath(driver)), "swift-frontend")
    return frontend if os.access(frontend, os.X_OK) else None


def frontend_argv(frontend: str, source: str, cache: str) -> list[str]:
    """What the driver would run for ``swift -``, minus what the sandbox lacks (macro plugins)."""
    return [
        frontend,
        "-frontend",
        "-interpret",
        source,
        "-disable-objc-interop",
        "-no-color-diagnostics",
        "-Xcc",
        "-fno-color-diagnostics",
        "-empty-abi-descriptor",
        "-module-name",
        "main",
        "-module-cache-path",
        cache,
    ]


# --- stderr: what the toolchain adds around a user's error -----------------------

_STDLIB_FILE = re.compile(rb"^Swift/[A-Za-z0-9_]+\.swift:\d+: ")
# Where the toolchain's report of a crash begins: nothing after it is the program's.
CRASH_REPORT = (b"Stack dump:", b"Current stack trace:", b"*** Signal", b"*** Program crashed")


class StderrTidy:
    """Line by line: the frontend's crash report dropped, its file names made the user's.

    A crash (a trap in the user's code) ends with the runtime's "Current
    stack trace:" and LLVM's "Stack dump:"; everything from either on is the
    toolchain's, never the program's (the program is dead by then). Before
    that, lines pass unchanged but for ``/dev/fd/3`` read as ``main.swift``
    and the standard library's own file:line dropped from a fatal error.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.crashed = False

    def feed(self, data: bytes) -> bytes:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        return b"".join(self._line(line) for line in lines)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self._line(rest, newline=False) if rest else b""

    def _line(self, line: bytes, newline: bool = True) -> bytes:
        if self.crashed:
            return b""
        if line.startswith(CRASH_REPORT):
            self.crashed = True
            return b""
        line = line.replace(SOURCE.encode() + b":", b"main.swift:")
        line = _STDLIB_FILE.sub(b"", line)
        return line + (b"\n" if newline else b"")


class SwiftRuntime(Runtime):
    name = "swift"
    languages = ("swift",)
    self_test = ('let n = 6 * 7\nprint("\\(n)")', "42\n")
    spawns = True
    needs_exec_syscall = True
    # The frontend maps ~470 MiB (its 130 MiB binary, LLVM, the toolchain's
    # libraries) for a Foundation snippet; the rlimit fallback allows that on top of the run's memory.
    address_space_allowance = 512 * MiB
    oom_marker = b"Fatal error: failed to allocate"  # the Swift runtime's words when malloc fails

    def __init__(self, toolchain: str = "") -> None:
        super().__init__()
        self.toolchain = toolchain
        self.frontend = find_frontend(toolchain)
        self.cache = ""  # host path of the module cache, once built
        self.stderr_r = -1

    @classmethod
    def for_policy(cls, policy: RuntimePolicy) -> SwiftRuntime:
        return cls(policy.toolchain)

    @property
    def prefix(self) -> str:
        # <prefix>/bin/swift-frontend
        assert self.frontend is not None
        return os.path.dirname(os.path.dirname(self.frontend))

    def host_paths(self) -> list[tuple[str, str]]:
        if self.frontend is None:
            return []
        paths = [] if self.prefix.startswith("/usr/") else [(self.prefix, self.prefix)]
        # The frontend reads which distribution it is on.
        paths += [(p, p) for p in ("/etc/os-release", "/etc/debian_version") if os.path.exists(p)]
        if self.cache:
            paths.append((self.cache, MODULE_CACHE))
        return paths

    def probe(self) -> tuple[bool, str]:
        if self.frontend is None:
            where = f"at {self.toolchain}" if self.toolchain else "on PATH or under /opt/swift"
            return False, (
                f"no Swift toolchain {where}: install one from swift.org (e.g. into /opt/swift) "
                "or name it in the profile's [runtimes.swift] toolchain"
            )
        try:
            out = subprocess.run([self.frontend, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"swift-frontend does not run ({exc})"
        first = out.strip().splitlines()[0] if out.strip() else "Swift"
        return True, first.removesuffix(")").split(" (")[0] if first.startswith("Swift version") else first

    def prepare_host(self, cache_dir: str) -> None:
        """Build the module cache once per toolchain (keyed by the frontend's identity)."""
        assert self.frontend is not None
        info = os.stat(self.frontend)
        key = hashlib.sha256(f"{self.frontend}:{info.st_size}:{info.st_mtime_ns}".encode()).hexdigest()[:16]
        target = os.path.join(cache_dir, f"swift-modules-{key}")
        if not os.path.isdir(target):
            os.makedirs(cache_dir, mode=0o755, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix=".swift-modules-", dir=cache_dir)
            try:
                with tempfile.TemporaryDirectory() as work:
                    source = os.path.join(work, "warm.swift")
                    with open(source, "w", encoding="utf-8") as out:
                        out.write(WARM_SOURCE)
                    # The cache is valid only for the flags that built it: a
                    # run's flags, and the sandbox's path (see MODULE_CACHE).
                    argv = frontend_argv(self.frontend, source, MODULE_CACHE)
                    done = subprocess.run(
                        argv,
                        capture_output=True,
                        timeout=300,
                        cwd=work,
                        check=False,
                        preexec_fn=lambda: _mount_cache(scratch),  # the launcher has one thread
                    )
                    if done.returncode != 0:
                        raise OSError(f"building Swift's module cache failed: {done.stderr.decode()[-300:]}")
                _publish(scratch)
                os.rename(scratch, target)
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
        self.cache = target

    def spawn_interpreter(self, profile: Profile) -> int:
        """After the payload's seccomp filter: start the frontend on a source pipe of its own;
        return its pid once it is blocked reading it. Its stderr is a pipe ``run_child`` relays."""
        assert self.frontend is not None
        env = dict(os.environ, SWIFT_BACKTRACE="enable=no")
        if os.path.exists(STDBUF):
            env.update(LD_PRELOAD=STDBUF, _STDBUF_O="L")
        source_r, self.source_w = os.pipe()
        self.stderr_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(err_w, 2)
                os.dup2(source_r, SOURCE_FD)  # inheritable
                sc.close_range(SOURCE_FD + 1)  # the job and report pipes stay the payload's
                argv = frontend_argv(self.frontend, SOURCE, MODULE_CACHE if self.cache else "/tmp/swift-modules")
                os.execve(self.frontend, argv, env)  # noqa: S606 - the toolchain itself, no shell
            finally:
                os._exit(127)
        for fd in (source_r, err_w, 0, 1):  # the code's stdin and stdout are the frontend's alone
            os.close(fd)
        if not _wait_blocked_on_source(pid):
            _, status = os.waitpid(pid, 0)
            said = os.read(self.stderr_r, 300).decode(errors="replace").strip()
            code = os.waitstatus_to_exitcode(status)
            raise OSError(f"swift-frontend ended ({code}) before its source came: {said}")
        return pid

    def run_child(self, pid: int, job: Job) -> int:
        """Feed the frontend the code, relay its stderr tidied until it exits; its exit
        code (128+n for a signal)."""
        try:
            _write_all(self.source_w, job.code.encode())
        finally:
            os.close(self.source_w)
        # Until the frontend exits: what it forked may hold its stderr open for longer.
        tidy = StderrTidy()
        exited = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(self.stderr_r, select.POLLIN)
        poller.register(exited, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self.stderr_r in ready and (data := os.read(self.stderr_r, 1 << 16)):
                _write_all(2, tidy.feed(data))
            elif exited in ready or self.stderr_r in ready:
                break
        os.set_blocking(self.stderr_r, False)
        try:
            while data := os.read(self.stderr_r, 1 << 16):
                _write_all(2, tidy.feed(data))
        except BlockingIOError:
            pass
        _write_all(2, tidy.flush())
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code


def _mount_cache(directory: str) -> None:
    """In the cache build's child: ``directory`` at MODULE_CACHE, in a mount namespace of its own."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", os.path.dirname(MODULE_CACHE), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=64k,mode=0755")
    os.mkdir(MODULE_CACHE)
    sc.mount(directory, MODULE_CACHE, None, sc.MS_BIND)


def _publish(tree: str) -> None:
    """Every file readable by every sandbox uid, nothing writable but by its owner."""
    for root, _, files in os.walk(tree):
        os.chmod(root, 0o755)  # noqa: S103 - read-only in every sandbox; the modules hold nothing secret
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


def _wait_blocked_on_source(pid: int) -> bool:
    """Until the frontend sleeps in read() on its source pipe (True), or START_S
    passes (True: a slow host; the run waits for it), or it ended (False).

    /proc/<pid>/syscall says which call a sleeping process is in: "0 0x<fd>"
    is read(fd). Its start (loading and relocating the binary, parsing its
    argv) then happened before Ready, not in the run."""
    deadline = time.monotonic() + START_S
    delay = 0.001
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False
        try:
            with open(f"/proc/{pid}/syscall", "rb") as src:
                words = src.read().split()
        except OSError:
            words = []
        if len(words) > 1 and words[0] == b"0":
            try:
                target = os.readlink(f"/proc/{pid}/fd/{int(words[1], 16)}")
            except (OSError, ValueError):
                target = ""
            if target.startswith("pipe:"):
                return True
        select.select([], [], [], delay)
        delay = min(delay * 2, 0.02)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except BrokenPipeError:
            return
