"""Which language is this code block? A code-fence tag, a shebang, then the content.

The content classifier tries Python's own parser first, then weighs a few
cheap signs of JavaScript, shell and Swift. It answers with a confidence; when two
languages fit about equally it says "ambiguous" and names them, and the
broker then refuses to guess rather than run code in the wrong runtime.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Literal

import msgspec
import re2  # type: ignore[import-untyped]

ALIASES = {
    "py": "python",
    "python": "python",
    "python3": "python",
    "py3": "python",
    "ipython": "python",
    "js": "javascript",
    "javascript": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "mjs": "javascript",
    "cjs": "javascript",
    "esm": "javascript",
    "sh": "bash",
    "bash": "bash",
    "shell": "bash",
    "zsh": "bash",
    "console": "bash",
    "shell-session": "bash",
    "swift": "swift",
}
Confidence = Literal["certain", "likely", "ambiguous", "unknown"]


class Guess(msgspec.Struct, frozen=True, kw_only=True):
    language: str | None
    confidence: Confidence
    reason: str
    alternatives: list[str] = []


# The signs are RE2 (linear time, as for redaction): the broker runs them on
# client code of up to the profile's code cap, in its single thread, before
# any rate limit, and Python's backtracking engine took minutes to hours on
# inputs such as a megabyte of blank lines or "import a " repeated (found by
# tests/fuzz/test_fuzz_detect.py). They read the code as UTF-8 bytes; \w, \s
# and \b are ASCII's, which is what the keywords they look for are made of.
Signs = tuple[tuple[Any, int], ...]  # (an RE2 pattern, its weight)


def _signs(*table: tuple[str, int]) -> Signs:
    return tuple((re2.compile(pattern.encode()), weight) for pattern, weight in table)


JS_SIGNS = _signs(
    (r"\b(?:const|let|var)\s+[\w${}\[\],\s]+=", 3),
    (r"\bconsole\.(?:log|error|warn)\s*\(", 4),
    (r"\brequire\s*\(\s*['\"]", 4),
    (r"=>", 2),
    (r"\bfunction\s*\w*\s*\(", 3),
    (r"===|!==", 3),
    (r"(?m);\s*$", 1),
    (r"\bimport\s+[\w{}\s,*]+\s+from\s+['\"]", 3),
    (r"\bprocess\.(?:argv|env|exit|stdout)\b", 3),
    (r"\b(?:async|await)\b", 1),
)
SHELL_SIGNS = _signs(
    (
        # A command word not followed by "(", "=" or "." (RE2 has no lookahead:
        # the first thing after the word and its blanks is any other character, or the end).
        r"(?m)^\s*(?:echo|printf|cd|ls|grep|cat|export|source|mkdir|rm|cp|mv|chmod|curl|wget|apt|sudo|pip|npm|git|"
        r"find|sed|awk|tar|touch|head|tail|sort|uniq|wc|test|read|set|unset|alias|which|env)\b\s*(?:[^\s(=.]|\z)",
        3,
    ),
    (r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\$\(|\$\?|\$#|\$@", 3),
    (r"(?m)^\s*(?:if\s+\[|fi\s*$|then\s*$|done\s*$|do\s*$|esac\s*$|elif\s+\[)", 4),
    (r"\s(?:\|\||&&)\s|\s\|\s+\w|\s2>&1|\s>\s*/dev/null", 2),
    (r"^\s*\w+=[^=\s]", 1),
    (r"(?m)^\s*for\s+\w+\s+in\s+[^:]*;\s*do|^\s*while\s+.*;\s*do", 4),
)
PY_SIGNS = _signs(
    (r"(?m)^\s*(?:def|class)\s+\w+.*:\s*$", 4),
    (r"(?m)^\s*(?:import\s+\w+|from\s+[\w.]+\s+import\s)", 4),
    (r"\bprint\s*\(", 2),
    (r"(?m)^\s*(?:if|elif|for|while|with|try|except)\b.*:\s*$", 3),
    (r"\b(?:None|True|False|self|elif|lambda)\b", 1),
    (r"\bf['\"]", 1),
)
SWIFT_SIGNS = _signs(
    (r"\\\(", 3),  # string interpolation: "\(x)"
    (r"(?m)^\s*import\s+(?:Foundation|Glibc|Dispatch|Darwin|SwiftUI|UIKit|Combine)\s*$", 5),
    (r"\bfunc\s+\w+\s*(?:<[^>]*>)?\s*\([^)]*\)\s*(?:(?:async\s+)?(?:throws\s+)?->\s*[^{]+)?\{", 4),
    (r"\b(?:guard|if)\s+(?:let|var)\s+\w+", 4),
    (r"\b(?:let|var)\s+\w+\s*:\s*\[?[A-Z]\w*", 3),  # a typed binding: let x: Int
    (r"(?m)^\s*(?:struct|enum|protocol|extension)\s+[A-Z]\w*[^{]*\{", 4),
    (r"\bfor\s+\w+\s+in\s+[\w.]+\s*\.\.[.<]", 4),  # for i in 0..<n
    (r"(?m)^\s*(?:let|var)\s+\w+\s*=", 1),
    (r"(?m)^\s*print\s*\(", 2),  # JavaScript has no print(); Python's code parses
    (r"\$0\b|\.(?:map|filter|forEach|reduce|sorted)\s*\{", 4),  # closures: { $0 * 2 }
)


def _score(code: bytes, signs: Signs) -> int:
    return sum(weight for pattern, weight in signs if pattern.search(code))


def _python_parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


# Possessive (no backtracking): a first line of a megabyte of blanks or tildes
# without its newline took hours with "[ \t]*" before the info string.
_FENCE = re.compile(r"^(?P<fence>`{3,}+|~{3,}+)(?P<info>[^\n`]*+)\n")


def unfence(code: str) -> tuple[str, str]:
    """A Markdown code block as pasted: (the code inside, the fence's info string), or
    (the code as it was, "") when it is not fenced. The closing fence may be missing
    (an answer cut short); the first line of the code then stays line 1."""
    text = code.strip("\n")
    match = _FENCE.match(text.lstrip(" "))
    if match is None:
        return code, ""
    body = text.lstrip(" ")[match.end() :]
    lines = body.split("\n")
    fence = match["fence"]
    if lines and lines[-1].strip().startswith(fence[0] * len(fence)) and not lines[-1].strip().strip(fence[0]):
        lines.pop()
    return "\n".join(lines) + "\n", match["info"].strip()


def detect(code: str, hint: str = "") -> Guess:
    words = hint.strip().lower().split()  # a hint of only blanks is no hint
    if words:
        tag = words[0].split(",")[0].lstrip("{.").rstrip("}")
        if tag in ALIASES:
            return Guess(language=ALIASES[tag], confidence="certain", reason=f"code fence says {tag}")
    first = code.lstrip().split("\n", 1)[0]
    if first.startswith("#!"):
        words = first[2:].split()
        if words and words[0].endswith("/env"):
            words = [w for w in words[1:] if not w.startswith("-")]
        # python3.11 -> python; rstrip, not re.sub("[\d.]+$"): that was quadratic in a long word
        name = words[0].rsplit("/", 1)[-1].rstrip("0123456789.") if words else ""
        if name in ALIASES:
            return Guess(language=ALIASES[name], confidence="certain", reason=f"shebang names {name}")
    stripped = code.strip()
    if not stripped:
        return Guess(language=None, confidence="unknown", reason="there is no code")
    if stripped[0] in "[{":
        try:
            json.loads(stripped)
        except (ValueError, RecursionError):  # "[[[[..." nests past the interpreter's limit
            pass
        else:
            return Guess(language=None, confidence="unknown", reason="this is JSON data, not a program")
    parses = _python_parses(code)
    raw = code.encode("utf-8", "surrogatepass")  # a console's JSON may carry a lone surrogate
    py_signs = _score(raw, PY_SIGNS)
    # A one-line expression or assignment parses as Python whatever it was
    # meant to be ("ls -la" is a subtraction): parsing counts for little there.
    trivial = "\n" not in stripped and py_signs == 0
    scores = {
        "python": py_signs + ((1 if trivial else 3) if parses else -8),
        "javascript": _score(raw, JS_SIGNS),
        "bash": _score(raw, SHELL_SIGNS),
        "swift": _score(raw, SWIFT_SIGNS),
    }
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    (best, top), (second, runner_up) = ranked[0], ranked[1]
    if top <= 0:
        return Guess(
            language=None,
            confidence="unknown",
            reason="no language's signs are present",
            alternatives=[k for k, _ in ranked],
        )
    if top - runner_up < 2:
        return Guess(
            language=None,
            confidence="ambiguous",
            reason=f"could be {best} or {second}; say which",
            alternatives=[best, second],
        )
    confidence: Confidence = "likely" if top - runner_up < 5 else "certain"
    why = "parses as Python" if best == "python" and parses else f"reads like {best}"
    return Guess(language=best, confidence=confidence, reason=why)
