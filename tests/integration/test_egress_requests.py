"""Every request a granted run sends through the egress proxy is checked and
recorded, not only the first on a connection.

The upstream is a real HTTP/1.1 server on this host's loopback that ignores
``Connection: close`` and keeps every connection open, the kind of upstream
behind which requests pipelined or kept alive after the first used to reach
the granted host unchecked. The proxy's test hooks map allowed.test and
secret.test to 127.0.0.1 and permit the upstream's port; runs are granted
allowed.test only.
"""

from __future__ import annotations

import http.server
import json
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator

import pytest

from protocol import messages as m
from protocol.client import Client
from tests.conftest import RELAXED_POLICY, Service

pytestmark = pytest.mark.integration


class KeepAlive(http.server.BaseHTTPRequestHandler):
    """Answers every request, reads Content-Length and chunked bodies, never hangs up."""

    protocol_version = "HTTP/1.1"

    def serve(self) -> None:
        self.close_connection = False  # whatever the request's Connection field says
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen.append((self.requestline, body))  # type: ignore[attr-defined]
        reply = f"upstream {self.command} {self.path} {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = serve

    def log_message(self, *args: object) -> None:
        pass


class Upstream:
    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
        self.httpd.seen = []  # type: ignore[attr-defined]
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[tuple[str, bytes]]:
        return self.httpd.seen  # type: ignore[attr-defined, no-any-return]

    @property
    def lines(self) -> list[str]:
        return [line for line, _ in self.seen]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="module")
def svc(service_factory: Callable[..., Service], upstream: Upstream) -> Service:
    extra = f"""
        [egress]
        allow_targets = ["127.0.0.1:{upstream.port}"]
        [egress.resolve]
        "allowed.test" = "127.0.0.1"
        "secret.test" = "127.0.0.1"
    """
    service = service_factory(pool=1, policy=RELAXED_POLICY, extra=extra)
    with service.client() as client:
        client.grant("netter", m.Capability(m.CapabilityKind.NET, "allowed.test"))
    return service


@pytest.fixture
def cl(svc: Service, upstream: Upstream) -> Iterator[Client]:
    upstream.seen.clear()
    with svc.client() as client:
        yield client


def granted_run(cl: Client, code: str, language: str = "python") -> m.ExecuteResult:
    cap = [m.Capability(m.CapabilityKind.NET, "allowed.test")]
    return cl.execute(textwrap.dedent(code), language, capabilities=cap, client_id="netter")


def decisions(result: m.ExecuteResult) -> list[tuple[str, bool, int]]:
    return [(d.host, d.allowed, d.count) for d in result.network]


# Sends each connection's bytes to the proxy in one write, reads to the end
# (or 2 s of silence), and prints each answer's status lines and body ends as JSON.
RAW = """
import json, re, socket
answers = []
for data in CONNECTIONS:
    s = socket.create_connection(("127.0.0.1", 3128), timeout=2)
    s.sendall(data)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except OSError as exc:
        got += b" [" + type(exc).__name__.encode() + b"]"
    s.close()
    text = got.decode("latin-1")
    answers.append({"statuses": re.findall(r"HTTP/1\\.[01] (\\d+)", text), "text": text})
print(json.dumps(answers))
"""


def raw(cl: Client, *connections: bytes) -> tuple[list[dict[str, object]], m.ExecuteResult]:
    result = granted_run(cl, f"CONNECTIONS = {list(connections)!r}\n" + RAW)
    assert result.status is m.Status.OK, result
    return json.loads(result.stdout), result


def test_the_upstream_really_ignores_connection_close(upstream: Upstream) -> None:
    # Control: without this the tests below could not tell the old proxy from the new.
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as s:
        s.sendall(b"GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nConnection: close\r\n\r\n")
        got = b""
        while got.count(b"upstream GET") < 2:
            got += s.recv(65536)
    assert b"upstream GET /1 0" in got and b"upstream GET /2 0" in got
    upstream.seen.clear()


def test_a_pipelined_second_request_is_refused_and_recorded(cl: Client, upstream: Upstream) -> None:
    port = upstream.port
    first = f"GET http://allowed.test:{port}/a HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
    by_address = f"GET http://127.0.0.1:{port}/b HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    by_name = f"GET http://secret.test:{port}/c HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
    answers, result = raw(cl, (first + by_address).encode(), (first + by_name).encode())
    assert [a["statuses"] for a in answers] == [["200", "403"], ["200", "403"]], answers
    assert "IP address" in str(answers[0]["text"]) and "secret.test" in str(answers[1]["text"])
    assert upstream.lines == ["GET /a HTTP/1.1", "GET /a HTTP/1.1"]
    assert decisions(result) == [("allowed.test", True, 2), ("127.0.0.1", False, 1), ("secret.test", False, 1)]


def test_nodes_kept_alive_second_request_is_refused_and_recorded(cl: Client, svc: Service, upstream: Upstream) -> None:
    if "javascript" not in {rt.name for rt in svc.status().runtimes if rt.offered}:
        pytest.skip("javascript is not offered on this host")
    port = upstream.port
    # Node 20's default agent keeps connections alive: the second request
    # goes out on the first one's socket (reusedSocket says so).
    code = f"""
    const http = require("http");
    const proxy = new URL(process.env.HTTP_PROXY);
    function get(url, then) {{
      const req = http.request({{host: proxy.hostname, port: proxy.port, path: url}}, (res) => {{
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d) => body += d);
        res.on("end", () => {{
          console.log(res.statusCode, req.reusedSocket ? "reused" : "new", body.trim());
          if (then) setTimeout(then, 50);  // once the agent has the socket back
        }});
      }});
      req.end();
    }}
    get("http://allowed.test:{port}/first", () => get("http://secret.test:{port}/second"));
    """
    result = granted_run(cl, code, "javascript")
    first, second = result.stdout.splitlines()
    assert first == "200 new upstream GET /first 0", result
    assert second.startswith("403 reused cellblock egress: secret.test") and "not granted" in second, result
    assert upstream.lines == ["GET /first HTTP/1.1"]
    assert decisions(result) == [("allowed.test", True, 1), ("secret.test", False, 1)]


def test_a_smuggled_request_never_reaches_the_upstream_as_a_request(cl: Client, upstream: Upstream) -> None:
    port = upstream.port
    head = f"POST http://allowed.test:{port}/front HTTP/1.1\r\nHost: allowed.test:{port}\r\n"
    smuggled = f"GET /smuggled HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
    # "0\r\n\r\n" is five bytes: a Content-Length reader and a chunked reader
    # both end the body there, and both would take what follows as a request.
    both_lengths = head + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    inside_a_chunk = head + "Transfer-Encoding: chunked\r\n\r\n" + f"{len(smuggled):x}\r\n{smuggled}\r\n0\r\n\r\n"
    answers, result = raw(cl, both_lengths.encode(), inside_a_chunk.encode())
    assert answers[0]["statuses"] == ["400"] and "smuggling" in str(answers[0]["text"]), answers
    # The chunked body is forwarded as a body: the upstream sees one request carrying it.
    assert answers[1]["statuses"] == ["200"], answers
    assert upstream.seen == [("POST /front HTTP/1.1", smuggled.encode())]
    (refused, granted) = result.network
    assert (refused.host, refused.allowed, granted.host, granted.allowed) == (
        "allowed.test",
        False,
        "allowed.test",
        True,
    )
    assert "smuggling" in refused.reason
