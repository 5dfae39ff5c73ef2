"""What a new user hit, each as they hit it: the README's snippet, the CLI with bad
numbers or a conversation, a service that is not running, a rate limit, a bad grant,
a request over the frame cap, and a bad field's reply."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Callable

import msgspec
import pytest
import zmq

from protocol import messages as m
from protocol.client import Client, ServiceError
from protocol.wire import MAX_CLIENT_FRAME, VERSION, client_codec
from tests.conftest import Service

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def cli(*args: str, stdin: str = "", cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_the_readme_host_app_snippet_imports_from_any_directory(tmp_path: pathlib.Path) -> None:
    if not VENV_PYTHON.exists():
        pytest.skip("no project venv (make setup) to check the snippet in")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    snippet = "from protocol.client import Client\nfrom protocol import messages as m\nprint(Client, m.Limits)"
    done = subprocess.run([VENV_PYTHON, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("flag", ["--timeout", "--memory"])
@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_cli_refuses_a_non_positive_limit_itself(flag: str, value: str) -> None:
    done = cli("run", flag, value, "-", stdin="print(1)")
    assert done.returncode == 2 and f"argument {flag}" in done.stderr, done.stderr
    assert "more than 0" in done.stderr or "not a number" in done.stderr


def test_a_conversation_scoped_grant_is_usable_from_the_cli(service: Service) -> None:
    socket = service.socket
    assert cli("grant", "conv-user", "limits:timeout_ms", "--conversation", "c1", "--socket", socket).returncode == 0
    common = ("--client-id", "conv-user", "--timeout", "20", "--socket", socket, "--json", "-")
    inside = msgspec.json.decode(cli("run", "--conversation", "c1", *common, stdin="print('in c1')").stdout)
    outside = msgspec.json.decode(cli("run", "--conversation", "c2", *common, stdin="print('in c2')").stdout)
    assert inside["status"] == "ok" and inside["stdout"] == "in c1\n", inside
    assert outside["status"] == "permission_required" and "--conversation c2" in outside["error"]["message"]


def test_status_without_a_service_says_how_to_start_one(tmp_path: pathlib.Path) -> None:
    done = cli("status", "--socket", str(tmp_path / "nothing.sock"))
    assert done.returncode == 1
    assert "no cellblock service answers" in done.stderr and "cellblock serve" in done.stderr, done.stderr


def test_a_rate_limit_refusal_names_the_setting_that_raises_it(service_factory: Callable[..., Service]) -> None:
    service = service_factory(pool=1, policy="rate_per_minute = 1\nconcurrency = 5\n")
    with service.client() as client:
        assert client.execute("print(1)", client_id="eager").status is m.Status.OK
        refused = client.execute("print(2)", client_id="eager")
    assert refused.status is m.Status.RATE_LIMITED and refused.error is not None
    assert "[policy] rate_per_minute" in refused.error.message, refused.error.message


def test_a_bad_grant_is_the_clients_error_not_an_internal_one(service: Service, client: Client) -> None:
    before = service.status().counters
    with pytest.raises(ServiceError) as raised:  # this service names no grant roots
        client.grant("x", m.Capability(m.CapabilityKind.FS_READ, "/etc"))
    assert raised.value.error.code == "invalid_request" and "grant_roots" in raised.value.error.message
    after = service.status().counters
    assert after.get("internal_error", 0) == before.get("internal_error", 0)
    assert after.get("client_error_invalid_request", 0) == before.get("client_error_invalid_request", 0) + 1


def test_a_request_over_the_frame_cap_is_too_large_not_a_lost_service(client: Client) -> None:
    result = client.execute("#" * (MAX_CLIENT_FRAME + 10))
    assert result.status is m.Status.REJECTED and result.error is not None
    assert result.error.code == "too_large" and str(MAX_CLIENT_FRAME) in result.error.message, result.error
    assert client.execute("print('still')").stdout == "still\n"


def test_a_bad_field_is_answered_under_the_requests_own_id(service: Service, client: Client) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 5000
    try:
        sock.connect(f"ipc://{service.socket}")
        body = msgspec.msgpack.encode({"type": "execute", "id": "mine-42", "code": "1", "limits": {"timeout_ms": -5}})
        sock.send_multipart([VERSION, body])
        reply = client_codec().decode(sock.recv_multipart())
    finally:
        sock.close()
        ctx.term()
    assert isinstance(reply, m.ErrorReply) and reply.id == "mine-42", reply
    assert reply.error.code == "bad_message" and reply.error.field == "limits.timeout_ms"
    # And through protocol.client: a refusal with the reason, never a lost connection.
    refused = client.execute("print(1)", limits=m.Limits(timeout_ms=-5))
    assert refused.status is m.Status.REJECTED and refused.error is not None
    assert refused.error.code == "bad_message" and "limits.timeout_ms" in refused.error.field


def test_which_finds_the_shell_tools(client: Client) -> None:
    result = client.execute(textwrap.dedent("which ls sort; which python3 || echo none"), "bash")
    assert result.stdout == "/usr/bin/ls\n/usr/bin/sort\nnone\n", (result.stdout, result.stderr)


def test_doctor_says_where_a_swift_toolchain_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.tools import doctor

    monkeypatch.setattr(doctor, "find_frontend", lambda: None)
    (row,) = [r for r in doctor.checks() if r[0] == "swift"]
    assert row[1] == doctor.WARN and "swift.org" in row[3] and "/opt/swift" in row[3], row
