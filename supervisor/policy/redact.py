"""Secret redaction, done by the broker (trusted), over the whole output.

Each rule finds one kind of secret; the match is replaced by a marker naming
its type, ``[REDACTED:github_token]``, and the result lists types and counts,
never the secret. The patterns follow the formats the issuers publish (and
the rule sets of gitleaks and detect-secrets).

All rules are one RE2 pattern (google-re2): one linear-time pass over the
text whatever it holds, ~3 ms per MiB here. Python's ``re`` took 25-400 ms
per MiB for the same rules and can backtrack on hostile input; detect-secrets
scans line by line through plugin objects and is slower still. The broker
reads output chosen by the code it sandboxes, so linear time is a security
property, not only a speed one.

Streaming: ``StreamRedactor`` emits text only up to the last line break and
holds an unterminated PEM block back until its END line, so a secret split
across two chunks is seen whole. No rule matches across a line break except
private keys.
"""

from __future__ import annotations

import collections
import math
import re

import re2  # type: ignore[import-untyped]

MAX_HOLD = 64 * 1024  # a line longer than this is emitted at its last space
# Past this many secrets in one text the rest of it is withheld, not scanned
# further: each match costs the broker ~30 us, and output chosen by hostile
# code must not buy seconds of broker time. Failing closed keeps it safe.
MAX_MATCHES = 1000
PEM_HOLD = 32 * 1024  # an open PEM block is held back at most this long
_PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")

# (name, pattern, name of the group to replace or "" for the whole match).
# Order matters where two rules can start at the same place: first wins.
RULES: tuple[tuple[str, str, str], ...] = (
    ("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", ""),
    (
        "aws_secret_key",
        r"(?i:aws)[A-Za-z_]{0,20}(?i:secret)[A-Za-z_]{0,20}[\"']?[ \t]*[=:][ \t]*[\"']?"
        r"(?P<aws_value>[A-Za-z0-9/+]{40})\b",
        "aws_value",
    ),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b", ""),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_\-]{20,}", ""),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", ""),
    ("slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}", ""),
    ("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}", ""),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}", ""),
    ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", ""),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", ""),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", ""),
    (
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.*?)"
        r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----",
        "",
    ),
    (
        "password_assignment",
        r"(?i:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth[_-]?token|client[_-]?secret)"
        r"[A-Za-z0-9_]{0,16}[\"']?[ \t]*[=:][ \t]*[\"']?(?P<pw_value>[^\s\"',;]{8,})",
        "pw_value",
    ),
)


def marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def entropy(value: str) -> float:
    counts = collections.Counter(value)
    total = len(value)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


_CLASSES = (re.compile(r"[a-z]"), re.compile(r"[A-Z]"), re.compile(r"[0-9]"), re.compile(r"[^A-Za-z0-9]"))


def looks_secret(value: str) -> bool:
    """For keyword rules: skip placeholders and plain words, keep random-looking values."""
    if value.startswith(("[REDACTED", "${", "<", "%(", "{{", "***")):
        return False
    classes = sum(1 for c in _CLASSES if c.search(value))
    return classes >= 2 and entropy(value) >= 3.0


class Redactor:
    def __init__(self, rules: tuple[tuple[str, str, str], ...] = RULES) -> None:
        options = re2.Options()
        options.max_mem = 64 << 20
        self.pattern = re2.compile("|".join(f"(?P<{name}_{i}>{p})" for i, (name, p, _) in enumerate(rules)), options)
        index = self.pattern.groupindex
        # outer group name -> (secret type, index of the group to replace; 0 = whole match)
        self.groups = {f"{name}_{i}": (name, index[group] if group else 0) for i, (name, _, group) in enumerate(rules)}

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        found: list[tuple[int, int, str]] = []
        for match in self.pattern.finditer(text):
            if len(found) >= MAX_MATCHES:
                found.append((match.start(), len(text), "withheld_too_many_secrets"))
                break
            name, group = self.groups[match.lastgroup]
            start, end = match.span(group)
            if group and not looks_secret(text[start:end]):
                continue
            found.append((start, end, name))
        return found

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        spans = self.spans(text)
        if not spans:
            return text, {}
        counts: collections.Counter[str] = collections.Counter()
        out = []
        last = 0
        for start, end, kind in spans:
            out.append(text[last:start])
            out.append(marker(kind))
            counts[kind] += 1
            last = end
        out.append(text[last:])
        return "".join(out), dict(counts)

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a stream of chunks without letting a secret slip through a cut."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.pending = ""
        self.counts: collections.Counter[str] = collections.Counter()

    def _cut(self, text: str) -> int:
        cut = text.rfind("\n") + 1
        begin = text.rfind("-----BEGIN", 0, cut)
        if begin >= 0 and len(text) - begin < PEM_HOLD:
            end = _PEM_END.search(text, begin)
            if end is None or end.end() > cut:
                cut = begin  # a key block not closed before the cut: wait for its END line
        if cut == 0 and len(text) > MAX_HOLD:
            cut = text.rfind(" ", 0, len(text) - 1024) + 1 or len(text)
        return cut

    def feed(self, text: str) -> str:
        text = self.pending + text
        cut = self._cut(text)
        self.pending = text[cut:]
        return self._emit(text[:cut])

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return self._emit(text)

    def _emit(self, text: str) -> str:
        if not text:
            return ""
        redacted, found = self.redactor.redact(text)
        self.counts.update(found)
        return redacted
