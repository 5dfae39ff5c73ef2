"""The payload: the process that runs the code, and holds nothing else.

Forked by the monitor after the privilege drop. Before any job exists it
keeps only its five pipes (stdin, stdout, stderr, the job pipe, the report
pipe) and closes every other descriptor, starts its own session, takes the
profile's rlimits, gets an environment built from nothing, warms its runtime
and loads the runtime's seccomp filters, last. Then it blocks on the job
pipe. A step that fails exits with that step's ``WorkerExit`` code, which the
monitor passes on.
"""

from __future__ import annotations

import os
import sys
import types
from typing import NoReturn

import msgspec
import prctl

from protocol.messages import Job, JobLimits
from protocol.profile import Profile
from worker import rlimits
from worker import syscalls as sc
from worker.exits import WorkerExit
from worker.runtimes.base import Runtime

STDIN, STDOUT, STDERR, JOB, REPORT = 0, 1, 2, 3, 4
# The report the payload writes when the code returns: b"X<code>", with a
# leading b"M" when it ran out of memory under the rlimit fallback. It is
# untrusted (the code could write it), so it can only end the run early with
# an exit code of the code's choosing; cpu, memory and deadlines come from
# the kernel and the monitor. A session's interpreter reports each cell
# the same way.
READY = b"R"  # warm, waiting for the job (the monitor says Ready only after it)
EXITED = b"X"
MEMORY_ERROR = b"M"
QUITTING = b"Q"  # before the rest: a session's interpreter is exiting after this cell
# The code's whole environment. Each zygote takes it as its own at start
# (worker/zygote.py), so every payload inherits exactly this.
ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "TMPDIR": "/tmp",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
    "LANG": "C.UTF-8",
}

_job_decoder = msgspec.msgpack.Decoder(Job)
_WARM_JOB = msgspec.msgpack.encode(
    Job(id="", code="", limits=JobLimits(timeout_ms=1, cpu_ms=1, memory_bytes=1, output_bytes=1))
)


class PayloadFds(msgspec.Struct, frozen=True):
    stdin: int
    stdout: int
    stderr: int
    job: int
    report: int


def _arrange(fds: PayloadFds, exec_runtime: bool) -> None:
    """The five pipes at 0-4; nothing else open."""
    # Move every pipe above the target range first, so no dup2 clobbers another.
    moved = [os.dup(fd) for fd in (fds.stdin, fds.stdout, fds.stderr, fds.job, fds.report)]
    for target, fd in enumerate(moved):
        # stdio is inherited by programs the code starts; the job and report pipes
        # only by an exec'd runtime's interpreter, which reads and writes them.
        os.dup2(fd, target, inheritable=target < JOB or exec_runtime)
    sc.close_range(5)


def _read_exactly(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    while count:
        chunk = os.read(fd, min(count, 1 << 16))  # a larger buffer is a fresh mmap, faulted in per run
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_job(fd: int = JOB) -> Job | None:
    """The next job on the job pipe: a 4-byte length, then the job (``Runtime.encode_job``);
    None at the pipe's end (the monitor closed it: no more jobs)."""
    head = _read_exactly(fd, 4)
    if len(head) < 4:
        return None
    body = _read_exactly(fd, int.from_bytes(head, "little"))
    return _job_decoder.decode(body)


def _setup(
    fds: PayloadFds, runtime: Runtime, profile: Profile, program: list[sc.CompiledFilter] | None, memory_fallback: bool
) -> None:
    step = WorkerExit.SETUP_RLIMITS
    try:
        _arrange(fds, runtime.execs)
        os.setsid()
        # The uid change left the process not dumpable, which makes its /proc
        # files root's; an ordinary process again, it may raise its own
        # oom_score_adj, so the OOM killer takes the payload, not the monitor.
        prctl.set_dumpable(1)
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(fd, b"1000")
        os.close(fd)
        fallback = memory_fallback and runtime.address_space_rlimit
        rlimits.apply_payload(profile, fallback, runtime.address_space_allowance)
        if "random" in sys.modules:  # forked without Python's hooks: reseed as os.fork would
            sys.modules["random"].seed()
        step = WorkerExit.RUNTIME_MISSING
        runtime.prepare()
        _job_decoder.decode(_WARM_JOB)
        runtime.warm_up()
        step = WorkerExit.SETUP_SECCOMP
        if program is not None:
            for flt in program:
                flt.load()
    except BaseException as exc:  # noqa: BLE001 - nothing can log here: exit with the step
        os.write(STDERR, f"cellblock payload: {step.step} failed: {exc}\n".encode())
        os._exit(step)


# What of cellblock a run may find in sys.modules: its runtime's own modules.
OWN = ("worker", "worker.payload", "worker.runtimes", "worker.runtimes.base")
WORKER_PACKAGES = ("worker", "protocol", "supervisor", "msgspec", "prctl", "_prctl")


class _Worker:
    """The worker's module names, listed once in the zygote (``note_the_worker``)."""

    names: tuple[str, ...] = ()
    modules_then = -1  # how many modules were loaded when they were listed


def _worker_names(runtime_module: str) -> list[str]:
    keep = {*OWN, runtime_module}
    return [name for name in list(sys.modules) if name.split(".")[0] in WORKER_PACKAGES and name not in keep]


def note_the_worker(runtime_module: str) -> None:
    """In the zygote, its imports done: the names ``forget_the_worker`` drops. A payload
    that scanned sys.modules itself took a reference to every module's name, and so
    copied each page holding one (~3 MiB per worker of an environment that preloads
    pandas, ~0.15 MiB of the standard library's)."""
    _Worker.names = tuple(_worker_names(runtime_module))
    _Worker.modules_then = len(sys.modules)


def forget_the_worker(runtime_module: str) -> None:
    """Before the code runs: the modules that made the sandbox (the steps, the monitor,
    the wire protocol, msgspec, prctl) out of sys.modules; only the runtime's own stay."""
    same = len(sys.modules) == _Worker.modules_then  # nothing imported since the zygote listed them
    for name in _Worker.names if same else _worker_names(runtime_module):
        sys.modules.pop(name, None)


def relabel(module: types.ModuleType) -> None:
    """Name the module's code by its place in the project, not the host path it was
    imported from: these are the frames a run can walk up to."""
    label = "cellblock/" + module.__name__.replace(".", "/") + ".py"

    def renamed(code: types.CodeType) -> types.CodeType:
        consts = tuple(renamed(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_filename=label, co_consts=consts)

    found: list[object] = [v for v in vars(module).values() if isinstance(v, types.FunctionType)]
    for cls in (v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__):
        found += [v for v in vars(cls).values() if isinstance(v, types.FunctionType)]
        found += [v.__func__ for v in vars(cls).values() if isinstance(v, classmethod | staticmethod)]
    for function in found:
        if isinstance(function, types.FunctionType) and function.__module__ == module.__name__:
            function.__code__ = renamed(function.__code__)


class BecomePayload(BaseException):
    """Raised in the payload's fork, caught by the zygote's top frame, which runs it.

    Unwinding to the top leaves no frame of the zygote, the sandbox steps or
    the monitor above the code's own: the frames a run can walk up to are the
    payload's and its runtime's (``inspect.stack()``). A BaseException, so no
    ``except Exception`` on the way down can swallow it.
    """

    def __init__(
        self,
        fds: PayloadFds,
        runtime: Runtime,
        profile: Profile,
        program: list[sc.CompiledFilter] | None,
        memory_fallback: bool,
    ) -> None:
        super().__init__("payload")
        self.arguments = (fds, runtime, profile, program, memory_fallback)

    def run(self) -> NoReturn:
        arguments, self.arguments = self.arguments, ()  # type: ignore[assignment]
        self.__traceback__ = None  # the unwound frames: nothing keeps them alive
        become_payload(*arguments)


def report(runtime: Runtime, code: int, memory_fallback: bool) -> None:
    """The end of a job (or of a session's cell), on the report pipe."""
    os.write(REPORT, (MEMORY_ERROR if memory_fallback and runtime.memory_error else b"") + EXITED + b"%d" % code)
    runtime.memory_error = False


def become_payload(
    fds: PayloadFds, runtime: Runtime, profile: Profile, program: list[sc.CompiledFilter] | None, memory_fallback: bool
) -> NoReturn:
    code = int(WorkerExit.INTERNAL)
    try:
        _setup(fds, runtime, profile, program, memory_fallback)
        if runtime.execs:
            code = int(WorkerExit.RUNTIME_MISSING)  # if the exec itself fails
            runtime.exec_interpreter(profile)
        child = 0
        if runtime.spawns:
            code = int(WorkerExit.RUNTIME_MISSING)
            child = runtime.spawn_interpreter(profile)
            code = int(WorkerExit.INTERNAL)
        # Before Ready, not after the job came: dropping the worker's modules frees
        # objects shared with the zygote (each one a copy-on-write page), 0.4-0.6 ms
        # that were on every run's latency (wall_ms of print(1): 0.92-1.04 -> 0.46-0.49 ms).
        forget_the_worker(type(runtime).__module__)
        os.write(REPORT, READY)
        job = read_job()
        if job is None:
            os._exit(WorkerExit.DONE)  # the monitor closed the pipe without a job
        memory = job.limits.memory_bytes + runtime.address_space_allowance
        if job.session and runtime.sessions and not child:
            rlimits.apply_session(memory, memory_fallback)
            code = runtime.serve_session(job, read_job, lambda cell: report(runtime, cell, memory_fallback))
        else:
            rlimits.apply_job(job.limits.cpu_ms, memory, memory_fallback, child)
            code = runtime.run_child(child, job) if child else runtime.run(job)
            report(runtime, code, memory_fallback)
    finally:
        os._exit(code)
