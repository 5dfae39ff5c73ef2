"""The egress proxy's address policy, against a labelled table.

Each row is an address a granted name might resolve to (or a literal a run
might be granted by address), whether the proxy may connect to it, and what
it is. IPv4 carried inside IPv6 is judged by the IPv4 inside, so a NAT64 or
IPv4-compatible wrapping of loopback or of the metadata address is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib

import pytest

from supervisor.config import EgressSection
from supervisor.egress import EgressConfig, Proxy, Run

PUBLIC, NOT = True, False

TABLE: list[tuple[str, bool, str]] = [
    # IPv4, public
    ("93.184.216.34", PUBLIC, "a public IPv4 address"),
    ("1.1.1.1", PUBLIC, "a public resolver"),
    ("8.8.8.8", PUBLIC, "a public resolver"),
    ("100.63.255.255", PUBLIC, "just below shared address space"),
    ("100.128.0.0", PUBLIC, "just above shared address space"),
    ("198.20.0.1", PUBLIC, "just above benchmarking"),
    # IPv4, not public
    ("0.0.0.0", NOT, "this host"),
    ("0.1.2.3", NOT, "this network"),
    ("10.0.0.1", NOT, "private"),
    ("100.64.0.1", NOT, "shared address space (carrier-grade NAT)"),
    ("100.127.255.254", NOT, "shared address space, top"),
    ("127.0.0.1", NOT, "loopback"),
    ("127.255.255.254", NOT, "loopback, top"),
    ("169.254.169.254", NOT, "link-local: the cloud metadata address"),
    ("172.16.0.1", NOT, "private"),
    ("172.31.255.254", NOT, "private, top"),
    ("192.0.0.8", NOT, "IETF protocol assignments"),
    ("192.0.2.1", NOT, "documentation (TEST-NET-1)"),
    ("192.88.99.1", NOT, "6to4 relay anycast (deprecated)"),
    ("192.168.1.1", NOT, "private"),
    ("198.18.0.1", NOT, "benchmarking"),
    ("198.19.255.254", NOT, "benchmarking, top"),
    ("198.51.100.7", NOT, "documentation (TEST-NET-2)"),
    ("203.0.113.9", NOT, "documentation (TEST-NET-3)"),
    ("224.0.0.1", NOT, "multicast"),
    ("239.255.255.250", NOT, "multicast (SSDP)"),
    ("240.0.0.1", NOT, "reserved"),
    ("255.255.255.255", NOT, "broadcast"),
    # IPv6, public
    ("2606:4700:4700::1111", PUBLIC, "a public IPv6 address"),
    ("2a00:1450:4001:80b::200e", PUBLIC, "a public IPv6 address"),
    ("::ffff:93.184.216.34", PUBLIC, "IPv4-mapped public"),
    ("64:ff9b::5db8:d822", PUBLIC, "NAT64 around a public IPv4 address"),
    ("2002:5db8:d822::1", PUBLIC, "6to4 around a public IPv4 address"),
    ("2001:0:4136:e378:8000:63bf:a247:27dd", PUBLIC, "Teredo: public server, public client 93.184.216.34"),
    # IPv6, not public
    ("::", NOT, "unspecified"),
    ("::1", NOT, "loopback"),
    ("::ffff:127.0.0.1", NOT, "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", NOT, "IPv4-mapped metadata address"),
    ("::ffff:0:a00:1", NOT, "IPv4-translated 10.0.0.1"),
    ("::a00:1", NOT, "IPv4-compatible 10.0.0.1"),
    ("::127.0.0.1", NOT, "IPv4-compatible loopback"),
    ("::169.254.169.254", NOT, "IPv4-compatible metadata address"),
    ("64:ff9b::7f00:1", NOT, "NAT64 around loopback"),
    ("64:ff9b::a9fe:a9fe", NOT, "NAT64 around the metadata address"),
    ("64:ff9b::a00:1", NOT, "NAT64 around a private address"),
    ("64:ff9b::6440:1", NOT, "NAT64 around shared address space"),
    ("64:ff9b:1::7f00:1", NOT, "local-use NAT64 prefix"),
    ("64:ff9b:1::5db8:d822", NOT, "local-use NAT64 prefix, even around a public address"),
    ("2002:7f00:1::1", NOT, "6to4 around loopback"),
    ("2002:a9fe:a9fe::1", NOT, "6to4 around the metadata address"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", NOT, "Teredo around client 10.0.0.1"),
    ("2001:0:a00:1:8000:63bf:a247:27dd", NOT, "Teredo with server 10.0.0.1"),
    ("100::1", NOT, "discard-only"),
    ("2001:db8::1", NOT, "documentation"),
    ("3fff::1", NOT, "documentation (3fff::/20)"),
    ("2001:2::1", NOT, "benchmarking"),
    ("2001:10::1", NOT, "IETF protocol assignments (ORCHID)"),
    ("fc00::1", NOT, "unique local"),
    ("fd12:3456::1", NOT, "unique local"),
    ("fe80::1", NOT, "link-local"),
    ("fec0::1", NOT, "site-local (deprecated)"),
    ("ff02::1", NOT, "multicast, link scope"),
    ("ff0e::1", NOT, "multicast, global scope"),
    ("4000::1", NOT, "reserved: outside the global unicast space 2000::/3"),
    ("5f00::1", NOT, "reserved: SRv6 SIDs"),
]


def proxy(tmp_path: pathlib.Path, **egress: object) -> Proxy:
    return Proxy(EgressConfig(rundir=str(tmp_path), egress=EgressSection(**egress), broker_uid=0))  # type: ignore[arg-type]


def decide(p: Proxy, allow: list[str], host: str, port: int = 80) -> tuple[str | None, str]:
    return asyncio.run(p.decide(Run("r", allow, ""), host, port))


def test_the_table_is_big_enough_and_has_no_duplicates() -> None:
    assert len(TABLE) >= 40
    assert len({a for a, _, _ in TABLE}) == len(TABLE)
    assert sum(public for _, public, _ in TABLE) >= 10


@pytest.mark.parametrize(("address", "public", "what"), TABLE, ids=[f"{a} {w}" for a, _, w in TABLE])
def test_a_name_resolving_to_the_address(tmp_path: pathlib.Path, address: str, public: bool, what: str) -> None:
    target, reason = decide(proxy(tmp_path, resolve={"t.test": address}), ["t.test"], "t.test")
    if public:
        assert (target, reason) == (str(target), "granted") and target is not None, what
    else:
        assert target is None and "non-public" in reason, f"{what}: {reason}"


@pytest.mark.parametrize(("address", "public", "what"), TABLE, ids=[f"{a} {w}" for a, _, w in TABLE])
def test_a_literal_granted_by_that_address(tmp_path: pathlib.Path, address: str, public: bool, what: str) -> None:
    target, reason = decide(proxy(tmp_path), [address], address)
    if public:
        assert (target, reason) == (str(ipaddress.ip_address(address)), "granted by address"), what
    else:
        assert target is None and "non-public" in reason, f"{what}: {reason}"


def test_the_refusal_names_what_the_address_is(tmp_path: pathlib.Path) -> None:
    p = proxy(tmp_path, resolve={"nat64.test": "64:ff9b::a9fe:a9fe", "compat.test": "::127.0.0.1"})
    reason = decide(p, ["nat64.test"], "nat64.test")[1]
    assert "NAT64" in reason and "169.254.169.254" in reason and "link-local" in reason, reason
    reason = decide(p, ["compat.test"], "compat.test")[1]
    assert "IPv4-compatible" in reason and "127.0.0.1" in reason and "loopback" in reason, reason


def test_a_permitted_target_still_opens_a_non_public_address(tmp_path: pathlib.Path) -> None:
    # The test hook for local upstreams stays exact: that address and port only.
    p = proxy(tmp_path, resolve={"t.test": "64:ff9b::7f00:1"}, allow_targets=["[64:ff9b::7f00:1]:80"])
    assert decide(p, ["t.test"], "t.test", 80) == ("64:ff9b::7f00:1", "granted")
    assert decide(p, ["t.test"], "t.test", 81)[0] is None
