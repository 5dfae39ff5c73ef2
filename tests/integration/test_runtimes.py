"""JavaScript (warm Node.js), bash and Swift through the real service."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import pytest

from protocol import messages as m
from protocol.client import Client

pytestmark = pytest.mark.integration
Run = Callable[..., m.ExecuteResult]


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
    assert result.status is m.Status.TIMEOUT and time.monotonic() - started < 2.5


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


def test_swift_is_described_when_missing(service: object) -> None:
    status = service.status()  # type: ignore[attr-defined]
    swift = {r.name: r for r in status.runtimes}["swift"]
    if shutil.which("swift") is None:
        assert not swift.offered and "no Swift toolchain" in swift.reason
    else:
        assert swift.offered


def test_swift_runs_where_a_toolchain_exists(run: Run) -> None:
    if shutil.which("swift") is None:
        pytest.skip("no Swift toolchain on this host: the adapter is exercised up to its probe only")
    result = run('print("hi from swift")', language="swift")
    assert result.status is m.Status.OK and result.stdout == "hi from swift\n"


def test_auto_language_runs_what_it_recognises_and_refuses_to_guess(run: Run) -> None:
    result = run("#!/usr/bin/env node\nconsole.log('detected')", language="auto")
    assert result.status is m.Status.OK and result.stdout == "detected\n" and result.language == "javascript"
    assert result.findings[0].rule == "language_detected" and "shebang" in result.findings[0].message
    assert run("for i in 1 2; do echo $i; done", language="auto").stdout == "1\n2\n"
    ambiguous = run("x=1", language="auto")
    assert ambiguous.status is m.Status.REJECTED and ambiguous.error is not None
    assert ambiguous.error.field == "language" and "python or bash" in ambiguous.error.message
