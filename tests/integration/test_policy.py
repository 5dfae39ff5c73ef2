"""Broker policy against the real service: rate and concurrency limits, grants,
redaction (also across streamed chunks), findings, history, config errors."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from protocol import messages as m
from protocol.client import Client, ServiceError
from tests.conftest import Service

pytestmark = pytest.mark.integration
K = m.CapabilityKind
AWS = "AKIAIOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = (
    "-----BEGIN EC PRIVATE KEY-----\\n"
    "MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5owPLRsQmcv1xoAoGCCqGSM49\\n"
    "-----END EC PRIVATE KEY-----"
)


@pytest.fixture(scope="module")
def limited(service_factory: Callable[..., Service]) -> Service:
    """The default policy: 10 runs a minute and 3 at once per client, waiting past 3."""
    return service_factory(pool=2, policy='rate_per_minute = 10\nconcurrency = 3\nover_concurrency = "wait"\n')


def test_eleventh_run_in_a_minute_is_rate_limited_while_others_are_served(limited: Service) -> None:
    with limited.client() as client:
        statuses = [client.execute("print(1)", client_id="greedy").status for _ in range(10)]
        assert statuses == [m.Status.OK] * 10
        eleventh = client.execute("print(1)", client_id="greedy")
        assert eleventh.status is m.Status.RATE_LIMITED
        assert eleventh.retry_after_s is not None and 0 < eleventh.retry_after_s <= 60
        assert eleventh.error is not None and "greedy" in eleventh.error.message
        other = client.execute("print('served')", client_id="polite")
        assert other.status is m.Status.OK and other.stdout == "served\n"


def test_fourth_concurrent_run_waits_its_turn(limited: Service) -> None:
    results: list[tuple[float, m.ExecuteResult]] = []
    started = time.monotonic()

    def one() -> None:
        with limited.client() as client:
            result = client.execute("import time; time.sleep(0.6); print('done')", client_id="patient")
            results.append((time.monotonic() - started, result))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status for _, r in results] == [m.Status.OK] * 4
    times = sorted(t for t, _ in results)
    assert times[3] >= 1.1  # the fourth started only when one of the first three ended


def test_fourth_concurrent_run_is_refused_when_configured(service_factory: Callable[..., Service]) -> None:
    svc = service_factory(pool=4, policy='rate_per_minute = 100\nconcurrency = 3\nover_concurrency = "refuse"\n')
    results: list[m.ExecuteResult] = []

    def one() -> None:
        with svc.client() as client:
            results.append(client.execute("import time; time.sleep(1)", client_id="eager"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(30)
    statuses = sorted(r.status.value for r in results)
    assert statuses == ["ok", "ok", "ok", "rate_limited"]
    svc.stop()


def test_secrets_are_redacted_in_stdout_stderr_and_across_chunks(client: Client) -> None:
    # The JWT's first half goes out in one write with the line before it, its
    # second half 1.5 s later in another: the broker gets them in chunks of
    # their own (a pipe read takes a small write whole), and must hold the
    # first half back until the rest of its line comes.
    code = f"""
import sys, time
print("aws {AWS}")
print("gh {GITHUB}", file=sys.stderr)
print("{PEM}")
sys.stdout.write("before the split\\njwt {JWT[:30]}"); sys.stdout.flush()
time.sleep(1.5)
sys.stdout.write("{JWT[30:]} end\\n"); sys.stdout.flush()
"""
    chunks: list[tuple[float, m.OutputChunk]] = []
    result = client.execute(code, on_chunk=lambda c: chunks.append((time.monotonic(), c)))
    streamed = "".join(c.data for _, c in chunks if c.stream == "stdout")
    everything = result.stdout + result.stderr + "".join(c.data for _, c in chunks)
    for secret in (AWS, GITHUB, JWT, "MHcCAQEEIBkg4LVWM9", JWT[:30], JWT[30:]):
        assert secret not in everything
    assert "[REDACTED:jwt] end" in result.stdout and "[REDACTED:jwt] end" in streamed
    assert "[REDACTED:aws_access_key]" in streamed and "[REDACTED:private_key]" in result.stdout
    assert "[REDACTED:github_token]" in result.stderr
    assert result.redactions == {"aws_access_key": 1, "github_token": 1, "private_key": 1, "jwt": 1}
    # The split really happened: the line written with the first half reached
    # the client well before the rest of the token was written (a late first
    # chunk only narrows the gap, so 0.5 s leaves a busy machine 1 s), and
    # without the "jwt " that begins the held-back line.
    (before_at, before), *_ = [(t, c) for t, c in chunks if "before the split" in c.data]
    (after_at, after), *_ = [(t, c) for t, c in chunks if "[REDACTED:jwt] end" in c.data]
    assert before.data.endswith("before the split\n"), before
    assert after.seq > before.seq and after_at - before_at >= 0.5, (before_at, after_at, chunks)
    assert after.data == "jwt [REDACTED:jwt] end\n", after


def test_limits_above_default_need_a_grant_then_work(service: Service, client: Client) -> None:
    ask = m.Limits(memory_bytes=512 * 2**20)
    refused = client.execute("print('big')", limits=ask, client_id="analyst", conversation_id="c1")
    assert refused.status is m.Status.PERMISSION_REQUIRED
    assert refused.required == [m.Capability(K.LIMITS, "memory_bytes")]
    assert refused.error is not None and "limits:memory_bytes" in refused.error.message
    assert "cellblock grant analyst limits:memory_bytes --conversation c1" in refused.error.message
    reply = client.grant("analyst", m.Capability(K.LIMITS, "memory_bytes"), conversation_id="c1")
    grant_id = next(g.grant_id for g in reply.grants if g.client_id == "analyst")
    assert client.execute("print('big')", limits=ask, client_id="analyst", conversation_id="c1").stdout == "big\n"
    other = client.execute("print('big')", limits=ask, client_id="analyst", conversation_id="c2")
    assert other.status is m.Status.PERMISSION_REQUIRED  # scoped to its conversation
    client.revoke(grant_id)
    again = client.execute("print('big')", limits=ask, client_id="analyst", conversation_id="c1")
    assert again.status is m.Status.PERMISSION_REQUIRED
    with pytest.raises(ServiceError) as exc:
        client.revoke(grant_id)
    assert exc.value.error.code == "not_found"


def test_a_grant_that_expires_stops_covering(client: Client) -> None:
    ask = m.Limits(memory_bytes=512 * 2**20)
    reply = client.grant("short-lived", m.Capability(K.LIMITS, "memory_bytes"), expires_in_s=3)
    (grant,) = [g for g in reply.grants if g.client_id == "short-lived"]
    assert grant.expires is not None and 2 < grant.expires - time.time() <= 3
    # While it lasts (3 s is room enough for one run to be admitted)...
    assert client.execute("print('big')", limits=ask, client_id="short-lived").stdout == "big\n"
    time.sleep(max(0.0, grant.expires - time.time()) + 0.5)
    # ...and once it has run out: refused, and no longer listed.
    after = client.execute("print('big')", limits=ask, client_id="short-lived")
    assert after.status is m.Status.PERMISSION_REQUIRED, after
    assert after.required == [m.Capability(K.LIMITS, "memory_bytes")]
    assert client.grants("short-lived").grants == []


def test_network_capability_without_a_grant_names_what_to_grant(client: Client) -> None:
    result = client.execute("print(1)", capabilities=[m.Capability(K.NET, "api.example.com")], client_id="nonet")
    assert result.status is m.Status.PERMISSION_REQUIRED
    assert result.required == [m.Capability(K.NET, "api.example.com")]
    assert result.error is not None and "cellblock grant nonet net:api.example.com" in result.error.message


def test_path_capability_without_grant_roots_is_refused_clearly(client: Client) -> None:
    result = client.execute("print(1)", capabilities=[m.Capability(K.FS_READ, "/srv/data")])
    assert result.status is m.Status.REJECTED
    assert result.error is not None and result.error.field == "capabilities[0]"
    assert "grant_roots" in result.error.message


def test_grants_survive_a_restart(service_factory: Callable[..., Service], tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    first = service_factory(pool=1, state_dir=state)
    with first.client() as client:
        client.grant("keeper", m.Capability(K.LIMITS, "timeout_ms"))
    first.stop()
    second = service_factory(pool=1, state_dir=state)
    with second.client() as client:
        grants = client.grants("keeper").grants
        assert [g.capability for g in grants] == [m.Capability(K.LIMITS, "timeout_ms")]
        result = client.execute("print('long')", limits=m.Limits(timeout_ms=20_000), client_id="keeper")
        assert result.status is m.Status.OK
    second.stop()


def test_findings_travel_with_the_result(run: Callable[..., m.ExecuteResult]) -> None:
    result = run("import subprocess\nsubprocess.run(['true'])\nopen('/etc/hostname').read()\n")
    rules = {(f.rule, f.line) for f in result.findings}
    assert ("process_spawn", 2) in rules and ("absolute_path_read", 3) in rules


def test_history_holds_metadata_and_never_code_or_output(service_factory: Callable[..., Service]) -> None:
    svc = service_factory(pool=1)
    code_marker = "CODE-MARKER-7f3a9c"
    output_marker = "OUTPUT-MARKER-e21b44"
    with svc.client() as client:
        result = client.execute(
            f"x = '{code_marker}'\nprint('{output_marker[:7]}' + '{output_marker[7:]}')",
            client_id="auditor",
            conversation_id="conv-9",
        )
        assert result.stdout == output_marker + "\n"
        entries = client.history(client_id="auditor").entries
    (entry,) = entries
    assert entry.run_id == result.run_id and entry.status is m.Status.OK and entry.conversation_id == "conv-9"
    assert entry.code_bytes > 0 and len(entry.code_sha256) == 64
    svc.stop()
    data = b"".join(p.read_bytes() for p in (svc.directory / "state").glob("cellblock.sqlite*"))
    assert result.run_id.encode() in data  # the record is really in the file
    for marker in (code_marker, output_marker, output_marker[7:]):
        assert marker.encode() not in data


def test_bad_config_refuses_to_start_with_file_key_and_reason(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "bad.toml"

    def serve(text: str) -> subprocess.CompletedProcess[str]:
        config.write_text(text)
        command = [sys.executable, "-m", "supervisor.tools.cli", "serve", "--config", str(config)]
        return subprocess.run(
            [*command, "--runtime-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=30
        )

    proc = serve("[policy]\nrate_per_minute = 10\nconcurency = 3\n")
    assert proc.returncode == 2
    assert f"{config}: policy.concurency: unknown key" in proc.stderr
    proc = serve('[service]\nqueue_limit = "lots"\n')
    assert proc.returncode == 2 and "service.queue_limit" in proc.stderr and "Expected `int`" in proc.stderr
