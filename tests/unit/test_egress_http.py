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
from supervisor.egress import EgressConfig, Proxy

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
    monkeypatch.setattr(egress, "HEAD_TIMEOUT_S", 0.2)

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
