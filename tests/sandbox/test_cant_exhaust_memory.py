"""Layer: the memory limit (a memory cgroup where the service has one, else RLIMIT_AS).

Allocations are really touched (``b"x" * n``), so the kernel has to back
them. A run is stopped at its memory limit, the default one or a lower one
it asked for, and the result says ``memory_limit``. The payload is the
process the OOM killer takes first, so the monitor survives to report.
Where the running service has no memory cgroup (its status says so: the
cgroups layer is off, or lists no memory controller), the rlimit fallback
cannot bound what three tests attack (memory spread over processes, shared
memory written without mapping it): those skip and say so, unless the test
run has set up a cgroup for the service (the unprivileged run delegates one:
scripts/test-unprivileged.sh sets CELLBLOCK_TESTS_MEMORY_CGROUP=1), where
its absence fails them.
"""

from __future__ import annotations

import os

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox

MiB = 1 << 20


def _no_memory_cgroup(service) -> str:
    """Why the service bounds memory per process only (RLIMIT_AS), or "" if a memory cgroup bounds the run."""
    (layer,) = [layer for layer in service.status().layers if layer.name == "cgroups"]
    controllers = layer.detail.split(";")[0].split(", ")  # "cpu=v1, memory=v1, pids=v1; missing: ..."
    if layer.active and any(c.startswith("memory=") for c in controllers):
        return ""
    return f"the service has no memory cgroup (cgroups layer: {layer.detail!r}); RLIMIT_AS bounds each process"


@pytest.fixture(scope="module")
def memory_cgroup(service) -> None:
    why = _no_memory_cgroup(service)
    if why and os.environ.get("CELLBLOCK_TESTS_MEMORY_CGROUP") == "1":
        pytest.fail(f"this test run delegated a memory cgroup, yet {why}")
    if why:
        pytest.skip(why)


def _allocated(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("ALLOCATED ")]


ALLOCATE = """
    step, goal = {step} * 2**20, {goal} * 2**20
    print("START", flush=True)
    blocks, total = [], 0
    while total < goal:
        blocks.append(b"x" * step)  # written, so every page is really backed
        total += step
        print("ALLOCATED", total >> 20, flush=True)
    print("DONE", flush=True)
"""


def test_allocating_2gib_ends_as_memory_limit(run):
    result = run(ALLOCATE.format(step=64, goal=2048))
    assert "START" in result.stdout, show(result)
    assert "DONE" not in result.stdout, show(result)
    assert result.status == m.Status.MEMORY_LIMIT, show(result)
    # It got some way before being stopped, and never past the 256 MiB default.
    reached = _allocated(result.stdout)
    assert reached, show(result)
    assert max(reached) <= 256, show(result)


def test_a_lower_requested_limit_is_enforced(run):
    result = run(ALLOCATE.format(step=4, goal=100), limits=m.Limits(memory_bytes=64 * MiB))
    assert "START" in result.stdout, show(result)
    assert "DONE" not in result.stdout, show(result)
    assert result.status == m.Status.MEMORY_LIMIT, show(result)
    assert result.reason == f"memory limit of {64 * MiB} bytes", show(result)
    reached = _allocated(result.stdout)
    assert reached and max(reached) < 64, show(result)
    assert result.memory_peak_bytes <= 64 * MiB + MiB, show(result)


def test_the_lower_limit_still_allows_what_fits(run):
    """Control: the 64 MiB limit stops 100 MiB, not everything."""
    result = run(ALLOCATE.format(step=4, goal=16), limits=m.Limits(memory_bytes=64 * MiB))
    assert result.status == m.Status.OK, show(result)
    assert "DONE" in result.stdout, show(result)


def test_payload_is_the_first_oom_victim(run, service):
    """The payload sets oom_score_adj 1000 so that, when the run's memory is
    full of something no process maps (tmpfs files, kernel objects), the OOM
    killer takes the payload and not the monitor (pid 1), which must survive
    to report ``memory_limit``. The monitor's own is read from the host: the
    sandbox sees nothing of /proc/1."""
    result = run(
        """
        import os
        print("PAYLOAD", open("/proc/self/oom_score_adj").read().strip())
        print("MONITOR", "hidden" if not os.path.exists("/proc/1/oom_score_adj") else "VISIBLE")
        """
    )
    assert result.status == m.Status.OK, show(result)
    assert "PAYLOAD 1000" in result.stdout and "MONITOR hidden" in result.stdout, show(result)
    read = {}
    for monitor in (w for w in service.workers() if _pid_one(w.pid)):
        try:
            with open(f"/proc/{monitor.pid}/oom_score_adj") as src:
                read[monitor.pid] = int(src.read())
        except FileNotFoundError:
            continue  # taken by another test's run and gone since it was listed
    assert read, "no warm worker's monitor found on the host"
    assert all(score < 1000 for score in read.values()), read


def _pid_one(pid: int) -> bool:
    """Is this host process pid 1 of a pid namespace of its own (a worker's monitor)?"""
    try:
        with open(f"/proc/{pid}/status") as src:
            ns = next(line for line in src if line.startswith("NSpid:")).split()
    except (OSError, StopIteration):
        return False
    return len(ns) > 2 and ns[-1] == "1"


HOLD = """
    import os, select, signal, time
    children, dead, reported = [], set(), 0
    deadline = time.monotonic() + {wait_s}

    def count_dead():
        dead.update(pid for pid in children if pid not in dead and os.waitpid(pid, os.WNOHANG)[0])

    for _ in range({children}):  # one child at a time: each writes its blocks, then holds them
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            blocks = []
            for _ in range({blocks}):
                blocks.append(b"x" * ({mib} * 2**20))  # written, so every page is really backed
                os.write(write_end, b"+")
            time.sleep(30)
            os._exit(0)
        children.append(pid)
        os.close(write_end)
        got = 0
        while got < {blocks} and select.select([read_end], [], [], max(0, deadline - time.monotonic()))[0]:
            chunk = os.read(read_end, 8)
            if not chunk:
                break  # it died before it held them all
            got += len(chunk)
        os.close(read_end)
        reported += got
        count_dead()
        if dead or got < {blocks}:
            break  # a block is gone (or never came): the program cannot go on
    time.sleep(0.3)  # a kill the kernel has just made shows now
    count_dead()
    print("REPORTED", reported, "ALIVE", len(children) - len(dead), flush=True)
    if not dead and reported == {children} * {blocks}:
        print("ALL HELD", flush=True)
    for pid in children:
        if pid not in dead:
            os.kill(pid, signal.SIGKILL)
    os._exit(1 if dead else 0)  # a program that needs every block fails when one is gone
"""


def _alive(result: m.ExecuteResult) -> int | None:
    """Children still alive when the payload counted (None: the payload itself was stopped first)."""
    line = next((x for x in result.stdout.splitlines() if x.startswith("REPORTED")), None)
    return None if line is None else int(line.split()[3])


def test_memory_spread_over_processes_is_bounded(run, memory_cgroup):
    """Eight children hold 48 MiB each under a 128 MiB limit: at most two can."""
    result = run(HOLD.format(children=8, blocks=1, mib=48, wait_s=6), limits=m.Limits(memory_bytes=128 * MiB))
    alive = _alive(result)
    if alive is None:  # the payload itself was the victim: that is a stop too
        assert result.status == m.Status.MEMORY_LIMIT, show(result)
        return
    assert alive * 48 <= 128, f"{alive} children hold 48 MiB each\n{show(result)}"


def test_shared_memory_written_without_mapping_is_counted(run, memory_cgroup):
    """memfd pages written with write() are in no address space (RLIMIT_AS
    never sees them); the memory cgroup must still stop the run."""
    result = run(
        """
        import os
        chunk = b"x" * 2**20
        fds, total = [], 0
        print("START", flush=True)
        for _ in range(16):
            fd = os.memfd_create("hoard")
            for _ in range(16):
                total += os.write(fd, chunk)
            fds.append(fd)
            print("HOARDED", total >> 20, flush=True)
        print("DONE", flush=True)
        """,
        limits=m.Limits(memory_bytes=64 * MiB),
    )
    assert "START" in result.stdout, show(result)
    assert "DONE" not in result.stdout, show(result)
    assert result.status == m.Status.MEMORY_LIMIT, show(result)
    hoarded = [int(x.split()[1]) for x in result.stdout.splitlines() if x.startswith("HOARDED")]
    assert not hoarded or max(hoarded) <= 64, show(result)


def test_64_blocks_of_100mib_across_processes_end_as_memory_limit(run, memory_cgroup):
    """32 processes, one after another, each write two 100 MiB blocks and hold them:
    6.4 GiB in all, none above any bound a process has on its own (RLIMIT_AS,
    unprivileged without a cgroup: 256 MiB each). The run's memory cgroup counts
    them together: a child dies, so the program, which needs every block, fails,
    and the run ends as memory_limit."""
    result = run(HOLD.format(children=32, blocks=2, mib=100, wait_s=8))
    assert "ALL HELD" not in result.stdout, show(result)
    assert result.status == m.Status.MEMORY_LIMIT, show(result)
    alive = _alive(result)
    assert alive is None or alive * 200 <= 256, show(result)  # never more than the limit's worth at once
    assert result.memory_peak_bytes <= 256 * MiB + MiB, show(result)
