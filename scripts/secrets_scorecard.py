#!/usr/bin/env python3
"""The redaction scorecard: recall per family, false positives, speed.

    python scripts/secrets_scorecard.py [--baseline REV] [--json out.json] [--show-misses]

Reads the labelled corpus in tests/data/secrets (positives.jsonl, negatives.txt;
made by make_corpus.py there). For each positive it redacts the example's
text and counts it caught when the secret no longer appears in the output
(and says when the type named differs from the label). On the negative
corpus (ordinary program output) every redaction is a false positive. Speed
is ms per MiB over the negative corpus and over the bench's plain text,
median of 5, beside the rules at ``--baseline`` (default: the commit before
issue 17) measured in the same run, loaded from ``git show
REV:supervisor/policy/redact.py``.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics
import subprocess
import sys
import time
import types
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORPUS = ROOT / "tests" / "data" / "secrets"
BASELINE = "c206a64"  # the rules before issue 17


def load_positives() -> list[dict[str, str]]:
    return [json.loads(line) for line in (CORPUS / "positives.jsonl").read_text().splitlines() if line]


def load_negatives() -> str:
    return (CORPUS / "negatives.txt").read_text()


def plain_text() -> str:
    """The bench's text (scripts/bench.py redaction_cost): ordinary words, 1 MiB."""
    words = "the result is value print error line data x count 42 3.14159 hello world id name".split()
    return "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(20000))[: 1 << 20]


def baseline_redactor(rev: str) -> Any | None:
    """The Redactor of redact.py at git revision ``rev``, or None when it cannot be had."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:supervisor/policy/redact.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType(f"redact_at_{rev}")
    exec(compile(source, f"{rev}:redact.py", "exec"), module.__dict__)
    return module.Redactor()


def ms_per_mib(redactor: Any, text: str, runs: int = 5) -> float:
    mib = len(text.encode()) / 2**20
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        redactor.redact(text)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times) / mib


def score(redactor: Any, positives: list[dict[str, str]], negatives: str) -> dict[str, Any]:
    caught: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    misses, mislabelled = [], []
    for example in positives:
        family = example["family"]
        total[family] += 1
        out, counts = redactor.redact(example["text"])
        if example["secret"] in out:
            misses.append(example)
        else:
            caught[family] += 1
            if example["kind"] not in counts:
                mislabelled.append((example["kind"], sorted(counts)))
    false_positives = []
    for line_no, line in enumerate(negatives.splitlines(keepends=True), 1):
        out, counts = redactor.redact(line)
        if counts:
            false_positives.append((line_no, counts, line[:160]))
    _whole, whole_counts = redactor.redact(negatives)
    return {
        "families": {
            f: {"caught": caught[f], "total": total[f], "recall": caught[f] / total[f]} for f in sorted(total)
        },
        "recall": sum(caught.values()) / sum(total.values()),
        "caught": sum(caught.values()),
        "examples": sum(total.values()),
        "false_positive_lines": false_positives,
        "false_positives_whole": dict(whole_counts),
        "misses": misses,
        "mislabelled": mislabelled,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline", default=BASELINE, help=f"git revision whose rules to score beside (default {BASELINE})"
    )
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    from supervisor.policy.redact import Redactor

    positives, negatives = load_positives(), load_negatives()
    current = Redactor()
    result = score(current, positives, negatives)
    old = baseline_redactor(args.baseline)
    speed = {"negatives_mib": len(negatives.encode()) / 2**20}
    plain = plain_text()
    for name, redactor in (("new", current), (f"old ({args.baseline})", old)):
        if redactor is not None:
            speed[f"{name} negatives ms/MiB"] = ms_per_mib(redactor, negatives)
            speed[f"{name} plain text ms/MiB"] = ms_per_mib(redactor, plain)
    if old is not None:
        before = score(old, positives, negatives)
        result["baseline"] = {k: before[k] for k in ("families", "recall")}
        result["baseline"]["false_positive_lines"] = len(before["false_positive_lines"])
    result["speed"] = speed

    print(f"redaction scorecard: {result['examples']} positive examples, {speed['negatives_mib']:.2f} MiB of negatives")
    print(f"  {'family':<12} {'caught':>9}  recall   {'old' if old else ''}")
    for family, row in result["families"].items():
        before = result.get("baseline", {}).get("families", {}).get(family)
        extra = f"{before['recall']:6.1%}" if before else ""
        print(f"  {family:<12} {row['caught']:>4}/{row['total']:<4}  {row['recall']:6.1%}  {extra}")
    before = result.get("baseline", {}).get("recall")
    print(
        f"  {'overall':<12} {result['caught']:>4}/{result['examples']:<4}  {result['recall']:6.1%}  "
        + (f"{before:6.1%}" if before is not None else "")
    )
    print(
        f"  false positives on the negatives: {len(result['false_positive_lines'])} lines, "
        f"whole text {result['false_positives_whole']}"
        + (f" (old: {result['baseline']['false_positive_lines']} lines)" if old else "")
    )
    for key, value in speed.items():
        if key != "negatives_mib":
            print(f"  {key}: {value:.2f}")
    if result["mislabelled"]:
        print(f"  caught under another type: {len(result['mislabelled'])}")
    if args.show_misses:
        for example in result["misses"]:
            print(f"  MISS {example['family']}/{example['kind']}: {example['text'][:150]!r}")
        for line_no, counts, line in result["false_positive_lines"]:
            print(f"  FP line {line_no} {counts}: {line!r}")
        for kind, got in result["mislabelled"]:
            print(f"  LABEL {kind} -> {got}")
    if args.json:
        out = pathlib.Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        printable = {k: v for k, v in result.items() if k not in ("misses",)}
        out.write_text(json.dumps(printable, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
