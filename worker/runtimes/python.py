"""Python: the code runs as ``__main__`` in the warm, forked interpreter.

The payload is a fork of the launcher's interpreter, so a run costs no
interpreter start. The code gets a fresh ``__main__`` module; an uncaught
exception prints its traceback (without cellblock's own frames) on stderr
and exits 1; ``SystemExit`` codes are honoured; stdout and stderr are the
pipes to the monitor at the descriptor level, so output from C code and
from child processes is captured too.

In a session every cell runs in the same ``__main__``, and the value of a
cell's last expression is printed as a REPL would (``sys.displayhook``).
SIGINT is "stop this cell" (KeyboardInterrupt); between cells it is blocked,
so a late one cannot hit the loop that waits for the next cell.

Matplotlib figures come back as files: ``pyplot.show()`` saves each open
figure as a PNG in /work/out and closes it (as in Jupyter), and so does
the end of a run or cell for every figure still open.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import io
import linecache
import os
import platform
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable

from protocol.messages import Job, JobLimits
from worker.runtimes.base import Runtime

FILENAME = "<cell>"
OUT = "/work/out"


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


class Figures:
    """Matplotlib's open figures, saved into /work/out as PNGs."""

    def __init__(self) -> None:
        self.saved = 0

    def save(self) -> None:
        """Every open figure saved, then closed (nothing when pyplot was never imported)."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        self.patch(pyplot)
        try:
            numbers = pyplot.get_fignums()
            if numbers:
                os.makedirs(OUT, exist_ok=True)
            for number in numbers:
                self.saved += 1
                pyplot.figure(number).savefig(f"{OUT}/figure-{self.saved}.png", format="png")
            pyplot.close("all")
        except Exception as exc:  # noqa: BLE001 - the code's figure, the code's error: say it, go on
            print(f"cellblock: a figure could not be saved: {exc!r}", file=sys.stderr)

    def patch(self, pyplot: types.ModuleType) -> None:
        """``pyplot.show()`` saves and closes the open figures (Agg cannot show them)."""
        if getattr(pyplot.show, "__cellblock__", False):
            return

        def show(*args: object, **kwargs: object) -> None:
            self.save()

        show.__cellblock__ = True  # type: ignore[attr-defined]
        show.__doc__ = pyplot.show.__doc__  # type: ignore[attr-defined]
        pyplot.show = show  # type: ignore[attr-defined]


class PythonRuntime(Runtime):
    name = "python"
    languages = ("python", "python3", "py")
    self_test = ("import sys; print(sys.version_info[0] * 7 * 2)", "42\n")
    sessions = True

    def __init__(self) -> None:
        super().__init__()
        self.executable = os.path.realpath(sys.executable)
        self.prefixes = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
        self.figures = Figures()

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
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # preloaded by the environment's zygote
            self.figures.patch(pyplot)

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
        except BaseException as exc:  # noqa: BLE001 - report like the interpreter would
            code = self._failed(exc)
        if final:  # both run only once per process
            try:
                _join_threads()
                self.figures.save()  # before atexit: pyplot's own hook closes every figure
                atexit._run_exitfuncs()
            except BaseException:  # noqa: BLE001, S110 - a closed pipe; nothing to say
                pass
        _flush()
        return code

    def _failed(self, exc: BaseException) -> int:
        """The exit code for what the code raised; its traceback printed as Python would."""
        if isinstance(exc, SystemExit):
            return _exit_code(exc)
        # Drop our own frame (the exec call) from the traceback; a syntax error has
        # no frame of the code's (the parser's are ours).
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        if isinstance(exc, SyntaxError):
            tb = None
        traceback.print_exception(type(exc), exc, tb)
        if isinstance(exc, MemoryError):
            self.memory_error = True
        return 1

    # --- sessions -----------------------------------------------------------------

    def serve_session(self, first: Job, next_job: Callable[[], Job | None], report: Callable[[int], None]) -> int:
        job: Job | None = first
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        main = types.ModuleType("__main__")
        main.__builtins__ = builtins  # type: ignore[attr-defined]
        sys.modules["__main__"] = main
        cell = 0
        while job is not None:
            cell += 1
            if job.stream:
                sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            report(self._cell(job.code, f"<cell {cell}>", main.__dict__))
            job = next_job()
        _join_threads()
        self.figures.save()
        atexit._run_exitfuncs()
        _flush()
        return 0

    def _cell(self, source: str, filename: str, namespace: dict[str, object]) -> int:
        """One cell: its statements, then its last expression shown as a REPL shows it."""
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        code = 0
        while signal.sigtimedwait([signal.SIGINT], 0) is not None:
            pass  # an interrupt meant for the cell before
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
            try:
                tree = ast.parse(source, filename)
                last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
                exec(compile(tree, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - the point
                if last is not None:
                    shown = ast.Interactive(body=[last])
                    exec(compile(shown, filename, "single", dont_inherit=True), namespace)  # noqa: S102
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        except BaseException as exc:  # noqa: BLE001 - report like the interpreter would
            code = self._failed(exc)
        self.figures.save()
        _flush()
        return code


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - a closed pipe; nothing to say
            pass
