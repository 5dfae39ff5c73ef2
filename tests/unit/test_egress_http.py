"""Plain HTTP through the egress proxy: every request on a connection is read,
checked and recorded; nothing the proxy did not frame itself reaches the upstream.

The proxy runs in this process on a real unix socket; the upstream is a real
TCP server on 127.0.0.1 that ignores ``Connection: close``, keeps every
connection open, understands Content-Length and chunked bodies, and records
each request it parses. The names api.example.com and other.example.com
resolve to it through the proxy's test hooks; only api.example.com is granted.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from supervisor import egress
from supervisor.config import EgressSection
from supervisor.egress import EgressConfig, Proxy, proxy

GRANTED = ["api.example.com"]


class Upstream:
    """A keep-alive HTTP/1.1 server that records (request line, headers, body) per request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
                if head[0].split(" ")[1] == "/early":  # answers without reading the body, and reads on
                    self.seen.append((head[0], headers, b""))
                    writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 5\r\n\r\nearly")
                    continue
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                else:
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append((head[0], headers, body))
                method, path, _ = head[0].split(" ")
                answer = f"seen {method} {path} {len(body)}".encode()
                if path == "/chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    writer.write(b"5\r\n" + answer[:5] + b"\r\n" + b"%x\r\n" % (len(answer) - 5) + answer[5:] + b"\r\n")
                    writer.write(b"0\r\n\r\n")
                elif path == "/unframed":  # no length: the body ends when the connection does
                    writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + answer)
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer))
                    if method != "HEAD":
                        writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()

    @property
    def lines(self) -> list[str]:
        return [line for line, _, _ in self.seen]


class Scene:
    def __init__(self, proxy: Proxy, path: str, upstream: Upstream) -> None:
        self.proxy, self.path, self.upstream = proxy, path, upstream

    async def exchange(self, data: bytes, *, then: bytes = b"") -> bytes:
        """Send ``data`` on one connection (and ``then`` once an answer began); all that comes back.

        A plain socket, as the forwarder uses: when the proxy closes with bytes
        of ours unread, the kernel reports a reset after the answer, which
        asyncio's reader would raise in place of the answer.
        """
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, self.path)
            await loop.sock_sendall(sock, data)
            answer = b""
            while True:
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return answer
                answer += chunk
                if then and b"\r\n\r\n" in answer:
                    await loop.sock_sendall(sock, then)
                    then = b""

    async def decisions(self) -> list[tuple[str, int, bool, str, int]]:
        return [(d.host, d.port, d.allowed, d.reason, d.count) for d in await self.proxy.close("r1")]


def run_scene(tmp_path: pathlib.Path, body: Callable[[Scene], Awaitable[Any]], **egress_cfg: Any) -> Any:
    async def main() -> Any:
        upstream = Upstream()
        server = await upstream.start()
        resolve = {"api.example.com": "127.0.0.1", "other.example.com": "127.0.0.1"}
        cfg = EgressSection(resolve=resolve, allow_targets=[f"127.0.0.1:{upstream.port}"], **egress_cfg)
        proxy = Proxy(EgressConfig(rundir=str(tmp_path), egress=cfg, broker_uid=0))
        (tmp_path / "egress").mkdir(exist_ok=True)
        path = await proxy.open("r1", GRANTED)
        try:
            return await body(Scene(proxy, path, upstream))
        finally:
            await proxy.close("r1")
            server.close()

    return asyncio.run(main())


def get(host: str, port: int, path: str, *extra: str, method: str = "GET") -> bytes:
    return "\r\n".join(
        [f"{method} http://{host}:{port}{path} HTTP/1.1", f"Host: {host}:{port}", *extra, "", ""]
    ).encode()


def statuses(answer: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


# --- every request on a connection is checked --------------------------------------------


def test_a_pipelined_request_for_another_host_is_refused_and_recorded(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        answer = await s.exchange(get("api.example.com", port, "/a") + get("127.0.0.1", port, "/b"))
        assert statuses(answer) == [200, 403], answer
        assert b"seen GET /a 0" in answer and b"/b" not in answer.split(b"403", 1)[0]
        assert s.upstream.lines == ["GET /a HTTP/1.1"]
        assert await s.decisions() == [
            ("api.example.com", port, True, "granted", 1),
            ("127.0.0.1", port, False, "an IP address; grants are by name (or by that exact address)", 1),
        ]

    run_scene(tmp_path, scene)


def test_a_pipelined_request_naming_another_host_by_host_header_is_refused(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        second = f"GET http://other.example.com:{port}/b HTTP/1.1\r\nHost: api.example.com:{port}\r\n\r\n"
        answer = await s.exchange(get("api.example.com", port, "/a") + second.encode())
        assert statuses(answer) == [200, 403], answer
        assert s.upstream.lines == ["GET /a HTTP/1.1"]
        decisions = await s.decisions()
        assert [(h, allowed, n) for h, _, allowed, _, n in decisions] == [
            ("api.example.com", True, 1),
            ("other.example.com", False, 1),
        ]

    run_scene(tmp_path, scene)


def test_a_kept_alive_connection_is_checked_request_by_request(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        answer = await s.exchange(get("api.example.com", port, "/1"), then=get("other.example.com", port, "/2"))
        assert statuses(answer) == [200, 403], answer
        assert b"other.example.com:%d: not granted to this run" % port in answer
        assert s.upstream.lines == ["GET /1 HTTP/1.1"]
        assert [(h, allowed) for h, _, allowed, _, _ in await s.decisions()] == [
            ("api.example.com", True),
            ("other.example.com", False),
        ]

    run_scene(tmp_path, scene)


def test_granted_requests_on_one_connection_are_each_forwarded_and_counted(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        requests = get("api.example.com", port, "/1") + get("api.example.com", port, "/2", method="HEAD")
        answer = await s.exchange(requests + get("api.example.com", port, "/3", "Connection: close"))
        assert statuses(answer) == [200, 200, 200], answer
        assert answer.endswith(b"seen GET /3 0")
        assert s.upstream.lines == ["GET /1 HTTP/1.1", "HEAD /2 HTTP/1.1", "GET /3 HTTP/1.1"]
        ((host, _, allowed, _, count),) = await s.decisions()
        assert (host, allowed, count) == ("api.example.com", True, 3)

    run_scene(tmp_path, scene)


def test_the_upstream_sees_only_the_url_host_and_connection_close(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        request = get(
            "api.example.com", port, "/h?q=1", "Host: evil.test", "Proxy-Authorization: x", "Keep-Alive: 5",
            "Connection: keep-alive, X-Secret", "X-Secret: 1", "X-Kept: yes",
        ).replace(f"Host: api.example.com:{port}\r\n".encode(), b"")  # fmt: skip
        await s.exchange(request + get("api.example.com", port, "/x", "Connection: close"))
        line, headers, _ = s.upstream.seen[0]
        assert line == "GET /h?q=1 HTTP/1.1"
        assert headers == {"host": f"api.example.com:{port}", "x-kept": "yes", "connection": "close"}

    run_scene(tmp_path, scene)


# --- bodies: the proxy frames what it forwards ----------------------------------------------


def test_a_content_length_body_is_forwarded_as_a_body_and_the_next_request_checked(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        inner = get("other.example.com", port, "/in-body")
        post = get("api.example.com", port, "/post", f"Content-Length: {len(inner)}", method="POST") + inner
        answer = await s.exchange(post + get("other.example.com", port, "/after"))
        assert statuses(answer) == [200, 403], answer
        assert s.upstream.seen == [
            ("POST /post HTTP/1.1", {"host": f"api.example.com:{port}", "content-length": str(len(inner)),
                                     "connection": "close"}, inner),
        ]  # fmt: skip
        assert [(h, allowed) for h, _, allowed, _, _ in await s.decisions()] == [
            ("api.example.com", True),
            ("other.example.com", False),
        ]

    run_scene(tmp_path, scene)


def test_a_chunked_body_is_forwarded_rechunked_and_the_next_request_checked(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        inner = get("other.example.com", port, "/in-chunk")
        chunks = b"5;ext=1\r\nhello\r\n%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(inner), inner)
        post = get("api.example.com", port, "/post", "Transfer-Encoding: chunked", method="POST") + chunks
        answer = await s.exchange(post + get("api.example.com", port, "/next", "Connection: close"))
        assert statuses(answer) == [200, 200], answer
        assert [(line, body) for line, _, body in s.upstream.seen] == [
            ("POST /post HTTP/1.1", b"hello" + inner),
            ("GET /next HTTP/1.1", b""),
        ]
        assert s.upstream.seen[0][1]["transfer-encoding"] == "chunked"

    run_scene(tmp_path, scene)


def test_chunked_and_unframed_answers_reach_the_client_whole(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        answer = await s.exchange(get("api.example.com", port, "/chunked") + get("api.example.com", port, "/unframed"))
        assert statuses(answer) == [200, 200], answer
        assert b"5\r\nseen \r\n" in answer and b"0\r\n\r\n" in answer
        # The second answer has no length: the proxy closes after it, telling the client so.
        assert (
            answer.endswith(b"\r\n\r\nseen GET /unframed 0") and b"Connection: close" in answer.split(b"0\r\n\r\n")[1]
        )

    run_scene(tmp_path, scene)


def test_an_interim_answer_is_relayed_and_the_body_follows(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        head = get("api.example.com", port, "/e", "Expect: 100-continue", "Content-Length: 4", method="PUT")
        answer = await s.exchange(head, then=b"data" + get("api.example.com", port, "/x", "Connection: close"))
        assert statuses(answer) == [100, 200, 200], answer
        assert [(line, body) for line, _, body in s.upstream.seen] == [
            ("PUT /e HTTP/1.1", b"data"),
            ("GET /x HTTP/1.1", b""),
        ]

    run_scene(tmp_path, scene)


def test_an_answer_before_the_body_is_in_ends_the_connection(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        # Half the body, and the upstream answers at once: what the code sends
        # next could be body or a next request, so the proxy hangs up (and the
        # upstream, which reads on, never gets more than that half).
        post = get("api.example.com", s.upstream.port, "/early", "Content-Length: 10", method="POST")
        answer = await s.exchange(post + b"x" * 5)
        assert statuses(answer) == [413] and answer.endswith(b"early"), answer
        assert s.upstream.lines == ["POST /early HTTP/1.1"]

    run_scene(tmp_path, scene)


def test_a_connect_after_a_plain_request_is_checked_too(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        connect = f"CONNECT other.example.com:{port} HTTP/1.1\r\n\r\n".encode()
        answer = await s.exchange(get("api.example.com", port, "/a") + connect + b"GET /tunnelled HTTP/1.1\r\n\r\n")
        assert statuses(answer) == [200, 403], answer
        assert s.upstream.lines == ["GET /a HTTP/1.1"]

    run_scene(tmp_path, scene)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (["Content-Length: 5", "Transfer-Encoding: chunked"], "both Content-Length and Transfer-Encoding"),
        (["Transfer-Encoding: chunked", "Content-Length: 5"], "both Content-Length and Transfer-Encoding"),
        (["Content-Length: 5", "Content-Length: 6"], "Content-Length"),
        (["Content-Length: 5, 6"], "Content-Length"),
        (["Content-Length: +5"], "Content-Length"),
        (["Transfer-Encoding: chunked, identity"], "Transfer-Encoding"),
        (["Transfer-Encoding: xchunked"], "Transfer-Encoding"),
        (["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], "Transfer-Encoding"),
        (["Transfer-Encoding : chunked"], "malformed header"),
        (["X-A: 1", " Transfer-Encoding: chunked"], "malformed header"),
        (["X-A: 1\nTransfer-Encoding: chunked"], "malformed header"),
        (["X-A: 1\rTransfer-Encoding: chunked"], "malformed header"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_a_smuggling_attempt_is_refused_and_nothing_reaches_the_upstream(
    tmp_path: pathlib.Path, headers: list[str], why: str
) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        smuggled = get("api.example.com", port, "/smuggled")
        body = b"0\r\n\r\n" + smuggled
        answer = await s.exchange(get("api.example.com", port, "/front", *headers, method="POST") + body)
        assert statuses(answer) == [400], answer
        assert why.encode() in answer, answer
        assert s.upstream.seen == [] and s.upstream.connections == 0
        ((host, _, allowed, reason, _),) = await s.decisions()
        assert host == "api.example.com" and not allowed and why in reason

    run_scene(tmp_path, scene)


def test_a_bad_chunk_cuts_the_connection_before_anything_after_it_is_read(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        port = s.upstream.port
        smuggled = get("api.example.com", port, "/smuggled")
        # A bare LF ends the size line for lenient parsers; the proxy takes only CRLF.
        chunks = b"5\nhello\r\n0\r\n\r\n" + smuggled
        post = get("api.example.com", port, "/post", "Transfer-Encoding: chunked", method="POST")
        await s.exchange(post + chunks)
        assert "GET /smuggled HTTP/1.1" not in s.upstream.lines
        decisions = await s.decisions()
        assert ("api.example.com", port, False, "cut off: a malformed chunked body", 1) in decisions

    run_scene(tmp_path, scene)


# --- load refusals and cut-off connections are recorded ----------------------------------------


def test_refusals_for_load_are_recorded_with_a_count(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        held = [await asyncio.open_unix_connection(s.path) for _ in range(egress.MAX_CONNECTIONS)]
        for _, writer in held:
            writer.write(b"GET http://api.example.com/ HTTP/1.1\r\n")  # a head that never ends
        await asyncio.sleep(0.1)
        answers = [await s.exchange(get("api.example.com", s.upstream.port, "/")) for _ in range(3)]
        assert [statuses(a) for a in answers] == [[429]] * 3
        assert await s.decisions() == [
            ("", 0, False, f"refused: more than {egress.MAX_CONNECTIONS} connections open", 3)
        ]
        for _, writer in held:
            writer.close()

    run_scene(tmp_path, scene)


def test_connections_cut_off_for_a_slow_or_oversized_head_are_recorded(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "HEAD_TIMEOUT_S", 0.2)

    async def scene(s: Scene) -> None:
        answers = [await s.exchange(b"GET http://api.example.com/ HTTP/1.1\r\n") for _ in range(2)]
        answers.append(await s.exchange(b"GET http://api.example.com/ HTTP/1.1\r\nA: " + b"x" * 20000 + b"\r\n\r\n"))
        assert [statuses(a) for a in answers] == [[408], [408], [431]], answers
        assert await s.decisions() == [
            ("", 0, False, "cut off: no whole request head within 0.2 s", 2),
            ("", 0, False, f"cut off: a request head over {egress.HEAD_LIMIT} bytes", 1),
        ]

    run_scene(tmp_path, scene)


def test_a_repeated_refusal_is_one_decision_with_a_count(tmp_path: pathlib.Path) -> None:
    async def scene(s: Scene) -> None:
        for _ in range(3):
            await s.exchange(get("other.example.com", s.upstream.port, "/"))
        assert await s.decisions() == [("other.example.com", s.upstream.port, False, "not granted to this run", 3)]

    run_scene(tmp_path, scene)


def test_an_idle_kept_alive_connection_is_closed_without_a_record(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "HEAD_TIMEOUT_S", 0.2)

    async def scene(s: Scene) -> None:
        answer = await s.exchange(get("api.example.com", s.upstream.port, "/"))  # read() waits for the close
        assert statuses(answer) == [200]
        assert [(h, allowed) for h, _, allowed, _, _ in await s.decisions()] == [("api.example.com", True)]

    run_scene(tmp_path, scene)
