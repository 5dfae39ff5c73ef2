"""Capability grants: which grant covers which need.

A grant belongs to a client id and, optionally, one conversation of it; it
may expire. Coverage: a limits grant names one limit; a net grant is a
domain (exact) or ``*.domain`` (any subdomain, not the domain itself); a path
grant covers the path and everything under it, and write covers read.
"""

from __future__ import annotations

import posixpath

from protocol import messages as m

K = m.CapabilityKind


def matches(pattern: str, host: str) -> bool:
    """A domain pattern against a host: ``example.com`` exactly, ``*.example.com`` any subdomain."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern


def path_covers(granted: str, wanted: str) -> bool:
    granted = posixpath.normpath(granted)
    wanted = posixpath.normpath(wanted)
    return wanted == granted or wanted.startswith(granted.rstrip("/") + "/")


def covers(grant: m.Capability, need: m.Capability) -> bool:
    if grant.kind is K.FS_WRITE and need.kind is K.FS_READ:
        return path_covers(grant.target, need.target)
    if grant.kind is not need.kind:
        return False
    match grant.kind:
        case K.LIMITS:
            return grant.target == need.target
        case K.NET:
            return matches(grant.target, need.target)
        case K.FS_READ | K.FS_WRITE:
            return path_covers(grant.target, need.target)
    return False


def usable(grants: list[m.Grant], conversation_id: str) -> list[m.Capability]:
    return [g.capability for g in grants if not g.conversation_id or g.conversation_id == conversation_id]


def missing(grants: list[m.Grant], conversation_id: str, needs: list[m.Capability]) -> list[m.Capability]:
    held = usable(grants, conversation_id)
    return [need for need in needs if covering(held, need) is None]


def covering(held: list[m.Capability], need: m.Capability) -> m.Capability | None:
    """The grant that covers ``need``; for a path, the widest one."""
    found = [g for g in held if covers(g, need)]
    return min(found, key=lambda g: len(g.target)) if found else None


def plan_binds(held: list[m.Capability], needs: list[m.Capability]) -> list[m.HostBind]:
    """The host paths a run's worker binds, one per asked path not inside another.

    Raises ValueError for a write path inside a read-only one of the same run
    (one bind cannot be both); the caller turns it into a clear refusal.
    """
    paths = sorted(
        (n for n in needs if n.kind in (K.FS_READ, K.FS_WRITE)), key=lambda n: (len(n.target), n.kind is K.FS_READ)
    )
    binds: list[m.HostBind] = []
    for need in paths:
        outer = next((b for b in binds if path_covers(b.host, need.target)), None)
        if outer is not None:
            if need.kind is K.FS_WRITE and not outer.writable:
                raise ValueError(
                    f"{need.target} is asked writable inside {outer.host}, asked read-only; ask fs_write "
                    f"for {outer.host}, or only for {need.target}"
                )
            continue
        grant = covering(held, need)
        assert grant is not None  # the caller checked that every need is covered
        binds.append(m.HostBind(host=need.target, within=grant.target, writable=need.kind is K.FS_WRITE))
    return binds


def describe(capability: m.Capability) -> str:
    return f"{capability.kind.value}:{capability.target}"
