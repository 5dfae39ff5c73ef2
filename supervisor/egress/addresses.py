"""Which hosts and addresses the egress proxy may reach: one address policy.

``non_public`` judges every resolved answer and every literal; ``plain_host``
takes only names nothing downstream could rewrite.
"""

from __future__ import annotations

import ipaddress
import re

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
NAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def plain_host(raw: str) -> str | None:
    """The host as the proxy matches and resolves it, or None when it is not a plain name.

    Only ASCII letters, digits, hyphens and dots (or an IP literal): nothing
    that IDNA or a resolver could rewrite into another name after the checks.
    """
    host = raw.strip("[]").lower().rstrip(".")
    if literal(host) is not None:
        return host
    if len(host) > 253 or not NAME.match(host):
        return None
    return host


_V4, _V6 = ipaddress.IPv4Network, ipaddress.IPv6Network

# Not public, whatever Python's is_global says on this version (3.11 calls
# multicast, 192.88.99/24 and 3fff::/20 global). IANA's special-purpose
# registries, taken whole: a block with a few globally reachable anycast
# addresses (192.0.0/24, 2001::/23) is refused as a block.
_NOT_PUBLIC_V4 = [
    (_V4("0.0.0.0/8"), "this network"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "shared address space"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
]
_NOT_PUBLIC_V6 = [
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/8"), "reserved"),
    # Where a local-use NAT64 prefix carries the IPv4 address (after /48, /56,
    # /64 or /96) is the network's own choice, so the address inside cannot be
    # judged; the prefix is not globally reachable in any case (RFC 8215).
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("100::/8"), "discard-only or reserved"),
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2001::/23"), "IETF protocol assignments"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("fc00::/7"), "unique local"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
]
_GLOBAL_UNICAST_V6 = _V6("2000::/3")
# IPv6 forms that carry an IPv4 address in their last 32 bits.
_CARRIERS_V6 = [
    (_V6("::ffff:0:0/96"), "IPv4-mapped"),
    (_V6("::ffff:0:0:0/96"), "IPv4-translated"),
    (_V6("64:ff9b::/96"), "NAT64"),
    (_V6("::/96"), "IPv4-compatible"),  # after :: and ::1, which are judged as IPv6
]


def _carried(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form."""
    if int(ip) <= 1:  # :: and ::1 are IPv6's own, not IPv4-compatible 0.0.0.0 and 0.0.0.1
        return []
    for net, form in _CARRIERS_V6:
        if ip in net:
            return [(form, ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip.sixtofour is not None:
        return [("6to4", ip.sixtofour)]
    if ip.teredo is not None:  # a packet reaches the client through its server
        server, client = ip.teredo
        return [("Teredo (server)", server), ("Teredo (client)", client)]
    return []


def non_public(ip: IP) -> str | None:
    """Why the proxy may not connect to ``ip``, or None when it is a public unicast address.

    The one address policy, for every resolved answer and every literal. IPv4
    carried in IPv6 (mapped, translated, compatible, NAT64, 6to4, Teredo) is
    judged by the IPv4 inside: ``64:ff9b::a9fe:a9fe`` is the metadata address.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        for net4, what in _NOT_PUBLIC_V4:
            if ip in net4:
                return f"{what} ({net4})"
        return None if ip.is_global else "not globally reachable"
    carried = _carried(ip)
    for form, inner in carried:
        why = non_public(inner)
        if why is not None:
            return f"{form} around {inner}, {why}"
    if carried:
        return None
    for net6, what in _NOT_PUBLIC_V6:
        if ip in net6:
            return f"{what} ({net6})"
    if ip not in _GLOBAL_UNICAST_V6:
        return f"reserved (outside {_GLOBAL_UNICAST_V6}, the global unicast space)"
    return None


def target(text: str) -> tuple[IP, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)
