"""JavaScript (warm Node.js), bash and Swift through the real service."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from protocol import messages as m
from protocol.client import Client
from tests.conftest import assert_ended_by_deadline
from worker.runtimes.swift import find_frontend

pytestmark = pytest.mark.integration
Run = Callable[..., m.ExecuteResult]
needs_swift = pytest.mark.skipif(
    find_frontend() is None, reason="no Swift toolchain on this host (PATH, /opt/swift): Swift runs are not exercised"
)


def js(run: Run, code: str, **kwargs: object) -> m.ExecuteResult:
    return run(code, language="javascript", **kwargs)


def sh(run: Run, code: str, **kwargs: object) -> m.ExecuteResult:
    return run(code, language="bash", **kwargs)


def test_runtimes_are_offered_with_versions(service: object) -> None:
    status = service.status()  # type: ignore[attr-defined]
    runtimes = {r.name: r for r in status.runtimes}
    assert runtimes["javascript"].offered and runtimes["javascript"].version.startswith("Node.js")
    assert runtimes["bash"].offered and runtimes["bash"].version.startswith("GNU bash")


def test_node_prints_and_requires(run: Run) -> None:
    result = js(run, "const os = require('os');\nconsole.log(1 + 1, typeof os.cpus);\nprocess.stdout.write('raw\\n');")
    assert result.status is m.Status.OK, result.stderr
    assert result.stdout == "2 function\nraw\n" and result.runtime.startswith("Node.js")


def test_node_uncaught_error_prints_stack_and_exits_1(run: Run) -> None:
    result = js(run, "function boom() { throw new TypeError('bad thing'); }\nboom();")
    assert result.status is m.Status.ERROR and result.exit_code == 1
    assert "TypeError: bad thing" in result.stderr and "at boom" in result.stderr


def test_node_async_error_and_exit_codes(run: Run) -> None:
    result = js(run, "setTimeout(() => { throw new Error('later'); }, 10);")
    assert result.exit_code == 1 and "Error: later" in result.stderr
    assert js(run, "process.exitCode = 4;").exit_code == 4
    assert js(run, "process.exit(7); console.log('never')").exit_code == 7


def test_node_es_modules_and_top_level_await(run: Run) -> None:
    code = "import { platform } from 'os';\nconst x = await Promise.resolve(21);\nconsole.log(platform(), x * 2);"
    result = js(run, code)
    assert result.status is m.Status.OK, result.stderr
    assert result.stdout == "linux 42\n"
    asked = run("console.log(typeof require)", language="mjs")
    assert asked.stdout == "undefined\n"  # an ES module when asked


def test_node_stdin_and_timeout(run: Run, client: Client) -> None:
    code = "let d=''; process.stdin.on('data', c => d += c); process.stdin.on('end', () => console.log(d.length));"
    assert js(run, code, stdin="x" * 100_000).stdout == "100000\n"
    started = time.monotonic()
    result = client.execute("while (true) {}", "javascript", limits=m.Limits(timeout_ms=1000))
    assert_ended_by_deadline(result, 1000, time.monotonic() - started)


def test_node_heap_exhaustion_is_a_memory_limit(run: Run) -> None:
    code = "const keep = []; for (;;) keep.push(new Array(1e6).fill(Math.random()));"
    result = js(run, code)
    assert result.status is m.Status.MEMORY_LIMIT, (result.status, result.reason, result.stderr[-300:])


def test_bash_runs_scripts_with_their_own_line_numbers(run: Run) -> None:
    result = sh(run, 'echo one\nnot_a_command\necho "$0" > /dev/null\nexit 5')
    assert result.status is m.Status.ERROR and result.exit_code == 5
    assert result.stdout == "one\n"
    assert "line 2: not_a_command: command not found" in result.stderr


def test_bash_pipes_coreutils_and_stdin(run: Run) -> None:
    result = sh(run, "tr a-z A-Z | sort | uniq -c | awk '{print $2, $1}'", stdin="b\na\nb\n")
    assert result.status is m.Status.OK, result.stderr
    assert result.stdout == "A 1\nB 2\n"


def test_bash_is_not_a_login_shell(run: Run) -> None:
    result = sh(run, "echo ${HOME} ${BASH_ENV:-none}; shopt -q login_shell && echo login || echo plain")
    assert result.stdout == "/work none\nplain\n"


def test_swift_is_offered_with_its_version_or_described(service: object) -> None:
    status = service.status()  # type: ignore[attr-defined]
    swift = {r.name: r for r in status.runtimes}["swift"]
    if find_frontend() is None:
        assert not swift.offered and "no Swift toolchain" in swift.reason and "swift.org" in swift.reason
    else:
        assert swift.offered, swift.reason
        assert swift.version.startswith("Swift version 6"), swift.version


@needs_swift
def test_swift_runs_the_seed_example(run: Run) -> None:
    code = 'print("Hello from Swift")\nlet total = (1...10).reduce(0, +) * 2\nlet name = "cellblock"\n'
    code += 'print("\\(name) counted \\(total)")\n'
    result = run(code, language="swift")
    assert result.status is m.Status.OK, (result.status, result.stderr)
    assert result.stdout == "Hello from Swift\ncellblock counted 110\n"
    assert result.runtime.startswith("Swift version")


@needs_swift
def test_swift_compile_errors_name_the_users_file_and_line(run: Run) -> None:
    result = run('print("fine")\nlet n: Int = "text"\n', language="swift")
    assert result.status is m.Status.ERROR and result.exit_code == 1
    assert "main.swift:2:14: error: cannot convert value of type 'String' to specified type 'Int'" in result.stderr
    assert "/dev/fd" not in result.stderr and "/opt/" not in result.stderr and result.stdout == ""


@needs_swift
def test_swift_trap_keeps_what_was_printed_and_cuts_the_toolchains_report(run: Run) -> None:
    result = run('print("before")\nlet xs = [1, 2]\nprint(xs[5])\n', language="swift")
    assert result.status is m.Status.ERROR and result.exit_code == 128 + 4  # SIGILL: a Swift trap
    assert result.stdout == "before\n"  # line-buffered: nothing printed before the trap is lost
    assert result.stderr == "Fatal error: Index out of range\n", result.stderr


@needs_swift
def test_swift_reads_stdin_and_imports_foundation(run: Run) -> None:
    code = (
        "import Foundation\n"
        "var lines: [String] = []\n"
        "while let line = readLine() { lines.append(line) }\n"
        'print(lines.joined(separator: "+"), String(format: "%.3f", sqrt(2.0)))\n'
    )
    result = run(code, language="swift", stdin="a\nb\n")
    assert result.status is m.Status.OK, result.stderr
    assert result.stdout == "a+b 1.414\n"


@needs_swift
def test_swift_is_detected_from_its_code(run: Run) -> None:
    result = run('struct Point { var x: Int }\nlet p = Point(x: 21)\nprint("\\(p.x * 2)")', language="auto")
    assert result.status is m.Status.OK, (result.error, result.stderr)
    assert result.language == "swift" and result.stdout == "42\n"


def test_auto_language_runs_what_it_recognises_and_refuses_to_guess(run: Run) -> None:
    result = run("#!/usr/bin/env node\nconsole.log('detected')", language="auto")
    assert result.status is m.Status.OK and result.stdout == "detected\n" and result.language == "javascript"
    assert result.findings[0].rule == "language_detected" and "shebang" in result.findings[0].message
    assert run("for i in 1 2; do echo $i; done", language="auto").stdout == "1\n2\n"
    ambiguous = run("x=1", language="auto")
    assert ambiguous.status is m.Status.REJECTED and ambiguous.error is not None
    assert ambiguous.error.field == "language" and "python or bash" in ambiguous.error.message


def test_a_pasted_code_fence_runs_as_what_it_says(run: Run) -> None:
    """A block copied from a chat, fence and all: the tag picks the runtime, the fence is not code."""
    python = run("```python\nprint(6 * 7)\n```", language="auto")
    assert python.status is m.Status.OK and python.stdout == "42\n" and python.language == "python", python.error
    assert "code fence says python" in python.findings[0].message
    node = run("```js\nconsole.log([1, 2].map(x => x * 2).join(','))\n```\n", language="javascript")
    assert node.status is m.Status.OK and node.stdout == "2,4\n", node.stderr
