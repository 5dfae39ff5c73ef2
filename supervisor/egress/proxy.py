"""The egress proxy's process: run sockets, the broker's control link, and each connection's checks.

See ``supervisor.egress`` for what it decides and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import urllib.parse
from ipaddress import ip_address

import msgspec

from protocol import messages as m
from protocol.wire import MAX_LAUNCHER_DATAGRAM, egress_codec
from supervisor.config import EgressSection
from supervisor.egress.addresses import literal, non_public, plain_host, target
from supervisor.egress.http import (
    HEAD_LIMIT,
    REQUEST_LINE,
    STATUS_LINE,
    TO_EOF,
    Malformed,
    Refused,
    Request,
    answer_head,
    copy_body,
    forward_head,
    parse_fields,
    request_framing,
    response_framing,
    send,
)
from supervisor.egress.record import Flow, Run
from supervisor.identity import drop_privileges
from supervisor.link import read_datagram
from supervisor.log import logger
from supervisor.policy.grants import matches

RESPONSE_HEAD_LIMIT = 64 * 1024  # an upstream's answer head (cookies run long)
HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64  # open at once per run
_log = logger("egress")


class EgressConfig(msgspec.Struct, frozen=True, kw_only=True):
    rundir: str
    egress: EgressSection
    broker_uid: int  # the only peer allowed on the control socket
    drop_to: int = -1
    supervisor_fd: int = -1  # EOF when supervisor main is gone: stop once the broker has left
    drain_s: float = 90.0  # how long the broker may drain


class Proxy:
    def __init__(self, cfg: EgressConfig) -> None:
        self.cfg = cfg
        self.policy = cfg.egress
        self.runs: dict[str, Run] = {}
        self.targets = {target(t) for t in cfg.egress.allow_targets}
        self.codec = egress_codec()
        self.dir = os.path.join(cfg.rundir, "egress")
        self.links: set[asyncio.Task[None]] = set()
        self.outliving: asyncio.Task[None] | None = None  # see _outlive_broker

    # --- decisions -----------------------------------------------------------------------

    async def decide(self, run: Run, host: str, port: int) -> tuple[str | None, str]:
        """(address to connect to, or None; the reason). ``host`` is already checked by ``plain_host``."""
        if any(matches(p, host) for p in self.policy.deny):
            return None, "denied by the operator"
        address = literal(host)
        if address is not None:
            if host not in run.allow:  # exactly that address; a pattern never covers one
                return None, "an IP address; grants are by name (or by that exact address)"
            why = None if (address, port) in self.targets else non_public(address)
            if why is not None:
                return None, f"a non-public address: {why}"
            return str(address), "granted by address"
        if not any(matches(p, host) for p in run.allow):
            return None, "not granted to this run"
        if host in self.policy.resolve:
            addresses = [self.policy.resolve[host]]
        else:
            # A dotted name is looked up as absolute, so the host's DNS search list
            # never extends it (a single label, "localhost", is one only /etc/hosts knows).
            name = host + "." if "." in host else host
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError, ValueError) as exc:
                return None, f"does not resolve ({getattr(exc, 'strerror', None) or exc})"
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        refused = []
        for answer in addresses:
            ip = ip_address(answer)
            why = None if (ip, port) in self.targets else non_public(ip)
            if why is None:
                return str(ip), "granted"
            refused.append(f"{ip}: {why}")
        return None, f"resolves to a non-public address ({refused[0]}); refused to prevent DNS rebinding"

    # --- one proxied connection --------------------------------------------------------------

    async def handle(self, run: Run, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection from the sandbox. Each request on it is read whole (head,
        then body as its framing says), checked and recorded before it is
        forwarded; the first one refused ends the connection, and nothing after
        it is read. A CONNECT turns the connection into a tunnel to the host it named."""
        first = True
        while (head := await self._read_head(run, reader, writer, first)) is not None:
            first = False
            try:
                if not await self._serve(run, head, reader, writer):
                    return
            except Refused as refusal:
                await self._refuse(writer, refusal.status, refusal.why)
                return

    async def _read_head(
        self, run: Run, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool
    ) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the code closed its end
        except asyncio.LimitOverrunError:
            run.decided("", 0, False, f"cut off: a request head over {HEAD_LIMIT} bytes")
            await self._refuse(writer, 431, f"a request head over {HEAD_LIMIT} bytes")
        except TimeoutError:
            if first:  # a kept-alive connection that falls idle is closed without a word
                run.decided("", 0, False, f"cut off: no whole request head within {HEAD_TIMEOUT_S:g} s")
                await self._refuse(writer, 408, f"no whole request head within {HEAD_TIMEOUT_S:g} s")
        return None

    async def _serve(self, run: Run, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request: tunnelled (False once the tunnel ends), forwarded and
        answered (True when the connection may carry another), or Refused."""
        lines = head[:-4].decode("latin-1").split("\r\n")
        start = REQUEST_LINE.fullmatch(lines[0])
        if start is None:
            raise Refused(400, "a proxy request line is METHOD TARGET VERSION (HTTP/1.0 or HTTP/1.1)")
        method, target, version = start.groups()
        connect = method.upper() == "CONNECT"
        try:
            if connect:
                raw_host, _, port_text = target.rpartition(":")
                port, path = int(port_text), ""
            else:
                url = urllib.parse.urlsplit(target)
                if url.scheme != "http" or not url.hostname:
                    raise Refused(400, "plain HTTP needs an absolute http:// URL (use CONNECT for https)")
                raw_host, port = url.hostname, url.port or 80
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        except ValueError:
            raise Refused(400, "bad port or malformed URL in the request target") from None
        host = plain_host(raw_host)
        if host is None or not 0 < port < 65536:
            raise Refused(400, "the host must be a plain DNS name or an IP address, with a valid port")
        # The host is one the record may name from here on.
        try:
            fields = parse_fields(lines[1:])
            framing = 0 if connect else request_framing(fields, version)
        except Malformed as exc:
            run.decided(host, port, False, f"refused: {exc}")
            raise Refused(400, f"{host}:{port}: {exc}") from None
        address, reason = await self.decide(run, host, port)
        if address is None:
            run.decided(host, port, False, reason)
            raise Refused(403, f"{host}:{port}: {reason}")
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, limit=RESPONSE_HEAD_LIMIT), self.policy.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            run.decided(host, port, True, f"{reason}; the connection failed")
            raise Refused(502, f"{host}:{port} did not answer ({exc.__class__.__name__})") from None
        flow = run.decided(host, port, True, reason)
        try:
            if connect:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await asyncio.gather(
                    self._pipe(reader, up_writer, flow, "bytes_out"), self._pipe(up_reader, writer, flow, "bytes_in")
                )
                return False
            authority = (f"[{host}]" if ":" in host else host) + (f":{port}" if port != 80 else "")
            request = Request(method, path, version, authority, fields, framing)
            return await self._forward(run, flow, request, (reader, writer), (up_reader, up_writer))
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                up_writer.close()

    async def _forward(
        self,
        run: Run,
        flow: Flow,
        request: Request,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> bool:
        """Send one checked request upstream and its answer back; True when the
        client's connection may carry another request.

        The body goes up while the answer comes down (an upstream may answer
        before it has read the body, or ask for it with 100 Continue). An
        answer that ends before the body is in ends the connection: what the
        code sends after it cannot be told apart from a next request."""
        await send(upstream[1], forward_head(request), flow, "bytes_out")
        body = asyncio.create_task(copy_body(client[0], upstream[1], request.framing, flow, "bytes_out"))
        answer = asyncio.create_task(self._answer(request, upstream[0], client[1], flow))
        try:
            await asyncio.wait((body, answer), return_when=asyncio.FIRST_COMPLETED)
            if body.done() and isinstance(body.exception(), Malformed):
                run.decided(flow.host, flow.port, False, f"cut off: {body.exception()}")
                return False
            if body.done() and body.exception() is not None:
                return False  # the code closed its end mid-body, or the upstream stopped reading
            return await answer and body.done()
        except (asyncio.IncompleteReadError, Malformed, ConnectionError, OSError):
            return False  # the upstream broke off (or garbled) its answer midway; the client has part of it
        finally:
            for task in (body, answer):
                task.cancel()
            await asyncio.gather(body, answer, return_exceptions=True)

    async def _answer(self, request: Request, src: asyncio.StreamReader, dst: asyncio.StreamWriter, flow: Flow) -> bool:
        """Relay the upstream's answer (after any 1xx); True when it had a length,
        so the client's connection may carry another request."""
        while True:
            try:
                head = await src.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                start = STATUS_LINE.fullmatch(lines[0])
                if start is None:
                    raise Malformed("not an HTTP/1.1 status line")
                status, fields = int(start[1]), parse_fields(lines[1:])
                framing = response_framing(status, fields, request.method)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, Malformed):
                raise Refused(502, f"{flow.host}:{flow.port} gave no valid HTTP/1.1 answer") from None
            if status == 101:
                raise Refused(502, f"{flow.host}:{flow.port} switched protocols; a tunnel needs CONNECT")
            keep = request.keep and framing != TO_EOF
            await send(dst, answer_head(lines[0], fields, framing, keep or status < 200), flow, "bytes_in")
            if status >= 200:
                await copy_body(src, dst, framing, flow, "bytes_in")
                return keep

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, flow: Flow, counter: str) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                setattr(flow, counter, getattr(flow, counter) + len(data))
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

    @staticmethod
    async def _refuse(writer: asyncio.StreamWriter, status: int, why: str) -> None:
        reason = {
            400: "Bad Request",
            403: "Forbidden",
            408: "Request Timeout",
            429: "Too Many Requests",
            431: "Request Header Fields Too Large",
            502: "Bad Gateway",
        }[status]
        body = f"cellblock egress: {why}\n".encode()
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        writer.close()

    # --- runs -------------------------------------------------------------------------------------

    async def open(self, run_id: str, allow: list[str]) -> str:
        path = os.path.join(self.dir, f"{run_id}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        run = Run(run_id, allow, path)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            if len(run.tasks) >= MAX_CONNECTIONS:
                run.decided("", 0, False, f"refused: more than {MAX_CONNECTIONS} connections open")
                await self._refuse(writer, 429, f"more than {MAX_CONNECTIONS} connections at once")
                return
            run.tasks.add(task)
            try:
                await self.handle(run, reader, writer)
            finally:
                run.tasks.discard(task)
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()

        run.server = await asyncio.start_unix_server(on_connect, path=path, limit=HEAD_LIMIT)
        # Reached only through the bind into this run's sandbox (the directory is 0700).
        os.chmod(path, 0o666)  # noqa: S103 - the sandbox user differs per slot and mode
        self.runs[run_id] = run
        return path

    async def close(self, run_id: str) -> list[m.NetDecision]:
        run = self.runs.pop(run_id, None)
        if run is None:
            return []
        if run.server is not None:
            run.server.close()
        for task in list(run.tasks):
            task.cancel()
        await asyncio.gather(*run.tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run.path)
        return run.decisions()

    # --- the control socket -----------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        ctl_path = os.path.join(self.cfg.rundir, "egress.ctl")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ctl_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        listener.bind(ctl_path)
        os.chmod(ctl_path, 0o600)
        listener.listen(2)
        listener.setblocking(False)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.cfg.supervisor_fd >= 0:

            def orphaned() -> None:
                loop.remove_reader(self.cfg.supervisor_fd)
                self.outliving = loop.create_task(self._outlive_broker(stop))

            loop.add_reader(self.cfg.supervisor_fd, orphaned)
        accept = loop.create_task(self._accept(listener))
        await stop.wait()
        accept.cancel()
        for run_id in list(self.runs):
            await self.close(run_id)

    async def _outlive_broker(self, stop: asyncio.Event) -> None:
        """Main is gone: the broker drains its runs, whose proxy sockets must
        keep working; stop when its links have closed (or it ran out of time)."""
        _log("supervisor main is gone; stopping when the broker has left")
        deadline = time.monotonic() + self.cfg.drain_s + 30
        while self.links and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, say: keep serving the links there are
                _log(f"accept failed: {exc}")
                await asyncio.sleep(0.1)
                continue
            uid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if int.from_bytes(uid[4:8], "little") != self.cfg.broker_uid:
                conn.close()
                continue
            task = loop.create_task(self._serve_broker(conn))
            self.links.add(task)
            task.add_done_callback(self.links.discard)

    async def _serve_broker(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        opened: set[str] = set()  # runs opened over this link, closed with it
        try:
            while data := await loop.sock_recv(conn, MAX_LAUNCHER_DATAGRAM):
                message = read_datagram(self.codec, data, lambda why: _log(f"dropped a bad datagram: {why}"))
                if message is None:
                    continue
                match message:
                    case m.EgressOpen(run=run_id, allow=allow):
                        opened.add(run_id)
                        reply: m.Internal = m.EgressOpened(run=run_id, path=await self.open(run_id, allow))
                    case m.EgressClose(run=run_id):
                        opened.discard(run_id)
                        reply = m.EgressReport(run=run_id, decisions=await self.close(run_id))
                await loop.sock_sendall(conn, self.codec.encode_datagram(reply))
        except OSError:
            pass
        finally:
            conn.close()
            for run_id in opened:  # the broker is gone (or gave up on an answer): nobody will close them
                await self.close(run_id)


def main() -> int:
    with os.fdopen(int(sys.argv[1]), "rb") as src:
        cfg = msgspec.msgpack.decode(src.read(), type=EgressConfig)
    if cfg.drop_to >= 0:
        os.makedirs(os.path.join(cfg.rundir, "egress"), mode=0o700, exist_ok=True)
        os.chown(os.path.join(cfg.rundir, "egress"), cfg.drop_to, cfg.drop_to)
        drop_privileges(cfg.drop_to)
    asyncio.run(Proxy(cfg).serve())
    return 0
