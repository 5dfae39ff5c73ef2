"""The runtime adapter interface: one module per runtime, declarative.

A runtime says which host paths it needs (bound read-only into the
template), which extra system calls it needs, how to find out whether it
can run on this host, a tiny self-test program the broker runs under the
real profile before offering it, and how the payload runs a job.

Three shapes:

* in-process (Python): the payload is a fork of the launcher's warm
  interpreter; it reads the job from the job pipe and runs it itself.
* exec'd (Node, bash): after the sandbox steps and its seccomp filter, the
  payload execs the runtime's own interpreter, which starts before any job
  exists and blocks reading the job pipe (fd 3); ``encode_job`` turns the
  job into what that interpreter reads. Its report pipe is fd 4.
* spawned (Swift): after its seccomp filter the payload starts the
  runtime's program as its child, blocked on a pipe of the payload's; it
  reads the job as the in-process shape does, puts the job's rlimits on the
  child, feeds it the code, and reports the child's exit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NoReturn

import msgspec

from protocol.messages import Job
from protocol.profile import Profile, RuntimePolicy

_encoder = msgspec.msgpack.Encoder()


class Runtime:
    name: ClassVar[str]
    languages: ClassVar[tuple[str, ...]]
    extra_syscalls: ClassVar[frozenset[str]] = frozenset()
    self_test: ClassVar[tuple[str, str]]  # (code, exact stdout expected)
    execs: ClassVar[bool] = False  # the payload execs an interpreter before the job arrives
    spawns: ClassVar[bool] = False  # the payload starts the runtime as its child and reports its exit
    reports: ClassVar[bool] = True  # writes "X<exit code>" to fd 4 when the code returns
    announces: ClassVar[bool] = True  # writes "R" to fd 4 once warm and waiting for the job
    needs_exec_syscall: ClassVar[bool] = False  # execve must stay allowed (to start the interpreter)
    address_space_rlimit: ClassVar[bool] = True  # RLIMIT_AS is usable (not for V8's reservations)
    address_space_allowance: int = 0  # bytes RLIMIT_AS allows beyond the run's memory (the runtime's own)
    oom_marker: ClassVar[bytes] = b""  # on stderr when the runtime's own heap limit ended the run
    # Keeps its interpreter between a session's cells: it reads jobs one after
    # another from the job pipe, reports each cell's end on fd 4, and takes
    # SIGINT as "stop this cell" (Python: KeyboardInterrupt).
    sessions: ClassVar[bool] = False

    @classmethod
    def for_policy(cls, policy: RuntimePolicy) -> Runtime:
        """The adapter as the profile configures it."""
        return cls()

    def host_paths(self) -> list[tuple[str, str]]:
        """(host path, path in the sandbox) to bind read-only, besides /usr. A
        runtime that names any gets a root of its own: no other runtime's
        sandbox sees them."""
        return []

    def prepare_host(self, cache_dir: str) -> None:
        """In the launcher, once, after a good probe: build what every worker
        shares read-only (under ``cache_dir``). Raises OSError saying why not."""

    def tools(self) -> list[str] | None:
        """None: the runtime sees the host's /usr read-only (an interpreter and
        its library). A list: the runtime gets a root of its own holding only
        these programs (absolute host paths) and the shared libraries they
        link, copied in; nothing else of /usr."""
        return None

    def probe(self) -> tuple[bool, str]:
        """(available, version or the reason it is not)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """In the payload, before seccomp: point paths at the sandbox."""

    def warm_up(self) -> None:
        """In the payload, before seccomp: walk the run path once without output.

        The payload is a copy-on-write fork; the first run of any code path
        copies the pages it touches (~5 us each on a VM). Doing that before the
        job arrives takes it off the job's latency.
        """

    def encode_job(self, job: Job, first: bool = True) -> bytes:
        """What the monitor writes on the job pipe: a 4-byte length, then the job
        (``worker.payload.read_job``). A session's cells come one after another
        (``first``: the job that opens it)."""
        body = _encoder.encode(job)
        return len(body).to_bytes(4, "little") + body

    def exec_interpreter(self, profile: Profile) -> NoReturn:
        """Exec'd runtimes: replace the payload with the warm interpreter."""
        raise NotImplementedError

    def spawn_interpreter(self, profile: Profile) -> int:
        """Spawned runtimes, in the payload after seccomp: start the child,
        warm and blocked on a pipe of the payload's; return its pid."""
        raise NotImplementedError

    def run_child(self, pid: int, job: Job) -> int:
        """Spawned runtimes: feed the child the job, wait for it; return the exit code to report."""
        raise NotImplementedError

    def run(self, job: Job) -> int:
        """In-process runtimes: run the job's code; return the exit code."""
        raise NotImplementedError

    def serve_session(self, job: Job, next_job: Callable[[], Job | None], report: Callable[[int], None]) -> int:
        """In-process runtimes with ``sessions``: run ``job`` and every job after it as
        cells of one interpreter, reporting each cell's exit code, until there are no
        more; return the exit code of the process."""
        raise NotImplementedError

    memory_error: bool = False  # set by run() when the code ran out of memory

    def __init__(self) -> None:
        # Where a package environment's modules are, in the sandbox (the zygote adds it).
        self.library_paths: list[str] = []
