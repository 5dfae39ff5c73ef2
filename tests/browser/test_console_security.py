"""What keeps other programs and other web pages from driving the console:
the token on every API call, Host and Origin checked, bodies capped, and
errors that say what was wrong without the service's internals."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.browser.conftest import Console, expect
from tests.conftest import Service

pytestmark = pytest.mark.browser

GRANT = json.dumps({"capability": {"kind": "net", "target": "csrf.example"}, "scope": "client"}).encode()


def csrf_grants(service: Service) -> list[object]:
    with service.client() as client:
        return [g for g in client.grants("console").grants if g.capability.target == "csrf.example"]


def test_a_call_without_the_token_is_refused(page: Any, console: Console, console_service: Service) -> None:
    assert console.call("/api/status")[0] == 200
    status, body = console.call("/api/status", token=None)
    assert status == 401 and body["error"]["code"] == "no_token"
    assert console.call("/api/status", token="not-the-token")[0] == 401
    assert console.call("/api/grants", token=None, data=GRANT)[0] == 401
    assert csrf_grants(console_service) == []

    # The page itself, opened without the token, asks for it and shows nothing of the service.
    page.goto(console.base + "/")
    expect(page.get_by_role("heading", name="Access token needed")).to_be_visible()
    assert page.locator("#who").inner_text() == ""
    assert page.locator("#page-chat").is_hidden()
    page.shots("no-token")
    page.get_by_role("textbox", name="Token").fill(console.token)
    page.get_by_role("button", name="Use this token").click()
    expect(page.get_by_role("button", name="Load example")).to_be_visible()
    assert "client “console”" in page.locator("#who").inner_text()


def test_a_foreign_origin_or_host_is_refused(
    page: Any, console: Console, console_service: Service, upstream: int
) -> None:
    status, body = console.call("/api/status", headers={"Origin": "http://evil.example"})
    assert status == 403 and body["error"]["code"] == "bad_origin"
    assert console.call("/api/grants", headers={"Origin": "http://evil.example"}, data=GRANT)[0] == 403
    assert console.call("/api/status", headers={"Origin": "null"})[0] == 403
    assert console.call("/api/status", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    # DNS rebinding: a name the attacker controls, resolved to 127.0.0.1, still says its own name.
    port = console.base.rsplit(":", 1)[1]
    status, body = console.call("/api/status", headers={"Host": f"rebound.example:{port}"})
    assert status == 403 and body["error"]["code"] == "bad_host"
    assert console.call("/", token=None, headers={"Host": f"rebound.example:{port}"})[0] == 403
    assert csrf_grants(console_service) == []

    # A page of another origin in the same browser, even one that knows the token, gets nothing done.
    page.goto(f"http://127.0.0.1:{upstream}/elsewhere")
    outcome = page.evaluate(
        """async ([url, token, body]) => {
            const tries = {};
            for (const [name, init] of Object.entries({
                cors: {method: "POST", headers: {Authorization: `Bearer ${token}`,
                       "Content-Type": "application/json"}, body},
                simple: {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body},
            })) {
                try { const r = await fetch(url, init); tries[name] = r.type + " " + r.status; }
                catch (e) { tries[name] = "refused: " + e.name; }
            }
            return tries;
        }""",
        [console.base + "/api/grants", console.token, GRANT.decode()],
    )
    assert outcome["cors"] == "refused: TypeError", outcome  # the preflight is refused
    # Sent blind (no preflight): the console refuses it for its Origin, and its answer,
    # marked Cross-Origin-Resource-Policy: same-origin, is not even handed to the page.
    assert outcome["simple"] == "refused: TypeError", outcome
    assert csrf_grants(console_service) == []


def raw(console: Console, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """A request written by hand on a socket; the console may answer before the body is all sent."""
    host, port = console.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        try:
            sock.sendall(body)
        except OSError:
            pass  # it answered and hung up first: the answer is what counts
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_bodies_are_capped_and_errors_say_what_was_wrong(console: Console) -> None:
    port = console.base.rsplit(":", 1)[1]
    head = f"POST /api/run HTTP/1.1\nHost: 127.0.0.1:{port}\nAuthorization: Bearer {console.token}\n"
    # Announced too large: refused before a byte of it is read.
    status, body = raw(console, head + f"Content-Length: {9 * 1024 * 1024}\n")
    assert status == 413 and body["error"]["code"] == "too_large"
    # Not announced (chunked): refused once what came is over the cap.
    piece = b"x" * 65536
    chunked = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") * 140 + b"0\r\n\r\n"
    status, body = raw(console, head + "Transfer-Encoding: chunked\n", chunked)
    assert status == 413 and body["error"]["code"] == "too_large"
    status, body = console.call("/api/run", data=b'{"code": 5}')
    assert status == 400 and "Expected `str`, got `int` - at `$.code`" in body["error"]["message"]
    status, body = console.call("/api/run", data=b'{"code": "print(1)", "langauge": "python"}')
    assert status == 400 and "langauge" in body["error"]["message"]
    status, body = console.call("/api/history?status=exploded")
    assert status == 400 and body["error"]["message"] == "no run status 'exploded'"
    status, body = raw(console, head.replace("POST", "PUT") + "Content-Length: 0\n")
    assert status == 405 and body["error"]["code"] == "bad_method"
    status, body = console.call("/api/examples/../../etc/passwd")
    assert status == 404
    status, body = console.call("/api/grants/999999", method="DELETE")
    assert status == 404 and body["error"] == {"code": "not_found", "message": "no grant with id 999999"}
    status, body = console.call("/api/run", data=b"{")
    assert status == 400 and "Traceback" not in body["error"]["message"] and "/" not in body["error"]["message"]


def test_the_page_cannot_be_framed_or_run_inline_script(console: Console) -> None:
    status, _ = console.call("/", token=None)
    assert status == 200
    import urllib.request

    with urllib.request.urlopen(console.base + "/") as response:
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
