"""The privilege drop and its check, on real processes (no sandbox needed)."""

from __future__ import annotations

import os
import pathlib

import pytest

from worker import privileges


def test_verify_refuses_a_process_that_kept_capabilities() -> None:
    # The test process has a full bounding set (root or not): verify must see it.
    with pytest.raises(PermissionError, match="not empty"):
        privileges.verify(os.getuid(), os.getgid(), privileges.open_status())


def test_verify_refuses_other_ids() -> None:
    status = pathlib.Path("/proc/self/status").read_bytes()
    assert privileges._status_field(b"\n" + status, b"Uid")[0] == str(os.getuid()).encode()
    with pytest.raises(PermissionError):
        privileges._status_field(b"\n" + status, b"NoSuchField")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_drop_leaves_nothing_that_verify_would_find() -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            status_fd = privileges.open_status()  # opened before the drop, as a worker does
            privileges.drop(65534, 65534, False, privileges.cap_last())
            privileges.verify(65534, 65534, status_fd)
            status = pathlib.Path("/proc/self/status").read_text()
            code = 0 if "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
