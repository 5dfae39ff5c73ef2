"""Property-based fuzzing of the grant and capability parsers.

``Capability.parse`` and the CLI's ``parse_capability`` (``KIND:TARGET`` as
people type it), ``validation.check_capability`` and ``normalized`` (what the
broker accepts from a request or a grant), and ``grants`` (what covers
what). For any text: a capability or the parser's own error. What is
accepted is in its canonical form (normalizing it again changes nothing), a
net target is a plain ASCII name or pattern, and no grant covers anything
outside what it names: a path grant never covers a path that leads above
it, a ``*.domain`` never the domain itself or a look-alike.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import posixpath
import re
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode
from supervisor.policy import grants, validation
from supervisor.tools.cli import parse_capability

K = m.CapabilityKind
DOMAIN = re.compile(r"(\*\.)?([a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}")

label = st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True)
domains = st.lists(label, min_size=1, max_size=4).map(".".join)
path_parts = st.lists(st.sampled_from(["a", "b", "..", ".", "", "c d", "\n", "x\x00", "//", "..."]), max_size=6)
paths = st.one_of(path_parts.map(lambda p: "/" + "/".join(p)), st.text(max_size=30))
targets = st.one_of(
    domains,
    domains.map(lambda d: "*." + d),
    st.sampled_from(["example.com\n", "EXAMPLE.com.", "\u212a.com", "*.", "*", "a..b", "-", "ex ample.com", "*.*.a"]),
    paths,
    st.sampled_from(["timeout_ms", "cpu_ms", "memory_bytes", "output_bytes", "memory_mb", ""]),
    st.text(max_size=40),
)
kinds = st.one_of(st.sampled_from([k.value for k in K]), st.text(max_size=8))


@given(kinds, targets, st.sampled_from([":", "", "::"]))
def test_kind_colon_target_parses_or_says_why(kind: str, target: str, colon: str) -> None:
    text = kind + colon + target
    try:
        cap = m.Capability.parse(text)
    except ValueError as exc:
        assert text[:20] in str(exc) or repr(text)[:20] in str(exc)
        try:
            parse_capability(text)
        except argparse.ArgumentTypeError:
            return
        raise AssertionError("the CLI accepted what Capability.parse refused") from None
    assert f"{cap.kind.value}:{cap.target}" == text and cap.target
    assert parse_capability(text) == cap


def _accepted(cap: m.Capability) -> bool:
    try:
        validation.check_capability(cap, 0)
    except CellblockError as exc:
        assert exc.code is ErrorCode.INVALID_REQUEST and exc.field == "capabilities[0].target"
        return False
    return True


@given(st.sampled_from(list(K)), targets)
def test_an_accepted_capability_is_canonical_once_normalized(kind: m.CapabilityKind, target: str) -> None:
    cap = m.Capability(kind, target)
    if not _accepted(cap):
        return
    norm = validation.normalized(cap)
    assert validation.normalized(norm) == norm
    assert _accepted(norm)
    assert grants.covers(norm, norm)
    match kind:
        case K.NET:
            assert DOMAIN.fullmatch(norm.target), norm.target  # plain ASCII: nothing a resolver rewrites
        case K.FS_READ | K.FS_WRITE:
            assert norm.target.startswith("/") and "\0" not in norm.target
            assert ".." not in norm.target.split("/") and "//" not in norm.target
        case K.LIMITS:
            assert norm.target in ("timeout_ms", "cpu_ms", "memory_bytes", "output_bytes")


@given(domains, st.one_of(domains, st.tuples(label, st.booleans())), st.booleans(), st.booleans())
def test_a_domain_grant_covers_the_name_or_its_subdomains_only(
    granted: str, host: str | tuple[str, bool], star: bool, upper: bool
) -> None:
    if isinstance(host, tuple):  # the granted name with a label in front: a subdomain, or a look-alike
        host = host[0] + ("." if host[1] else "") + granted
    pattern = ("*." + granted) if star else granted
    asked = host.upper() if upper else host
    if star:
        assert grants.matches(pattern, asked) == host.endswith("." + granted)
    else:
        assert grants.matches(pattern, asked) == (host == granted)


def _lexical(path: str) -> list[str]:
    """Where a path leads by its text alone (".." above the root stays at the root)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


@given(paths, paths)
def test_a_path_grant_never_covers_a_path_leading_outside_it(granted: str, wanted: str) -> None:
    if not granted.startswith("/") or not wanted.startswith("/"):
        return
    if grants.path_covers(granted, wanted):
        inside, outer = _lexical(wanted), _lexical(granted)
        assert inside[: len(outer)] == outer, (granted, wanted)


@given(st.lists(st.tuples(st.sampled_from([K.FS_READ, K.FS_WRITE]), paths), min_size=1, max_size=5))
def test_binds_are_planned_inside_their_grants(asked: list[tuple[m.CapabilityKind, str]]) -> None:
    needs = [
        validation.normalized(m.Capability(kind, target))
        for kind, target in asked
        if _accepted(m.Capability(kind, target))
    ]
    held = [m.Capability(K.FS_WRITE, "/")]  # covers everything: the planning alone is under test
    try:
        binds = grants.plan_binds(held, needs)
    except ValueError as exc:
        assert "asked writable inside" in str(exc)
        return
    for need in needs:
        assert any(grants.path_covers(b.host, need.target) for b in binds)
        bind = next(b for b in binds if grants.path_covers(b.host, need.target))
        assert bind.writable or need.kind is K.FS_READ


@pytest.fixture(scope="module")
def root() -> Iterator[pathlib.Path]:
    """Grant roots on disk: shared/ may be granted; shared/escape is a symlink out of it."""
    with tempfile.TemporaryDirectory(prefix="cellblock-fuzz-roots-") as tmp:
        base = pathlib.Path(tmp)
        (base / "shared" / "data").mkdir(parents=True)
        (base / "outside").mkdir()
        os.symlink(base / "outside", base / "shared" / "escape")
        yield base


ROOTED = "{root}"  # stands for the fixture's directory in drawn paths
rooted = st.lists(st.sampled_from(["data", "escape", "..", ".", "outside", "x", ""]), max_size=5).map(
    lambda parts: ROOTED + "/shared/" + "/".join(parts)
)


@given(st.sampled_from([K.FS_READ, K.FS_WRITE]), st.one_of(rooted, paths))
def test_a_path_grant_is_refused_or_lies_under_a_grant_root(
    root: pathlib.Path, kind: m.CapabilityKind, target: str
) -> None:
    """As the broker takes a GrantRequest: check, normalize, then resolve against the roots."""
    cap = m.Capability(kind, target.replace(ROOTED, str(root)))
    grant_roots = [str(root / "shared")]
    if not _accepted(cap):
        return
    try:
        granted = validation.check_grant_path(validation.normalized(cap), grant_roots, "capability.target")
    except CellblockError as exc:
        assert exc.code is ErrorCode.INVALID_REQUEST
        return
    assert grants.path_covers(os.path.realpath(grant_roots[0]), granted.target)
    assert posixpath.realpath(granted.target) == granted.target


def test_found_a_net_target_with_a_trailing_newline_is_refused() -> None:
    """Found by the canonical-form property: ``_DOMAIN.match`` took "example.com\\n" ($
    matches before a final newline), so a grant could hold a line break (printed by
    ``cellblock grants``, and in the grant command a refusal suggests)."""
    for target in ("example.com\n", "*.example.com\n"):
        assert not _accepted(m.Capability(K.NET, target))
