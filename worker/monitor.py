"""The monitor: pid 1 of the worker, the trusted parent of the payload.

It holds the broker connection and nothing else of value. It waits for one
job, hands it to the payload, feeds stdin, collects stdout and stderr under
a byte cap (head and tail kept), owns the deadline (SIGTERM to everything in
the pid namespace, then SIGKILL after the grace), measures cpu time from the
kernel's rusage and peak memory from the memory cgroup (or rusage), reports
one result and exits. Exiting as pid 1 makes the kernel kill whatever the
run left behind.
"""

from __future__ import annotations

import mmap
import os
import resource
import select
import signal
import socket
import time

from protocol import messages as m
from protocol.messages import Status
from protocol.wire import worker_codec
from protocol.zmtp import Dealer, frame_bytes
from worker import files
from worker.cgroups import Layout, Meter
from worker.exits import WorkerExit
from worker.payload import EXITED, MEMORY_ERROR, QUITTING, READY
from worker.runtimes.base import Runtime

READ_SIZE = 1 << 16
WARM_ROUNDS = 16  # enough for 3.11 to quicken (8 calls) and specialise the job path
PAYLOAD_START_S = 60.0  # an exec'd interpreter (node: 40-170 ms here) has this long to get warm
INTERRUPT_GRACE_S = 0.5  # a session's cell told to stop (SIGINT) has at least this long before the kill
CPU_CHECK_S = 0.05  # how often a session's cell's cpu time is read (a one-shot run has RLIMIT_CPU)
_codec = worker_codec()


class Capture:
    """Keeps the first half and the last half of ``keep`` bytes; counts the rest."""

    def __init__(self, keep: int) -> None:
        self.head_cap = keep - keep // 2
        self.tail_cap = keep // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> bytes:
        """Store ``data``; return the part that went into the head (streamable)."""
        self.total += len(data)
        room = self.head_cap - len(self.head)
        into_head = data[:room] if room > 0 else b""
        self.head += into_head
        rest = data[len(into_head) :]
        if rest and self.tail_cap:
            self.tail += rest
            if len(self.tail) > 2 * self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]
        return into_head

    def parts(self) -> tuple[bytes, bytes]:
        return bytes(self.head), bytes(self.tail[-self.tail_cap :] if self.tail_cap else b"")


class Outcome:
    def __init__(self) -> None:
        self.timed_out = False
        self.output_killed = False
        self.status: int | None = None  # a wait status
        self.memory_error = False
        self.reported = False  # the payload's own report ended the run
        self.cpu_exceeded = False  # a session's cell over its cpu time (the monitor's own check)
        self.payload_gone = False  # the payload exited (a session's with it)

    def take_report(self, report: bytes) -> bool:
        if report.startswith(QUITTING):
            self.payload_gone = True  # a session's interpreter exiting (its code said exit)
            report = report[len(QUITTING) :]
        if report.startswith(MEMORY_ERROR):
            self.memory_error = True
            report = report[len(MEMORY_ERROR) :]
        if not report.startswith(EXITED):
            return False
        try:
            code = int(report[len(EXITED) :]) & 0xFF
        except ValueError:
            return False
        self.status = code << 8  # as os.waitpid would say "exited with code"
        self.reported = True
        return True


def _kill_all(sig: int) -> None:
    try:
        os.kill(-1, sig)  # as pid 1: everything else in this pid namespace
    except ProcessLookupError:
        pass


def _reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


class Monitor:
    def __init__(
        self,
        *,
        worker_id: str,
        runtime: str,
        dealer: Dealer,
        payload_pid: int,
        job_w: int,
        stdin_w: int,
        stdout_r: int,
        stderr_r: int,
        report_r: int,
        lifeline: int,
        meter: Meter,
        kill_grace_ms: int,
        output_kill_bytes: int,
        idle_memory_bytes: int,
        adapter: Runtime,
    ) -> None:
        self.idle_memory_bytes = idle_memory_bytes
        self.adapter = adapter
        self.worker_id = worker_id
        self.runtime = runtime
        self.dealer = dealer
        self.payload_pid = payload_pid
        self.pidfd = os.pidfd_open(payload_pid)
        self.is_init = os.getpid() == 1  # a worker's monitor always is
        self.job_w = job_w
        self.stdin_w = stdin_w
        self.stdout_r = stdout_r
        self.stderr_r = stderr_r
        self.report_r = report_r
        self.lifeline = lifeline
        self.meter = meter
        self.kill_grace = kill_grace_ms / 1000
        self.output_kill_bytes = output_kill_bytes
        self.buffer = mmap.mmap(-1, READ_SIZE)  # pages made only as reads fill them
        self.view = memoryview(self.buffer)
        self.limit = -1  # the memory limit last written
        self.rehearsing = False
        self.oom_before = 0
        self.cpu_before: int | None = None
        self.setup_ns = 0
        self.rss_before = 0  # without a memory cgroup: what the payload held before the job
        self.session = False  # the job pipe stays open: the payload waits for the next cell
        self.cells = 0  # jobs run (a one-shot worker runs one)
        self.out = files.OutDir()

    # --- waiting for the job -------------------------------------------------

    def serve(self) -> int:
        """After ``rehearse`` and the monitor's seccomp filter: ready, one job, one result
        (or, when the job opens a session, one result per cell until the session ends)."""
        if self.adapter.announces:
            lost = self.await_payload()
            if lost is not None:
                return lost
        self.out.make()
        self.arm()
        # Ready workers sleep, so a high weight costs nothing until the job
        # comes, and then the job is not queued behind sandboxes being made.
        self.meter.set_running(True)
        self.dealer.send(_codec.encode(m.Ready(worker=self.worker_id, runtime=self.runtime, pid=self.payload_pid)))
        job = self.wait_job()
        if isinstance(job, int):
            return job
        self.session = job.session and self.adapter.sessions
        while True:
            result = self.run(job)
            self.dealer.send(_codec.encode(result))
            if not result.alive:
                break
            # A session between cells: it keeps its memory; only its cpu weight goes down.
            self.meter.set_running(False)
            job = self.wait_job()
            if isinstance(job, int):
                return job
            self.meter.set_running(True)
        # The slot's cgroup serves the next worker: back to its idle state.
        # Tearing this sandbox down can wait for other runs.
        self.meter.set_running(False)
        try:
            self.meter.set_limit(self.idle_memory_bytes)
        except OSError:
            pass  # still above it (pages not yet freed); the next run sets its own
        return WorkerExit.DONE

    def rehearse(self) -> None:
        """Walk the whole job path once on scratch descriptors, with no payload.

        The monitor is a copy-on-write fork: the first run of any code path
        copies every page it writes (objects' reference counts, the
        allocator's pools; the bytecode's specialisation counters too, but the
        zygote has already run this path, see ``warm_job_path``), ~90 faults
        of ~5 us each here. Rehearsing takes them off the job's latency:
        receive and decode a job, feed it, pump output and the report,
        classify, encode and send the result, all on pipes and a socket pair
        of its own.
        """
        real = (self.dealer, self.job_w, self.stdin_w, self.stdout_r, self.stderr_r, self.report_r, self.pidfd)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(6)]
        scratch = [fd for pair in pipes for fd in pair]
        job_p, stdin_p, out_p, err_p, report_p, pid_p = pipes
        try:
            self.dealer = Dealer(ours)
            self.job_w, self.stdin_w, self.stdout_r, self.stderr_r = job_p[1], stdin_p[1], out_p[0], err_p[0]
            self.report_r, self.pidfd = report_p[0], pid_p[0]
            limits = m.JobLimits(timeout_ms=1000, cpu_ms=1000, memory_bytes=1, output_bytes=64)
            job = m.Job(id="rehearsal", code="", stdin="x", limits=limits)
            theirs.sendall(frame_bytes(_codec.encode(job)))
            os.write(out_p[1], b"rehearsal\n")
            os.write(err_p[1], b"rehearsal\n")
            os.write(report_p[1], EXITED + b"0")
            received = self.wait_job()
            if isinstance(received, m.Job):
                self.rehearsing = True
                self.dealer.send(_codec.encode(self.run(received)))
        finally:
            # The run path closes the job pipe, and the stdin pipe once fed.
            closed = {pipes[0][1]} if self.rehearsing else set()
            closed |= {pipes[1][1]} if self.stdin_w == -1 else set()
            self.rehearsing = False
            (self.dealer, self.job_w, self.stdin_w, self.stdout_r, self.stderr_r, self.report_r, self.pidfd) = real
            ours.close()
            theirs.close()
            for fd in scratch:
                if fd not in closed:
                    os.close(fd)

    def arm(self) -> None:
        """Before Ready: the default limit set, the meters reset and read, so a
        job's path only reads them afterwards."""
        self.meter.set_limit(self.idle_memory_bytes)
        self.limit = self.idle_memory_bytes
        self.meter.reset_peak()
        self.oom_before = self.meter.oom_kills()
        self.cpu_before = self.meter.cpu_ns()
        # Without a cgroup, rusage covers the payload's whole life: take off
        # what it spent before the job (warming up), from its schedstat.
        self.setup_ns = _schedstat_ns(self.payload_pid) if self.cpu_before is None else 0
        # Without a memory cgroup the peak is rusage's, a resident set that also
        # counts the pages a payload shares with its zygote (an environment's
        # libraries): what the run added is the peak above this.
        self.rss_before = _rss(self.payload_pid) if self.meter.peak() is None else 0

    def _kill(self, sig: int) -> None:
        # The rehearsal has no payload of its own: never touch the real one.
        # Only pid 1 may signal "everything": a rehearsal in the zygote must not.
        if not self.rehearsing and self.is_init:
            _kill_all(sig)

    def await_payload(self) -> int | None:
        """Wait for the payload's "R": warm (an exec'd interpreter booted) and
        blocked on the job pipe. Ready before that would hand a job to a
        runtime still starting, and count its start-up as the run's cpu."""
        poller = select.poll()
        for fd in (self.report_r, self.pidfd, self.lifeline):
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + PAYLOAD_START_S
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(int(left * 1000) + 1):
                if fd == self.report_r:
                    said = os.read(self.report_r, len(READY))
                    if said == READY:
                        return None
                    if said:  # not what a payload says before its job: do not trust it
                        os.kill(self.payload_pid, signal.SIGKILL)
                    return self._payload_lost()  # its exit code names the failed step
                if fd == self.lifeline:
                    return WorkerExit.BROKER_LOST
                return self._payload_lost()
        return WorkerExit.RUNTIME_MISSING

    def _payload_lost(self) -> int:
        _, status = os.waitpid(self.payload_pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return code if 70 <= code <= 79 else WorkerExit.PAYLOAD_LOST

    def wait_job(self) -> m.Job | int:
        poller = select.poll()
        poller.register(self.dealer.fileno(), select.POLLIN)
        poller.register(self.lifeline, select.POLLIN)
        poller.register(self.pidfd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.pidfd:
                    return self._payload_lost()
                if fd == self.lifeline:
                    return WorkerExit.BROKER_LOST
                messages = self.dealer.recv_available()
                if messages is None:
                    return WorkerExit.BROKER_LOST
                for frames in messages:
                    try:
                        return _codec.decode(frames)
                    except Exception:  # noqa: BLE001 - a broker bug; nothing else to do
                        return WorkerExit.PROTOCOL

    # --- running it -----------------------------------------------------------

    def run(self, job: m.Job) -> m.WorkerResult:
        rehearsal = self.rehearsing
        if rehearsal:
            self.arm()
        else:
            if self.cells:
                self.arm_cell()
            self.cells += 1
        if job.limits.memory_bytes != self.limit and not rehearsal:
            self.meter.set_limit(job.limits.memory_bytes)
            self.limit = job.limits.memory_bytes
        # With the worker's cgroup counting its cpu, the run can end at the
        # payload's report instead of waiting for its exit (tearing down a
        # forked interpreter's address space costs ~0.5-1 ms here). A session's
        # cell always ends at its report: its interpreter stays.
        # (The rehearsal's report is written by the rehearsal itself, whatever the runtime.)
        fast = rehearsal or self.session or (self.cpu_before is not None and self.adapter.reports)
        out, err = Capture(job.limits.output_bytes), Capture(job.limits.output_bytes)
        outcome = Outcome()
        before: files.Snapshot = {}
        if not rehearsal:
            problem = files.place(job.files)
            if problem:
                return self._not_run(job, problem)
            before = self.out.snapshot() if self.cells > 1 else {}
        started = time.monotonic()
        try:
            _write_all(self.job_w, self.adapter.encode_job(job, self.cells <= 1))
        except BrokenPipeError:
            pass  # the payload died before reading; its exit status says why
        if not self.session:
            os.close(self.job_w)  # no more jobs: the payload reads to the end
        self._pump(job, out, err, outcome, started + job.limits.timeout_ms / 1000, fast)
        wall = time.monotonic() - started
        alive = self.session and outcome.reported and not (outcome.payload_gone or outcome.output_killed)
        if not alive:
            # End whatever the run left behind, then collect what is still buffered.
            self._kill(signal.SIGKILL)
        self._drain(job, out, err)
        cpu_ms, peak = self._measure(alive, rehearsal)
        oom = self.meter.oom_kills() > self.oom_before
        marker = self.adapter.oom_marker
        if marker and (marker in err.head or marker in err.tail):
            outcome.memory_error = True  # the runtime's own heap limit, sized from the memory limit
        status, reason = _classify(outcome, job, cpu_ms, oom, self.session, alive)
        exit_code = signal_no = None
        if outcome.status is not None:
            if os.WIFSIGNALED(outcome.status):
                signal_no = os.WTERMSIG(outcome.status)
            else:
                exit_code = os.WEXITSTATUS(outcome.status)
        artifacts: list[m.Artifact] = []
        omitted = 0
        if not rehearsal:
            artifacts, omitted = self.out.collect(before, job.artifact_bytes, job.artifacts_bytes, job.artifact_count)
        out_head, out_tail = out.parts()
        err_head, err_tail = err.parts()
        return m.WorkerResult(
            id=job.id,
            status=status,
            exit_code=exit_code,
            signal=signal_no,
            reason=reason,
            stdout_head=out_head,
            stdout_tail=out_tail,
            stdout_total=out.total,
            stderr_head=err_head,
            stderr_tail=err_tail,
            stderr_total=err.total,
            wall_ms=round(wall * 1000, 3),
            cpu_ms=round(cpu_ms, 3),
            memory_peak_bytes=peak,
            artifacts=artifacts,
            artifacts_omitted=omitted,
            alive=alive,
            memory_bytes=(self.meter.usage() or 0) if alive else 0,
        )

    def arm_cell(self) -> None:
        """A session's next cell: its meters read afresh (its limit stays the session's)."""
        self.meter.reset_peak()
        self.oom_before = self.meter.oom_kills()
        self.cpu_before = self.meter.cpu_ns()
        self.setup_ns = _schedstat_ns(self.payload_pid) if self.cpu_before is None else 0
        self.rss_before = _rss(self.payload_pid) if self.meter.peak() is None else 0

    def _cpu_now(self) -> int:
        """The run's cpu time so far, in ns: its cgroup's, else the payload's own."""
        used = self.meter.cpu_ns()
        if used is not None:
            return used - (self.cpu_before or 0)
        return _schedstat_ns(self.payload_pid) - self.setup_ns

    def _measure(self, alive: bool, rehearsal: bool) -> tuple[float, int]:
        """(cpu ms, peak memory bytes) of the run that just ended."""
        cpu_before = self.cpu_before
        usage = None
        if cpu_before is not None or rehearsal:
            cpu_ms = ((self.meter.cpu_ns() or cpu_before or 0) - (cpu_before or 0)) / 1e6
        elif alive:  # a session's cell, no cgroup: the payload's own, from its schedstat
            cpu_ms = max(0.0, (_schedstat_ns(self.payload_pid) - self.setup_ns) / 1e6)
        else:
            _reap_all()
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_ms = max(0.0, (usage.ru_utime + usage.ru_stime) * 1000 - self.setup_ns / 1e6)
        peak = self.meter.peak()
        if peak is None:
            if alive:  # the payload's high-water mark, above what it held before the cell
                peak = max(0, _rss(self.payload_pid, b"VmHWM:") - self.rss_before)
            else:
                peak = (usage or resource.getrusage(resource.RUSAGE_CHILDREN)).ru_maxrss * 1024
                peak = max(0, peak - self.rss_before)
        return cpu_ms, peak

    def _not_run(self, job: m.Job, problem: str) -> m.WorkerResult:
        """The job's files could not be placed: the code does not run (a session goes on)."""
        return m.WorkerResult(
            id=job.id, status=Status.ERROR, reason=problem, alive=self.session, stderr_head=problem.encode()
        )

    def _pump(self, job: m.Job, out: Capture, err: Capture, outcome: Outcome, deadline: float, fast: bool) -> None:
        stdin = job.stdin.encode()
        poller = select.poll()
        for fd in (self.stdout_r, self.stderr_r, self.pidfd, self.report_r):
            poller.register(fd, select.POLLIN)
        poller.register(self.dealer.fileno(), select.POLLIN)
        if stdin and self.stdin_w >= 0:
            os.set_blocking(self.stdin_w, False)
            poller.register(self.stdin_w, select.POLLOUT)
        elif self.stdin_w >= 0:
            os.close(self.stdin_w)  # a session's cells get no stdin (the first closes it)
            self.stdin_w = -1
        cpu_limit_ns = job.limits.cpu_ms * 1_000_000 if self.session else 0
        killing_at: float | None = None
        while True:
            now = time.monotonic()
            if cpu_limit_ns and killing_at is None and self._cpu_now() > cpu_limit_ns:
                outcome.cpu_exceeded = True
                deadline = now
            limit = killing_at if killing_at is not None else deadline
            if cpu_limit_ns and killing_at is None:
                limit = min(limit, now + CPU_CHECK_S)
            events = poller.poll(max(0, int((limit - now) * 1000) + 1))
            if not events and time.monotonic() >= (killing_at if killing_at is not None else deadline):
                killing_at = self._stop(outcome, killing_at)
                continue
            for fd, _ in events:
                if fd == self.pidfd:
                    _, status = os.waitpid(self.payload_pid, 0)
                    outcome.payload_gone = True
                    if not outcome.reported:
                        outcome.status = status
                        self._read_report(outcome)
                    return
                if fd == self.report_r:
                    if not self._read_report(outcome):
                        poller.unregister(fd)
                    elif outcome.reported and fast and (self.session or not outcome.timed_out):
                        return
                elif fd == self.stdin_w:
                    stdin = self._feed_stdin(stdin, poller)
                elif fd == self.dealer.fileno():
                    if self.dealer.recv_available() is None:
                        # The broker is gone: nobody will read a result.
                        self._kill(signal.SIGKILL)
                        os._exit(WorkerExit.BROKER_LOST)
                else:
                    capture = out if fd == self.stdout_r else err
                    data = self._read(fd)
                    if not data:
                        poller.unregister(fd)
                        continue
                    self._take(job, capture, "stdout" if capture is out else "stderr", data)
                    if out.total + err.total > self.output_kill_bytes and not outcome.output_killed:
                        outcome.output_killed = True
                        self._kill(signal.SIGKILL)

    def _stop(self, outcome: Outcome, killing_at: float | None) -> float:
        """The deadline (or the cpu limit) passed: ask the run to stop, then make it.
        A one-shot run gets SIGTERM, a session's cell SIGINT (its process group:
        the interpreter and what the cell started); SIGKILL after the grace."""
        now = time.monotonic()
        if killing_at is not None:
            self._kill(signal.SIGKILL)
            return now + 5.0
        outcome.timed_out = True
        if not self.session:
            self._kill(signal.SIGTERM)
            return now + self.kill_grace
        try:
            os.killpg(self.payload_pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        return now + max(self.kill_grace, INTERRUPT_GRACE_S)

    def _read(self, fd: int) -> bytes:
        """Read into one buffer kept for the monitor's life: a fresh 64 KiB
        allocation per read would touch (and fault in) new heap pages each run."""
        count = os.readv(fd, [self.buffer])
        return bytes(self.view[:count])

    def _feed_stdin(self, pending: bytes, poller: select.poll) -> bytes:
        try:
            written = os.write(self.stdin_w, pending[:READ_SIZE])
            pending = pending[written:]
        except BlockingIOError:
            return pending
        except BrokenPipeError:
            pending = b""
        if not pending:
            poller.unregister(self.stdin_w)
            os.close(self.stdin_w)
            self.stdin_w = -1
        return pending

    def _take(self, job: m.Job, capture: Capture, name: str, data: bytes) -> None:
        streamable = capture.feed(data)
        if job.stream and streamable:
            self.dealer.send(_codec.encode(m.WorkerChunk(id=job.id, stream=name, data=streamable)))  # type: ignore[arg-type]

    def _drain(self, job: m.Job, out: Capture, err: Capture) -> None:
        for fd, capture, name in ((self.stdout_r, out, "stdout"), (self.stderr_r, err, "stderr")):
            os.set_blocking(fd, False)
            while capture.total <= self.output_kill_bytes:
                try:
                    data = self._read(fd)
                except BlockingIOError:
                    break
                if not data:
                    break
                self._take(job, capture, name, data)

    def _read_report(self, outcome: Outcome) -> bool:
        """Take the payload's report; False once the pipe is at EOF."""
        os.set_blocking(self.report_r, False)
        try:
            report = os.read(self.report_r, 64)
        except BlockingIOError:
            return True
        if not report:
            return False
        if outcome.status is None:
            outcome.take_report(report)
        else:  # the kernel's wait status came first and stands; keep only the memory flag
            outcome.memory_error = report.startswith(MEMORY_ERROR)
        return True


def warm_job_path(adapter: Runtime, rounds: int = WARM_ROUNDS) -> None:
    """In a zygote, before it clones any worker: rehearse the job path there.

    CPython 3.11 writes into a code object each time it runs, until the code
    is quickened and its instructions specialised: a warm-up counter in the
    header, then counters in the bytecode's inline caches. A worker that
    specialises the monitor's job path itself copies every page holding that
    bytecode (its rehearsal, step 8b, moves the copies off the job's latency
    but still makes them in every worker). Rehearsed here, on scratch pipes
    and a socket pair with no cgroup, the specialised bytecode is inherited
    and shared by every worker. Nothing of a run's is involved, and the
    rehearsal never signals or waits for anything (``Monitor.rehearsing``).
    """
    lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    monitor = None
    try:
        monitor = Monitor(
            worker_id="warm-up",
            runtime=adapter.name,
            dealer=Dealer(ours),
            payload_pid=os.getpid(),  # only for its pidfd, which the rehearsal swaps for a pipe
            job_w=-1,
            stdin_w=-1,
            stdout_r=-1,
            stderr_r=-1,
            report_r=-1,
            lifeline=lifeline_r,
            meter=Meter(Layout(parents={}, detail=""), {}),
            kill_grace_ms=100,
            output_kill_bytes=1 << 20,
            idle_memory_bytes=1 << 20,
            adapter=adapter,
        )
        for _ in range(rounds):
            monitor.rehearse()
    finally:
        if monitor is not None:
            os.close(monitor.pidfd)
            monitor.view.release()
            monitor.buffer.close()
        for fd in (lifeline_r, lifeline_w):
            os.close(fd)
        ours.close()
        theirs.close()


def _rss(pid: int, field: bytes = b"VmRSS:") -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as src:
            for line in src:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _schedstat_ns(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as src:
            return int(src.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _classify(
    outcome: Outcome, job: m.Job, cpu_ms: float, oom: bool, session: bool = False, alive: bool = False
) -> tuple[Status, str]:
    if outcome.output_killed:
        return Status.OUTPUT_LIMIT, "output over the kill threshold" + ("; the session ended" if session else "")
    if outcome.timed_out:
        limit = (
            f"cpu time limit of {job.limits.cpu_ms} ms"
            if outcome.cpu_exceeded
            else (f"wall clock limit of {job.limits.timeout_ms} ms")
        )
        if not session:
            return Status.TIMEOUT, limit
        if alive:
            return Status.TIMEOUT, f"{limit}: the cell was interrupted; the session goes on"
        return Status.TIMEOUT, f"{limit}: the cell did not stop when interrupted; the session ended"
    status, reason = _classify_exit(outcome, job, cpu_ms, oom)
    if session and not alive:
        reason = f"{reason}; the session ended" if reason else "the session ended"
    return status, reason


def _classify_exit(outcome: Outcome, job: m.Job, cpu_ms: float, oom: bool) -> tuple[Status, str]:
    status = outcome.status
    if status is None:
        return Status.INTERNAL_ERROR, "payload status unknown"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if oom or outcome.memory_error:
            return Status.MEMORY_LIMIT, f"memory limit of {job.limits.memory_bytes} bytes"
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_ms >= job.limits.cpu_ms):
            return Status.TIMEOUT, f"cpu time limit of {job.limits.cpu_ms} ms"
        if sig == signal.SIGSYS:
            return Status.KILLED, "seccomp"
        return Status.KILLED, f"signal {signal.Signals(sig).name}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return Status.OK, ""
    if oom or outcome.memory_error:
        return Status.MEMORY_LIMIT, f"memory limit of {job.limits.memory_bytes} bytes"
    return Status.ERROR, f"exit code {code}"
