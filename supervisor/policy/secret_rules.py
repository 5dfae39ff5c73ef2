"""The secret rules: data for ``redact``, one entry per documented token format.

Written from the formats the issuers publish; gitleaks' default rule set
(about 220 rules) was the checklist for which families to cover. A rule is
RE2 syntax (no look-around, no back-references) and says how its match is
judged:

- ``FORMAT``: the format is the evidence (a ``ghp_`` prefix and 36
  characters). The whole match, or its ``v`` group, is the secret.
- ``PASSWORD``: a value given to a password-like name, whatever its entropy
  (``password=hunter2``), unless it is a placeholder, a word of prose or code.
- ``ENTROPY``: a value given to a key-like or provider name; it must look
  random (length, character classes, entropy).
- ``CONTEXT``: not a secret itself but a reason to look at its line (the
  word ``aws`` or an access key id: a 40-character secret key passed by
  position beside it).

``prefixes`` are a rule's literal starts. ``redact`` uses them to find the
rule's tokens broken by one line break and its tokens printed base64-, hex-
or percent-encoded, without decoding every hash and blob in ordinary output.
Group names inside a pattern (``v``, ``q``, ``s``, ``u``) are the value's
forms: the first that took part is the secret.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Check(enum.Enum):
    FORMAT = "format"
    PASSWORD = "password"  # noqa: S105 - the name of a check
    ENTROPY = "entropy"
    CONTEXT = "context"


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: str
    check: Check = Check.FORMAT
    prefixes: tuple[str, ...] = ()
    family: str = ""
    gap: bool = False  # the match spans text before its value that other rules must still see
    # The same rule without counted classes where no literal comes first: what
    # the union of all rules uses, so RE2's DFA need not count runs of letters
    # for every rule at every position. The exact pattern then confirms.
    loose: str = ""


# A value after a name: quoted (double or single) or bare.
# A value that starts with < or { is a placeholder or markup (<pad>, {{ x }}):
# left out here, so the many of them in ordinary output cost nothing.
VALUE = (
    r"""(?:"(?P<q>(?:[^"\\\r\n<{]|\\.)(?:[^"\\\r\n]|\\.)*)"|'(?P<s>(?:[^'\\\r\n<{]|\\.)(?:[^'\\\r\n]|\\.)*)'"""
    r"""|(?P<u>[^\s"'`,;&|)}\]<>{]+))"""
)
# name ... operator: `name = v`, `name: v`, `"name": v`, `name => v`, `name := v`, `--name=v`, `--name v`.
ASSIGN = r"""["'`]?\]?[ \t]{0,3}(?:=>|:=|\?=|=|:)[ \t]{0,3}"""
FLAG_SPACE = r"""[ \t]{1,3}"""
# A name is not the end of a path: /etc/passwd: ..., /var/run/secrets/.../token
NOT_A_PATH = r"(?:^|[^/])"
# f("password", "value"): the name and the value as the first two arguments of a call
# (not any two strings in a row: ["passwd", "group"] is a list of file names).
QUOTED_ARGUMENT = r"""["'][ \t]{0,3},[ \t]{0,3}(?:"(?P<q>[^"\r\n]+)"|'(?P<s>[^'\r\n]+)')"""

PASSWORD_NAMES = r"(?i:passw(?:or)?d|passphrase|pwd|password_?plain|cleartextpassword)"  # noqa: S105 - names
KEY_NAMES = (
    r"(?i:secret|token|api[_.-]?key|apikey|api[_.-]?secret|auth|credentials?|creds|"
    r"(?:access|secret|private|signing|encryption|master|license|account|app|consumer|client|auth|service|"
    r"admin|deploy|hmac|jwt|webhook|session|storage|subscription|write|read)[_.-]?(?:key|secret|token)|"
    r"(?:access|refresh|bearer|id|oauth|sas|session|personal[_.-]?access)[_.-]?token)"
)
# Providers whose keys have no distinctive prefix: their name near a random
# value is the evidence (gitleaks' keyword-gated rules, and a few AI/ML ones).
PROVIDERS = (
    "adafruit|adobe|airtable|algolia|alibaba|aliyun|asana|atlassian|confluence|jira|beamer|bitbucket|bittrex|"
    "meraki|cloudflare|codecov|cohere|coinbase|confluent|contentful|datadog|discord|droneci|dropbox|etsy|"
    "facebook|fastly|finicity|finnhub|flickr|freshbooks|gitter|gocardless|heroku|hubspot|intercom|jfrog|"
    "artifactory|bintray|kraken|kucoin|launchdarkly|linkedin|looker|mailchimp|mailgun|mapbox|mattermost|"
    "messagebird|netlify|newrelic|new_relic|nytimes|okta|plaid|rapidapi|sendbird|sentry|snyk|sonar|squarespace|"
    "sumologic|telegram|travis|twitch|twitter|yandex|zendesk|mistral|wandb|pinecone|deepgram|assemblyai|"
    "elevenlabs|replicate|openrouter|fireworks|anyscale|vercel|supabase|firebase|paypal|braintree|adyen|"
    "razorpay|pusher|nexmo|vonage|postmark|sparkpost|mandrill|sendgrid|mixpanel|amplitude|rollbar|"
    "bugsnag|honeycomb|pagerduty|opsgenie|circleci|azure|gcp|openai|anthropic|huggingface|stripe|twilio|"
    "slack|github|gitlab|npm|pypi|docker|dockerhub|snowflake|databricks|mongodb|upstash|"
    "planetscale|auth0|lemonsqueezy|shopify|digitalocean|linode|vultr|hetzner|scaleway"
)
PROVIDER_NAMES = r"(?:\b|_)(?i:" + PROVIDERS + r")(?:[_-][\w-]*)?"


def _format(kind: str, family: str, pattern: str, *prefixes: str, loose: str = "") -> Rule:
    return Rule(kind, pattern, Check.FORMAT, prefixes, family, loose=loose)


RULES: tuple[Rule, ...] = (
    # --- private keys: a BEGIN line opens redaction until its END line, a blank line, or the end
    Rule(
        "private_key",
        r"-----BEGIN[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:\r?\n[A-Za-z][\w-]*: ?[^\r\n]*)*(?:\r?\n)?(?s:.*?)"
        r"(?:-----END[ A-Z0-9_-]{0,40}PRIVATE KEY(?: BLOCK)?-----|\r?\n[ \t]*\r?\n|\z)",
        prefixes=("-----BEGIN",),
        family="private_key",
    ),
    Rule(
        "private_key",
        r"PuTTY-User-Key-File-\d: [^\r\n]*(?:\r?\n[^\r\n]*){0,12}?\r?\nPrivate-Lines: \d+(?:\r?\n[A-Za-z0-9+/=]+)+",
        prefixes=("PuTTY-User-Key-File-",),
        family="private_key",
    ),
    _format(
        "age_secret_key", "private_key", r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}", "AGE-SECRET-KEY-"
    ),
    # --- cloud
    _format("aws_access_key", "cloud", r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", "AKIA", "ASIA"),
    Rule(
        "aws_secret_key",
        r"(?i:aws)[\w.-]{0,20}(?i:secret)[\w.-]{0,20}"
        + ASSIGN
        + r"""["'`]?(?P<v>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)""",
        Check.ENTROPY,
        family="cloud",
    ),
    _format("aws_bedrock_key", "cloud", r"\bABSK[A-Za-z0-9+/]{109,}={0,2}", "ABSK"),
    _format("aws_bedrock_key", "cloud", r"\bbedrock-api-key-[A-Za-z0-9+/]{20,}={0,2}", "bedrock-api-key-"),
    _format("google_api_key", "cloud", r"\bAIza[\w-]{35}", "AIza"),
    _format("google_oauth_secret", "cloud", r"\bGOCSPX-[\w-]{28}", "GOCSPX-"),
    _format("google_oauth_token", "cloud", r"\bya29\.[\w-]{30,}", "ya29."),
    _format("google_refresh_token", "cloud", r"\b1//0[\w-]{40,}", "1//0"),
    Rule(
        "azure_storage_key",
        r"(?i:AccountKey|SharedAccessKey)[ \t]*=[ \t]*(?P<v>[A-Za-z0-9+/]{40,88}={0,2})",
        family="cloud",
        prefixes=("AccountKey=",),
    ),
    Rule("azure_sas_token", r"[?&]sig=(?P<v>[A-Za-z0-9%+/]{40,}(?:=|%3[Dd]){0,2})", family="cloud"),
    Rule(
        "azure_client_secret",
        r"""(?:^|[\\'"`\s>=:(,)])(?P<v>[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34})(?:$|[\\'"`\s<),])""",
        family="cloud",
    ),
    _format("digitalocean_token", "cloud", r"\bdo[opr]_v1_[a-f0-9]{64}\b", "dop_v1_", "doo_v1_", "dor_v1_"),
    _format("alibaba_access_key", "cloud", r"\bLTAI[A-Za-z0-9]{20}\b", "LTAI"),
    _format("heroku_api_key", "cloud", r"\bHRKU-AA[\w-]{58}", "HRKU-AA"),
    _format("cloudflare_origin_ca_key", "cloud", r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b"),
    _format(
        "flyio_token",
        "cloud",
        r"\b(?:fo1_[\w-]{43}|fm[12][ar]?_[A-Za-z0-9+/]{100,}={0,3})",
        "fo1_",
        "fm1a_",
        "fm1r_",
        "fm2_",
    ),
    _format("vault_token", "cloud", r"\bhv[sb]\.[\w-]{90,}", "hvs.", "hvb."),
    _format(
        "terraform_token", "cloud", r"\b[a-z0-9]{14}\.atlasv1\.[\w=-]{60,70}", loose=r"\b[a-z0-9]+\.atlasv1\.[\w=-]+"
    ),
    _format("doppler_token", "cloud", r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}\b", "dp.pt.", "dp.st."),
    _format("pulumi_token", "cloud", r"\bpul-[a-f0-9]{40}\b", "pul-"),
    _format("databricks_token", "cloud", r"\bdapi[a-f0-9]{32}(?:-\d)?\b", "dapi"),
    _format("onepassword_token", "cloud", r"\bops_eyJ[A-Za-z0-9+/]{250,}={0,3}", "ops_eyJ"),
    _format(
        "onepassword_secret_key",
        "cloud",
        r"\bA3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}\b",
    ),
    _format("infracost_token", "cloud", r"\bico-[A-Za-z0-9]{32}\b", "ico-"),
    _format("openshift_token", "cloud", r"\bsha256~[\w-]{43}", "sha256~"),
    _format("scalingo_token", "cloud", r"\btk-us-[\w-]{48}", "tk-us-"),
    _format("clickhouse_secret", "database", r"\b4b1d[A-Za-z0-9]{38}\b", "4b1d"),
    # --- version control
    _format(
        "github_token",
        "vcs",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_\w{22,})\b",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
    ),
    _format(
        "gitlab_token",
        "vcs",
        r"\bgl(?:pat|dt|ft|soat|rt|cbt|ptt|agent|oas|imt|ffct|wt)-[\w-]{20,}(?:\.[0-9a-z]{2}[0-9a-z]{7})?",
        "glpat-",
        "gldt-",
        "glrt-",
        "glptt-",
        "glcbt-",
    ),
    _format("gitlab_token", "vcs", r"\bGR1348941[\w-]{20}", "GR1348941"),
    Rule("gitlab_session", r"_gitlab_session=(?P<v>[0-9a-z]{32})", family="vcs"),
    _format("atlassian_token", "vcs", r"\bAT(?:ATT|CTT)3[\w=-]{60,}", "ATATT3", "ATCTT3"),
    _format("sourcegraph_token", "vcs", r"\bsgp_(?:(?:[a-fA-F0-9]{16}|local)_)?[a-fA-F0-9]{40}\b", "sgp_"),
    # --- package registries
    _format("npm_token", "registry", r"\bnpm_[A-Za-z0-9]{36}\b", "npm_"),
    _format("pypi_token", "registry", r"\bpypi-AgE[\w-]{50,}", "pypi-AgE"),
    _format("rubygems_token", "registry", r"\brubygems_[a-f0-9]{48}\b", "rubygems_"),
    _format("nuget_key", "registry", r"\boy2[a-z0-9]{43}\b", "oy2"),
    _format("docker_hub_token", "registry", r"\bdckr_(?:pat|oat)_[\w-]{27,}", "dckr_pat_", "dckr_oat_"),
    _format("clojars_token", "registry", r"\bCLOJARS_[a-z0-9]{60}\b", "CLOJARS_"),
    _format("artifactory_key", "registry", r"\bAKCp[A-Za-z0-9]{69}\b|\bcmVmd[A-Za-z0-9]{59}\b", "AKCp"),
    _format("crates_io_token", "registry", r"\bcio[a-zA-Z0-9]{32}\b", "cio"),
    _format("octopus_key", "registry", r"\bAPI-[A-Z0-9]{26}\b", "API-"),
    Rule(
        "nuget_password",
        r"""(?i:<add key="(?:ClearText)?Password"\s*value=")(?P<v>[^"\r\n]+)\"""",
        Check.PASSWORD,
        family="registry",
    ),
    # --- AI and ML platforms (Anthropic before OpenAI: both start sk-)
    _format("anthropic_key", "ai", r"\bsk-ant-[\w-]{20,}", "sk-ant-"),
    _format("openai_key", "ai", r"\bsk-(?:proj-|svcacct-|admin-|or-v1-)?[\w-]{20,}", "sk-proj-", "sk-svcacct-", "sk-"),
    _format("huggingface_token", "ai", r"\b(?:hf_|api_org_)[A-Za-z0-9]{34,}\b", "hf_", "api_org_"),
    _format("replicate_token", "ai", r"\br8_[A-Za-z0-9]{37}\b", "r8_"),
    _format("groq_key", "ai", r"\bgsk_[A-Za-z0-9]{52}\b", "gsk_"),
    _format("perplexity_key", "ai", r"\bpplx-[A-Za-z0-9]{48}\b", "pplx-"),
    _format("xai_key", "ai", r"\bxai-[A-Za-z0-9]{80}\b", "xai-"),
    _format("langsmith_key", "ai", r"\blsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}\b", "lsv2_"),
    _format("nvidia_key", "ai", r"\bnvapi-[\w-]{64}", "nvapi-"),
    # --- payment
    _format(
        "stripe_key", "payment", r"\b(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,}", "sk_live_", "rk_live_", "sk_test_"
    ),
    _format("stripe_webhook_secret", "payment", r"\bwhsec_[A-Za-z0-9+/]{32,}", "whsec_"),
    _format(
        "square_token", "payment", r"\b(?:EAAA|sq0atp-)[\w-]{22,60}\b|\bsq0csp-[\w-]{43}", "sq0atp-", "sq0csp-", "EAAA"
    ),
    _format(
        "braintree_token",
        "payment",
        r"\baccess_token\$(?:production|sandbox)\$[0-9a-z]{16}\$[0-9a-f]{32}\b",
        "access_token$",
    ),
    _format(
        "shopify_token", "payment", r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", "shpat_", "shpss_", "shpca_", "shppa_"
    ),
    _format("flutterwave_key", "payment", r"\bFLWSECK(?:_TEST)?-[a-hA-H0-9]{32}-X\b", "FLWSECK"),
    _format(
        "plaid_token",
        "payment",
        r"\baccess-(?:sandbox|development|production)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        "access-sandbox-",
        "access-production-",
    ),
    _format("duffel_token", "payment", r"\bduffel_(?:test|live)_[\w=-]{43}", "duffel_"),
    _format("easypost_key", "payment", r"\bEZ[AT]K[A-Za-z0-9]{54}\b", "EZAK", "EZTK"),
    _format("shippo_token", "payment", r"\bshippo_(?:live|test)_[a-fA-F0-9]{40}\b", "shippo_"),
    # --- messaging
    _format(
        "slack_token",
        "messaging",
        r"\bxox[abposre]-[A-Za-z0-9-]{10,}|\bxoxe\.xox[bp]-[\w-]{20,}",
        "xoxb-",
        "xoxp-",
        "xoxa-",
        "xoxe",
    ),
    _format("slack_token", "messaging", r"\bxapp-\d-[A-Za-z0-9]+-\d+-[a-z0-9]+", "xapp-"),
    _format(
        "slack_webhook",
        "messaging",
        r"\bhooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}",
        "hooks.slack.com/",
    ),
    _format(
        "discord_token",
        "messaging",
        r"\b[MNO][A-Za-z\d_-]{23,25}\.[\w-]{6}\.[\w-]{27,38}\b",
        loose=r"\b[MNO][\w-]+\.[\w-]{6}\.[\w-]{27,}",
    ),
    _format(
        "discord_webhook",
        "messaging",
        r"\bdiscord(?:app)?\.com/api/webhooks/\d+/[\w-]{60,}",
        "discord.com/api/webhooks/",
    ),
    _format("telegram_bot_token", "messaging", r"\b\d{8,10}:AA[\w-]{33}\b", loose=r"\b\d+:AA[\w-]{33}"),
    _format("twilio_key", "messaging", r"\bSK[0-9a-fA-F]{32}\b"),
    _format("sendgrid_key", "messaging", r"\bSG\.[\w-]{22}\.[\w-]{43}\b", "SG."),
    _format("mailchimp_key", "messaging", r"\b[0-9a-f]{32}-us\d{1,2}\b", loose=r"\b[0-9a-f]+-us\d"),
    _format("brevo_key", "messaging", r"\bx(?:keysib|smtpsib)-[a-f0-9]{64}-[A-Za-z0-9]{16}\b", "xkeysib-", "xsmtpsib-"),
    _format(
        "teams_webhook",
        "messaging",
        r"\b[\w-]+\.webhook\.office\.com/webhookb2/[\w@.-]+/IncomingWebhook/\w+/[\w-]+",
        "webhook.office.com/",
    ),
    _format("facebook_token", "messaging", r"\bEAA[MC][A-Za-z0-9]{100,}", "EAAM", "EAAC"),
    # --- databases and data platforms
    _format("planetscale_token", "database", r"\bpscale_(?:pw|tkn|oauth)_[\w=.-]{32,64}", "pscale_"),
    _format("supabase_key", "database", r"\bsbp_[a-f0-9]{40}\b|\bsb_secret_[\w-]{20,}", "sbp_", "sb_secret_"),
    _format(
        "airtable_token", "database", r"\bpat[A-Za-z0-9]{14}\.[a-f0-9]{64}\b", loose=r"\bpat[A-Za-z0-9]+\.[a-f0-9]{64}"
    ),
    # --- observability and other services
    _format(
        "grafana_token",
        "saas",
        r"\bglc_[A-Za-z0-9+/]{32,}={0,3}|\bglsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b",
        "glc_",
        "glsa_",
    ),
    _format("grafana_token", "saas", r"\beyJrIjoi[A-Za-z0-9]{70,}={0,3}", "eyJrIjoi"),
    _format("new_relic_key", "saas", r"\bNR(?:AK|II)-[A-Z0-9]{27}\b|\bNRJS-[a-f0-9]{19}\b", "NRAK-", "NRJS-"),
    _format("sentry_token", "saas", r"\bsntry[su]_[\w+/=]{40,}", "sntrys_", "sntryu_"),
    _format("dynatrace_token", "saas", r"\bdt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}\b", "dt0c01."),
    _format("postman_key", "saas", r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", "PMAK-"),
    _format("linear_key", "saas", r"\blin_api_[A-Za-z0-9]{40}\b", "lin_api_"),
    _format("notion_token", "saas", r"\bntn_[0-9]{11}[A-Za-z0-9]{35}\b|\bsecret_[A-Za-z0-9]{43}\b", "ntn_", "secret_"),
    _format("prefect_key", "saas", r"\bpnu_[A-Za-z0-9]{36}\b", "pnu_"),
    _format("readme_key", "saas", r"\brdme_[a-z0-9]{70}\b", "rdme_"),
    _format("typeform_token", "saas", r"\btfp_[\w.=-]{59}", "tfp_"),
    _format("frameio_token", "saas", r"\bfio-u-[\w=-]{64}", "fio-u-"),
    _format("harness_key", "saas", r"\b(?:pat|sat)\.[\w-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}\b"),
    _format("mapbox_secret_token", "saas", r"\bsk\.eyJ[\w-]{50,}\.[\w-]{20,}", "sk.eyJ"),
    _format(
        "maxmind_key", "saas", r"\b[A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk\b", loose=r"\b[A-Za-z0-9]+_[A-Za-z0-9]+_mmk\b"
    ),
    _format("settlemint_token", "saas", r"\bsm_[aps]at_[A-Za-z0-9]{16}\b", "sm_pat_", "sm_aat_", "sm_sat_"),
    _format("intra42_secret", "saas", r"\bs-s4t2(?:ud|af)-[a-f0-9]{64}\b", "s-s4t2"),
    _format("adobe_secret", "saas", r"\bp8e-[A-Za-z0-9]{32}\b", "p8e-"),
    _format("defined_networking_key", "saas", r"\bdnkey-[a-z0-9=_-]{26}-[a-z0-9=_-]{52}", "dnkey-"),
    # --- tokens in general
    _format("jwt", "jwt", r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.(?:[\w-]{8,})?", "eyJhbGci", "eyJ0eXAi", "eyJraWQi"),
    Rule(
        "url_credentials",
        r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s/?#@:'\"<>]*:(?P<v>[^\s/?#'\"<>]+)@[\w\[]",
        Check.PASSWORD,
        family="url",
        loose=r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:'\"<>]*:[^\s/?#'\"<>]+@[\w\[]",
    ),
    Rule(
        "authorization_header",
        r"(?i:authorization|x-api-key|x-auth-token|api-key)[\"']?[ \t]{0,3}[:=][ \t]{0,3}[\"']?"
        r"(?:(?i:bearer|basic|token|digest|apikey|sso-key|otoken)[ \t]+)?(?P<v>[\w.~+/=:-]{6,})",
        Check.PASSWORD,
        family="generic",
    ),
    Rule("bearer_token", r"\b(?i:bearer)[ \t]+(?P<v>[\w.~+/-]{20,}=*)", Check.ENTROPY, family="generic"),
    Rule(
        "basic_auth",
        r"\bcurl\b[^\r\n]{0,200}?[ \t](?:-u|--user)[ =]?[\"']?[^\s:\"']{1,64}:(?P<v>[^\s\"']+)",
        Check.PASSWORD,
        family="generic",
        gap=True,
        loose=r"\bcurl\b[^\r\n]*?[ \t](?:-u|--user)[ =]?[\"']?[^\s:\"']+:[^\s\"']+",
    ),
    # --- names that say "secret" (after the formats, so a known token keeps its own type)
    Rule(
        "password_assignment",
        r"""(?i:<(?:[\w-]*:)?[\w-]*password>)(?P<v>[^<\r\n]+)</""",
        Check.PASSWORD,
        family="generic",
    ),
    Rule("password_assignment", NOT_A_PATH + PASSWORD_NAMES + ASSIGN + VALUE, Check.PASSWORD, family="generic"),
    Rule("password_assignment", r"--[\w-]*" + PASSWORD_NAMES + FLAG_SPACE + VALUE, Check.PASSWORD, family="generic"),
    Rule(
        "password_assignment",
        r"""\([ \t]*["'][\w.-]*""" + PASSWORD_NAMES + QUOTED_ARGUMENT,
        Check.PASSWORD,
        family="generic",
    ),
    Rule("generic_secret", NOT_A_PATH + KEY_NAMES + ASSIGN + VALUE, Check.ENTROPY, family="generic"),
    Rule("generic_secret", r"--[\w-]*" + KEY_NAMES + FLAG_SPACE + VALUE, Check.ENTROPY, family="generic"),
    Rule(
        "generic_secret",
        r"""\([ \t]*["'][\w.-]*""" + KEY_NAMES + QUOTED_ARGUMENT,
        Check.ENTROPY,
        family="generic",
    ),
    Rule("provider_secret", PROVIDER_NAMES + ASSIGN + VALUE, Check.ENTROPY, family="generic"),
    # --- context: the line of an AWS access key id or of the word aws/boto3 is read for a secret key
    Rule("aws_context", r"(?i:\baws\b|\bboto3?\b|\bbotocore\b)", Check.CONTEXT),
)
