"""Redaction's hard cases through the real service, with streaming on.

Each test runs code in a real sandbox that prints a (fake) secret the hard
way, and checks both what was streamed (chunk by chunk, as a client shows
it) and the final result, then that history holds only counts per type.
"""

from __future__ import annotations

import base64
import textwrap
import urllib.parse
from typing import Any

import pytest

from protocol import messages as m
from protocol.client import Client
from tests.conftest import Service

pytestmark = pytest.mark.integration
GITHUB = "ghp_" + "FAKEdE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY"  # 36 after the prefix, as GitHub makes them
KEY_LINES = [
    "MIIEpAIBAAKCAQEAFAKEm2KqWQv3Xn8ykfJQvBf3aB3dE5fG7hI9jK1lM3nO5pQ7",
    "FAKEr8HBudxQylLM3O0JMMEGpRzpCKBtlYWOUSxQKNX0bmFVj8N6YplekEawg0qB",
]


def run(client: Client, code: str, **kwargs: Any) -> tuple[m.ExecuteResult, dict[str, str], list[m.OutputChunk]]:
    chunks: list[m.OutputChunk] = []
    result = client.execute(textwrap.dedent(code), on_chunk=chunks.append, **kwargs)
    assert result.status is m.Status.OK, result
    streamed = {name: "".join(c.data for c in chunks if c.stream == name) for name in ("stdout", "stderr")}
    return result, streamed, chunks


def shown(result: m.ExecuteResult, streamed: dict[str, str]) -> str:
    return "\n".join([result.stdout, result.stderr, streamed["stdout"], streamed["stderr"]])


def test_a_key_block_whose_end_line_never_comes(client: Client) -> None:
    code = f"""
    import sys, time
    print("loading key")
    print("-----BEGIN RSA PRIVATE KEY-----", flush=True)
    time.sleep(0.15)
    print("{KEY_LINES[0]}", flush=True)
    time.sleep(0.15)
    sys.stdout.write("{KEY_LINES[1]}"); sys.stdout.flush()
    """
    result, streamed, chunks = run(client, code)
    assert len(chunks) >= 2
    for text in (result.stdout, streamed["stdout"]):
        assert text == "loading key\n[REDACTED:private_key]"
    assert result.redactions == {"private_key": 1}


def test_a_key_block_ended_by_a_blank_line(client: Client) -> None:
    code = f"""
    import time
    print("-----BEGIN OPENSSH PRIVATE KEY-----\\n{KEY_LINES[0]}", flush=True)
    time.sleep(0.15)
    print("{KEY_LINES[1]}\\n\\nnext paragraph", flush=True)
    """
    result, streamed, _ = run(client, code)
    for text in (result.stdout, streamed["stdout"]):
        assert text == "[REDACTED:private_key]\n\nnext paragraph\n"


@pytest.mark.parametrize("brk", ["\\n", "\\r", "\\r\\n"])
def test_a_token_broken_by_one_line_break_in_two_writes(client: Client, brk: str) -> None:
    code = f"""
    import sys, time
    sys.stdout.write("token: {GITHUB[:21]}{brk}"); sys.stdout.flush()
    time.sleep(0.2)
    sys.stdout.write("{GITHUB[21:]}\\ndone\\n"); sys.stdout.flush()
    """
    result, streamed, chunks = run(client, code)
    assert len(chunks) >= 1
    for text in (result.stdout, streamed["stdout"]):
        assert GITHUB[:21] not in text and GITHUB[21:] not in text
        assert text == "token: [REDACTED:github_token]\ndone\n"
    assert result.redactions == {"github_token": 1}


def test_halves_in_separate_chunks_of_one_stream(client: Client) -> None:
    password_url = "postgres://admin:Sup3rS3cretPW@db.example.com/app"
    code = f"""
    import sys, time
    for part in ("url={password_url[:24]}", "{password_url[24:]} ok\\n"):
        sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.2)
    """
    result, streamed, chunks = run(client, code)
    assert len([c for c in chunks if c.stream == "stdout"]) >= 1
    for text in (result.stdout, streamed["stdout"]):
        assert "Sup3rS3cret" not in text and "S3cretPW" not in text
        assert text == "url=postgres://admin:[REDACTED:url_credentials]@db.example.com/app ok\n"


@pytest.mark.parametrize("first", ["stdout", "stderr"])
def test_halves_on_stdout_and_stderr_at_nearly_the_same_time(client: Client, first: str) -> None:
    second = "stderr" if first == "stdout" else "stdout"
    code = f"""
    import sys
    sys.{first}.write("key={GITHUB[:20]}"); sys.{first}.flush()
    sys.{second}.write("{GITHUB[20:]} end\\n"); sys.{second}.flush()
    """
    result, streamed, chunks = run(client, code)
    final = result.stdout + result.stderr
    assert GITHUB[:20] not in final and GITHUB[20:] not in final
    assert "[REDACTED:github_token]" in result.stdout and "[REDACTED:github_token]" in result.stderr
    # In the stream a half can show only when its chunk reached the broker
    # before the other half was written (then it had already gone out).
    first_half = next(c.seq for c in chunks if c.stream == first)
    second_half = next(c.seq for c in chunks if c.stream == second)
    if GITHUB[20:] in streamed[second]:
        assert second_half < first_half
    assert GITHUB[:20] not in streamed[first]
    assert "[REDACTED:github_token]" in streamed[first] or "[REDACTED:github_token]" in streamed[second]


@pytest.mark.parametrize(
    "encode",
    [
        "base64.b64encode(s.encode()).decode()",
        "base64.urlsafe_b64encode(b'\\x00' + s.encode()).decode().rstrip('=')",
        "s.encode().hex()",
        "urllib.parse.quote('https://deploy:' + s + '@git.example.com/r', safe='')",
    ],
)
def test_known_tokens_printed_encoded(client: Client, encode: str) -> None:
    code = f"""
    import base64, urllib.parse
    s = "{GITHUB}"
    print("value:", {encode})
    """
    expected = eval(encode, {"base64": base64, "urllib": urllib, "s": GITHUB})
    result, streamed, _ = run(client, code)
    for text in (result.stdout, streamed["stdout"]):
        assert expected[6:-6] not in text and "[REDACTED:" in text


@pytest.mark.parametrize(
    ("line", "secret", "kind"),
    [
        ("password=hunter2", "hunter2", "password_assignment"),
        ("hf_FAKEqwertyuiopasdfghjklzxcvbnmQWER", "FAKEqwertyuiop", "huggingface_token"),
        ("npm_FAKE0123456789abcdefghijklmnopqrstuv", "FAKE0123456789", "npm_token"),
        ("https://deploy:Tr1cky-pw@git.example.com/team/repo.git", "Tr1cky-pw", "url_credentials"),
        (
            'Session("AKIAFAKE0123456789XY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEKEY123")',
            "wJalrXUtnFEMI",
            "aws_secret_key",
        ),
    ],
)
def test_what_a_new_user_saw_in_plain_text(client: Client, line: str, secret: str, kind: str) -> None:
    result, streamed, _ = run(client, f"print({line!r})\n")
    assert secret not in shown(result, streamed)
    assert kind in result.redactions


def test_history_records_counts_per_type_and_never_a_secret(service: Service, client: Client) -> None:
    code = f"""
    import sys
    print("password=hunter2")
    print("{GITHUB}", file=sys.stderr)
    print("-----BEGIN PRIVATE KEY-----\\n{KEY_LINES[0]}")
    """
    result, _, _ = run(client, code, client_id="redaction-history")
    (entry,) = client.history(client_id="redaction-history").entries
    assert entry.run_id == result.run_id
    assert entry.redactions == {"password_assignment": 1, "github_token": 1, "private_key": 1}
    data = b"".join(p.read_bytes() for p in (service.directory / "state").glob("cellblock.sqlite*"))
    assert result.run_id.encode() in data
    for secret in ("hunter2", GITHUB, GITHUB[4:20], KEY_LINES[0][:20]):
        assert secret.encode() not in data
