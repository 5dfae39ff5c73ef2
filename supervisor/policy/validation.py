"""Request validation: sizes, limits within the profile, capability syntax.

Each failure is a ``CellblockError`` naming the field, which the broker turns
into a ``rejected`` result.
"""

from __future__ import annotations

import os
import posixpath
import re

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode
from protocol.files import name_problem
from protocol.profile import MiB, Profile
from supervisor.policy.grants import path_covers

# Below these a sandbox cannot start its interpreter, whatever the code is.
MINIMUM = {"memory_bytes": 16 * MiB, "timeout_ms": 10, "cpu_ms": 10, "output_bytes": 64}
# Matched whole (fullmatch): "$" would also match before a final newline.
_DOMAIN = re.compile(r"(\*\.)?([a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}")


def check_sizes(profile: Profile, request: m.ExecuteRequest) -> None:
    fixed = profile.fixed
    code_bytes = len(request.code.encode("utf-8", "surrogatepass"))
    if code_bytes > fixed.code_bytes:
        raise CellblockError(
            ErrorCode.TOO_LARGE, f"code is {code_bytes} bytes; this profile takes at most {fixed.code_bytes}", "code"
        )
    if not request.code.strip():
        raise CellblockError(ErrorCode.INVALID_REQUEST, "code is empty", "code")
    stdin_bytes = len(request.stdin.encode("utf-8", "surrogatepass"))
    if stdin_bytes > fixed.stdin_bytes:
        raise CellblockError(
            ErrorCode.TOO_LARGE,
            f"stdin is {stdin_bytes} bytes; this profile takes at most {fixed.stdin_bytes}",
            "stdin",
        )
    check_files(profile, request.files)


def check_files(profile: Profile, files: dict[str, bytes]) -> None:
    """A request's files: how many, how large, and names that stay inside /work."""
    fixed = profile.fixed
    if len(files) > fixed.file_count:
        raise CellblockError(
            ErrorCode.TOO_LARGE, f"{len(files)} files; this profile takes at most {fixed.file_count}", "files"
        )
    total = 0
    for name, data in files.items():
        problem = name_problem(name)
        if problem:
            raise CellblockError(ErrorCode.INVALID_REQUEST, f"file name {name!r} {problem}", f"files[{name!r}]")
        if len(data) > fixed.file_bytes:
            raise CellblockError(
                ErrorCode.TOO_LARGE,
                f"file {name!r} is {len(data)} bytes; this profile takes at most {fixed.file_bytes} per file",
                f"files[{name!r}]",
            )
        total += len(data)
    if total > fixed.files_bytes:
        raise CellblockError(
            ErrorCode.TOO_LARGE, f"the files are {total} bytes; this profile takes at most {fixed.files_bytes}", "files"
        )


def resolve_limits(profile: Profile, asked: m.Limits) -> tuple[m.JobLimits, list[m.Capability]]:
    """The limits a run gets, and the LIMITS capabilities needed above the defaults."""
    defaults = msgspec.structs.asdict(profile.limits.in_bytes())
    maxima = msgspec.structs.asdict(profile.max.in_bytes())
    values = {}
    needed = []
    for name, default in defaults.items():
        value = getattr(asked, name)
        if value is None:
            values[name] = default
            continue
        if value < MINIMUM.get(name, 1):
            raise CellblockError(
                ErrorCode.INVALID_REQUEST,
                f"limits.{name} = {value} is below the least a sandbox needs ({MINIMUM[name]})",
                f"limits.{name}",
            )
        if value > maxima[name]:
            raise CellblockError(
                ErrorCode.INVALID_REQUEST,
                f"limits.{name} = {value} is above this profile's maximum of {maxima[name]}",
                f"limits.{name}",
            )
        if value > default:
            needed.append(m.Capability(m.CapabilityKind.LIMITS, name))
        values[name] = value
    values["cpu_ms"] = min(values["cpu_ms"], maxima["cpu_ms"])
    return m.JobLimits(**values), needed


def check_grant_path(cap: m.Capability, roots: list[str], field: str) -> m.Capability:
    """A path grant, resolved, if it lies under one of the operator's grant roots.

    The path is resolved as far as this process can see (symlinks, ``..``);
    the launcher, which binds it, checks again where it really leads.
    """
    if not roots:
        raise CellblockError(
            ErrorCode.INVALID_REQUEST,
            "host paths cannot be granted: the service config sets no policy.grant_roots",
            field,
        )
    resolved = os.path.realpath(cap.target)
    lexical = posixpath.normpath(cap.target)
    if not any(path_covers(r, lexical) and path_covers(os.path.realpath(r), resolved) for r in roots):
        raise CellblockError(
            ErrorCode.INVALID_REQUEST,
            f"{cap.target} is outside the paths that may be granted ({', '.join(roots)})",
            field,
        )
    return m.Capability(cap.kind, resolved)


def normalized(cap: m.Capability) -> m.Capability:
    """The form grants are matched in: a path without ``.``, ``..`` or doubled slashes."""
    if cap.kind in (m.CapabilityKind.FS_READ, m.CapabilityKind.FS_WRITE):
        return m.Capability(cap.kind, posixpath.normpath(cap.target).replace("//", "/"))
    if cap.kind is m.CapabilityKind.NET:
        return m.Capability(cap.kind, cap.target.lower().rstrip("."))
    return cap


def check_capability(cap: m.Capability, index: int) -> None:
    field = f"capabilities[{index}].target"
    match cap.kind:
        case m.CapabilityKind.FS_READ | m.CapabilityKind.FS_WRITE:
            if not cap.target.startswith("/") or "\0" in cap.target:
                raise CellblockError(ErrorCode.INVALID_REQUEST, "a path capability needs an absolute path", field)
        case m.CapabilityKind.NET:
            if not _DOMAIN.fullmatch(cap.target.lower()):
                raise CellblockError(
                    ErrorCode.INVALID_REQUEST, "a net capability needs a domain or *.domain pattern", field
                )
        case m.CapabilityKind.LIMITS:
            if cap.target not in ("timeout_ms", "cpu_ms", "memory_bytes", "output_bytes"):
                raise CellblockError(
                    ErrorCode.INVALID_REQUEST,
                    "a limits capability names timeout_ms, cpu_ms, memory_bytes or output_bytes",
                    field,
                )
