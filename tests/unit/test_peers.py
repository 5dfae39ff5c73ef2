"""Client identity from the kernel, on the policy's side: keys, admin requests, history's uid
(the routing ids here are what the client socket's router makes; tests/integration/test_identity.py
runs two real uids against a service)."""

from __future__ import annotations

import pathlib
import sqlite3
import time

import msgspec
import pytest

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode
from protocol.profile import ConfigError, Profile
from protocol.zmtp import routing_id
from supervisor.config import Config, PolicySection, load_config
from supervisor.policy import Admitted, Policy, Refused
from supervisor.policy.store import SCHEMA, Store
from tests.unit.test_history_paging import entry

SERVICE_UID = 1000
LIMITS = m.Capability(m.CapabilityKind.LIMITS, "memory_bytes")


def conn(uid: int, name: bytes = b"c") -> str:
    return routing_id(uid, name).hex()


@pytest.fixture
def policy(tmp_path: pathlib.Path) -> Policy:
    config = Config(policy=PolicySection(trusted_uids=[2000]))
    return Policy(config, Profile(), str(tmp_path), time.time, service_uid=SERVICE_UID)


def test_only_trusted_uids_name_their_client(policy: Policy) -> None:
    request = m.ExecuteRequest(id="1", code="print(1)", client_id="my-app")
    assert policy.client_key(conn(0), request) == "my-app"  # root
    assert policy.client_key(conn(SERVICE_UID), request) == "my-app"  # the uid that started the service
    assert policy.client_key(conn(2000), request) == "my-app"  # [policy] trusted_uids
    assert policy.client_key(conn(1234), request) == "uid:1234"  # anyone else: its uid, whatever it names
    anonymous = m.ExecuteRequest(id="1", code="print(1)")
    assert policy.client_key(conn(SERVICE_UID), anonymous) == f"conn:{conn(SERVICE_UID)}"
    assert policy.client_key(conn(1234), anonymous) == "uid:1234"
    assert policy.client_key("not-a-routing-id", request) == "uid:unknown"  # fail closed


def test_another_uids_claim_gets_its_own_key_not_the_grant(policy: Policy) -> None:
    policy.admin(m.GrantRequest(id="g", client_id="my-app", capability=LIMITS), conn(SERVICE_UID))
    request = m.ExecuteRequest(id="1", code="print(1)", client_id="my-app", limits=m.Limits(memory_bytes=512 << 20))
    assert isinstance(policy.admit(conn(SERVICE_UID), request, lambda r: ("python", None)), Admitted)
    refused = policy.admit(conn(1234), request, lambda r: ("python", None))
    assert isinstance(refused, Refused) and refused.client_key == "uid:1234"
    assert refused.result.status is m.Status.PERMISSION_REQUIRED


def test_an_untrusted_uid_cannot_grant_and_reads_only_its_own(policy: Policy) -> None:
    policy.admin(m.GrantRequest(id="g", client_id="my-app", capability=LIMITS), conn(0))
    policy.admin(m.GrantRequest(id="g", client_id="uid:1234", capability=LIMITS), conn(0))
    for request in (
        m.GrantRequest(id="g", client_id="uid:1234", capability=LIMITS),
        m.RevokeRequest(id="r", grant_id=1),
    ):
        with pytest.raises(CellblockError) as exc:
            policy.admin(request, conn(1234))
        assert exc.value.code is ErrorCode.PERMISSION_REQUIRED and "uid 1234" in exc.value.message
    own = policy.admin(m.GrantsRequest(id="q", client_id="my-app"), conn(1234))
    assert isinstance(own, m.GrantsReply) and [g.client_id for g in own.grants] == ["uid:1234"]
    everyone = policy.admin(m.GrantsRequest(id="q"), conn(SERVICE_UID))
    assert isinstance(everyone, m.GrantsReply) and len(everyone.grants) == 2


OLD_JSON = ("{}", "[]", "[]", "[]")  # redactions, findings, capabilities, network


def test_history_records_the_uid_also_in_a_database_from_before_the_column(tmp_path: pathlib.Path) -> None:
    db = sqlite3.connect(tmp_path / "cellblock.sqlite")
    db.executescript(SCHEMA)  # the first schema: no uid column
    db.execute(
        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ("old", time.time() - 5, time.time(), "c", "", "python", 1, "0" * 64, "ok", 0, *(1.0, 1.0, 1, 0, 0), *OLD_JSON),
    )
    db.commit()
    db.close()
    store = Store(str(tmp_path), time.time, 30, 1000)
    store.record(msgspec.structs.replace(entry(1), run_id="new", uid=1234, started=time.time()))
    entries = {e.run_id: e.uid for e in store.history(m.HistoryRequest(id="h"))}
    assert entries == {"old": None, "new": 1234}
    store.close()
    Store(str(tmp_path), time.time, 30, 1000).close()  # opened again: the column is there already


def test_config_client_group_and_trusted_uids(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[service]\nclient_group = "*"\n[policy]\ntrusted_uids = [1000, 1001]\n')
    config = load_config(str(path))
    assert config.service.client_group == "*" and config.policy.trusted_uids == [1000, 1001]
    path.write_text('[service]\nclient_group = "no-such-group-here"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    assert "client_group" in str(exc.value)
