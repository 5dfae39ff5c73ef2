"""The security harness, run the way a user runs it, and proven able to fail."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from supervisor.tools.harness import DEFAULT_CASES, load_cases

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]
CATEGORIES = {
    "resources",
    "filesystem",
    "network",
    "privilege",
    "escape",
    "seccomp",
    "leaks",
    "protocol",
    "output",
    "secrets",
}


def harness(tmp_path: pathlib.Path, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = tmp_path / "harness.json"
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", "harness", "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.exists(), proc.stderr[-2000:]
    return proc.returncode, json.loads(out.read_text())


def test_corpus_covers_every_category() -> None:
    cases = load_cases(DEFAULT_CASES)
    assert len(cases) >= 40
    assert {c.category for c in cases} == CATEGORIES


def test_every_case_is_safe_against_the_default_profile(tmp_path: pathlib.Path) -> None:
    code, report = harness(tmp_path)
    failed = [c for c in report["cases"] if c["verdict"] != "safe"]
    assert failed == [] and code == 0
    assert set(report["scorecard"]) == CATEGORIES


def test_a_weakened_profile_makes_the_harness_fail(tmp_path: pathlib.Path) -> None:
    code, report = harness(
        tmp_path, "--profile", str(ROOT / "tests/harness/weakened-seccomp.toml"), "--category", "seccomp"
    )
    assert code == 1
    assert report["scorecard"]["seccomp"]["escaped"] >= 2
    escaped = {c["case"] for c in report["cases"] if c["verdict"] == "escaped"}
    assert "s02_x32.py" in escaped  # with no filter, the x32 call just works
