"""Named exit codes of a worker monitor.

Between clone and the first message to the broker nothing can log, so a
sandbox step that fails exits with its own code and the launcher classifies
the exit (``supervisor.pool.classify``). Codes stay clear of 1-2 (Python),
126-128+n (shells and signals).
"""

from __future__ import annotations

import enum


class WorkerExit(enum.IntEnum):
    DONE = 0  # ran its job, or was told to stop, and left cleanly
    SETUP_NAMESPACES = 70
    SETUP_CGROUPS = 71
    SETUP_CONNECT = 72  # could not reach the broker's worker socket
    SETUP_MOUNTS = 73
    SETUP_NETWORK = 74
    SETUP_PRIVILEGES = 75
    SETUP_RLIMITS = 76
    SETUP_SECCOMP = 77
    RUNTIME_MISSING = 78  # the runtime's interpreter or files are not there
    PAYLOAD_LOST = 79  # the payload died before a job arrived
    BROKER_LOST = 80  # broker connection or launcher lifeline closed
    PROTOCOL = 81  # the broker sent something the worker cannot read
    INTERNAL = 82  # a bug in the monitor: see the launcher log

    @property
    def is_setup_failure(self) -> bool:
        return 70 <= self.value <= 77

    @property
    def step(self) -> str:
        return self.name.removeprefix("SETUP_").lower()


def describe(code: int) -> str:
    try:
        return WorkerExit(code).name.lower()
    except ValueError:
        return f"exit code {code}"
