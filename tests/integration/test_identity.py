"""Who a client is comes from the kernel, not from what it says (root mode, two real uids).

The service (root mode) lets a group reach its client socket
(``[service] client_group``). Root is trusted: its requests are keyed by the
``client_id`` they name, and it grants. A client running as uid 65534 in that
group is not: whatever id it names, it is ``uid:65534``, with that key's rate
limit and no one else's grants, and it cannot grant itself anything. Its
part runs in a child process under ``setpriv``; the history records both uids.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from protocol import messages as m
from tests.conftest import ROOT, Service

pytestmark = pytest.mark.skipif(
    not ROOT or shutil.which("setpriv") is None, reason="two real uids need root (and setpriv) to make the second"
)

K = m.CapabilityKind
OTHER_UID = 65534
CLIENTS_GID = 4242  # no such group needs to exist: setpriv gives it by number
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MORE_TIME = m.Limits(timeout_ms=20_000)  # above the default 10 s: needs limits:timeout_ms

OTHER = """
    import json, sys
    from protocol import messages as m
    from protocol.client import Client, ServiceError

    out = {}
    with Client(sys.argv[1]) as client:
        claimed = client.execute("print(1)", client_id="my-app", limits=m.Limits(timeout_ms=20_000))
        out["claimed"] = [claimed.status.value, claimed.error.message if claimed.error else ""]
        out["fresh_ids"] = [client.execute("print(1)", client_id=f"fresh-{i}").status.value for i in range(4)]
        try:
            client.grant("uid:65534", m.Capability(m.CapabilityKind.LIMITS, "timeout_ms"))
            out["grant"] = "granted"
        except ServiceError as exc:
            out["grant"] = exc.error.code.value
        out["grants"] = [g.client_id for g in client.grants("my-app").grants]
        out["history"] = sorted({e.client_id for e in client.history(limit=100).entries})
    print(json.dumps(out))
"""


def as_other_uid(socket: str, code: str, groups: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={OTHER_UID}",
            f"--regid={OTHER_UID}",
            *(["--groups", groups] if groups else ["--clear-groups"]),
            sys.executable,
            "-c",
            textwrap.dedent(code),
            socket,
        ],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": PROJECT, "HOME": "/"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def shared(service_factory: Callable[..., Service]) -> Service:
    return service_factory(
        pool=2,
        service=f'client_group = "{CLIENTS_GID}"',
        policy='rate_per_minute = 3\nconcurrency = 10\n\n[policy.clients."my-app"]\nrate_per_minute = 1000\n',
    )


def test_a_client_claiming_another_id_gets_its_own_uids_limits_not_the_others_grants(shared: Service) -> None:
    with shared.client() as root:
        root.grant("my-app", m.Capability(K.LIMITS, "timeout_ms"))
        mine = root.execute("print(1)", client_id="my-app", limits=MORE_TIME)
        assert mine.status is m.Status.OK, mine  # root is trusted: "my-app" and its grant
    other = as_other_uid(shared.socket, OTHER, str(CLIENTS_GID))
    assert other.returncode == 0, other.stderr
    seen = json.loads(other.stdout)
    # "my-app"'s grant does not follow the name: the request is uid 65534's, which holds none.
    status, message = seen["claimed"]
    assert status == m.Status.PERMISSION_REQUIRED.value, seen
    assert "'uid:65534'" in message, seen
    # Nor does "my-app"'s rate (1000 a minute), nor a fresh id per request: uid 65534 has 3.
    assert seen["fresh_ids"] == ["ok", "ok", "ok", "rate_limited"], seen
    assert seen["grant"] == "permission_required", seen  # it cannot grant itself either
    assert seen["grants"] == [], seen  # asked for my-app's grants: gets only its own (none)
    assert seen["history"] == ["uid:65534"], seen
    with shared.client() as root:
        still = root.execute("print(1)", client_id="my-app", limits=MORE_TIME)
        assert still.status is m.Status.OK, still  # my-app's own rate and grant are untouched
        runs = root.history(limit=100).entries
    uids = {(e.client_id, e.uid) for e in runs}
    assert ("my-app", 0) in uids and ("uid:65534", OTHER_UID) in uids, uids
    assert {uid for client_id, uid in uids if client_id.startswith("uid:")} == {OTHER_UID}, uids


def test_a_uid_outside_the_client_group_cannot_connect(shared: Service) -> None:
    probe = """
        import socket, sys
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sys.argv[1])
            print("connected")
        except OSError as exc:
            print(type(exc).__name__)
    """
    assert as_other_uid(shared.socket, probe, "").stdout.strip() == "PermissionError"
    assert as_other_uid(shared.socket, probe, str(CLIENTS_GID)).stdout.strip() == "connected"
