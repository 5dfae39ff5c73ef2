"""Secret redaction: each rule, streamed chunks split anywhere, hostile floods."""

from __future__ import annotations

import pytest

from supervisor.policy.redact import MAX_MATCHES, Redactor

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75xDm2KqW\nQv3Xn8ykfJQvBf3=\n-----END RSA PRIVATE KEY-----"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
SECRETS = {
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5",
    "gitlab_token": "glpat-Xy9zW8vU7tS6rQ5pO4nM",
    "slack_token": "xoxb-1234567890-abcdefghij",
    "stripe_key": "sk_live_51HabcdefGHIJklmnop",
    "anthropic_key": "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012",
    "openai_key": "sk-proj-abcdefghijklmnopqrstuvwxyz012",
    "google_api_key": "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
    "jwt": JWT,
    "private_key": PEM,
}


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_each_rule(redactor: Redactor, kind: str) -> None:
    text, counts = redactor.redact(f"before {SECRETS[kind]} after\n")
    assert SECRETS[kind] not in text
    assert f"[REDACTED:{kind}]" in text and text.startswith("before ") and text.endswith(" after\n")
    assert counts == {kind: 1}


def test_keyword_assignments_need_a_secret_looking_value(redactor: Redactor) -> None:
    text, counts = redactor.redact("password=Sup3r$ecretPassw0rd!\npassword = hunter2\ntoken: ${TOKEN}\n")
    assert "Sup3r$ecret" not in text and counts == {"password_assignment": 1}
    assert "hunter2" in text and "${TOKEN}" in text  # a word and a placeholder are not secrets
    text, counts = redactor.redact("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
    assert "wJalrXUtnFEMI" not in text and counts == {"aws_secret_key": 1}


def test_lookalikes_are_left_alone(redactor: Redactor) -> None:
    clean = "MYAKIAIOSFODNN7EXAMPLE ghp_short sk-ant key=3 the token is here\n"
    assert redactor.redact(clean) == (clean, {})


@pytest.mark.parametrize("kind", ["aws_access_key", "github_token", "jwt", "private_key"])
def test_stream_split_at_every_position(redactor: Redactor, kind: str) -> None:
    secret = SECRETS[kind]
    text = f"line one\nkey: {secret}\nlast line\n"
    for cut in range(1, len(text)):
        stream = redactor.stream()
        out = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush()
        assert secret not in out, cut
        assert out.replace(f"[REDACTED:{kind}]", "X") == text.replace(secret, "X")
        assert stream.counts == {kind: 1}


def test_stream_emits_whole_lines_promptly(redactor: Redactor) -> None:
    stream = redactor.stream()
    assert stream.feed("progress 1\nprogress 2\npartial") == "progress 1\nprogress 2\n"
    assert stream.flush() == "partial"


def test_a_flood_of_secrets_is_bounded_and_fails_closed(redactor: Redactor) -> None:
    text = "".join(f"AKIA{i:016d}\n".replace("0", "A") for i in range(MAX_MATCHES + 500))
    out, counts = redactor.redact(text)
    assert counts["aws_access_key"] == MAX_MATCHES and counts["withheld_too_many_secrets"] == 1
    assert "AKIA" not in out.replace("[REDACTED:aws_access_key]", "")
