"""Property-based fuzzing of the language detector (supervisor/policy/detect.py).

The broker runs ``unfence`` on the code of every request and ``detect`` on
every "auto" one, in its single thread, before any rate limit: for any code
(up to the profile's 1 MiB) and any fence hint, each must answer, in time
linear in the code. The answer is a ``Guess`` from its closed sets; a
fenced block comes back as its body.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.policy.detect import ALIASES, Guess, detect, unfence

LANGUAGES = set(ALIASES.values())
CONFIDENCES = {"certain", "likely", "ambiguous", "unknown"}
# Pieces of real code in each language, shuffled into programs that look
# half like one language and half like another: where the classifier's
# regular expressions do their work (and could backtrack).
PIECES = [
    "import os\n", "def f(x):\n", "    return x\n", "print(f'{x}')\n", "class A:\n", "if x:\n", "for i in range(3):\n",
    "const x = 1;\n", "let y = [1, 2]\n", "console.log(x)\n", "function g() {\n", "}\n", "=> ", "===",
    "require('fs')\n", "import { a } from 'b'\n", "echo $HOME\n", "if [ -f x ]; then\n", "fi\n", "for f in *; do\n",
    "done\n", "ls | grep a\n",
    "x=1\n", "import Foundation\n", "func h(a: Int) -> Int {\n", "guard let z = q else {\n", 'print("\\(x)")\n',
    "struct S {\n", "for i in 0..<3 {\n", "xs.map { $0 * 2 }\n", "#!/usr/bin/env python3\n", "```python\n", "```\n",
    "~~~\n", "{", "[", "\n", " ", "\t", "let ", "import ", "func a(", "struct A", "`", "\\", "$", ":", ";", "'", '"',
]
code_st = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(PIECES), max_size=60).map("".join),
    st.tuples(st.lists(st.sampled_from(PIECES), max_size=4).map("".join), st.integers(1, 2000)).map(
        lambda piece_times: piece_times[0] * piece_times[1]
    ),
)
hint_st = st.one_of(st.just(""), st.sampled_from(sorted(ALIASES)), st.text(max_size=20))


def _check(guess: Guess) -> None:
    assert isinstance(guess, Guess)
    assert guess.language is None or guess.language in LANGUAGES
    assert guess.confidence in CONFIDENCES
    assert (guess.language is None) == (guess.confidence in ("ambiguous", "unknown"))
    assert all(alt in LANGUAGES for alt in guess.alternatives)


@given(code_st, hint_st)
def test_any_code_and_hint_give_a_guess_from_the_closed_sets(code: str, hint: str) -> None:
    _check(detect(code, hint))


@given(code_st)
def test_unfence_gives_the_code_and_a_one_line_info(code: str) -> None:
    body, info = unfence(code)
    assert "\n" not in info and "`" not in info and info == info.strip()
    if body != code:  # taken off: the code opened with a fence line, and what is left is inside it
        assert code.strip("\n").lstrip(" ").startswith(("```", "~~~")) and body.endswith("\n")
        assert len(body) < len(code)
    else:
        assert info == ""
    _check(detect(body, info))


@given(
    st.sampled_from(["```", "````", "~~~"]),
    st.sampled_from(sorted(ALIASES)),
    st.text(st.characters(blacklist_characters="`~\r"), max_size=200),
    st.booleans(),
)
def test_a_fenced_block_comes_back_as_its_body(fence: str, tag: str, body: str, closed: bool) -> None:
    body = body.strip("\n")
    if not body.strip() or body.lstrip(" ").startswith(("```", "~~~")):
        return
    pasted = f"{fence}{tag}\n{body}\n" + (f"{fence}\n" if closed else "")
    code, info = unfence(pasted)
    assert info == tag and code == body + "\n"
    guess = detect(code, info)
    assert guess.language == ALIASES[tag] and guess.confidence == "certain"


# Found by fuzzing: inputs on which the detector's regular expressions
# backtracked for minutes to hours (in the broker's single thread, before
# any rate limit). Each is at most the default profile's 1 MiB of code; each
# must now take a moment. The per-test timeout is what fails them: no
# timing is asserted.
SLOW_BEFORE = {
    "blank lines": "\n" * (1 << 20) + "x",
    "a fence never closed on its line": "```" + " " * (1 << 20),
    "tildes": "~" * (1 << 20),
    "import without from": "import a " * (1 << 17),
    "let without =": "let " * (1 << 18),
    "swift struct without {": "struct A\n" * (1 << 17),
    "func without )": "func a(" * (1 << 17),
    "for in without do": "for a in \n" * (1 << 17),
    "a shebang of digits": "#!" + "1" * (1 << 20) + "x\n",
    "nested brackets": "[" * (1 << 20),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", SLOW_BEFORE.values(), ids=SLOW_BEFORE.keys())
def test_found_no_input_makes_the_detector_backtrack(code: str) -> None:
    body, info = unfence(code)
    _check(detect(body, info))
    _check(detect(code, "auto"))


def test_found_a_hint_of_only_spaces_is_no_hint() -> None:
    """Found by the first property: ``detect(code, " ")`` raised IndexError (the console
    passes a block's fence info as the hint, unstripped)."""
    for hint in (" ", "\t", "  \n"):
        _check(detect("print(1)\n", hint))
