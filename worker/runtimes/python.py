"""Python: the code runs as ``__main__`` in the warm, forked interpreter.

The payload is a fork of the launcher's interpreter, so a run costs no
interpreter start. The code gets a fresh ``__main__`` module; an uncaught
exception prints its traceback (without cellblock's own frames) on stderr
and exits 1; ``SystemExit`` codes are honoured; stdout and stderr are the
pipes to the monitor at the descriptor level, so output from C code and
from child processes is captured too.
"""

from __future__ import annotations

import atexit
import builtins
import io
import linecache
import os
import platform
import sys
import threading
import traceback
import types

from protocol.messages import Job, JobLimits
from worker.runtimes.base import Runtime

FILENAME = "<cell>"


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _join_threads() -> None:
    """As the interpreter does at exit: threading's exit hooks, then every
    non-daemon thread joined. With no thread but the main one and no hook
    there is nothing to do, and ``threading._shutdown()`` would still copy ~25
    pages of the forked interpreter (~0.1 ms of the run)."""
    active = getattr(threading, "_active", None)
    hooks = getattr(threading, "_threading_atexits", None)
    if active is not None and hooks is not None and len(active) <= 1 and not hooks:
        return
    threading._shutdown()  # type: ignore[attr-defined]


class PythonRuntime(Runtime):
    name = "python"
    languages = ("python", "python3", "py")
    self_test = ("import sys; print(sys.version_info[0] * 7 * 2)", "42\n")

    def __init__(self) -> None:
        super().__init__()
        self.executable = os.path.realpath(sys.executable)
        self.prefixes = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})

    def host_paths(self) -> list[tuple[str, str]]:
        paths = [p for p in self.prefixes if not p.startswith("/usr/")]
        if not self.executable.startswith("/usr/"):
            paths.append(os.path.dirname(self.executable))
        return [(p, p) for p in paths]

    def probe(self) -> tuple[bool, str]:
        if not os.access(self.executable, os.X_OK):
            return False, f"interpreter {self.executable} is not executable"
        return True, f"{platform.python_implementation()} {platform.python_version()}"

    def prepare(self) -> None:
        visible = ("/usr/", *(p + "/" for p in (*self.prefixes, *self.library_paths)))
        sys.path[:] = ["", *(p for p in sys.path if p and (p + "/").startswith(visible))]
        sys.executable = self.executable
        sys.argv = [FILENAME]
        os.chdir("/work")

    def warm_up(self) -> None:
        # The streams are made here, once, and the run path walked with a print
        # that writes nothing: the run then allocates and touches little.
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        for name in ("stdin", "stdout", "stderr"):
            setattr(sys, f"__{name}__", getattr(sys, name))
        warm = "print(end=''); print('', end='', file=__import__('sys').stderr)"
        limits = JobLimits(timeout_ms=1, cpu_ms=1, memory_bytes=1, output_bytes=1)
        self._execute(Job(id="", code=warm, limits=limits), final=False)

    def run(self, job: Job) -> int:
        if job.stream:  # the stream was made without line buffering; leave it untouched otherwise
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        return self._execute(job, final=True)

    def _execute(self, job: Job, final: bool) -> int:
        source = job.code
        linecache.cache[FILENAME] = (len(source), None, source.splitlines(True), FILENAME)
        main = types.ModuleType("__main__")
        main.__builtins__ = builtins  # type: ignore[attr-defined]
        sys.modules["__main__"] = main
        code = 0
        try:
            compiled = compile(source, FILENAME, "exec", dont_inherit=True)
            exec(compiled, main.__dict__)  # noqa: S102 - running the code is the point
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException as exc:  # noqa: BLE001 - report like the interpreter would
            # Drop our own frame (the exec call) from the traceback.
            tb = exc.__traceback__.tb_next if exc.__traceback__ else None
            traceback.print_exception(type(exc), exc, tb)
            code = 1
            if isinstance(exc, MemoryError):
                self.memory_error = True
        if final:  # both run only once per process
            try:
                _join_threads()
                atexit._run_exitfuncs()
            except BaseException:  # noqa: BLE001, S110 - a closed pipe; nothing to say
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001, S110 - a closed pipe; nothing to say
                pass
        return code
