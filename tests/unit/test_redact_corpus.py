"""The redaction scorecard as a test: the labelled corpus in tests/data/secrets.

Positives are fake values in their issuers' documented formats, in the lines
a program prints; negatives are over 1 MiB of ordinary program output. The
figures are the ones scripts/secrets_scorecard.py prints (same code).
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import pytest

from supervisor.policy.redact import Redactor

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _scorecard() -> Any:
    spec = importlib.util.spec_from_file_location("secrets_scorecard", ROOT / "scripts" / "secrets_scorecard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scorecard = _scorecard()
FAMILIES = {
    "cloud",
    "vcs",
    "registry",
    "ai",
    "payment",
    "messaging",
    "database",
    "url",
    "generic",
    "private_key",
    "jwt",
}
FAMILIES |= {"saas", "encoded", "wrapped"}


@pytest.fixture(scope="module")
def score() -> dict[str, Any]:
    result: dict[str, Any] = scorecard.score(Redactor(), scorecard.load_positives(), scorecard.load_negatives())
    return result


def test_the_corpus_is_what_the_issue_asks_for() -> None:
    positives = scorecard.load_positives()
    assert len(positives) >= 150
    assert {p["family"] for p in positives} == FAMILIES
    assert all(p["secret"] in p["text"] for p in positives)
    assert len(scorecard.load_negatives().encode()) >= 2**20


def test_recall_is_at_least_98_percent_and_no_family_is_left_behind(score: dict[str, Any]) -> None:
    missed = [(m["family"], m["kind"], m["text"][:80]) for m in score["misses"]]
    assert score["recall"] >= 0.98, missed
    for family, row in score["families"].items():
        assert row["recall"] >= 0.8, (family, missed)


def test_ordinary_output_comes_back_untouched(score: dict[str, Any]) -> None:
    assert score["false_positive_lines"] == []
    assert score["false_positives_whole"] == {}
