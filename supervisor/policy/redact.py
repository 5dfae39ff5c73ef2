"""Secret redaction, done by the broker (trusted), over the whole output.

Each secret found is replaced by a marker naming its type,
``[REDACTED:github_token]``; the result lists types and counts, never the
secret. The rules (``secret_rules``) follow the formats the issuers publish,
checked against gitleaks' default rule set. This protects against accidental
leaks, not a hostile program: code that holds a secret can always encode it
past any filter. The real defence is that a sandbox holds no secrets.

How a text is read, all in linear time (google-re2, over UTF-8 bytes):

1. One pass of all rules as one pattern (no capture groups, so RE2 stays in
   its DFA). A match is then named by an anchored ``re2.Set`` and judged by
   its rule's check: a format is evidence; a value after a password-like name
   is a secret whatever its entropy; a value after a key-like or provider
   name must look random. The line of an AWS key id or of the word ``aws`` is
   read for a 40-character secret key passed by position.
2. One pass for what the first cannot see: a known prefix whose token runs
   across one line break (terminal wrapping, ``\\r`` progress lines), and a
   known prefix printed hex-, base64(url)- or percent-encoded. Each candidate
   is joined or decoded (one level) and read by pass 1; only candidates carry
   that cost, so hashes and image blobs in ordinary output are not decoded.

Python's ``re`` took 25-400 ms per MiB for the old, smaller rule set and can
backtrack on hostile input; detect-secrets 1.5 (Python ``re``, line by line,
through plugin objects) took 5.4 s per MiB of the scorecard's ordinary output
and flagged 252 things in it, so the rules are our own. The broker reads output chosen by
the code it sandboxes, so linear time is a security property, not only a
speed one. Each text is bounded too: past ``MAX_MATCHES`` secrets or a
budget of candidates the rest of it is withheld, not scanned (fails closed).

Streaming: ``StreamRedactor`` emits text up to its last line break. It holds
back an open private key block (until its END line or a blank line; one held
past ``PEM_HOLD`` is emitted redacted and what follows is swallowed until the
block ends), and a last line ending in a known token prefix (its second half
may come with the next line). The stream redactors of one run see each
other: when a chunk arrives on one stream while the other holds an
unfinished line, the place where the two meet (as a terminal shows them) is
read too, so a token whose halves go to stdout and stderr back to back is
redacted in both. If the second half reached the broker first, it has gone
out already; the first is hidden, and ``ResultRedactor`` hides both in the
run's final result.
"""

from __future__ import annotations

import base64
import binascii
import collections
import math
import urllib.parse
from collections.abc import Iterable

import re2  # type: ignore[import-untyped]

from supervisor.policy.secret_rules import PROVIDERS, RULES, Check, Rule

MAX_HOLD = 64 * 1024  # a line longer than this is emitted at its last space
# Past this many secrets in one text the rest of it is withheld, not scanned
# further: each costs the broker some microseconds, and output chosen by
# hostile code must not buy seconds of broker time. Failing closed keeps it safe.
MAX_MATCHES = 1000
# Candidates judged (most are rejected: password=None) before the rest is
# withheld: one per 256 bytes, at least 2000. Ordinary output has about one per
# 1000 bytes at most; a flood of them costs the broker ~100 ms per MiB.
MIN_CHECKS, CHECK_EVERY = 2000, 256
PEM_HOLD = 32 * 1024  # an open private key block is held back at most this long
DECODE_WINDOW = 2048  # encoded characters decoded after an encoded prefix
JUNCTION = 1024  # characters of each stream read where two streams meet
AWS_REACH = 256  # bytes either side of an AWS context read for a secret key
WITHHELD = "withheld_too_many_secrets"

Span = tuple[int, int, str]

_VALUE_GROUPS = ("v", "q", "s", "u")
_DIGITS = b"0123456789"
_BREAK = r"(?:\r\n|\r|\n)"
_TOKEN = r"[\w.+/=~$-]"  # noqa: S105 - the characters of a token
_STOPWORDS = frozenset(
    "none null nil true false undefined required optional hidden redacted masked changed updated set unset "
    "empty missing invalid incorrect wrong expired str string bytes int any password passwd secret token "
    "self cls getpass input prompt environ env value example sample dummy placeholder changeme".split()
)
_PLACEHOLDERS = ("[REDACTED", "${", "$(", "<", "%(", "%s", "{{", "{", "#{", "***", "xxx", "XXX", "...", "\u2026")


def marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def entropy(value: str) -> float:
    counts = collections.Counter(value)
    total = len(value)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = 256 << 20
    return options


def _compile(pattern: str) -> re2._Regexp:
    return re2.compile(pattern.encode(), _options())


def _names(pattern: re2._Regexp) -> dict[str, int]:
    return {name.decode(): index for name, index in pattern.groupindex.items()}


def _bare(pattern: str) -> str:
    """The pattern without capture groups (RE2's DFA can then find a match alone)."""
    return str(re2.sub(r"\(\?P<\w+>", "(?:", pattern))


def _classes(value: str) -> int:
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(not c.isalnum() for c in value)
    )


_CODE = re2.compile(
    r"[A-Za-z_]\w{0,30}(?:\.[A-Za-z_]\w{0,30})+(?:[(\[].*)?|[A-Za-z_]\w*[(\[].*|[a-z]+(?:_[a-z]+)+|[A-Z][A-Z_]*|\$\w+"
)
_SCHEME = re2.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,20}://.*")
_WORD_AFTER = re2.compile(r"[ \t]+[A-Za-z]")


def _placeholder(value: str) -> bool:
    stripped = value.strip()
    return (
        not stripped
        or stripped.lower() in _STOPWORDS
        or stripped.startswith(_PLACEHOLDERS)
        or set(stripped) <= set("*xX.#-_\u2022")
    )


def password_value(value: str, bare: bool, prose_follows: bool) -> bool:
    """A value given to a password-like name: a secret whatever its entropy,
    unless it is a placeholder, or (unquoted) code, a path or a word of prose."""
    if _placeholder(value) or not any(c.isalnum() for c in value):
        return False
    if bare:
        if value[0] in "=!" or value.startswith(("/", "./", "../", "~/")):
            return False  # a comparison (==), or a path
        if _CODE.fullmatch(value):
            return False  # self.password, getpass(, user_input, METAVAR, $VAR
        if prose_follows and value.isalpha():
            return False  # "password: must be at least 8 characters"
    return True


def random_value(value: str) -> bool:
    """A value given to a key-like or provider name: it must look random."""
    if len(value) < 10 or " " in value or _placeholder(value):
        return False
    if _CODE.fullmatch(value) or _SCHEME.fullmatch(value) or value.startswith(("/", "./", "~/")):
        return False
    return _classes(value) >= 2 and entropy(value) >= 3.0


def _aws_secret(value: str) -> bool:
    return _classes(value) >= 3 and entropy(value) >= 4.0


class _Prefixes:
    """Literal token starts and their encoded forms: what pass 2 looks for."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.plain = sorted({p for r in rules for p in r.prefixes if len(p) >= 3}, key=len, reverse=True)

    def hex_forms(self) -> list[str]:
        return sorted({p.encode().hex() for p in self.plain if len(p) >= 4})

    def base64_forms(self) -> list[str]:
        """For each prefix, the base64 characters its bytes fix whatever the
        two bytes before it are (three alignments), in both alphabets."""
        forms = set()
        for prefix in self.plain:
            raw = prefix.encode()
            if len(raw) < 3:
                continue
            for k in range(3):
                text = base64.b64encode(b"\0" * k + raw).decode()
                first = -(-8 * k // 6)  # the first character whose 6 bits all come from the prefix
                last = (8 * (k + len(raw))) // 6  # one past the last such character
                stable = text[first:last]
                if len(stable) >= 4:
                    forms.add(stable)
                    forms.add(stable.replace("+", "-").replace("/", "_"))
        return sorted(forms)

    def splits(self) -> list[str]:
        """Each prefix broken by one line break at each place inside it."""
        out = []
        for prefix in self.plain:
            for i in range(1, len(prefix)):
                out.append(re2.escape(prefix[:i]) + _BREAK + re2.escape(prefix[i:]))
        return out


class Redactor:
    def __init__(self, rules: tuple[Rule, ...] = RULES) -> None:
        self.rules = rules
        self.main = _compile("|".join(f"(?:{_bare(r.loose or r.pattern)})" for r in rules))
        self.single = [_compile(r.pattern) for r in rules]
        names = [_names(p) for p in self.single]
        self.groups = [[n[g] for g in _VALUE_GROUPS if g in n] for n in names]
        self.bare_group = [n.get("u", -1) for n in names]
        self.which = re2.Set.MatchSet(_options())
        for rule in rules:
            self.which.Add(_bare(rule.loose or rule.pattern).encode())
        self.which.Compile()
        prefixes = _Prefixes(rules)
        plain = "|".join(re2.escape(p) for p in prefixes.plain)
        self.second = _compile(
            "|".join(
                (
                    rf"(?P<wrap>\b(?:{plain}){_TOKEN}*{_BREAK}{_TOKEN}+)",
                    rf"(?P<split>\b(?:{'|'.join(prefixes.splits())}){_TOKEN}*)",
                    rf"(?P<hex>[0-9A-Fa-f]*(?P<hexhit>(?i:{'|'.join(prefixes.hex_forms())}))[0-9A-Fa-f]*)",
                    rf"(?P<b64>[A-Za-z0-9+/_-]*(?P<b64hit>{'|'.join(re2.escape(f) for f in prefixes.base64_forms())})"
                    r"[A-Za-z0-9+/_-]*={0,2})",
                    r"(?P<pct>[\w.~+/=%-]*(?i:%40|%24|hooks\.slack\.com%2F|discord(?:app)?\.com%2F)[\w.~+/=%-]*)",
                )
            )
        )
        self.kinds = {name: _names(self.second)[name] for name in ("wrap", "split", "hex", "hexhit", "b64", "b64hit")}
        self.aws_candidate = _compile(r"(?:^|[^A-Za-z0-9/+=])(?P<v>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)")

    # --- finding ---------------------------------------------------------------------------------

    def find(self, data: bytes) -> list[Span]:
        """Byte spans of the secrets in UTF-8 ``data``: sorted, not overlapping."""
        budget = [max(MIN_CHECKS, len(data) // CHECK_EVERY)]
        found, contexts = self._primary(data, budget)
        found += self._aws_lines(data, contexts)
        if len(found) < MAX_MATCHES:
            found += self._secondary(data, found, [MAX_MATCHES])  # each costs a decode: fewer
        return _merge(found, len(data))

    def _rule_at(self, data: bytes, start: int, end: int) -> tuple[int, re2._Match] | None:
        """The first rule (in order) whose exact pattern matches at ``start``."""
        window = data[start : max(end, start + 4096)]
        for index in sorted(self.which.Match(window) or ()):
            match = self.single[index].match(data, start)
            if match is not None:
                return index, match
        return None

    def _primary(self, data: bytes, budget: list[int], formats_only: bool = False) -> tuple[list[Span], list[int]]:
        found: list[Span] = []
        contexts: list[int] = []
        pos = 0
        while True:
            match = self.main.search(data, pos)
            if match is None:
                break
            start, end = match.span()
            if len(found) >= MAX_MATCHES or budget[0] <= 0:
                found.append((start, len(data), WITHHELD))
                break
            budget[0] -= 1
            pos = end if end > start else start + 1
            named = self._rule_at(data, start, end)
            if named is None:  # a loose pattern matched where its exact one does not
                pos = start + 1
                continue
            index, single = named
            rule = self.rules[index]
            if rule.gap:
                pos = start + 1  # what the match skipped over is read again
            if rule.check is Check.CONTEXT or (formats_only and rule.check is not Check.FORMAT):
                contexts.append(start)
                continue
            span, value_start = self._judge(data, rule, index, single)
            if span is not None:
                found.append(span)
                if rule.kind == "aws_access_key":
                    contexts.append(start)
            elif rule.check is not Check.FORMAT:
                pos = max(pos if rule.gap else start + 1, value_start)  # the value is read again
        return found, contexts

    def _judge(self, data: bytes, rule: Rule, index: int, match: re2._Match) -> tuple[Span | None, int]:
        """(the secret's span or None, where its value starts)."""
        start, end = match.span()
        group = next((g for g in self.groups[index] if match.start(g) >= 0), 0)
        if group:
            start, end = match.span(group)
        kind = rule.kind
        if rule.check is not Check.FORMAT:
            value = data[start:end].decode("utf-8", "replace")
            if rule.check is Check.PASSWORD:
                bare = group == self.bare_group[index]
                prose = bare and value.isalpha() and _WORD_AFTER.match(data, end) is not None
                if not password_value(value, bare, prose):
                    return None, start
            elif not random_value(value):
                return None, start
            if rule.kind == "provider_secret":
                kind = _provider_kind(data[match.start() : start])
            inner = self._primary(data[start:end], [16], formats_only=True)[0] if end - start >= 10 else []
            if inner and inner[0][2] != WITHHELD:
                kind = inner[0][2]  # a known token given to a name keeps its own type
        elif kind == "private_key":
            block = data[start:end]
            if not block.endswith(b"-----"):
                end = start + len(block.rstrip())  # ended by a blank line or the end: keep the blank line
        return (start, end, kind), start

    def _aws_lines(self, data: bytes, contexts: list[int]) -> list[Span]:
        """40-character secret keys on the line of an AWS context, within
        ``AWS_REACH`` bytes of it."""
        found: list[Span] = []
        done = 0
        for pos in contexts:
            begin = max(done, data.rfind(b"\n", max(0, pos - AWS_REACH), pos) + 1, pos - AWS_REACH)
            stop = data.find(b"\n", pos, pos + AWS_REACH)
            stop = min(len(data), pos + AWS_REACH) if stop < 0 else stop
            if begin >= stop:
                continue
            done = stop
            for match in self.aws_candidate.finditer(data, begin, stop):
                value = match.group(1).decode()
                if _aws_secret(value):
                    found.append((match.start(1), match.end(1), "aws_secret_key"))
        return found

    def _secondary(self, data: bytes, primary: list[Span], budget: list[int]) -> list[Span]:
        """Tokens across one line break, and encoded tokens (see the module docstring)."""
        found: list[Span] = []
        covered = sorted((s, e) for s, e, _ in primary)
        for match in self.second.finditer(data):
            if budget[0] <= 0 or len(found) >= MAX_MATCHES:
                found.append((match.start(), len(data), WITHHELD))
                break
            budget[0] -= 1
            start, end = match.span()
            group = self.kinds
            wrapped = match.start(group["wrap"]) >= 0 or match.start(group["split"]) >= 0
            if _inside(covered, start) and not wrapped:
                continue  # pass 1 found a secret here already
            if wrapped:
                found += self._joined(data, start, end)
            elif match.start(group["hex"]) >= 0:
                found += self._decoded_hex(data, match.start(group["hexhit"]), end)
            elif match.start(group["b64"]) >= 0:
                found += self._decoded_base64(data, start, match.start(group["b64hit"]), end)
            else:
                found += self._decoded_percent(data, start, end)
        return found

    def _joined(self, data: bytes, start: int, end: int) -> list[Span]:
        """A token across one line break. When the part before the break is a
        known token by itself, what follows the break is taken into it only if
        it looks like the rest of a token, not a next word."""
        candidate = data[start:end]
        cut = min(i for i in (candidate.find(b"\r"), candidate.find(b"\n")) if i >= 0)
        width = 2 if candidate[cut : cut + 2] == b"\r\n" else 1
        joined = candidate[:cut] + candidate[cut + width :]
        whole_before = any(e == cut for _, e, _ in self._primary(candidate[:cut], [16], formats_only=True)[0])
        spans = []
        for s, e, kind in self._primary(joined, [16])[0]:
            if s < cut < e and kind != WITHHELD:
                rest = joined[cut:e]
                if whole_before and not (len(rest) >= 16 or (len(rest) >= 4 and any(c in _DIGITS for c in rest))):
                    continue
                spans.append((start + s, start + e + width, kind))
        return spans

    def _decoded_hex(self, data: bytes, hit: int, end: int) -> list[Span]:
        stop = min(end, hit + DECODE_WINDOW)
        stop -= (stop - hit) % 2
        try:
            decoded = bytes.fromhex(data[hit:stop].decode())
        except ValueError:
            return []
        return [
            (hit + 2 * s, min(end, hit + 2 * e), kind)
            for s, e, kind in self._primary(decoded, [16])[0]
            if kind != WITHHELD
        ]

    def _decoded_base64(self, data: bytes, run: int, hit: int, end: int) -> list[Span]:
        # The prefix's first fixed character sits 0, 2 or 3 characters into its
        # 4-character group when the prefix starts 0, 1 or 2 bytes into it.
        for back, skip in ((0, 0), (2, 1), (3, 2)):
            first = hit - back
            if first < run:
                continue
            stop = min(end, first + DECODE_WINDOW)
            chunk = data[first:stop].rstrip(b"=").replace(b"-", b"+").replace(b"_", b"/")
            chunk = chunk[: len(chunk) - len(chunk) % 4] if len(chunk) % 4 == 1 else chunk
            try:
                decoded = base64.b64decode(chunk + b"=" * (-len(chunk) % 4))[skip:]
            except (binascii.Error, ValueError):
                continue
            spans = [x for x in self._primary(decoded, [16])[0] if x[2] != WITHHELD]
            if spans:
                out = []
                for s, e, kind in spans:
                    a, b = first + 4 * (s + skip) // 3, min(end, first + -(-4 * (e + skip) // 3))
                    if e == len(decoded):
                        b = end  # reached the end of what was decoded: the token (a key block) goes on
                    out.append((run if a - run < 4 else a, end if end - b < 4 else b, kind))
                return out
        return []

    def _decoded_percent(self, data: bytes, start: int, end: int) -> list[Span]:
        decoded = urllib.parse.unquote_to_bytes(data[start:end])
        spans = [x for x in self._primary(decoded, [16])[0] if x[2] != WITHHELD]
        return [(start, end, spans[0][2])] if spans else []

    # --- text in, text out -----------------------------------------------------------------------

    def spans(self, text: str) -> list[Span]:
        """Character spans of the secrets in ``text``."""
        data = text.encode("utf-8", "surrogatepass")
        found = self.find(data)
        if len(data) == len(text):
            return found
        return _char_spans(data, found)

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        out, counts, _ = self.redact_open(text)
        return out, counts

    def redact_open(self, text: str) -> tuple[str, dict[str, int], bool]:
        """(redacted text, counts per type, whether a private key block is still open at its end)."""
        data = text.encode("utf-8", "surrogatepass")
        spans = self.find(data)
        if not spans:
            return text, {}, False
        counts: collections.Counter[str] = collections.Counter()
        out = []
        last = 0
        for start, end, kind in spans:
            out.append(data[last:start])
            out.append(marker(kind).encode())
            counts[kind] += 1
            last = end
        out.append(data[last:])
        start, end, kind = spans[-1]
        tail = data[end:]
        still_open = (
            kind == "private_key"
            and not data[start:end].endswith(b"-----")
            and not tail.strip()
            and _KEY_END.search(tail) is None
        )
        return b"".join(out).decode("utf-8", "surrogatepass"), dict(counts), still_open

    def stream(self, peers: dict[str, StreamRedactor] | None = None) -> StreamRedactor:
        """A redactor for one stream; ``peers`` holds the run's other streams' (and is joined)."""
        return StreamRedactor(self, peers)


def _provider_kind(name: bytes) -> str:
    words = re2.findall(rb"[A-Za-z0-9]+", name.lower())
    provider = next((w.decode() for w in words if w.decode() in _PROVIDER_SET), "provider")
    return f"{provider}_secret"


_PROVIDER_SET = frozenset(PROVIDERS.split("|"))


def _inside(covered: list[tuple[int, int]], pos: int) -> bool:
    for start, end in covered:
        if start <= pos < end:
            return True
        if start > pos:
            break
    return False


def _merge(found: list[Span], length: int) -> list[Span]:
    """Sorted, overlapping spans joined (the longer one's type names the union)."""
    found.sort()
    merged: list[Span] = []
    for start, end, kind in found:
        if merged and start < merged[-1][1]:
            s, e, k = merged[-1]
            longer = kind if end - start > e - s else k
            merged[-1] = (s, max(e, end), WITHHELD if WITHHELD in (k, kind) else longer)
        else:
            merged.append((start, min(end, length), kind))
    return merged


def _char_spans(data: bytes, spans: list[Span]) -> list[Span]:
    chars = 0
    last = 0
    out = []
    for start, end, kind in spans:
        chars += len(data[last:start].decode("utf-8", "surrogatepass"))
        begin = chars
        chars += len(data[start:end].decode("utf-8", "surrogatepass"))
        last = end
        out.append((begin, chars, kind))
    return out


class StreamRedactor:
    """Redacts a stream of chunks without letting a secret slip through a cut."""

    def __init__(self, redactor: Redactor, peers: dict[str, StreamRedactor] | None = None) -> None:
        self.redactor = redactor
        self.pending = ""
        self.counts: collections.Counter[str] = collections.Counter()
        self.open_key = False  # inside a private key block emitted before its end came
        self.peers = peers if peers is not None else {}
        # Parts of secrets split across streams, with their type: the run's
        # final result holds each stream whole and must hide them too.
        self.fragments: list[tuple[str, str]] = []
        self.recent = ""  # the start of the last chunk, as it came: a late first half may meet it

    def feed(self, text: str) -> str:
        text = self._meet_peers(text)
        self.recent = text[:JUNCTION]
        text = self.pending + text
        self.pending = ""
        if self.open_key:
            text = self._close_key(text)
            if self.open_key:
                return ""
        cut = self._cut(text)
        self.pending = text[cut:]
        return self._emit(text[:cut])

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        if self.open_key:
            text = self._close_key(text)
            self.pending, self.open_key = "", False
        return self._emit(text)

    def _close_key(self, text: str) -> str:
        """Inside a key block already redacted up to its start: drop the rest
        of it (to its END line or a blank line), keep what follows."""
        end = _key_end(text, continued=True)
        if end is None:
            keep = text.rfind("\n") + 1
            self.pending = text[keep:] if len(text) - keep < PEM_HOLD else ""  # the END line may be cut in two
            return ""
        self.open_key = False
        if text[:end].endswith("-----"):  # the line break emitted after the marker stands for the one after END
            end += 2 if text.startswith("\r\n", end) else 1 if text.startswith("\n", end) else 0
        return text[end:]

    def _cut(self, text: str) -> int:
        cut = text.rfind("\n") + 1
        begin = text.rfind("-----BEGIN", 0, cut)
        opens = begin >= 0 and len(text) - begin < PEM_HOLD and _KEY_BEGIN.match(text, begin) is not None
        end = _key_end(text, begin) if opens else -1
        if end is None or (end is not None and end > cut):
            cut = begin  # a key block not closed before the cut: wait for its END line or a blank line
        elif cut and self._ends_in_prefix(text, cut):
            cut = text.rfind("\n", 0, cut - 1) + 1  # the last line may go on in the next one
        if cut == 0 and len(text) > MAX_HOLD:
            cut = text.rfind(" ", 0, len(text) - 1024) + 1 or len(text)
        return cut

    @staticmethod
    def _ends_in_prefix(text: str, cut: int) -> bool:
        """Does the last whole line end in a run that starts with a known token prefix?"""
        line_start = text.rfind("\n", 0, cut - 1) + 1
        tail = text[max(line_start, cut - 400) : cut].rstrip("\r\n")
        return _ENDS_IN_PREFIX.search(tail.encode("utf-8", "surrogatepass")) is not None

    def _meet_peers(self, text: str) -> str:
        """Read where this chunk meets another stream's output, as a terminal
        would show them: a secret across the meeting is hidden in both. Two
        writes at nearly the same time may reach the broker in either order,
        so both orders are read: the other stream's unfinished line, then
        this chunk; this chunk, then the other's unfinished line or (already
        sent on) the start of its last chunk. A part already sent cannot be
        called back; it is still hidden in the run's final result."""
        for peer in self.peers.values():
            if peer is self or not text:
                continue
            if peer.pending:
                text = self._meet(peer, text, peer_first=True)
            if peer.pending or peer.recent:
                text = self._meet(peer, text, peer_first=False)
        return text

    def _meet(self, peer: StreamRedactor, text: str, peer_first: bool) -> str:
        if peer_first:
            left, right = peer.pending[-JUNCTION:], text[:JUNCTION]
        else:
            left, right = text[-JUNCTION:], (peer.pending or peer.recent)[:JUNCTION]
        for start, end, kind in self.redactor.spans(left + right):
            if start < len(left) < end:
                head, tail = left[start:], right[: end - len(left)]
                if self._whole(head.rstrip("\r\n")) or self._whole(tail):
                    continue  # a secret by itself, met by more text: redacted in its own stream
                self.fragments += [(head, kind), (tail, kind)]
                peer.fragments += [(head, kind), (tail, kind)]
                self.counts[kind] += 1
                if peer_first:
                    peer.pending = peer.pending[: len(peer.pending) - len(head)] + marker(kind)
                    return marker(kind) + text[len(tail) :]
                if peer.pending:
                    peer.pending = marker(kind) + peer.pending[len(tail) :]
                return text[: len(text) - len(head)] + marker(kind)
        return text

    def _whole(self, part: str) -> bool:
        return any(s == 0 and e == len(part) for s, e, _ in self.redactor.spans(part)) if part else False

    def _emit(self, text: str) -> str:
        if not text:
            return ""
        redacted, found, still_open = self.redactor.redact_open(text)
        self.counts.update(found)
        self.open_key = still_open
        return redacted


class ResultRedactor:
    """Redacts a run's final output whole, and the parts of secrets its
    streams showed split across stdout and stderr (each part is no secret to
    a rule by itself)."""

    MIN_FRAGMENT = 6  # shorter parts tell too little to hide them wherever they appear

    def __init__(self, redactor: Redactor, fragments: Iterable[tuple[str, str]]) -> None:
        self.redactor = redactor
        self.fragments = sorted(
            {f for f in fragments if len(f[0]) >= self.MIN_FRAGMENT}, key=lambda f: len(f[0]), reverse=True
        )

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        out, counts = self.redactor.redact(text)
        found = collections.Counter(counts)
        for fragment, kind in self.fragments:
            if fragment in out:
                found[kind] += 1
                out = out.replace(fragment, marker(kind))
        return out, dict(found)


_KEY_BEGIN = re2.compile(r"-----BEGIN[ A-Z0-9_-]{0,40}PRIVATE KEY")
_KEY_HEADERS = re2.compile(r"(?:\r?\n[A-Za-z][\w-]*: ?[^\r\n]*)*(?:\r?\n)?")
_KEY_END = re2.compile(r"-----END[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----|(?P<blank>\r?\n[ \t]*\r?\n)")
_BLANK_FIRST = re2.compile(r"[ \t]*\r?\n")


def _key_end(text: str, begin: int = 0, continued: bool = False) -> int | None:
    """Where a key block ends in ``text``: after its END line, or before the
    blank line that ends it; None while it has not ended. ``begin`` is where
    its BEGIN line is, or (``continued``) the text starts inside its body,
    just after a line break."""
    if continued:
        if _BLANK_FIRST.match(text):
            return 0
    else:
        line = text.find("\n", begin)
        if line < 0:
            return None
        header = _KEY_HEADERS.match(text, line)
        begin = header.end() if header else line
    match = _KEY_END.search(text, begin)
    if match is None:
        return None
    return int(match.start()) if match.start(1) >= 0 else int(match.end())


_ENDS_IN_PREFIX = re2.compile(
    rb"(?:^|[^\w.+/=~$-])(?:" + "|".join(re2.escape(p) for p in _Prefixes(RULES).plain).encode() + rb")[\w.+/=~$-]*\z"
)
