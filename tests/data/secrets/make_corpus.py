#!/usr/bin/env python3
"""Writes the labelled corpus for the redaction scorecard, deterministically.

    python tests/data/secrets/make_corpus.py

positives.jsonl: one example a line, {"family", "kind", "secret", "text"}:
``text`` is a line (or a few) of program output holding ``secret``, a fake
value in its issuer's documented format (prefix, length, alphabet). Bodies
carry FAKE or deadbeef where the alphabet allows, so no one mistakes them for
live keys. ``kind`` is the type the redactor should name.

negatives.txt: over 1 MiB of ordinary program output that must come back
untouched: UUIDs, git and SHA-256 hashes, base64 of real PNG images (wrapped
and not), certificates and public keys, long numbers, URLs without
credentials (some percent-encoded), Python reprs, real tracebacks and pydoc
pages from this interpreter, logs, progress bars, tables, hex dumps.

Both files are committed; the tests read them. Re-running this script with
the same Python gives the same files (seeded; pydoc and tracebacks follow the
interpreter's own sources).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import pathlib
import pydoc
import random
import re
import string
import struct
import traceback
import urllib.parse
import uuid
import zlib

HERE = pathlib.Path(__file__).resolve().parent
ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"

rng = random.Random(17)


def body(alphabet: str, n: int, mark: str = "FAKE") -> str:
    """n characters of ``alphabet``, starting with a visible fake mark where the alphabet has it."""
    if all(c in alphabet for c in mark) and n > len(mark) + 8:
        return mark + "".join(rng.choice(alphabet) for _ in range(n - len(mark)))
    if all(c in alphabet for c in "deadbeef") and n > 16:
        return "deadbeef" + "".join(rng.choice(alphabet) for _ in range(n - 8))
    return "".join(rng.choice(alphabet) for _ in range(n))


def uuid4() -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# (family, kind, maker) — each maker returns one fake value in the documented format.
FORMATS: list[tuple[str, str, object]] = [
    ("cloud", "aws_access_key", lambda: "AKIA" + body(UPPER_ALNUM, 16, "FAKE")),
    ("cloud", "aws_access_key", lambda: "ASIA" + body(UPPER_ALNUM, 16, "FAKE")),
    ("cloud", "aws_bedrock_key", lambda: "ABSK" + body(B64, 132)),
    ("cloud", "google_api_key", lambda: "AIza" + body(URLSAFE, 35)),
    ("cloud", "google_oauth_secret", lambda: "GOCSPX-" + body(URLSAFE, 28)),
    ("cloud", "google_oauth_token", lambda: "ya29." + body(URLSAFE, 120)),
    ("cloud", "digitalocean_token", lambda: "dop_v1_" + body(HEX, 64)),
    ("cloud", "digitalocean_token", lambda: "doo_v1_" + body(HEX, 64)),
    ("cloud", "alibaba_access_key", lambda: "LTAI" + body(ALNUM, 20)),
    ("cloud", "heroku_api_key", lambda: "HRKU-AA" + body(URLSAFE, 58)),
    ("cloud", "cloudflare_origin_ca_key", lambda: "v1.0-" + body(HEX, 24) + "-" + body(HEX, 146)),
    ("cloud", "flyio_token", lambda: "fo1_" + body(URLSAFE, 43)),
    ("cloud", "flyio_token", lambda: "fm2_" + body(B64, 160)),
    ("cloud", "vault_token", lambda: "hvs." + body(URLSAFE, 95)),
    ("cloud", "terraform_token", lambda: body(LOWER_ALNUM, 14) + ".atlasv1." + body(LOWER_ALNUM, 67)),
    ("cloud", "doppler_token", lambda: "dp.pt." + body(ALNUM, 43)),
    ("cloud", "pulumi_token", lambda: "pul-" + body(HEX, 40)),
    ("cloud", "databricks_token", lambda: "dapi" + body(HEX, 32)),
    ("cloud", "onepassword_token", lambda: "ops_eyJ" + body(B64, 280)),
    (
        "cloud",
        "onepassword_secret_key",
        lambda: "A3-" + "-".join(body(UPPER_ALNUM, n, "FAKE") for n in (6, 6, 5, 5, 5, 5)),
    ),
    ("cloud", "infracost_token", lambda: "ico-" + body(ALNUM, 32)),
    ("cloud", "openshift_token", lambda: "sha256~" + body(URLSAFE, 43)),
    ("cloud", "scalingo_token", lambda: "tk-us-" + body(URLSAFE, 48)),
    ("cloud", "azure_client_secret", lambda: body(ALNUM, 3) + "8Q~" + body(ALNUM + "_~.-", 34)),
    ("vcs", "github_token", lambda: "ghp_" + body(ALNUM, 36)),
    ("vcs", "github_token", lambda: "gho_" + body(ALNUM, 36)),
    ("vcs", "github_token", lambda: "ghs_" + body(ALNUM, 36)),
    ("vcs", "github_token", lambda: "ghu_" + body(ALNUM, 36)),
    ("vcs", "github_token", lambda: "ghr_" + body(ALNUM, 36)),
    ("vcs", "github_token", lambda: "github_pat_" + body(ALNUM, 22) + "_" + body(ALNUM, 59)),
    ("vcs", "gitlab_token", lambda: "glpat-" + body(URLSAFE, 20)),
    ("vcs", "gitlab_token", lambda: "gldt-" + body(URLSAFE, 20)),
    ("vcs", "gitlab_token", lambda: "glrt-" + body(URLSAFE, 20)),
    ("vcs", "gitlab_token", lambda: "glptt-" + body(HEX, 40)),
    ("vcs", "gitlab_token", lambda: "GR1348941" + body(URLSAFE, 20)),
    ("vcs", "atlassian_token", lambda: "ATATT3" + body(URLSAFE, 186)),
    ("vcs", "sourcegraph_token", lambda: "sgp_" + body(HEX, 16) + "_" + body(HEX, 40)),
    ("registry", "npm_token", lambda: "npm_" + body(ALNUM, 36)),
    ("registry", "pypi_token", lambda: "pypi-AgEIcHlwaS5vcmc" + body(URLSAFE, 70)),
    ("registry", "rubygems_token", lambda: "rubygems_" + body(HEX, 48)),
    ("registry", "nuget_key", lambda: "oy2" + body(LOWER_ALNUM, 43, "fake")),
    ("registry", "docker_hub_token", lambda: "dckr_pat_" + body(URLSAFE, 27)),
    ("registry", "clojars_token", lambda: "CLOJARS_" + body(LOWER_ALNUM, 60, "fake")),
    ("registry", "artifactory_key", lambda: "AKCp" + body(ALNUM, 69)),
    ("registry", "crates_io_token", lambda: "cio" + body(ALNUM, 32)),
    ("registry", "octopus_key", lambda: "API-" + body(UPPER_ALNUM, 26)),
    ("ai", "openai_key", lambda: "sk-proj-" + body(URLSAFE, 74) + "T3BlbkFJ" + body(URLSAFE, 74)),
    ("ai", "openai_key", lambda: "sk-" + body(ALNUM, 20) + "T3BlbkFJ" + body(ALNUM, 20)),
    ("ai", "openai_key", lambda: "sk-svcacct-" + body(URLSAFE, 58) + "T3BlbkFJ" + body(URLSAFE, 58)),
    ("ai", "anthropic_key", lambda: "sk-ant-api03-" + body(URLSAFE, 93) + "AA"),
    ("ai", "anthropic_key", lambda: "sk-ant-admin01-" + body(URLSAFE, 93) + "AA"),
    ("ai", "huggingface_token", lambda: "hf_" + body(string.ascii_letters, 34)),
    ("ai", "huggingface_token", lambda: "api_org_" + body(string.ascii_letters, 34)),
    ("ai", "replicate_token", lambda: "r8_" + body(ALNUM, 37)),
    ("ai", "groq_key", lambda: "gsk_" + body(ALNUM, 52)),
    ("ai", "perplexity_key", lambda: "pplx-" + body(ALNUM, 48)),
    ("ai", "xai_key", lambda: "xai-" + body(ALNUM, 80)),
    ("ai", "langsmith_key", lambda: "lsv2_pt_" + body(HEX, 32) + "_" + body(HEX, 10)),
    ("ai", "nvidia_key", lambda: "nvapi-" + body(URLSAFE, 64)),
    ("payment", "stripe_key", lambda: "sk_live_" + body(ALNUM, 99)),
    ("payment", "stripe_key", lambda: "rk_live_" + body(ALNUM, 24)),
    ("payment", "stripe_key", lambda: "sk_test_" + body(ALNUM, 24)),
    ("payment", "stripe_webhook_secret", lambda: "whsec_" + body(ALNUM, 32)),
    ("payment", "square_token", lambda: "sq0atp-" + body(URLSAFE, 22)),
    ("payment", "square_token", lambda: "sq0csp-" + body(URLSAFE, 43)),
    ("payment", "square_token", lambda: "EAAA" + body(URLSAFE, 60)),
    (
        "payment",
        "braintree_token",
        lambda: "access_token$production$" + body(LOWER_ALNUM, 16) + "$" + body(HEX, 32),
    ),
    ("payment", "shopify_token", lambda: "shpat_" + body(HEX, 32)),
    ("payment", "shopify_token", lambda: "shpss_" + body(HEX, 32)),
    ("payment", "flutterwave_key", lambda: "FLWSECK_TEST-" + body("abcdefgh0123456789", 32) + "-X"),
    ("payment", "plaid_token", lambda: "access-sandbox-" + uuid4()),
    ("payment", "duffel_token", lambda: "duffel_test_" + body(URLSAFE, 43)),
    ("payment", "easypost_key", lambda: "EZAK" + body(ALNUM, 54)),
    ("payment", "shippo_token", lambda: "shippo_live_" + body(HEX, 40)),
    (
        "messaging",
        "slack_token",
        lambda: "xoxb-" + body("0123456789", 12) + "-" + body("0123456789", 13) + "-" + body(ALNUM, 24),
    ),
    (
        "messaging",
        "slack_token",
        lambda: "xoxp-" + "-".join(body("0123456789", 12) for _ in range(3)) + "-" + body(HEX, 32),
    ),
    (
        "messaging",
        "slack_token",
        lambda: "xapp-1-A" + body(UPPER_ALNUM, 10) + "-" + body("0123456789", 13) + "-" + body(HEX, 64),
    ),
    (
        "messaging",
        "slack_webhook",
        lambda: (
            "https://hooks.slack.com/services/T"
            + body(UPPER_ALNUM, 8)
            + "/B"
            + body(UPPER_ALNUM, 8)
            + "/"
            + body(ALNUM, 24)
        ),
    ),
    ("messaging", "discord_token", lambda: "M" + body(ALNUM, 23) + "." + body(URLSAFE, 6) + "." + body(URLSAFE, 27)),
    (
        "messaging",
        "discord_webhook",
        lambda: "https://discord.com/api/webhooks/" + body("0123456789", 18) + "/" + body(URLSAFE, 68),
    ),
    ("messaging", "telegram_bot_token", lambda: body("123456789", 10) + ":AA" + body(URLSAFE, 33)),
    ("messaging", "twilio_key", lambda: "SK" + body(HEX, 32)),
    ("messaging", "sendgrid_key", lambda: "SG." + body(URLSAFE, 22) + "." + body(URLSAFE, 43)),
    ("messaging", "mailchimp_key", lambda: body(HEX, 32) + "-us" + str(rng.randint(1, 21))),
    ("messaging", "brevo_key", lambda: "xkeysib-" + body(HEX, 64) + "-" + body(ALNUM, 16)),
    (
        "messaging",
        "teams_webhook",
        lambda: (
            f"https://contoso.webhook.office.com/webhookb2/{uuid4()}@{uuid4()}"
            f"/IncomingWebhook/{body(HEX, 32)}/{uuid4()}"
        ),
    ),
    ("messaging", "facebook_token", lambda: "EAAM" + body(ALNUM, 150)),
    ("database", "planetscale_token", lambda: "pscale_pw_" + body(URLSAFE, 43)),
    ("database", "planetscale_token", lambda: "pscale_tkn_" + body(URLSAFE, 43)),
    ("database", "supabase_key", lambda: "sbp_" + body(HEX, 40)),
    ("database", "airtable_token", lambda: "pat" + body(ALNUM, 14) + "." + body(HEX, 64)),
    ("database", "clickhouse_secret", lambda: "4b1d" + body(ALNUM, 38)),
    ("saas", "grafana_token", lambda: "glc_" + body(B64, 120)),
    ("saas", "grafana_token", lambda: "glsa_" + body(ALNUM, 32) + "_" + body(HEX, 8)),
    ("saas", "new_relic_key", lambda: "NRAK-" + body(UPPER_ALNUM, 27)),
    ("saas", "sentry_token", lambda: "sntryu_" + body(HEX, 64)),
    ("saas", "dynatrace_token", lambda: "dt0c01." + body(UPPER_ALNUM, 24) + "." + body(UPPER_ALNUM, 64)),
    ("saas", "postman_key", lambda: "PMAK-" + body(HEX, 24) + "-" + body(HEX, 34)),
    ("saas", "linear_key", lambda: "lin_api_" + body(ALNUM, 40)),
    ("saas", "notion_token", lambda: "ntn_" + body("0123456789", 11) + body(ALNUM, 35)),
    ("saas", "notion_token", lambda: "secret_" + body(ALNUM, 43)),
    ("saas", "prefect_key", lambda: "pnu_" + body(ALNUM, 36)),
    ("saas", "readme_key", lambda: "rdme_" + body(LOWER_ALNUM, 70, "fake")),
    ("saas", "typeform_token", lambda: "tfp_" + body(URLSAFE, 59)),
    ("saas", "frameio_token", lambda: "fio-u-" + body(URLSAFE, 64)),
    ("saas", "harness_key", lambda: "pat." + body(URLSAFE, 22) + "." + body(ALNUM, 24) + "." + body(ALNUM, 20)),
    ("saas", "mapbox_secret_token", lambda: "sk.eyJ1Ijoi" + body(URLSAFE, 60) + "." + body(URLSAFE, 22)),
    ("saas", "maxmind_key", lambda: body(ALNUM, 6) + "_" + body(ALNUM, 29) + "_mmk"),
    ("saas", "adobe_secret", lambda: "p8e-" + body(ALNUM, 32)),
    ("saas", "age_secret_key", lambda: "AGE-SECRET-KEY-1" + body("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)),
]

CONTEXTS = [
    "{s}",
    "Using credential {s} for the request",
    'config = {{"key": "{s}", "region": "eu-west-1"}}',
    "export SERVICE_CRED={s}",
    "INFO 2026-12-01 10:00:00 connecting with {s} (retry 1)",
    "Client(credential='{s}', timeout=30)",
]


def jwt() -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    head = part({"alg": "HS256", "typ": "JWT"})
    claims = part({"sub": f"fake-{rng.randint(1, 10**6)}", "iat": 1_700_000_000 + rng.randint(0, 10**6)})
    return f"{head}.{claims}." + body(URLSAFE, 43)


def pem(kind: str, lines: int = 6) -> str:
    rows = [body(B64, 64) for _ in range(lines)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(rows) + f"\n-----END {kind}-----"


def positives() -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def add(family: str, kind: str, secret: str, text: str) -> None:
        out.append({"family": family, "kind": kind, "secret": secret, "text": text})

    for i, (family, kind, make) in enumerate(FORMATS):
        for j in range(2):
            secret = make()  # type: ignore[operator]
            add(family, kind, secret, CONTEXTS[(i + j) % len(CONTEXTS)].format(s=secret))
    # AWS secret keys: assigned, as keyword arguments, and passed by position beside the key id.
    for _ in range(3):
        key_id, secret = "AKIA" + body(UPPER_ALNUM, 16), body(B64, 40)
        add("cloud", "aws_secret_key", secret, f"aws_secret_access_key = {secret}")
        add(
            "cloud",
            "aws_secret_key",
            secret,
            f'boto3.client("s3", aws_access_key_id="{key_id}", aws_secret_access_key="{secret}")',
        )
        add("cloud", "aws_secret_key", secret, f'session = Session("{key_id}", "{secret}")')
        add("cloud", "aws_secret_key", secret, f"aws configure set: ['{secret}']")
    for _ in range(3):
        account = body(LOWER_ALNUM, 12, "fake")
        key = body(B64, 86) + "=="
        add(
            "cloud",
            "azure_storage_key",
            key,
            f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={key};EndpointSuffix=core.windows.net",
        )
    for _ in range(2):
        sig = urllib.parse.quote(base64.b64encode(rng.randbytes(32)).decode(), safe="")
        add(
            "cloud",
            "azure_sas_token",
            sig,
            f"https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&se=2026-12-31&sr=b&sp=r&sig={sig}",
        )
    # JWTs and private keys.
    for _ in range(4):
        token = jwt()
        add(
            "jwt",
            "jwt",
            token,
            f"Authorization header was set; token={token}" if rng.random() < 0.5 else f"id_token: {token}",
        )
    for kind in (
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "DSA PRIVATE KEY",
    ):
        block = pem(kind)
        add("private_key", "private_key", block.split("\n")[2], f"key loaded:\n{block}\ndone")
    block = pem("PGP PRIVATE KEY BLOCK").replace("-----\n", "-----\nVersion: FakePG 1.0\n\n", 1)
    add("private_key", "private_key", block.split("\n")[4], block)
    block = pem("RSA PRIVATE KEY").replace(
        "-----\n", "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,DEADBEEF0011\n\n", 1
    )
    add("private_key", "private_key", block.split("\n")[5], block)
    escaped = pem("PRIVATE KEY").replace("\n", "\\n")
    add(
        "private_key", "private_key", escaped[40:90], '{"type": "service_account", "private_key": "' + escaped + '\\n"}'
    )
    # Database and service URLs with credentials.
    for scheme, host in (
        ("postgres", "db.example.com:5432/app"),
        ("postgresql", "10.0.0.5/analytics"),
        ("mysql", "mysql.internal:3306/shop"),
        ("mongodb+srv", "cluster0.fake.mongodb.net/?retryWrites=true"),
        ("redis", "cache.example.com:6379/0"),
        ("amqp", "rabbit.example.com:5672/vhost"),
        ("https", "git.example.com/team/repo.git"),
        ("ftp", "files.example.com/pub"),
    ):
        password = body(ALNUM + "!*", 14)
        user = rng.choice(["admin", "deploy", "app", "svc_reporting", ""])
        add("url", "url_credentials", password, f"connecting to {scheme}://{user}:{password}@{host}")
    add("url", "url_credentials", "hunter2", "DATABASE_URL=postgres://admin:hunter2@db.example.com/app")
    add("url", "url_credentials", "p@ss:w0rd", "remote: https://deploy:p@ss:w0rd@git.example.com/repo.git")
    # Passwords: a secret whatever their entropy.
    for text, secret in (
        ("password=hunter2", "hunter2"),
        ("password = 'hunter2'", "hunter2"),
        ('{"username": "bob", "password": "letmein"}', "letmein"),
        ("DB_PASSWORD=summer2024", "summer2024"),
        ("PGPASSWORD=qwerty123 psql -h db", "qwerty123"),
        ("mysql -u root --password=rootpw42 shop", "rootpw42"),
        ("connect --password s3same", "s3same"),
        ("User(name='ann', password='correct horse battery staple')", "correct horse battery staple"),
        ("passwd: tr0ub4dor", "tr0ub4dor"),
        ("Server=db;Database=app;User Id=sa;Password=Sql2019!;", "Sql2019!"),
        ("smtp_password: mailpass77", "mailpass77"),
        ("<password>xml-secret-9</password>", "xml-secret-9"),
        ('<add key="ClearTextPassword" value="nugetpw1" />', "nugetpw1"),
        ('settings.set("password", "abc12345")', "abc12345"),
        ("redis_passphrase => 'open sesame'", "open sesame"),
    ):
        add("generic", "password_assignment", secret, text)
    # Generic names with random values, and provider names (no distinctive prefix).
    for name in (
        "api_key",
        "API_SECRET",
        "client_secret",
        "auth_token",
        "access_token",
        "secret",
        "SIGNING_KEY",
        "private_key",
    ):
        secret = body(ALNUM, rng.choice([24, 32, 40]))
        add("generic", "generic_secret", secret, f'{name} = "{secret}"' if rng.random() < 0.5 else f"{name}: {secret}")
    for provider in (
        "datadog",
        "twilio",
        "heroku",
        "mailgun",
        "cohere",
        "mistral",
        "twitter",
        "okta",
        "sentry",
        "zendesk",
    ):
        secret = body(HEX, 32) if rng.random() < 0.5 else body(ALNUM, 40)
        add("generic", f"{provider}_secret", secret, f"{provider.upper()}_API_KEY={secret}")
    secret = body(ALNUM, 40)
    add("generic", "generic_secret", secret, f'headers = {{"X-Api-Key": "{secret}"}}')
    secret = body(ALNUM, 32)
    add("generic", "authorization_header", secret, f"Authorization: Bearer {secret}")
    secret = base64.b64encode(b"fakeuser:fakepass42").decode()
    add("generic", "authorization_header", secret, f"> Authorization: Basic {secret}")
    add("generic", "basic_auth", "s3cretPW", "curl -s -u admin:s3cretPW https://api.example.com/v1/items")
    # Encoded forms of known-format tokens, one level.
    for _make_family, kind, make in (FORMATS[24], FORMATS[37], FORMATS[46], FORMATS[58], FORMATS[0]):
        secret = make()  # type: ignore[operator]
        raw = secret.encode()
        add("encoded", kind, base64.b64encode(raw).decode(), "token (base64): " + base64.b64encode(raw).decode())
        add(
            "encoded",
            kind,
            base64.urlsafe_b64encode(b"x" + raw).decode().rstrip("="),
            "b64url " + base64.urlsafe_b64encode(b"x" + raw).decode().rstrip("="),
        )
        add("encoded", kind, raw.hex(), f"hex: {raw.hex()}")
        add("encoded", kind, raw.hex().upper()[:40], f"0x{raw.hex().upper()}")
    for _make_family, kind, make in (FORMATS[0], FORMATS[69]):
        secret = make()  # type: ignore[operator]
        encoded = urllib.parse.quote(f"{secret}/x+y=", safe="")
        add("encoded", kind, secret, f"GET /callback?state={encoded}")
    key = pem("RSA PRIVATE KEY")
    encoded = base64.b64encode(key.encode()).decode()
    add("encoded", "private_key", encoded[40:120], f"apiVersion: v1\nkind: Secret\ndata:\n  tls.key: {encoded}")
    url = "postgres://admin:Sup3rS3cret@db.example.com/app"
    add("encoded", "url_credentials", "Sup3rS3cret", "next=" + urllib.parse.quote(url, safe=""))
    # Broken by one line break (terminal wrapping, rich/textwrap, progress lines).
    for i in (24, 37, 46, 58, 0, 66, 80):
        _, kind, make = FORMATS[i]
        secret = make()  # type: ignore[operator]
        cut = rng.randint(2, len(secret) - 2)
        brk = rng.choice(["\n", "\r\n", "\r"])
        add("wrapped", kind, secret[:cut], f"token: {secret[:cut]}{brk}{secret[cut:]}\nnext line")
        add("wrapped", kind, secret[cut:], f"{secret[:cut]}{brk}{secret[cut:]}")
    # Private keys whose END line never came (output cut short, or followed by a blank line).
    for kind in ("RSA PRIVATE KEY", "OPENSSH PRIVATE KEY"):
        rows = [body(B64, 64) for _ in range(4)]
        add("private_key", "private_key", rows[-1], f"-----BEGIN {kind}-----\n" + "\n".join(rows))
        add(
            "private_key",
            "private_key",
            rows[1],
            f"-----BEGIN {kind}-----\n" + "\n".join(rows) + "\n\nafter the blank line",
        )
    return out


# --- negatives: ordinary output ---------------------------------------------------------------------------


def png(width: int, height: int, seed: int) -> bytes:
    """A real PNG (a gradient with noise), written by hand: zlib and CRCs."""
    local = random.Random(seed)
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            row += bytes(((x * 255) // width, (y * 255) // height, local.randrange(256)))
        rows.append(bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def section_images(out: io.StringIO) -> None:
    for i in range(6):
        data = base64.b64encode(png(96 + 16 * i, 64, i)).decode()
        if i % 2:
            out.write(f'<img src="data:image/png;base64,{data}" alt="plot {i}">\n')
        else:
            out.write("Content-Type: image/png\nContent-Transfer-Encoding: base64\n\n")
            out.write("\n".join(data[j : j + 76] for j in range(0, len(data), 76)) + "\n\n")


def section_hashes(out: io.StringIO) -> None:
    for i in range(1500):
        blob = f"file-{i}".encode()
        kind = i % 6
        sha1 = hashlib.sha1(blob).hexdigest()
        sha256 = hashlib.sha256(blob).hexdigest()
        if kind == 0:
            out.write(
                f"commit {sha1}\nAuthor: Dev {i} <dev{i}@example.com>\n"
                f"Date:   Mon Dec {1 + i % 28} 10:{i % 60:02d}:00 2026 +0100\n\n    Fix item {i}\n\n"
            )
        elif kind == 1:
            out.write(f"{sha256}  dist/pkg-{i}.tar.gz\n")
        elif kind == 2:
            out.write(f"{sha1[:7]} Merge pull request #{i} from team/feature-{i}\n")
        elif kind == 3:
            out.write(f"docker.io/library/python@sha256:{sha256}\n")
        elif kind == 4:
            integrity = base64.b64encode(hashlib.sha512(blob).digest()).decode()
            out.write(f'    "integrity": "sha512-{integrity}",\n')
        else:
            out.write(f"    --hash=sha256:{sha256} \\\n")


def section_json_logs(out: io.StringIO) -> None:
    for i in range(1200):
        record = {
            "ts": f"2026-12-0{1 + i % 9}T10:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:03d}Z",
            "level": rng.choice(["INFO", "DEBUG", "WARN"]),
            "request_id": uuid4(),
            "trace_id": "".join(rng.choice(HEX) for _ in range(32)),
            "span_id": "".join(rng.choice(HEX) for _ in range(16)),
            "path": rng.choice(["/api/items", "/healthz", "/v1/users/42", "/static/app.js"]),
            "status": rng.choice([200, 200, 201, 304, 404]),
            "duration_ms": round(rng.random() * 200, 3),
            "etag": 'W/"' + "".join(rng.choice(HEX) for _ in range(16)) + '"',
        }
        out.write(json.dumps(record) + "\n")


def section_numbers(out: io.StringIO) -> None:
    out.write(f"100! = {math.factorial(100)}\n")
    out.write(f"2**1000 = {2**1000}\n")
    a, b = 0, 1
    for i in range(400):
        a, b = b, a + b
        if i % 40 == 0:
            out.write(f"fib({i}) = {a}\n")
    for _ in range(800):
        values = [round(rng.gauss(0, 1), 8) for _ in range(6)]
        out.write(f"array([{', '.join(f'{v: .8f}' for v in values)}])\n")
    for _ in range(300):
        out.write(f"{rng.getrandbits(64)},{rng.getrandbits(53) / 2**53:.17f},{rng.randint(10**15, 10**16)}\n")


def section_urls(out: io.StringIO) -> None:
    hosts = ["example.com", "api.example.org", "cdn.example.net", "[::1]", "127.0.0.1:8080", "files.example.com:8443"]
    for i in range(1200):
        host = rng.choice(hosts)
        query = urllib.parse.urlencode(
            {
                "q": rng.choice(["hello world", "a&b=c", "naïve café", "100% sure"]),
                "page": i,
                "next": f"https://{host}/p/{i}?x=1",
            }
        )
        out.write(f"GET https://{host}/search/{i}?{query}#frag-{i}\n")
        if i % 5 == 0:
            out.write(f"  Location: http://{host}/login?redirect=%2Fdashboard%2F{i}&lang=en\n")
        if i % 7 == 0:
            out.write(f"git clone git@github.com:team/repo-{i}.git; ssh://git@{host}/repo-{i}.git\n")


class Account:
    def __init__(self, number: int) -> None:
        self.number = number


def section_reprs(out: io.StringIO) -> None:
    import collections
    import datetime
    import decimal
    import fractions

    for i in range(600):
        obj = {
            "id": i,
            "uuid": uuid.UUID(int=rng.getrandbits(128)),
            "created": datetime.datetime(2026, 1 + i % 12, 1 + i % 28, i % 24, i % 60),
            "price": decimal.Decimal(f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}"),
            "ratio": fractions.Fraction(rng.randint(1, 99), rng.randint(100, 999)),
            "tags": collections.Counter(rng.choice("abcde") for _ in range(5)),
            "raw": rng.randbytes(12),
            "account": Account(i),
            "usage": {
                "prompt_tokens": rng.randint(1, 900),
                "completion_tokens": rng.randint(1, 900),
                "total_tokens": 1000,
            },
        }
        text = repr(obj)
        out.write(text.replace(hex(id(obj["account"])), f"0x7f{rng.getrandbits(40):010x}") + "\n")
    for i in range(100):
        out.write(
            f"GenerationConfig(max_tokens={256 * (1 + i % 8)}, temperature=0.{i % 10}, eos_token='</s>', "
            f"pad_token='<pad>', tokenizer_class='LlamaTokenizerFast', token_type_ids=None, password=None)\n"
        )
        out.write(
            f"Namespace(user='ci', password=None, token=None, verbose={i % 2 == 0}, secret_file='/run/secrets/db')\n"
        )


def section_tracebacks(out: io.StringIO) -> None:
    import json as json_mod

    failing = [
        lambda: json_mod.loads('{"a": 1,, }'),
        lambda: int("forty-two"),
        lambda: {"a": 1}["password"],
        lambda: [1, 2, 3][10],
        lambda: urllib.parse.urlsplit("http://[::1"),
        lambda: base64.b64decode("abc"),
        lambda: bytes.fromhex("zz"),
        lambda: __import__("no_such_module_here"),
        lambda: math.sqrt(-1),
        lambda: struct.unpack(">I", b"\x00"),
    ]
    for i in range(60):
        try:
            failing[i % len(failing)]()
        except Exception:  # noqa: BLE001 - real tracebacks are the data
            text = traceback.format_exc()
            out.write(text.replace(str(pathlib.Path(__file__).parent), "/work"))


def section_pydoc(out: io.StringIO) -> None:
    import argparse
    import getpass
    import hmac
    import secrets
    import tokenize

    for module in (secrets, hmac, getpass, tokenize, hashlib, base64, argparse, urllib.parse, json, uuid):
        text = pydoc.render_doc(module, renderer=pydoc.plaintext)
        out.write(re.sub(r"0x[0-9a-f]{8,16}", lambda _: f"0x7f{rng.getrandbits(40):010x}", text))  # same each run
    parser = argparse.ArgumentParser(prog="deploy", description="Deploy the app.")
    parser.add_argument("--password", help="the database password (read from PASSWORD if unset)")
    parser.add_argument("--token", metavar="TOKEN", help="an API token")
    parser.add_argument("--api-key", help="the API key")
    out.write(parser.format_help())


def section_terminal(out: io.StringIO) -> None:
    for i in range(0, 101, 2):
        bar = "█" * (i // 4) + " " * (25 - i // 4)
        out.write(f"\r{i:3d}%|{bar}| {i}/100 [00:{i // 10:02d}<00:{(100 - i) // 10:02d}, {40 + i / 10:.2f}it/s]")
    out.write("\n")
    for i in range(300):
        out.write(
            f"-rw-r--r-- 1 user staff {rng.randint(100, 10**7):>9} Dec {1 + i % 28:2d} "
            f"10:{i % 60:02d} file_{i}.parquet\n"
        )
    for i in range(300):
        out.write(
            f"user {rng.randint(1000, 99999):>6} {rng.random() * 100:4.1f} {rng.random() * 10:4.1f} "
            f"python -m worker --queue q{i} --concurrency {i % 8}\n"
        )
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/home/user",
        "PWD": "/work",
        "OLDPWD": "/tmp",
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "SHLVL": "1",
        "PYTHONHASHSEED": "0",
    }
    for key, value in env.items():
        out.write(f"{key}={value}\n")
    for i in range(600):
        offset = i * 16
        raw = rng.randbytes(16)
        hexpart = " ".join(f"{b:02x}" for b in raw[:8]) + "  " + " ".join(f"{b:02x}" for b in raw[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in raw)
        out.write(f"{offset:08x}  {hexpart}  |{text}|\n")
    for i in range(200):
        out.write(
            f"{rng.choice(['web', 'worker', 'db'])}-{body(LOWER_ALNUM, 10, 'pod')}-{body(LOWER_ALNUM, 5, 'x')}"
            f"   1/1     Running   {i % 4}          {i % 50}d\n"
        )
    for i in range(300):
        mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
        ip6 = ":".join(f"{rng.randrange(65536):x}" for _ in range(8))
        out.write(f"eth{i % 4}: ether {mac} inet6 {ip6}/64 scopeid 0x0<global>\n")


def section_certificates(out: io.StringIO) -> None:
    for i in range(12):
        der = rng.randbytes(900)
        data = base64.b64encode(der).decode()
        out.write(
            "-----BEGIN CERTIFICATE-----\n"
            + "\n".join(data[j : j + 64] for j in range(0, len(data), 64))
            + "\n-----END CERTIFICATE-----\n"
        )
        pub = base64.b64encode(rng.randbytes(51)).decode()
        out.write(f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{pub} user{i}@host\n")
        out.write(
            "-----BEGIN PUBLIC KEY-----\n"
            + "\n".join(data[j : j + 64] for j in range(0, 300, 64))
            + "\n-----END PUBLIC KEY-----\n"
        )


def section_prose(out: io.StringIO) -> None:
    words = (
        "the a of to and in that is was for it with as his on be at by had are but from or have an they which one "
        "you were all we her she there would their will when who him been has more if no out so said what up its "
        "about than into them can only other time new some could these two may first then do any like my now over "
        "such our man me even most made after also did many before must through back years where much your way "
        "password token secret key reset login user account session expired invalid required characters"
    ).split()
    for _i in range(1500):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 16)))
        out.write(line.capitalize() + rng.choice([".", ".", "?", ":", ";"]) + "\n")
    for line in (
        "Password: must be at least 8 characters",
        "Your password has expired. Reset it at https://example.com/reset",
        "password reset requested for user bob",
        "token: expired",
        "Session token refreshed",
        "api_key: required",
        "secret: hidden",
        "if password == expected:",
        "    password = getpass.getpass()",
        "    token = request.headers.get('X-Token')",
        "    api_key = os.environ['API_KEY']",
        "    secret = settings.SECRET",
        "def login(user: str, password: str) -> Session:",
        # found by the sandbox tests: paths and file lists that name password files
        '{"append /etc/passwd": "EROFS", "append /etc/hosts": "EROFS", "rename /etc/shadow": "EACCES"}',
        str(sorted(["passwd", "group", "hosts", "shadow", "gshadow", "hostname", "resolv.conf"])),
        "cat: /var/run/secrets/kubernetes.io/serviceaccount/token: No such file or directory",
        "-rw-r--r-- 1 root root 1.2K Dec  1 10:00 /etc/passwd",
    ):
        out.write(line + "\n")


def negatives() -> str:
    out = io.StringIO()
    for section in (
        section_images,
        section_hashes,
        section_json_logs,
        section_numbers,
        section_urls,
        section_reprs,
        section_tracebacks,
        section_pydoc,
        section_terminal,
        section_certificates,
        section_prose,
    ):
        out.write(f"===== {section.__name__[8:]} =====\n")
        section(out)
    return out.getvalue()


def main() -> None:
    with (HERE / "positives.jsonl").open("w") as f:
        for example in positives():
            f.write(json.dumps(example) + "\n")
    (HERE / "negatives.txt").write_text(negatives())


if __name__ == "__main__":
    main()
