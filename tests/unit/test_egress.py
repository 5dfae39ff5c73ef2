"""The egress proxy's decisions, and its HTTP handling over real unix sockets."""

from __future__ import annotations

import asyncio
import pathlib
import socket

import pytest

from protocol import messages as m
from protocol.wire import MAX_LAUNCHER_DATAGRAM, egress_codec
from supervisor.config import EgressSection
from supervisor.egress import MAX_DECISIONS, EgressConfig, Proxy, Run
from supervisor.policy.grants import matches


def proxy(tmp_path: pathlib.Path, **egress: object) -> Proxy:
    return Proxy(EgressConfig(rundir=str(tmp_path), egress=EgressSection(**egress), broker_uid=0))  # type: ignore[arg-type]


def decide(p: Proxy, allow: list[str], host: str, port: int = 443) -> tuple[str | None, str]:
    return asyncio.run(p.decide(Run("r", allow, ""), host, port))


def test_patterns() -> None:
    assert matches("example.com", "EXAMPLE.com.")
    assert matches("*.example.com", "api.example.com")
    assert not matches("*.example.com", "example.com")
    assert not matches("*.example.com", "evilexample.com")
    assert not matches("example.com", "api.example.com")


def test_deny_beats_allow_and_names_must_be_granted(tmp_path: pathlib.Path) -> None:
    public = "93.184.216.34"
    p = proxy(tmp_path, deny=["*.corp.example"], resolve={"a.corp.example": public, "ok.test": public})
    assert decide(p, ["*.corp.example"], "a.corp.example") == (None, "denied by the operator")
    assert decide(p, ["ok.test"], "ok.test") == ("93.184.216.34", "granted")
    assert decide(p, ["ok.test"], "other.test")[1] == "not granted to this run"


def test_ip_literals_only_when_granted_by_that_address(tmp_path: pathlib.Path) -> None:
    p = proxy(tmp_path, allow_targets=["127.0.0.1:80"])
    address, reason = decide(p, ["example.com"], "93.184.216.34")
    assert address is None and "IP address" in reason
    # A permitted target does not make an ungranted literal reachable.
    assert decide(p, ["example.com"], "127.0.0.1", 80)[0] is None
    assert decide(p, ["93.184.216.34"], "93.184.216.34") == ("93.184.216.34", "granted by address")
    assert decide(p, ["example.com"], "::1")[0] is None


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.169.254", "::1", "fc00::1"])
def test_names_resolving_to_non_public_addresses_are_refused(tmp_path: pathlib.Path, address: str) -> None:
    p = proxy(tmp_path, resolve={"rebind.test": address})
    target, reason = decide(p, ["rebind.test"], "rebind.test", 80)
    assert target is None and "DNS rebinding" in reason


def test_real_resolution_of_localhost_is_refused(tmp_path: pathlib.Path) -> None:
    try:
        socket.getaddrinfo("localhost", 80)
    except OSError:
        pytest.skip("this host cannot resolve localhost")
    target, reason = decide(proxy(tmp_path), ["localhost"], "localhost", 80)
    assert target is None and "non-public" in reason


def test_permitted_targets_open_exactly_that_address_and_port(tmp_path: pathlib.Path) -> None:
    p = proxy(tmp_path, resolve={"svc.test": "127.0.0.1"}, allow_targets=["127.0.0.1:8080"])
    assert decide(p, ["svc.test"], "svc.test", 8080) == ("127.0.0.1", "granted")
    assert decide(p, ["svc.test"], "svc.test", 8081)[0] is None


def test_malformed_and_oversized_requests_get_an_answer(tmp_path: pathlib.Path) -> None:
    async def scenario() -> list[bytes]:
        p = proxy(tmp_path)
        (tmp_path / "egress").mkdir()
        path = await p.open("r1", ["example.com"])
        answers = []
        for request in (
            b"garbage\r\n\r\n",
            b"GET /relative HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:notaport HTTP/1.1\r\n\r\n",
            b"CONNECT 10.0.0.1:22 HTTP/1.1\r\n\r\n",
            b"GET http://x.test/ HTTP/1.1\r\n" + b"A: " + b"x" * 20000 + b"\r\n\r\n",
        ):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(request)
            answers.append(await reader.read())
            writer.close()
        decisions = await p.close("r1")
        # A head over the limit names no host the record could trust: the cut-off is recorded without one.
        assert [(d.host, d.allowed) for d in decisions] == [("10.0.0.1", False), ("", False)]
        return answers

    answers = asyncio.run(scenario())
    assert [a.split(b" ", 2)[1] for a in answers] == [b"400", b"400", b"400", b"403", b"431"]


def ask(tmp_path: pathlib.Path, requests: list[bytes], **egress: object) -> tuple[list[bytes], list[object]]:
    """Send each request to a fresh run's socket; the answers and the decisions."""

    async def scenario() -> tuple[list[bytes], list[object]]:
        p = proxy(tmp_path, **egress)
        (tmp_path / "egress").mkdir(exist_ok=True)
        path = await p.open("r1", ["*.example.com", "10.0.0.1"])
        answers = []
        for request in requests:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(request)
            answers.append(await reader.read())
            writer.close()
        return answers, list(await p.close("r1"))

    return asyncio.run(scenario())


def test_names_a_resolver_could_rewrite_are_refused_before_any_check(tmp_path: pathlib.Path) -> None:
    # A soft hyphen or a sharp s survives matching but IDNA would fold it into
    # the denied name: only plain ASCII names are taken at all.
    answers, decisions = ask(
        tmp_path,
        [
            "CONNECT sec\xadret.example.com:443 HTTP/1.1\r\n\r\n".encode("latin-1"),
            "CONNECT gro\xdfe.example.com:443 HTTP/1.1\r\n\r\n".encode("latin-1"),
            b"CONNECT " + b"a." * 200 + b"example.com:443 HTTP/1.1\r\n\r\n",
            b"GET http://x.example.com:99999/ HTTP/1.1\r\n\r\n",
            b"CONNECT x.example.com:0 HTTP/1.1\r\n\r\n",
        ],
        deny=["secret.example.com"],
    )
    assert [a.split(b" ", 2)[1] for a in answers] == [b"400"] * 5
    assert decisions == []  # nothing the code chose got into the record


def test_deny_list_covers_addresses_too(tmp_path: pathlib.Path) -> None:
    answers, decisions = ask(tmp_path, [b"CONNECT 10.0.0.1:22 HTTP/1.1\r\n\r\n"], deny=["10.0.0.1"])
    assert answers[0].startswith(b"HTTP/1.1 403") and b"denied by the operator" in answers[0]
    assert [(d.host, d.allowed) for d in decisions] == [("10.0.0.1", False)]  # type: ignore[attr-defined]


def test_permitted_ipv6_targets_match_in_any_spelling(tmp_path: pathlib.Path) -> None:
    p = proxy(tmp_path, resolve={"v6.test": "0:0:0:0:0:0:0:1"}, allow_targets=["[::1]:8080"])
    assert decide(p, ["v6.test"], "v6.test", 8080) == ("::1", "granted")


def test_a_full_record_counts_the_rest_and_still_fits_one_datagram() -> None:
    run = Run("r", [], "")
    long_host = ("a" * 62 + ".") * 3 + "a" * 60  # 249 characters, as long as _host lets through
    for i in range(MAX_DECISIONS + 20):
        why = f"resolves to a non-public address (ffff:ffff:ffff:ffff:ffff:ffff:ffff:{i:x}: {'x' * 60}); refused"
        run.decided(long_host, 65535, False, why)
    decisions = run.decisions()
    assert len(decisions) == MAX_DECISIONS
    assert decisions[-1].host == "" and decisions[-1].count == 21 and "not recorded" in decisions[-1].reason
    report = m.EgressReport(run="r" * 32, decisions=decisions)
    assert len(egress_codec().encode_datagram(report)) <= MAX_LAUNCHER_DATAGRAM
