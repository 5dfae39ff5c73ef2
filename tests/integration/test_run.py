"""Running code through the real service: results, limits, output, streaming."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from protocol import messages as m
from protocol.client import Client
from protocol.profile import load_profile
from tests.conftest import assert_ended_by_deadline

pytestmark = pytest.mark.integration
Run = Callable[..., m.ExecuteResult]
OUTPUT_KILL_BYTES = load_profile("default").fixed.output_kill_bytes  # the session's service runs the default


def test_print_one(run: Run) -> None:
    result = run("print(1)")
    assert result.status is m.Status.OK
    assert result.stdout == "1\n" and result.stderr == ""
    assert result.exit_code == 0 and result.signal is None
    assert result.wall_ms > 0 and result.cpu_ms >= 0 and result.memory_peak_bytes > 0
    assert result.worker and result.runtime.startswith("CPython")


def test_syntax_error_is_an_error_with_traceback(run: Run) -> None:
    result = run("print(1")
    assert result.status is m.Status.ERROR and result.exit_code == 1
    assert "SyntaxError" in result.stderr and 'File "<cell>", line 1' in result.stderr
    assert "cellblock" not in result.stderr and "/worker/" not in result.stderr  # no frames of ours


def test_exception_traceback_shows_the_source_line(run: Run) -> None:
    result = run("def f():\n    return 1 / 0\nf()\n")
    assert result.status is m.Status.ERROR
    assert "ZeroDivisionError" in result.stderr and "return 1 / 0" in result.stderr
    assert "python.py" not in result.stderr


@pytest.mark.parametrize(
    ("code", "exit_code", "status"),
    [
        ("import sys; sys.exit(3)", 3, m.Status.ERROR),
        ("import sys; sys.exit(0)", 0, m.Status.OK),
        ("import sys; sys.exit('bye')", 1, m.Status.ERROR),
        ("import os; os._exit(7)", 7, m.Status.ERROR),
        ("raise SystemExit", 0, m.Status.OK),
    ],
)
def test_exit_codes_are_honoured(run: Run, code: str, exit_code: int, status: m.Status) -> None:
    result = run(code)
    assert (result.exit_code, result.status) == (exit_code, status)


def test_stdin_is_fed(run: Run) -> None:
    stdin = "".join(f"line {i}\n" for i in range(20_000))  # well past one pipe buffer
    result = run("import sys; data = sys.stdin.read(); print(len(data), data.splitlines()[-1])", stdin=stdin)
    assert result.stdout == f"{len(stdin)} line 19999\n"


def test_output_from_c_and_children_is_captured(run: Run) -> None:
    result = run("""
        import os, subprocess, sys
        os.write(1, b"from-c\\n")
        subprocess.run(["/bin/echo", "from-child"])
        subprocess.run([sys.executable, "-c", "import sys; print('from-python-child', file=sys.stderr)"])
        print("from-print")
    """)
    assert result.status is m.Status.OK, result.stderr
    assert result.stdout.splitlines() == ["from-c", "from-child", "from-print"]
    assert "from-python-child" in result.stderr


def test_environment_is_built_from_nothing(run: Run) -> None:
    result = run("import os, json; print(json.dumps(dict(os.environ), sort_keys=True))", environment="none")
    assert result.status is m.Status.OK
    assert result.stdout.strip() == (
        '{"HOME": "/work", "LANG": "C.UTF-8", "LOGNAME": "sandbox", '
        '"PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": "/tmp", "USER": "sandbox"}'
    )


def test_fresh_working_directory(run: Run) -> None:
    result = run("import os; print(os.getcwd(), os.listdir('.'), os.listdir('out'))")
    assert result.stdout == "/work ['out'] []\n"  # only the (empty) folder whose files come back


def test_non_daemon_threads_are_joined(run: Run) -> None:
    result = run("""
        import threading, time
        def late():
            time.sleep(0.2)
            print("thread done")
        threading.Thread(target=late).start()
        print("main done")
    """)
    assert result.stdout == "main done\nthread done\n"


def test_exit_hooks_run_as_the_interpreter_runs_them(run: Run) -> None:
    # threading's own exit hook (an executor never shut down still finishes its
    # work), then atexit's, each only once, after a run that left no thread.
    result = run("""
        import atexit, time
        from concurrent.futures import ThreadPoolExecutor
        atexit.register(print, "atexit")
        ThreadPoolExecutor(1).submit(lambda: (time.sleep(0.2), print("executor done")))
        print("main done")
    """)
    assert result.stdout == "main done\nexecutor done\natexit\n"
    assert run("import threading; threading.Thread(target=print, args=('quick',)).start()").stdout == "quick\n"


def test_timeout_ends_by_its_deadline_plus_the_grace(client: Client) -> None:
    started = time.monotonic()
    result = client.execute("while True: pass", limits=m.Limits(timeout_ms=1000))
    assert_ended_by_deadline(result, 1000, time.monotonic() - started)
    assert "1000 ms" in result.reason


def test_cpu_limit_is_a_timeout(client: Client) -> None:
    result = client.execute("while True: pass", limits=m.Limits(cpu_ms=1000, timeout_ms=5000))
    assert result.status is m.Status.TIMEOUT
    assert "cpu" in result.reason


def test_sigterm_ignoring_code_still_times_out(client: Client) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.01)\n"
    started = time.monotonic()
    result = client.execute(code, limits=m.Limits(timeout_ms=500))
    assert_ended_by_deadline(result, 500, time.monotonic() - started)
    assert result.signal == 9  # it ignored SIGTERM: the grace's SIGKILL ended it


def test_output_is_cut_at_the_cap_with_head_and_tail(client: Client) -> None:
    code = "import sys\nfor i in range(200000): sys.stdout.write(f'{i:07d}\\n')\n"
    result = client.execute(code, limits=m.Limits(output_bytes=1000))
    assert result.status is m.Status.OK
    assert result.stdout_truncated and result.stdout_dropped == 200000 * 8 - 1000
    assert result.stdout.startswith("0000000\n") and result.stdout.endswith("0199999\n")
    assert f"{result.stdout_dropped} bytes of stdout dropped" in result.stdout


def test_100_mb_flood_is_cut_while_other_clients_are_served(service: object, client: Client) -> None:
    flood: list[m.ExecuteResult] = []

    def produce() -> None:
        with Client(service.socket) as own:  # type: ignore[attr-defined]
            flood.append(
                own.execute(
                    "import os\nblock = b'x' * (1 << 20)\nfor _ in range(100): os.write(1, block)\n",
                )
            )

    thread = threading.Thread(target=produce)
    thread.start()
    answered = []
    while thread.is_alive() and len(answered) < 5:
        answered.append(client.execute("print('meanwhile')").stdout)
    thread.join(60)
    assert answered and all(a == "meanwhile\n" for a in answered)
    (result,) = flood
    assert result.status is m.Status.OUTPUT_LIMIT, (result.status, result.reason)
    assert result.stdout_truncated and result.stdout_dropped > 0
    assert len(result.stdout) < 2 * 1024 * 1024


FLOOD = "import os\nblock = b'x' * (1 << 20)\nfor _ in range({mib}): os.write(1, block)\nprint('END', flush=True)\n"


def test_output_past_the_kill_threshold_ends_as_output_limit(client: Client) -> None:
    kill_mib = OUTPUT_KILL_BYTES >> 20
    result = client.execute(FLOOD.format(mib=kill_mib + 4))
    assert result.status is m.Status.OUTPUT_LIMIT, (result.status, result.reason)
    assert result.reason == "output over the kill threshold" and result.signal == 9
    assert result.stdout_truncated and "END" not in result.stdout
    # It was stopped near the threshold: what it wrote (kept + dropped) is not the whole flood.
    written = len(result.stdout.encode()) + result.stdout_dropped
    assert OUTPUT_KILL_BYTES < written < OUTPUT_KILL_BYTES + (2 << 20), written


def test_output_under_the_kill_threshold_is_only_cut(client: Client) -> None:
    """Control: the same flood, 4 MiB short of the threshold, runs to its end."""
    result = client.execute(FLOOD.format(mib=(OUTPUT_KILL_BYTES >> 20) - 4))
    assert result.status is m.Status.OK, (result.status, result.reason)
    assert result.stdout_truncated and result.stdout.endswith("END\n")


def test_streaming_chunks_then_one_result(client: Client) -> None:
    chunks: list[m.OutputChunk] = []
    code = "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.05)\n"
    result = client.execute(code, on_chunk=chunks.append)
    assert result.status is m.Status.OK
    assert "".join(c.data for c in chunks if c.stream == "stdout") == "tick 0\ntick 1\ntick 2\n"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert result.stdout == "tick 0\ntick 1\ntick 2\n"


def test_unknown_language_is_rejected_by_name(run: Run) -> None:
    result = run("print(1)", language="cobol")
    assert result.status is m.Status.REJECTED
    assert result.error is not None and result.error.code == "unknown_language" and result.error.field == "language"


def test_limits_above_the_profile_maximum_are_rejected(client: Client) -> None:
    result = client.execute("print(1)", limits=m.Limits(memory_bytes=64 << 30))
    assert result.status is m.Status.REJECTED
    assert result.error is not None and result.error.field == "limits.memory_bytes"


def test_concurrent_clients_each_get_their_own_result(service: object) -> None:
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        with Client(service.socket) as own:  # type: ignore[attr-defined]
            results[i] = own.execute(f"print({i} * 2)").stdout

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: f"{i * 2}\n" for i in range(8)}


def test_runs_beyond_the_warm_pool_run_at_once_not_one_after_another(service: object) -> None:
    """A long run's replacement is made while it runs: one more run than the
    pool holds still starts before the first ones end (it used to wait for one)."""
    status = service.status()  # type: ignore[attr-defined]
    (python,) = [r for r in status.runtimes if r.name == "python"]
    spans: dict[int, list[float]] = {}
    code = "import time\nprint(time.time())\ntime.sleep(3)\nprint(time.time())\n"

    def one(i: int) -> None:
        with Client(service.socket) as own:  # type: ignore[attr-defined]
            result = own.execute(code, client_id=f"overlap-{i}")
            assert result.status is m.Status.OK, result
            spans[i] = [float(t) for t in result.stdout.split()]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(python.target + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(spans) == python.target + 1
    last_start = max(start for start, _ in spans.values())
    first_end = min(end for _, end in spans.values())
    assert last_start < first_end, f"a run waited for another to end: {sorted(spans.values())}"


def test_status_reports_pool_and_layers(service: object) -> None:
    status = service.status()  # type: ignore[attr-defined]
    (python,) = [r for r in status.runtimes if r.name == "python"]
    assert python.offered and python.version.startswith("CPython")
    names = {layer.name: layer for layer in status.layers}
    for layer in ("namespaces", "filesystem", "privileges", "seccomp", "network", "rlimits", "cgroups", "broker"):
        assert layer in names
    assert names["seccomp"].active and names["namespaces"].active
