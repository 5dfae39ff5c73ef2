"""Layer: the scratch filesystems (size-capped tmpfs /work and /tmp) and RLIMIT_FSIZE.

Writing until the disk is full stops with ENOSPC at the 64 MiB cap
(``fixed.work_mb`` / ``fixed.tmp_mb``); one file cannot grow past
``fixed.file_size_mb`` (EFBIG, or SIGXFSZ when the code restores its default
action); and a flood of empty files cannot pin more kernel memory than the
run's memory limit.
"""

from __future__ import annotations

import re

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox

MiB = 1 << 20
CAP_MB = 64  # profiles/default.toml: work_mb, tmp_mb, file_size_mb


def _values(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


FILL = """
    import errno, os
    chunk = b"\\0" * 2**20
    written, failure, index = 0, None, 0
    print("START", flush=True)
    while failure is None and written < 4 * {cap} * 2**20:
        # 8 MiB files, well below RLIMIT_FSIZE, so only the filesystem can say no.
        fd = os.open(f"{directory}/fill{{index}}", os.O_WRONLY | os.O_CREAT, 0o600)
        index += 1
        try:
            for _ in range(8):
                written += os.write(fd, chunk)
        except OSError as exc:
            failure = errno.errorcode[exc.errno]
        finally:
            os.close(fd)
    print("WRITTEN", written)
    print("FAILURE", failure)
"""


@pytest.mark.parametrize("directory", ["/work", "/tmp"])
def test_filling_scratch_stops_with_enospc_at_the_cap(run, directory):
    result = run(FILL.format(directory=directory, cap=CAP_MB))
    assert result.status == m.Status.OK, show(result)
    values = _values(result.stdout)
    assert values.get("FAILURE") == "ENOSPC", show(result)
    written = int(values["WRITTEN"])
    assert (CAP_MB - 4) * MiB <= written <= CAP_MB * MiB, show(result)


def test_a_file_cannot_grow_past_the_file_size_limit(run):
    result = run(
        """
        import errno, os
        def attempt(name, action):
            try:
                action()
                print(name, "ALLOWED")
            except OSError as exc:
                print(name, errno.errorcode[exc.errno])
        fd = os.open("/tmp/big", os.O_WRONLY | os.O_CREAT, 0o600)
        attempt("WRITE-AT-LIMIT-MINUS-1", lambda: os.pwrite(fd, b"y", 64 * 2**20 - 1))
        attempt("WRITE-AT-LIMIT", lambda: os.pwrite(fd, b"x", 64 * 2**20))
        attempt("TRUNCATE-PAST", lambda: os.ftruncate(fd, 65 * 2**20))
        attempt("FALLOCATE-PAST", lambda: os.posix_fallocate(fd, 64 * 2**20, 2**20))
        os.close(fd)
        print("SIZE", os.stat("/tmp/big").st_size)
        """
    )
    assert result.status == m.Status.OK, show(result)
    values = _values(result.stdout)
    # The last byte below the limit is fine (a sparse file): the limit is exact.
    assert values.get("WRITE-AT-LIMIT-MINUS-1") == "ALLOWED", show(result)
    assert values.get("WRITE-AT-LIMIT") == "EFBIG", show(result)
    assert values.get("TRUNCATE-PAST") == "EFBIG", show(result)
    assert values.get("FALLOCATE-PAST") == "EFBIG", show(result)
    assert int(values["SIZE"]) == CAP_MB * MiB, show(result)


def test_appending_one_file_is_cut_at_the_limit(run):
    result = run(
        """
        import errno, os
        chunk = b"z" * 2**20
        failure = None
        with open("/tmp/one", "wb", buffering=0) as out:
            try:
                for _ in range(80):
                    out.write(chunk)
            except OSError as exc:
                failure = errno.errorcode[exc.errno]
        print("FAILURE", failure)
        print("SIZE", os.stat("/tmp/one").st_size)
        """
    )
    assert result.status == m.Status.OK, show(result)
    values = _values(result.stdout)
    # The tmpfs and the rlimit are both 64 MiB: either may be the one that says no.
    assert values.get("FAILURE") in ("EFBIG", "ENOSPC"), show(result)
    assert int(values["SIZE"]) <= CAP_MB * MiB, show(result)


def test_restoring_sigxfsz_does_not_lift_the_file_size_limit(run):
    """With SIGXFSZ back at its default action the kernel kills the writer."""
    result = run(
        """
        import os, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        fd = os.open("/work/big", os.O_WRONLY | os.O_CREAT, 0o600)
        print("BEFORE", flush=True)
        os.pwrite(fd, b"x", 64 * 2**20)
        print("AFTER", flush=True)
        """
    )
    assert "BEFORE" in result.stdout, show(result)
    assert "AFTER" not in result.stdout, show(result)
    assert result.status == m.Status.KILLED, show(result)
    assert result.signal == 25, show(result)  # SIGXFSZ


def test_a_flood_of_empty_files_is_bounded(run):
    """Empty files take no blocks, so the size cap does not stop them; each
    costs about 1 KiB of kernel memory (inode + dentry). A run with a 64 MiB
    memory limit must not be able to pin much more than 64 MiB this way: it
    must hit an inode cap (ENOSPC) or its memory limit first, and the monitor
    must live to report it. The payload becomes a small shell, as an attacker
    would, so that it is not the largest process in the sandbox."""
    limit = 64 * MiB
    result = run(
        """
        import os
        print("START", flush=True)
        os.execv("/bin/sh", ["sh", "-c", "i=0; while [ $i -lt 200000 ]; do "
                 ": > /work/$i || break; i=$((i+1)); done; echo CREATED $i"])
        """,
        limits=m.Limits(memory_bytes=limit),
    )
    if result.status == m.Status.MEMORY_LIMIT:
        return  # the memory cgroup counted the inodes and stopped the payload
    # Anything else but the script's own end (sh exits 2 when a redirection
    # fails) means the sandbox itself fell over (for example its monitor was
    # the OOM killer's victim: "worker_lost").
    assert result.status in (m.Status.OK, m.Status.ERROR), f"error={result.error}\n{show(result)}"
    assert "START" in result.stdout, show(result)
    if "CREATED" in result.stdout:
        created = int(_values(result.stdout)["CREATED"])
    else:
        created = int(re.search(r"/work/(\d+): No space left", result.stderr).group(1))
    assert "No space left on device" in result.stderr, (
        f"created {created} empty files (~{created >> 10} MiB of kernel memory) "
        f"under a {limit >> 20} MiB memory limit, and /work did not run out of inodes\n{show(result)}"
    )
    assert created * 1024 <= 2 * limit, show(result)
