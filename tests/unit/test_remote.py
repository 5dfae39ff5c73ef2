"""TCP with CURVE, in parts: keys and authorized_keys, the listener's config, who a
remote request is, and what a remote client may ask of grants and history."""

from __future__ import annotations

import base64
import os
import pathlib
import stat

import pytest
import zmq
from zmq.utils import z85

from protocol import messages as m
from protocol.curve import KeyProblem, load_pair, load_public, new_pair, parse_authorized, parse_key
from protocol.errors import CellblockError, ErrorCode
from protocol.profile import ConfigError, load_profile
from protocol.wire import client_codec, peek
from protocol.zmtp import routing_id as zmtp_routing_id
from supervisor.config import load_config
from supervisor.policy import Policy, principal


def test_keys_new_writes_a_pair_libzmq_accepts_and_never_overwrites(tmp_path: pathlib.Path) -> None:
    public_path, secret_path, public = new_pair(str(tmp_path / "node"))
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert load_public(public_path) == public
    pub, secret = load_pair(secret_path)
    assert pub == public and zmq.curve_public(secret) == public
    with pytest.raises(FileExistsError):
        new_pair(str(tmp_path / "node"))
    with pytest.raises(KeyProblem, match="holds no secret key"):
        load_pair(public_path)


def test_authorized_keys_take_z85_or_base64_names_and_comments() -> None:
    pub_a, _ = zmq.curve_keypair()
    pub_b, _ = zmq.curve_keypair()
    b64 = base64.b64encode(z85.decode(pub_b)).decode()
    text = f"# clients\n\n{pub_a.decode()}  tenant-a\n{b64}\n"
    keys = parse_authorized(text)
    assert keys == {pub_a: "curve:tenant-a", pub_b: f"curve:{z85.decode(pub_b).hex()}"}
    assert parse_key(b64) == pub_b


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not-a-key", "not a CURVE key"),
        ("{key} two names", "at most one name"),
        ("{key} bad/name", "must be letters"),
    ],
)
def test_a_bad_authorized_keys_line_is_named(line: str, why: str) -> None:
    pub, _ = zmq.curve_keypair()
    with pytest.raises(KeyProblem, match=why) as exc:
        parse_authorized("# ok\n" + line.format(key=pub.decode()), "keys")
    assert str(exc.value).startswith("keys:2:")


def test_a_comment_may_follow_a_key_and_a_key_may_hold_a_hash() -> None:
    raw = bytes(28) + (84).to_bytes(4, "big")  # Z85 ends in "#" here; no key can start with it (first digit <= 82)
    key = z85.encode(raw)
    assert b"#" in key
    assert parse_authorized(f"{key.decode()} x   #rotated in May\n") == {key: "curve:x"}
    assert z85.encode(b"\xff\xff\xff\xff" + bytes(28))[:1] == b"%"  # the largest first digit: 82


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_plain_tcp_is_refused_at_load_with_the_reason(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, '[service]\nlisten = ["tcp://0.0.0.0:7878"]\n'))
    assert exc.value.key == "service.server_key"
    assert "plain TCP is refused" in exc.value.reason
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, '[service]\nlisten = ["tcp://0.0.0.0:7878"]\nserver_key = "/k"\n'))
    assert exc.value.key == "service.authorized_keys"
    for bad in ("ipc:///tmp/x", "tcp://0.0.0.0", "tcp://host:99999"):
        with pytest.raises(ConfigError) as exc:
            load_config(write(tmp_path, f'[service]\nlisten = ["{bad}"]\nserver_key = "/k"\nauthorized_keys = "/a"\n'))
        assert exc.value.key == "service.listen[0]"
    ok = '[service]\nlisten = ["tcp://0.0.0.0:7878"]\nserver_key = "/k"\nauthorized_keys = "/a"\n'
    assert load_config(write(tmp_path, ok)).service.listen == ["tcp://0.0.0.0:7878"]


RELAY_UID = 599_999  # the gateway's uid: the broker's, in root mode
OTHER_UID = 1234  # a local user client_group lets in


def via(uid: int, named: bytes) -> str:
    """A connection's hex on the client socket: the kernel's uid for it, then what it named."""
    return zmtp_routing_id(uid, named).hex()


def test_a_remote_identity_comes_from_the_gateway_routing_id_only() -> None:
    relays = {0, RELAY_UID}
    named = principal.routing_id("curve:tenant-a", b"\x00\x01\x02\x03\x04")
    assert principal.remote(via(RELAY_UID, named), relays) == "curve:tenant-a"
    assert principal.remote(via(OTHER_UID, named), relays) is None  # another local uid naming itself a key
    assert principal.remote(named.hex(), relays) is None  # no uid in front: not from the client socket
    assert principal.remote(via(RELAY_UID, b"\x00abcd"), relays) is None
    assert principal.remote(via(RELAY_UID, b"my-local-app/curve:x"), relays) is None  # a local name, not a key
    assert principal.remote(via(RELAY_UID, b"curve:"), relays) is None
    assert principal.remote("not hex", relays) is None
    assert principal.remote(via(RELAY_UID, b"curve:/x"), relays) is None


@pytest.fixture
def policy(tmp_path: pathlib.Path) -> Policy:
    return Policy(load_config(None), load_profile("default"), str(tmp_path), service_uid=0, relay_uid=RELAY_UID)


def test_a_remote_client_is_its_key_whatever_client_id_it_names(policy: Policy) -> None:
    named = principal.routing_id("curve:tenant-a", b"\x00abcd")
    request = m.ExecuteRequest(id="r", code="print(1)", client_id="operator")
    assert policy.client_key(via(RELAY_UID, named), request) == "curve:tenant-a"
    assert policy.client_key(via(0, b"\x00abcd"), request) == "operator"  # root names its client
    assert policy.client_key(via(OTHER_UID, named), request) == f"uid:{OTHER_UID}"  # not the gateway: its uid


def test_a_remote_client_cannot_grant_and_reads_only_its_own(policy: Policy) -> None:
    remote = via(RELAY_UID, principal.routing_id("curve:tenant-a", b"\x00abcd"))
    operator = via(0, b"cli")
    net = m.Capability.parse("net:example.com")
    policy.admin(m.GrantRequest(id="g", client_id="someone", capability=net), operator)
    for request in (
        m.GrantRequest(id="g2", client_id="curve:tenant-a", capability=net),
        m.RevokeRequest(id="v", grant_id=1),
    ):
        with pytest.raises(CellblockError) as exc:
            policy.admin(request, remote)
        assert exc.value.code == ErrorCode.PERMISSION_REQUIRED
    mine = policy.admin(m.GrantsRequest(id="l", client_id="someone"), remote)
    assert isinstance(mine, m.GrantsReply) and mine.grants == []
    everyone = policy.admin(m.GrantsRequest(id="l2"), operator)
    assert isinstance(everyone, m.GrantsReply) and len(everyone.grants) == 1


def test_peek_reads_tag_and_id_and_nothing_else() -> None:
    codec = client_codec()
    assert peek(codec.encode(m.OutputChunk(id="abc", stream="stdout", seq=0, data="x"))) == ("chunk", "abc")
    assert peek(codec.encode(m.ExecuteRequest(id="r1", code="x"))) == ("execute", "r1")
    assert peek([b"CB/1", b"\xc1"]) == ("", "")
    assert peek([b"XX", b""]) == ("", "")


def test_cli_keys_new_writes_a_pair_and_names_what_it_cannot_write(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from supervisor.tools.cli import main as cli

    assert cli(["keys", "new", str(tmp_path / "agent")]) == 0
    printed = capsys.readouterr()
    assert load_public(str(tmp_path / "agent.key")) == printed.out.strip().encode()
    assert cli(["keys", "new", str(tmp_path / "agent")]) == 1
    assert "exists; keys are never overwritten" in capsys.readouterr().err
    assert cli(["keys", "new", str(tmp_path / "no-such-dir" / "agent")]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "no-such-dir" in err and "No such file or directory" in err
