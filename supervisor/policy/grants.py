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


def _path_covers(granted: str, wanted: str) -> bool:
    granted = posixpath.normpath(granted)
    wanted = posixpath.normpath(wanted)
    return wanted == granted or wanted.startswith(granted.rstrip("/") + "/")


def covers(grant: m.Capability, need: m.Capability) -> bool:
    if grant.kind is K.FS_WRITE and need.kind is K.FS_READ:
        return _path_covers(grant.target, need.target)
    if grant.kind is not need.kind:
        return False
    match grant.kind:
        case K.LIMITS:
            return grant.target == need.target
        case K.NET:
            pattern, host = grant.target.lower().rstrip("."), need.target.lower().rstrip(".")
            if pattern.startswith("*."):
                return host.endswith(pattern[1:]) and host != pattern[2:]
            return host == pattern
        case K.FS_READ | K.FS_WRITE:
            return _path_covers(grant.target, need.target)
    return False


def missing(grants: list[m.Grant], conversation_id: str, needs: list[m.Capability]) -> list[m.Capability]:
    usable = [g.capability for g in grants if not g.conversation_id or g.conversation_id == conversation_id]
    return [need for need in needs if not any(covers(g, need) for g in usable)]


def describe(capability: m.Capability) -> str:
    return f"{capability.kind.value}:{capability.target}"
