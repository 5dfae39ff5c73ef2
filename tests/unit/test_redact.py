"""Secret redaction: each rule, the hard cases of issue 17, streamed chunks split anywhere, hostile floods."""

from __future__ import annotations

import base64
import time
import urllib.parse
from typing import Any

import pytest

from supervisor.policy.redact import MAX_MATCHES, PEM_HOLD, Redactor, ResultRedactor, StreamRedactor

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


def test_key_names_need_a_random_looking_value(redactor: Redactor) -> None:
    text, counts = redactor.redact("api_key=Zq8fK2mLw9RtX4vB\ntoken: ${TOKEN}\nsecret = short\ntoken_type: bearer\n")
    assert "Zq8fK2mLw9RtX4vB" not in text and counts == {"generic_secret": 1}
    assert "${TOKEN}" in text and "short" in text and "bearer" in text  # placeholders and words are not secrets
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


# --- issue 16 item 8: a password is a secret whatever its entropy --------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("password=hunter2\n", "hunter2"),
        ("password = 'hunter2'\n", "hunter2"),
        ('{"user": "bob", "password": "letmein"}\n', "letmein"),
        ("DB_PASSWORD=summer24 ./run\n", "summer24"),
        ("mysql --password=rootpw42 shop\n", "rootpw42"),
        ("connect --password s3same\n", "s3same"),
        ("User(name='ann', password='correct horse battery staple')\n", "correct horse battery staple"),
        ("Server=db;User Id=sa;Password=Sql2019!;\n", "Sql2019!"),
        ("<password>xml-pw-9</password>\n", "xml-pw-9"),
        ("passwd: abc\n", "abc"),
    ],
)
def test_a_password_is_redacted_whatever_its_entropy(redactor: Redactor, text: str, secret: str) -> None:
    out, counts = redactor.redact(text)
    assert secret not in out and counts == {"password_assignment": 1}


@pytest.mark.parametrize(
    "text",
    [
        "password=None\n",
        "password: ${DB_PASSWORD}\n",
        "password: <your password>\n",
        "password = '********'\n",
        "Password: must be at least 8 characters\n",
        "if password == expected:\n",
        "    password = getpass.getpass()\n",
        "    password = self.password\n",
        "    password = user_input\n",
        "def login(user: str, password: str) -> Session:\n",
        "  --password PASSWORD  the database password\n",
        "PWD=/work\n",
    ],
)
def test_placeholders_code_and_prose_after_password_are_left(redactor: Redactor, text: str) -> None:
    assert redactor.redact(text) == (text, {})


# --- issue 17: formats, context, hard cases -------------------------------------------------------

HF = "hf_" + "FAKEqwertyuiopasdfghjklzxcvbnmQWER"
NPM = "npm_" + "FAKE0123456789abcdefghijklmnopqrstuv"


@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        (f"login(token={HF!r})\n", HF, "huggingface_token"),
        (f"//registry.npmjs.org/:_authToken={NPM}\n", NPM, "npm_token"),
        ("postgres://admin:Tr1cky-pw@db.example.com:5432/app\n", "Tr1cky-pw", "url_credentials"),
        ("git push https://deploy:hunter2@git.example.com/team/repo.git\n", "hunter2", "url_credentials"),
        ("redis://:cachepw99@cache:6379/0\n", "cachepw99", "url_credentials"),
    ],
)
def test_formats_the_old_rules_missed(redactor: Redactor, text: str, secret: str, kind: str) -> None:
    out, counts = redactor.redact(text)
    assert secret not in out and counts == {kind: 1}


def test_urls_without_credentials_are_left(redactor: Redactor) -> None:
    text = "https://git.example.com/team/repo.git ssh://git@example.com:22/r http://[::1]:8080/x?a=b@c\n"
    assert redactor.redact(text) == (text, {})


AWS_ID = "AKIAFAKE0123456789XY"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEKEY123"


@pytest.mark.parametrize(
    "text",
    [
        f'session = Session("{AWS_ID}", "{AWS_SECRET}")\n',
        f"boto3.client('s3', 'us-east-1', '{AWS_SECRET}')\n",
        f"creds = ('{AWS_SECRET}', '{AWS_ID}')\n",
    ],
)
def test_an_aws_secret_key_passed_by_position_beside_its_context(redactor: Redactor, text: str) -> None:
    out, counts = redactor.redact(text)
    assert AWS_SECRET not in out and counts.get("aws_secret_key") == 1


def test_forty_characters_without_aws_context_are_left(redactor: Redactor) -> None:
    text = f"commit 3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c2e4b6d8f0a\nvalue('{AWS_SECRET}')\n"
    assert redactor.redact(text) == (text, {})


KEY_BODY = ["MIIEpAIBAAKCAQEA75xDm2KqWFAKEQv3Xn8ykfJQvBf3", "Qv3Xn8ykfJQvBf3FAKEKEYBODY0123456789abcdef", "tail=="]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(KEY_BODY), ""),  # output cut short
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(KEY_BODY) + "\n\nnext paragraph\n",
            "\n\nnext paragraph\n",
        ),
        (
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: Fake 1\n\n" + "\n".join(KEY_BODY) + "\n\nafter\n",
            "\n\nafter\n",
        ),
    ],
)
def test_a_key_block_without_its_end_line_is_redacted_to_a_blank_line_or_the_end(
    redactor: Redactor, text: str, kept: str
) -> None:
    out, counts = redactor.redact(text)
    assert out == "[REDACTED:private_key]" + kept and counts == {"private_key": 1}


GITHUB = SECRETS["github_token"]


@pytest.mark.parametrize("cut", range(1, len(GITHUB)))
@pytest.mark.parametrize("brk", ["\n", "\r\n", "\r"])
def test_a_token_broken_by_one_line_break_anywhere(redactor: Redactor, cut: int, brk: str) -> None:
    out, counts = redactor.redact(f"token: {GITHUB[:cut]}{brk}{GITHUB[cut:]}\nnext line\n")
    assert out == "token: [REDACTED:github_token]\nnext line\n" and counts == {"github_token": 1}


def test_a_token_at_a_line_end_does_not_take_the_next_word(redactor: Redactor) -> None:
    openai = "sk-proj-" + "FAKEabcdefghijklmnopqrstuvwxyz0123"
    out, _ = redactor.redact(f"{openai}\nDone\n{openai}\nrQ-s--RNCe8DHkdEc4tF\n")
    assert out == "[REDACTED:openai_key]\nDone\n[REDACTED:openai_key]\n"


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: base64.b64encode(s.encode()).decode(),
        lambda s: base64.b64encode(b"x" + s.encode()).decode(),
        lambda s: base64.urlsafe_b64encode(b"xy" + s.encode()).decode().rstrip("="),
        lambda s: s.encode().hex(),
        lambda s: s.encode().hex().upper(),
    ],
)
@pytest.mark.parametrize("kind", ["github_token", "aws_access_key", "openai_key", "slack_token"])
def test_known_tokens_are_found_base64_and_hex_encoded(redactor: Redactor, encode: Any, kind: str) -> None:
    encoded = encode(SECRETS[kind])
    out, counts = redactor.redact(f"payload: {encoded}\n")
    assert encoded[8:-8] not in out and counts == {kind: 1}


def test_a_percent_encoded_url_with_credentials_is_found(redactor: Redactor) -> None:
    text = "GET /cb?next=" + urllib.parse.quote("postgres://admin:Sup3rS3cret@db.example.com/app", safe="") + "\n"
    out, counts = redactor.redact(text)
    assert "Sup3rS3cret" not in out and counts == {"url_credentials": 1}


def test_a_base64_private_key_as_kubernetes_prints_it(redactor: Redactor) -> None:
    body = "\n".join(KEY_BODY[:2] * 40)  # longer than what is decoded after the prefix
    key = "-----BEGIN RSA PRIVATE KEY-----\n" + body + "\n-----END RSA PRIVATE KEY-----\n"
    encoded = base64.b64encode(key.encode()).decode()
    out, counts = redactor.redact(f"data:\n  tls.key: {encoded}\n  tls.crt: LS0tLS1CRUdJTiBDRVJU\n")
    assert encoded[:60] not in out and encoded[-60:] not in out and counts == {"private_key": 1}


def test_base64_of_images_and_hashes_is_not_decoded_into_secrets(redactor: Redactor) -> None:
    blob = base64.b64encode(bytes(range(256)) * 64).decode()
    text = f"{blob}\n{blob.encode().hex()[:4096]}\n" + "".join(f"{i:064x}\n" for i in range(2000))
    assert redactor.redact(text) == (text, {})


# --- streaming: chunks, open key blocks, wrapped tokens, two streams -----------------------------


def test_stream_holds_a_line_that_ends_in_a_token_prefix(redactor: Redactor) -> None:
    stream = redactor.stream()
    assert stream.feed("progress 1\ntoken: " + GITHUB[:20] + "\n") == "progress 1\n"
    out = stream.feed(GITHUB[20:] + "\nrest\n") + stream.flush()
    assert out == "token: [REDACTED:github_token]\nrest\n"


def test_stream_swallows_a_long_key_block_until_its_end(redactor: Redactor) -> None:
    stream = redactor.stream()
    body = "".join(f"{KEY_BODY[0]}{i:08d}\n" for i in range(PEM_HOLD // 40))
    out = stream.feed("start\n-----BEGIN PRIVATE KEY-----\n")
    for i in range(0, len(body), 999):
        out += stream.feed(body[i : i + 999])
    out += stream.feed("-----END PRIVATE KEY-----\nafter\n") + stream.flush()
    assert out == "start\n[REDACTED:private_key]\nafter\n"


def test_stream_key_block_cut_short_at_the_end(redactor: Redactor) -> None:
    stream = redactor.stream()
    out = stream.feed("-----BEGIN EC PRIVATE KEY-----\n" + KEY_BODY[0] + "\n") + stream.feed(KEY_BODY[1])
    assert out + stream.flush() == "[REDACTED:private_key]"


@pytest.mark.parametrize("first", ["stdout", "stderr"])
@pytest.mark.parametrize("cut", [10, 20, 30])  # parts of at least ResultRedactor.MIN_FRAGMENT characters
def test_halves_on_two_streams_back_to_back(redactor: Redactor, first: str, cut: int) -> None:
    streams: dict[str, StreamRedactor] = {}
    out = {name: streams.setdefault(name, redactor.stream(streams)) for name in ("stdout", "stderr")}
    second = "stderr" if first == "stdout" else "stdout"
    shown = {first: out[first].feed("key " + GITHUB[:cut]), second: out[second].feed(GITHUB[cut:] + " end\n")}
    shown[first] += out[first].flush()
    shown[second] += out[second].flush()
    both = shown["stdout"] + shown["stderr"]
    assert GITHUB[:cut] not in both and GITHUB[cut:] not in both
    assert "[REDACTED:github_token]" in shown["stdout"] and "[REDACTED:github_token]" in shown["stderr"]
    result = ResultRedactor(redactor, out["stdout"].fragments)
    text, counts = result.redact("key " + GITHUB[:cut] if first == "stdout" else GITHUB[cut:] + " end\n")
    assert GITHUB[:cut] not in text and GITHUB[cut:] not in text and counts == {"github_token": 1}


def test_halves_arriving_in_the_other_order_are_caught_too(redactor: Redactor) -> None:
    streams: dict[str, StreamRedactor] = {}
    out = {name: streams.setdefault(name, redactor.stream(streams)) for name in ("stdout", "stderr")}
    shown = out["stderr"].feed(GITHUB[18:]) + out["stdout"].feed("id " + GITHUB[:18])
    shown += out["stdout"].flush() + out["stderr"].flush()
    assert GITHUB[:18] not in shown and GITHUB[18:] not in shown


# --- hostile output: linear time, bounded work, fails closed --------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "password=None ",
        "token=abcdefghij ",
        "ghp_x\n",
        "Z2hwX0" * 20 + " ",
        "6768705f" * 10 + " ",
        "a%40b ",
        "-----BEGIN PRIVATE KEY-----",
        "aws " + "A" * 40 + " ",
    ],
)
def test_hostile_floods_cost_bounded_time(redactor: Redactor, line: str) -> None:
    text = line * (2**20 // len(line))
    started = time.perf_counter()
    redactor.redact(text)
    assert time.perf_counter() - started < 2.0


def test_a_first_half_arriving_after_the_second_was_sent_is_hidden_and_marked_for_the_result(
    redactor: Redactor,
) -> None:
    streams: dict[str, StreamRedactor] = {}
    out = {name: streams.setdefault(name, redactor.stream(streams)) for name in ("stdout", "stderr")}
    sent = out["stdout"].feed(GITHUB[18:] + " end\n")  # already on its way to the client: cannot be called back
    late = out["stderr"].feed("key=" + GITHUB[:18]) + out["stderr"].flush()
    assert sent == GITHUB[18:] + " end\n" and late == "key=[REDACTED:github_token]"
    result = ResultRedactor(redactor, out["stdout"].fragments)
    assert result.redact(GITHUB[18:] + " end\n")[0] == "[REDACTED:github_token] end\n"
    assert result.redact("key=" + GITHUB[:18])[0] == "key=[REDACTED:github_token]"


def test_a_whole_token_on_one_stream_does_not_eat_the_start_of_the_other(redactor: Redactor) -> None:
    streams: dict[str, StreamRedactor] = {}
    out = {name: streams.setdefault(name, redactor.stream(streams)) for name in ("stdout", "stderr")}
    jwt = SECRETS["jwt"]
    shown = out["stderr"].feed(f"gh {GITHUB}\n") + out["stdout"].feed("jwt " + jwt[:30])
    shown += out["stdout"].feed(jwt[30:] + " end\n") + out["stdout"].flush() + out["stderr"].flush()
    assert "jwt [REDACTED:jwt] end\n" in shown and "gh [REDACTED:github_token]\n" in shown


@pytest.mark.parametrize(
    "text",
    [
        '{"append /etc/passwd": "EROFS", "append /etc/hosts": "EROFS"}\n',
        '["group", "hosts", "passwd", "shadow"]\n',
        "cat: /var/run/secrets/kubernetes.io/serviceaccount/token: No such file or directory\n",
    ],
)
def test_paths_and_lists_that_name_a_password_file_are_left(redactor: Redactor, text: str) -> None:
    assert redactor.redact(text) == (text, {})
