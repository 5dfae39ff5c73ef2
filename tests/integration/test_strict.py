"""The strict profile end to end: a service started with ``--profile strict``
has its smaller limits, no network at all, no programs started from the
code, only unix sockets and at most 16 processes. It requires cgroups: where
the service has none, it offers nothing and says why (fails closed)."""

from __future__ import annotations

import errno
import json
import textwrap
from collections.abc import Callable, Iterator

import pytest

from protocol import messages as m
from protocol.client import Client
from protocol.profile import MiB, load_profile
from tests.conftest import Service

pytestmark = pytest.mark.integration
STRICT = load_profile("strict")


@pytest.fixture(scope="module")
def strict(service_factory: Callable[..., Service]) -> Iterator[Service]:
    svc = service_factory(pool=1, profile="strict")
    yield svc
    svc.stop()


def _cgroups(svc: Service) -> m.LayerStatus:
    (layer,) = [layer for layer in svc.status().layers if layer.name == "cgroups"]
    return layer


@pytest.fixture(scope="module")
def client(strict: Service) -> Iterator[Client]:
    layer = _cgroups(strict)
    if not layer.active:
        pytest.skip(f"no cgroups for this service ({layer.detail}): strict runs nothing here, as the next test shows")
    strict.wait_warm()
    with strict.client() as c:
        yield c


def run(client: Client, code: str, **kwargs: object) -> m.ExecuteResult:
    return client.execute(textwrap.dedent(code), **kwargs)  # type: ignore[arg-type]


def test_status_names_the_profile_and_its_limits(strict: Service) -> None:
    status = strict.status()
    assert status.profile == "strict"
    assert status.limits == {
        "timeout_ms": STRICT.limits.timeout_ms,
        "cpu_ms": STRICT.limits.cpu_ms,
        "memory_bytes": STRICT.limits.memory_mb * MiB,
        "output_bytes": STRICT.limits.output_bytes,
    }
    assert status.limits["timeout_ms"] == 5000 and status.limits["memory_bytes"] == 128 * MiB
    assert status.max_limits["timeout_ms"] == STRICT.max.timeout_ms == 10_000


def test_without_cgroups_it_fails_closed(strict: Service) -> None:
    layer = _cgroups(strict)
    if layer.active:
        pytest.skip(f"this service has cgroups ({layer.detail}): strict runs, as the other tests show")
    status = strict.status()
    assert not any(rt.offered for rt in status.runtimes)
    assert all("cgroups are required by the profile" in rt.reason for rt in status.runtimes), status.runtimes
    with strict.client() as c:
        result = c.execute("print('should not run')")
    assert result.status is not m.Status.OK and result.stdout == "", result
    assert result.error is not None and result.error.code == "runtime_unavailable", result.error
    assert "cgroups are required" in result.error.message


def test_a_plain_run_works(client: Client) -> None:
    result = run(client, "print(6 * 7)")
    assert result.status is m.Status.OK and result.stdout == "42\n", result


def test_no_network_and_only_unix_sockets(client: Client) -> None:
    result = run(
        client,
        """
        import json, os, socket
        outcome = {}
        for name, family in (("inet", socket.AF_INET), ("inet6", socket.AF_INET6), ("unix", socket.AF_UNIX)):
            try:
                socket.socket(family, socket.SOCK_STREAM).close()
                outcome[name] = "ALLOWED"
            except OSError as exc:
                outcome[name] = "refused"
        outcome["interfaces up"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]
                                    if int(open(f"/sys/class/net/{l.split(':')[0].strip()}/flags").read(), 16) & 1] \
            if os.path.exists("/sys/class/net") else []
        print(json.dumps(outcome))
        """,
    )
    assert result.status is m.Status.OK, result
    assert json.loads(result.stdout) == {"inet": "refused", "inet6": "refused", "unix": "ALLOWED", "interfaces up": []}


def test_no_programs_started_from_the_code(client: Client) -> None:
    result = run(
        client,
        """
        import os, subprocess
        try:
            subprocess.run(["/usr/bin/true"])
            print("ALLOWED")
        except OSError as exc:
            print("refused", exc.errno)
        """,
    )
    assert result.status is m.Status.OK, result
    assert result.stdout == f"refused {errno.ENOSYS}\n", result  # execve is off the allowlist


def test_at_most_16_processes(client: Client) -> None:
    result = run(
        client,
        """
        import os, time
        forked, why = 0, 0
        for _ in range(40):
            try:
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                forked += 1
            except OSError as exc:
                why = exc.errno
                break
        print("FORKED", forked, why)
        """,
    )
    assert result.status is m.Status.OK, result
    _, forked, why = result.stdout.split()
    # 16 processes of the run's uid: its monitor, the payload and (at most) 14 children.
    assert STRICT.fixed.pids == 16 and 0 < int(forked) <= 14 and int(why) == errno.EAGAIN, result.stdout


def test_memory_past_128_mib_ends_as_memory_limit(client: Client) -> None:
    result = run(client, "blocks = [b'x' * (16 << 20) for _ in range(16)]\nprint('ALLOCATED 256 MiB')\n")
    assert result.status is m.Status.MEMORY_LIMIT, result
    assert "ALLOCATED" not in result.stdout
    assert result.reason == f"memory limit of {128 * MiB} bytes"


def test_output_past_4_mib_ends_as_output_limit(client: Client) -> None:
    result = run(client, "import os\nblock = b'x' * (1 << 20)\nfor _ in range(6): os.write(1, block)\n")
    assert result.status is m.Status.OUTPUT_LIMIT, result
    assert STRICT.fixed.output_kill_bytes == 4 * MiB
    assert result.stdout_truncated and len(result.stdout) <= STRICT.limits.output_bytes + 1024


def test_limits_past_its_maximum_are_refused_and_past_its_defaults_need_a_grant(client: Client) -> None:
    over_max = client.execute("print(1)", limits=m.Limits(timeout_ms=20_000))
    assert over_max.status is m.Status.REJECTED
    assert over_max.error is not None and over_max.error.field == "limits.timeout_ms"
    over_default = client.execute("print(1)", limits=m.Limits(timeout_ms=8_000), client_id="strict-user")
    assert over_default.status is m.Status.PERMISSION_REQUIRED
    assert over_default.required == [m.Capability(m.CapabilityKind.LIMITS, "timeout_ms")]
