"""Static findings about URLs with credentials: the host is reported, never the userinfo."""

from __future__ import annotations

import pytest

from protocol import messages as m
from supervisor.policy.findings import analyse, hosts


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import subprocess\nsubprocess.run(['git', 'clone', 'https://deploy:pw@git.example.com/r.git'])\n"),
        ("python", "URL = 'postgres://x'\nremote = 'https://deploy@git.example.com/team/repo.git'\n"),
        ("javascript", "fetch('https://deploy:s3cret@git.example.com/api')\n"),
        ("bash", "curl https://deploy:s3cret@git.example.com/file\n"),
    ],
)
def test_url_userinfo_is_never_reported_as_a_host(language: str, code: str) -> None:
    found = [f for f in analyse(language, code) if f.rule == "network_host"]
    assert [f.implies for f in found] == [m.Capability(m.CapabilityKind.NET, "git.example.com")]
    assert hosts(found) == ["git.example.com"]
    for finding in found:
        assert "deploy" not in finding.message and "s3cret" not in finding.message
