"""The ``cellblock`` verbs a user types (run, grant, grants, revoke, history,
export, doctor), as commands against a running test service: what they print,
and the exit codes scripts rely on."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import subprocess
import sys
import time

import msgspec
import pytest

from protocol import messages as m
from tests.conftest import Service

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]


def cellblock(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``cellblock ARGS`` as a shell runs it (the wrapper runs ``python -m supervisor.tools.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def on(service: Service) -> list[str]:
    return ["--socket", service.socket]


def summary(proc: subprocess.CompletedProcess[str]) -> str:
    """The ``[cellblock] status=...`` line run prints on stderr."""
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("[cellblock] ")]
    return line


# --- run -------------------------------------------------------------------------------------


def test_run_a_file_passes_its_output_and_exit_code(tmp_path: pathlib.Path, on: list[str]) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('hello from a file')\nprint('to stderr', file=sys.stderr)\nsys.exit(3)\n")
    proc = cellblock("run", str(script), *on)
    assert proc.returncode == 3, proc
    assert proc.stdout == "hello from a file\n"
    assert proc.stderr.startswith("to stderr\n")
    measures = r"wall=[\d.]+ms cpu=[\d.]+ms mem=[\d.]+MiB"
    assert re.fullmatch(rf"\[cellblock\] status=error exit=3 reason='exit code 3' {measures}", summary(proc))
    ok = cellblock("run", str(ROOT / "examples" / "hello.py"), *on)
    assert ok.returncode == 0 and ok.stdout.startswith("hello from cellblock\n"), ok
    assert summary(ok).startswith("[cellblock] status=ok exit=0 ")


def test_run_picks_the_language_from_the_extension_or_the_flag(tmp_path: pathlib.Path, on: list[str]) -> None:
    script = tmp_path / "hello.js"
    script.write_text("console.log('from node', 6 * 7)\n")
    assert cellblock("run", str(script), *on).stdout == "from node 42\n"
    proc = cellblock("run", "-", "--language", "bash", *on, stdin="echo from bash on stdin\n")
    assert proc.returncode == 0 and proc.stdout == "from bash on stdin\n", proc


def test_run_feeds_stdin_from_a_file(tmp_path: pathlib.Path, on: list[str]) -> None:
    (tmp_path / "input.txt").write_text("one\ntwo\nthree\n")
    code = "import sys; print(len(sys.stdin.readlines()))"
    proc = cellblock("run", "-", "-l", "python", "--stdin", str(tmp_path / "input.txt"), *on, stdin=code)
    assert proc.stdout == "3\n", proc


def test_run_timeout_exits_124(on: list[str]) -> None:
    proc = cellblock("run", "-", "-l", "python", "--timeout", "1", *on, stdin="while True: pass\n")
    assert proc.returncode == 124, proc
    assert "status=timeout" in summary(proc) and "reason='wall clock limit of 1000 ms'" in summary(proc)


def test_run_refused_exits_70_and_says_what_to_grant(on: list[str]) -> None:
    refused = ["--memory", "512", "--client-id", "cli-refused"]
    proc = cellblock("run", "-", "-l", "python", *refused, *on, stdin="print(1)\n")
    assert proc.returncode == 70 and proc.stdout == "", proc
    line = summary(proc)
    assert "status=permission_required" in line and "error=permission_required" in line
    assert "cellblock grant cli-refused limits:memory_bytes" in line


def test_run_without_a_service_exits_70(tmp_path: pathlib.Path) -> None:
    proc = cellblock("run", "-", "-l", "python", "--socket", str(tmp_path / "nothing.sock"), stdin="print(1)\n")
    assert proc.returncode == 70, proc
    assert proc.stderr == f"cellblock: no service answers on {tmp_path / 'nothing.sock'}\n"


# --- grant, grants, revoke -----------------------------------------------------------------------


def _grant_id(stdout: str, client: str, capability: str) -> int:
    match = re.search(rf"^#(\d+)  {client}  {re.escape(capability)}", stdout, re.MULTILINE)
    assert match, stdout
    return int(match.group(1))


def test_grant_lets_a_run_ask_for_more_then_revoke_takes_it_back(on: list[str]) -> None:
    big = ["run", "-", "-l", "python", "--memory", "512", "--client-id", "cli-granted", *on]
    assert cellblock(*big, stdin="print('big')\n").returncode == 70
    granted = cellblock("grant", "cli-granted", "limits:memory_bytes", *on)
    assert granted.returncode == 0, granted
    grant_id = _grant_id(granted.stdout, "cli-granted", "limits:memory_bytes")
    proc = cellblock(*big, stdin="print('big')\n")
    assert proc.returncode == 0 and proc.stdout == "big\n", proc
    listed = cellblock("grants", "cli-granted", *on)
    assert listed.returncode == 0 and _grant_id(listed.stdout, "cli-granted", "limits:memory_bytes") == grant_id
    revoked = cellblock("revoke", str(grant_id), *on)
    assert revoked.returncode == 0 and revoked.stdout == f"revoked #{grant_id}\n", revoked
    assert cellblock("grants", "cli-granted", *on).stdout == "no grants\n"
    assert cellblock(*big, stdin="print('big')\n").returncode == 70
    again = cellblock("revoke", str(grant_id), *on)
    assert again.returncode == 1 and again.stderr.startswith("cellblock: not_found: "), again


def test_grant_with_expires_runs_out(on: list[str]) -> None:
    big = ["run", "-", "-l", "python", "--memory", "512", "--client-id", "cli-expiring", *on]
    granted = cellblock("grant", "cli-expiring", "limits:memory_bytes", "--conversation", "c9", "--expires", "3", *on)
    assert granted.returncode == 0, granted
    expires = r"expires \d{4}-\d\d-\d\d \d\d:\d\d$"
    assert re.search(rf"  cli-expiring conversation c9  limits:memory_bytes {expires}", granted.stdout), granted.stdout
    listed = cellblock("grants", "cli-expiring", "--json", *on)
    (grant,) = msgspec.json.decode(listed.stdout, type=m.GrantsReply).grants
    assert grant.conversation_id == "c9" and grant.expires is not None and 0 < grant.expires - time.time() <= 3
    time.sleep(max(0.0, grant.expires - time.time()) + 0.5)
    assert cellblock("grants", "cli-expiring", *on).stdout == "no grants\n"
    assert cellblock(*big, stdin="print('big')\n").returncode == 70


def test_grant_names_a_bad_capability(on: list[str]) -> None:
    proc = cellblock("grant", "someone", "memory_bytes", *on)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "a capability is KIND:TARGET, e.g. net:example.com or limits:memory_bytes" in proc.stderr
    proc = cellblock("grant", "someone", "root:everything", *on)
    assert proc.returncode == 2 and "KIND one of fs_read, fs_write, net, limits" in proc.stderr


# --- history ---------------------------------------------------------------------------------


def test_history_shows_runs_without_their_code_or_output(on: list[str]) -> None:
    code = "print('the output of a secret run')\n"
    run = ["run", "-", "-l", "python", "--client-id", "cli-history", *on]
    assert cellblock(*run, stdin=code).returncode == 0
    assert cellblock(*run, stdin="raise SystemExit(4)\n").returncode == 4
    proc = cellblock("history", "--client", "cli-history", *on)
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    sha = hashlib.sha256(code.encode()).hexdigest()[:12]
    ok = rf"  cli-history +python +ok +exit 0  [\d.]+ms  {len(code)}B sha256:{sha}"
    assert any(re.search(ok, line) for line in lines), lines
    assert any(re.search(r"  cli-history +python +error +exit 4  ", line) for line in lines), lines
    assert "secret run" not in proc.stdout and "SystemExit" not in proc.stdout
    errors = cellblock("history", "--client", "cli-history", "--status", "error", "--json", *on)
    (entry,) = msgspec.json.decode(errors.stdout, type=m.HistoryReply).entries
    assert entry.exit_code == 4 and entry.client_id == "cli-history"
    assert cellblock("history", "--client", "nobody-ran-anything", *on).stdout == "no runs recorded\n"


# --- export ----------------------------------------------------------------------------------


def test_export_a_saved_result_as_markdown_or_json(tmp_path: pathlib.Path, on: list[str]) -> None:
    saved = cellblock("run", "-", "-l", "python", "--json", *on, stdin="print('a result worth keeping')\n")
    assert saved.returncode == 0, saved
    result = msgspec.json.decode(saved.stdout, type=m.ExecuteResult)
    assert result.stdout == "a result worth keeping\n"
    (tmp_path / "result.json").write_text(saved.stdout)
    markdown = cellblock("export", str(tmp_path / "result.json"))
    assert markdown.returncode == 0, markdown
    assert markdown.stdout.startswith(f"## cellblock run {result.run_id}\n\n- status: **ok** (exit 0)\n")
    assert "\n### stdout\n\n```\na result worth keeping\n```\n" in markdown.stdout
    as_json = cellblock("export", "-", "--format", "json", "-o", str(tmp_path / "again.json"), stdin=saved.stdout)
    assert as_json.returncode == 0 and as_json.stdout == ""
    assert msgspec.json.decode((tmp_path / "again.json").read_bytes(), type=m.ExecuteResult) == result
    (tmp_path / "not-a-result.txt").write_text("hello\n")
    bad = cellblock("export", str(tmp_path / "not-a-result.txt"))
    assert bad.returncode == 2 and "is not a saved result" in bad.stderr, bad


# --- doctor ----------------------------------------------------------------------------------


def test_doctor_reports_the_host_and_the_running_service(service: Service, on: list[str]) -> None:
    proc = cellblock("doctor", *on)
    assert proc.returncode == 0, proc  # nothing this host needs is missing
    assert "MISSING" not in proc.stdout
    rows = {line[10:].split()[0]: line[:9] for line in proc.stdout.splitlines() if line.startswith("[")}
    for layer in ("mode", "namespaces", "seccomp", "privileges"):
        assert rows[layer] == "[  ok   ]", proc.stdout
    assert "[  ok   ] runtime python: offered" in proc.stdout
    offered = {rt.name for rt in service.status().runtimes if rt.offered}
    for name in offered:
        assert f"runtime {name}: offered" in proc.stdout


def test_doctor_says_when_no_service_runs(tmp_path: pathlib.Path) -> None:
    proc = cellblock("doctor", "--socket", str(tmp_path / "nothing.sock"))
    assert proc.returncode == 0, proc
    assert f"[  info ] service  not running on {tmp_path / 'nothing.sock'}" in proc.stdout
