"""Who sent a request: the peer's uid, from the kernel, and whether it may name its client.

The broker's client socket (``protocol.zmtp.Router`` made ``by_uid``) reads
each connection's SO_PEERCRED at accept and puts the uid in front of the
connection's routing id, which the intake hands the policy as ``connection``
(hex). A client cannot choose that uid.

A *trusted* uid may assert ``client_id`` (an app, an MCP session, the
console): its requests are keyed by the id it names, and it may grant,
revoke and read every client's grants and history. Trusted are root, the
uid that started the service (whose CLI, MCP server and console therefore
work unchanged; in root mode that is root, since the broker's own uid is
only what it drops to) and ``[policy] trusted_uids``. Any other uid is keyed
``uid:<n>`` whatever id it names: rate, concurrency and grants apply to that
key, it reads only its own grants and history, and it cannot grant.
"""

from __future__ import annotations

from protocol.zmtp import peer_uid
from supervisor.config import Config


def trusted_uids(config: Config, service_uid: int) -> frozenset[int]:
    return frozenset({0, service_uid, *config.policy.trusted_uids})


def uid_of(connection: str) -> int | None:
    """The uid behind a connection (the hex of its routing id); None if it carries none."""
    try:
        return peer_uid(bytes.fromhex(connection))
    except ValueError:
        return None


def key_for(uid: int | None, trusted: frozenset[int], connection: str, client_id: str) -> str:
    """What rate, concurrency, grants and history key this request by."""
    if uid is None:
        return "uid:unknown"  # fail closed: no routing id with a uid (never on the client socket)
    if uid in trusted:
        return client_id or f"conn:{connection}"
    return f"uid:{uid}"
