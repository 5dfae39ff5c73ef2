"""Language detection over real-looking snippets, including the hard ones."""

from __future__ import annotations

import tempfile
import time

import pytest

from protocol import messages as m
from protocol.profile import Profile
from supervisor.config import Config
from supervisor.policy import Admitted, Policy, Refused
from supervisor.policy.detect import detect

PYTHON = [
    "import numpy as np\nx = np.arange(10)\nprint(x.mean())\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nprint(fib(20))\n",
    "with open('data.csv') as f:\n    for line in f:\n        print(line.strip())\n",
    "print('hello, world')",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "import requests\nr = requests.get('https://api.github.com')\nprint(r.status_code)",
    "squares = [n * n for n in range(10) if n % 2]\nprint(f'{squares=}')",
]
JAVASCRIPT = [
    "const xs = [1, 2, 3].map(x => x * 2);\nconsole.log(xs);",
    "function greet(name) {\n  return `hi ${name}`;\n}\nconsole.log(greet('you'));",
    "const fs = require('fs');\nfs.readdirSync('.').forEach(f => console.log(f));",
    "let total = 0;\nfor (let i = 0; i < 10; i++) { total += i; }\nconsole.log(total);",
    "import { readFile } from 'fs/promises';\nconst text = await readFile('x.txt', 'utf8');",
    "const sleep = (ms) => new Promise(r => setTimeout(r, ms));\n(async () => { await sleep(10); })();",
]
SHELL = [
    "ls -la /tmp | grep log",
    'for f in *.txt; do\n  echo "$f"\ndone',
    "if [ -f /etc/os-release ]; then\n  cat /etc/os-release\nfi",
    "export PATH=$HOME/bin:$PATH\necho $PATH",
    "curl -s https://example.com > /dev/null && echo ok || echo down",
    'NAME=world\necho "hello ${NAME}"',
    "pip install requests\npython3 -c 'import requests'",
]


@pytest.mark.parametrize("code", PYTHON)
def test_python(code: str) -> None:
    guess = detect(code)
    assert guess.language == "python", guess


@pytest.mark.parametrize("code", JAVASCRIPT)
def test_javascript(code: str) -> None:
    guess = detect(code)
    assert guess.language == "javascript", guess


@pytest.mark.parametrize("code", SHELL)
def test_shell(code: str) -> None:
    guess = detect(code)
    assert guess.language == "bash", guess


def admitted_language(code: str, language: str = "auto") -> tuple[str | None, str]:
    """Through the real caller: what the broker's policy makes of a pasted block."""
    with tempfile.TemporaryDirectory() as state:
        policy = Policy(Config(), Profile(), state, time.time)
        try:
            request = m.ExecuteRequest(id="r", code=code, language=language, client_id="t")
            decision = policy.admit("conn", request, lambda req: (req.language, None))
        finally:
            policy.close()
    if isinstance(decision, Admitted):
        return decision.runtime, decision.request.code
    assert isinstance(decision, Refused)
    return None, decision.result.error.message if decision.result.error else ""


@pytest.mark.parametrize(
    ("fence", "language"),
    [
        ("py", "python"),
        ("js", "javascript"),
        ("sh", "bash"),
        ("console", "bash"),
        ("python3 title=x.py", "python"),
        ("{.swift}", "swift"),
    ],
)
def test_a_fence_says_the_language_and_is_taken_off(fence: str, language: str) -> None:
    runtime, code = admitted_language(f"```{fence}\necho this would look like shell\n```\n")
    assert (runtime, code) == (language, "echo this would look like shell\n")


def test_a_fence_is_taken_off_when_the_language_is_given_too() -> None:
    assert admitted_language("```js\nconsole.log(1)\n```", "javascript") == ("javascript", "console.log(1)\n")
    assert admitted_language("~~~\nprint(1)\n~~~", "python") == ("python", "print(1)\n")


def test_an_unclosed_fence_and_code_that_only_mentions_one() -> None:
    assert admitted_language("```python\nprint(1)\n") == ("python", "print(1)\n")
    inner = "print('```')\n"
    assert admitted_language(inner, "python") == ("python", inner)


@pytest.mark.parametrize(
    ("code", "language"),
    [
        ("#!/usr/bin/env python3\nprint(1)", "python"),
        ("#!/usr/bin/env node\nconsole.log(1)", "javascript"),
        ("#!/bin/bash\necho hi", "bash"),
        ("#!/bin/sh\nls", "bash"),
        ("#!/usr/bin/python3.11\nx = 1", "python"),
    ],
)
def test_shebang(code: str, language: str) -> None:
    guess = detect(code)
    assert (guess.language, guess.confidence) == (language, "certain")


def test_python_one_liner_that_is_also_valid_shell_is_ambiguous() -> None:
    # "x=1" is an assignment in both; nothing decides between them.
    guess = detect("x=1")
    assert guess.language is None and guess.confidence == "ambiguous"
    assert set(guess.alternatives) == {"python", "bash"}


def test_a_bare_command_is_shell_even_though_python_parses_it() -> None:
    assert (detect("ls").language, detect("ls").confidence) == ("bash", "likely")
    assert detect("ls -la").language == "bash"  # not valid Python at all


def test_json_is_not_a_program() -> None:
    guess = detect('{"name": "cellblock", "tags": [1, 2, 3]}')
    assert guess.language is None and "JSON" in guess.reason


def test_empty_and_prose() -> None:
    assert detect("   ").confidence == "unknown"
    prose = detect("This is just an English sentence about nothing in particular.")
    assert (prose.language, prose.confidence) == (None, "unknown")
