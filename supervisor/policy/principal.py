"""Who a request comes from, when it came over the network: the CURVE key's identity.

The gateway (``supervisor/gateway.py``) is the only process that accepts TCP.
It authenticates each client by its CURVE key (libzmq's handshake, its ZAP
handler checking ``authorized_keys``) and relays that client's messages to
``client.sock`` over a connection of its own, whose ZMTP routing identity it
sets to :func:`routing_id`: the key's identity (``curve:<name>``), a slash,
and a suffix telling the client's connections apart. The broker never reads
an identity from a request's bytes for such a connection: :func:`remote`
takes it from the routing id, and ``client_id`` in the request is ignored.

Why the broker may believe it: ``client.sock`` is reachable only by the
service's own uid (and root), in a 0700 directory; what runs as that uid
already holds the history store. Where other local uids can connect
(SO_PEERCRED keying, ``client_group``), the routing id must be taken as a
CURVE identity only from a connection of a trusted uid (the broker's own,
the gateway's), exactly as a ``client_id`` is trusted only from one.
"""

from __future__ import annotations

PREFIX = b"curve:"


def routing_id(identity: str, suffix: bytes) -> bytes:
    """What the gateway names its connection for one remote client (at most 255 bytes)."""
    return identity.encode("ascii") + b"/" + suffix.hex().encode("ascii")


def remote(connection: str) -> str | None:
    """The CURVE identity behind a connection (the hex of its routing id), or None if it is
    a local client."""
    try:
        routing = bytes.fromhex(connection)
    except ValueError:
        return None
    if not routing.startswith(PREFIX):
        return None
    identity, sep, _ = routing.partition(b"/")
    if not sep or len(identity) <= len(PREFIX):
        return None
    return identity.decode("ascii", "replace")
