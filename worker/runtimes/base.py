"""The runtime adapter interface: one module per runtime, declarative.

A runtime says which host paths it needs (bound read-only into the
template), which extra system calls it needs, how to find out whether it
can run on this host, a tiny self-test program the broker runs under the
real profile before offering it, and how the payload runs a job.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.messages import Job


class Runtime:
    name: ClassVar[str]
    languages: ClassVar[tuple[str, ...]]
    extra_syscalls: ClassVar[frozenset[str]] = frozenset()
    self_test: ClassVar[tuple[str, str]]  # (code, exact stdout expected)

    def host_paths(self) -> list[str]:
        """Host paths to bind read-only into the sandbox (besides /usr)."""
        return []

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

    def run(self, job: Job) -> int:
        """In the payload: run the job's code; return the exit code."""
        raise NotImplementedError

    memory_error: bool = False  # set by run() when the code ran out of memory
