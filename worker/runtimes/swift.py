"""Swift: offered when a toolchain is on the host; described as unavailable otherwise.

Swift compiles before it runs, so this adapter execs ``swift`` (the
interpreter mode of the driver) on the script, and needs the toolchain's
prefix bound into the sandbox. Nothing here is exercised on a host without
a toolchain; tests say so when they skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import NoReturn

from protocol.messages import Job
from protocol.profile import Profile
from worker.runtimes.base import Runtime


def _swift() -> str | None:
    return shutil.which("swift")


class SwiftRuntime(Runtime):
    name = "swift"
    languages = ("swift",)
    self_test = ("print(6 * 7)", "42\n")
    execs = True
    reports = False  # the driver exits with the program's status; the monitor waits for it
    announces = False  # nor can it say when it is ready
    needs_exec_syscall = True
    address_space_rlimit = False

    def host_paths(self) -> list[str]:
        swift = _swift()
        if swift is None:
            return []
        # <prefix>/bin/swift -> the toolchain's <prefix>
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(swift)))
        return [] if prefix.startswith("/usr") else [prefix]

    def probe(self) -> tuple[bool, str]:
        swift = _swift()
        if swift is None:
            return False, "no Swift toolchain on this host (swift is not in PATH)"
        try:
            out = subprocess.run([swift, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"swift does not run ({exc})"
        return True, out.strip().splitlines()[0] if out.strip() else "Swift"

    def encode_job(self, job: Job) -> bytes:
        return job.code.encode()

    def exec_interpreter(self, profile: Profile) -> NoReturn:
        swift = _swift() or "swift"
        # The driver reads the script from stdin when given "-"; fd 3 becomes its stdin.
        os.dup2(3, 0)
        os.execv(swift, ["swift", "-"])  # noqa: S606 - the driver itself, no shell
