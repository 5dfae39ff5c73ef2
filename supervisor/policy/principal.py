"""Who a request comes from, when it came over the network: the CURVE key's identity.

The gateway (``supervisor/gateway.py``) is the only process that accepts TCP.
It authenticates each client by its CURVE key (libzmq's handshake, its ZAP
handler checking ``authorized_keys``) and relays that client's messages to
``client.sock`` over a connection of its own, whose ZMTP routing identity it
sets to :func:`routing_id`: the key's identity (``curve:<name>``), a slash,
and a suffix telling the client's connections apart. The broker never reads
an identity from a request's bytes for such a connection: :func:`remote`
takes it from the routing id, and ``client_id`` in the request is ignored.

Why the broker may believe it: the client socket's router puts the peer's
uid, from the kernel (SO_PEERCRED), in front of every routing id
(``protocol.zmtp.routing_id``), and a routing id is taken as a CURVE
identity only from a *relay*: the gateway's uid (the broker's, in root
mode) or a trusted one (``peers``), exactly as a ``client_id`` is trusted
only from one. Another local uid naming itself ``curve:...`` (where
``client_group`` lets it connect) is keyed by its uid like any other.
"""

from __future__ import annotations

from collections.abc import Container

from protocol.zmtp import named_part, peer_uid

PREFIX = b"curve:"


def routing_id(identity: str, suffix: bytes) -> bytes:
    """What the gateway names its connection for one remote client (at most 255 bytes)."""
    return identity.encode("ascii") + b"/" + suffix.hex().encode("ascii")


def remote(connection: str, relays: Container[int]) -> str | None:
    """The CURVE identity behind a connection (the hex of its routing id on the client
    socket: a uid, then what the peer named), or None if it is a local client."""
    try:
        routing = bytes.fromhex(connection)
    except ValueError:
        return None
    uid = peer_uid(routing)
    if uid is None or uid not in relays:
        return None
    return identity(named_part(routing))


def identity(routing: bytes) -> str | None:
    """The CURVE identity a relay's connection names (its routing id without the uid)."""
    if not routing.startswith(PREFIX):
        return None
    name, sep, _ = routing.partition(b"/")
    if not sep or len(name) <= len(PREFIX):
        return None
    return name.decode("ascii", "replace")
