"""The egress proxy: the only way out of a sandbox, for runs that hold a net grant.

A sandbox has no network of its own. For a run with a net grant the broker
asks this process to open a unix socket for that run alone; the worker binds
it into the sandbox at /mnt/egress.sock, a forwarder inside listens on the
sandbox's 127.0.0.1:3128, and HTTP_PROXY/HTTPS_PROXY point there. Every
request names its host (HTTP CONNECT, or an absolute URL for plain HTTP),
and this process decides:

1. deny patterns of the operator win over any grant;
2. the host must match one of the run's grants (``example.com`` exactly,
   ``*.example.com`` any subdomain);
3. an IP literal is refused unless granted by that address;
4. names are resolved here, never in the sandbox, and an answer that is not
   a public unicast address (``non_public``: private, loopback, link-local,
   shared, multicast, reserved, documentation, benchmarking, or IPv4 of
   those kinds carried inside IPv6) is refused (no DNS rebinding), unless
   the operator lists that address and port in ``egress.allow_targets``;
   a literal granted by address is held to the same policy.

Plain HTTP is read request by request, and each one is checked and recorded
before any of it is forwarded: its head, then its body as its one framing
says (Content-Length or chunked; both, or anything ambiguous, is refused as
smuggling). The proxy writes what goes upstream itself (the URL's host,
framing as parsed, ``Connection: close``), one upstream connection per
request, so an upstream that keeps connections open never receives bytes
the proxy did not check. A request that is refused ends the connection and
nothing after it is read. Inside a CONNECT tunnel the bytes go to the
granted host only. Each decision, counted when it repeats and with the
bytes sent each way, is reported to the broker when the run closes;
refusals for load (429) and connections cut off for a slow or oversized
head are decisions too, with host "" and port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import socket
import sys
import time
import urllib.parse

import msgspec

from protocol import messages as m
from protocol.wire import MAX_LAUNCHER_DATAGRAM, egress_codec
from supervisor.config import EgressSection

HEAD_LIMIT = 16 * 1024  # a request head from the sandbox
RESPONSE_HEAD_LIMIT = 64 * 1024  # an upstream's answer head (cookies run long)
HEAD_TIMEOUT_S = 10.0
MAX_DECISIONS = 100  # different ones recorded per run (the report fits one datagram); the rest counted in one
_NAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_CONNECTIONS = 64  # open at once per run
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressConfig(msgspec.Struct, frozen=True, kw_only=True):
    rundir: str
    egress: EgressSection
    broker_uid: int  # the only peer allowed on the control socket
    drop_to: int = -1
    supervisor_fd: int = -1  # EOF when supervisor main is gone: stop once the broker has left
    drain_s: float = 90.0  # how long the broker may drain


def _log(text: str) -> None:
    sys.stderr.write(f"cellblock egress: {text}\n")
    sys.stderr.flush()


def matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern


def _literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host(raw: str) -> str | None:
    """The host as the proxy matches and resolves it, or None when it is not a plain name.

    Only ASCII letters, digits, hyphens and dots (or an IP literal): nothing
    that IDNA or a resolver could rewrite into another name after the checks.
    """
    host = raw.strip("[]").lower().rstrip(".")
    if _literal(host) is not None:
        return host
    if len(host) > 253 or not _NAME.match(host):
        return None
    return host


_V4, _V6 = ipaddress.IPv4Network, ipaddress.IPv6Network

# Not public, whatever Python's is_global says on this version (3.11 calls
# multicast, 192.88.99/24 and 3fff::/20 global). IANA's special-purpose
# registries, taken whole: a block with a few globally reachable anycast
# addresses (192.0.0/24, 2001::/23) is refused as a block.
_NOT_PUBLIC_V4 = [
    (_V4("0.0.0.0/8"), "this network"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "shared address space"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
]
_NOT_PUBLIC_V6 = [
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/8"), "reserved"),
    # Where a local-use NAT64 prefix carries the IPv4 address (after /48, /56,
    # /64 or /96) is the network's own choice, so the address inside cannot be
    # judged; the prefix is not globally reachable in any case (RFC 8215).
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("100::/8"), "discard-only or reserved"),
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2001::/23"), "IETF protocol assignments"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("fc00::/7"), "unique local"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
]
_GLOBAL_UNICAST_V6 = _V6("2000::/3")
# IPv6 forms that carry an IPv4 address in their last 32 bits.
_CARRIERS_V6 = [
    (_V6("::ffff:0:0/96"), "IPv4-mapped"),
    (_V6("::ffff:0:0:0/96"), "IPv4-translated"),
    (_V6("64:ff9b::/96"), "NAT64"),
    (_V6("::/96"), "IPv4-compatible"),  # after :: and ::1, which are judged as IPv6
]


def _carried(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form."""
    if int(ip) <= 1:  # :: and ::1 are IPv6's own, not IPv4-compatible 0.0.0.0 and 0.0.0.1
        return []
    for net, form in _CARRIERS_V6:
        if ip in net:
            return [(form, ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip.sixtofour is not None:
        return [("6to4", ip.sixtofour)]
    if ip.teredo is not None:  # a packet reaches the client through its server
        server, client = ip.teredo
        return [("Teredo (server)", server), ("Teredo (client)", client)]
    return []


def non_public(ip: IP) -> str | None:
    """Why the proxy may not connect to ``ip``, or None when it is a public unicast address.

    The one address policy, for every resolved answer and every literal. IPv4
    carried in IPv6 (mapped, translated, compatible, NAT64, 6to4, Teredo) is
    judged by the IPv4 inside: ``64:ff9b::a9fe:a9fe`` is the metadata address.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        for net4, what in _NOT_PUBLIC_V4:
            if ip in net4:
                return f"{what} ({net4})"
        return None if ip.is_global else "not globally reachable"
    carried = _carried(ip)
    for form, inner in carried:
        why = non_public(inner)
        if why is not None:
            return f"{form} around {inner}, {why}"
    if carried:
        return None
    for net6, what in _NOT_PUBLIC_V6:
        if ip in net6:
            return f"{what} ({net6})"
    if ip not in _GLOBAL_UNICAST_V6:
        return f"reserved (outside {_GLOBAL_UNICAST_V6}, the global unicast space)"
    return None


def _target(text: str) -> tuple[IP, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


class Flow:
    """One decision, how often it was made, and the bytes that flowed under it."""

    def __init__(self, host: str, port: int, allowed: bool, reason: str) -> None:
        self.host, self.port, self.allowed, self.reason = host, port, allowed, reason
        self.count = 0
        self.bytes_out = self.bytes_in = 0

    def decision(self) -> m.NetDecision:
        return m.NetDecision(
            host=self.host,
            port=self.port,
            allowed=self.allowed,
            reason=self.reason,
            bytes_out=self.bytes_out,
            bytes_in=self.bytes_in,
            count=self.count,
        )


class Run:
    def __init__(self, run_id: str, allow: list[str], path: str) -> None:
        self.run_id = run_id
        self.allow = allow
        self.path = path
        self.flows: dict[tuple[str, int, bool, str], Flow] = {}
        self.unrecorded = 0  # decisions made after the record was full
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def decided(self, host: str, port: int, allowed: bool, reason: str) -> Flow:
        """Record a decision; one made before (same host, port, verdict, reason) is counted again.

        A decision about a connection rather than a request (a refusal for
        load, a connection cut off before it named a host) has host "" and port 0.
        """
        key = (host, port, allowed, reason)
        flow = self.flows.get(key)
        if flow is None:
            flow = Flow(host, port, allowed, reason)
            if len(self.flows) < MAX_DECISIONS - 1:  # the last place is for the count of the rest
                self.flows[key] = flow
            else:
                self.unrecorded += 1
        flow.count += 1
        return flow

    def decisions(self) -> list[m.NetDecision]:
        recorded = [flow.decision() for flow in self.flows.values()]
        if self.unrecorded:
            why = f"not recorded: decisions beyond the first {MAX_DECISIONS - 1} different ones"
            recorded.append(m.NetDecision(host="", port=0, allowed=False, reason=why, count=self.unrecorded))
        return recorded


# --- HTTP/1.1 as the proxy reads it ---------------------------------------------------------
#
# Strict where two parsers could disagree (RFC 9112 section 11.2): a head with a
# bare CR or LF, a folded line, or a space before a colon is refused, and so is
# a request body framed twice or framed in a way HTTP/1.1 does not define. What
# the proxy forwards it frames itself, so the upstream reads what the proxy read.

CHUNKED, TO_EOF = -1, -2  # body framings besides a length
_NAME_CHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TEXT = r"[^\x00-\x08\x0a-\x1f\x7f]"  # a header value's characters: no controls but HTAB
_REQUEST_LINE = re.compile(rf"({_NAME_CHARS}) ([^\x00-\x20\x7f]+) (HTTP/1\.[01])")
_STATUS_LINE = re.compile(rf"HTTP/1\.[01] ([0-9]{{3}})(?: {_TEXT}*)?")
_FIELD = re.compile(rf"({_NAME_CHARS}):[ \t]*({_TEXT}*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?\r\n")
# Fields about one hop, never forwarded (RFC 9110 section 7.6.1); the proxy
# writes Host and the body's framing from what it parsed.
_HOP = {"connection", "proxy-connection", "keep-alive", "te", "trailer", "upgrade", "host"}
_FRAMING = {"transfer-encoding", "content-length"}

Fields = list[tuple[str, str]]  # (name as sent, value), in order


class Refused(Exception):
    """A request the proxy answers itself; the connection ends after that answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status, self.why = status, why


class Malformed(Exception):
    """Bytes that are not HTTP/1.1 where HTTP/1.1 was due."""


class Request(msgspec.Struct, frozen=True):
    method: str
    path: str
    version: str
    authority: str  # the Host the upstream sees: the URL's, never the code's Host field
    fields: Fields
    framing: int

    @property
    def keep(self) -> bool:
        """Whether the client will send another request on this connection."""
        return self.version == "HTTP/1.1" and "close" not in _tokens(self.fields, "connection")


def _fields(lines: list[str]) -> Fields:
    fields = []
    for line in lines:
        match = _FIELD.fullmatch(line)
        if match is None:
            raise Malformed("a malformed header line (a bare CR or LF, a folded line, or a space before the colon)")
        fields.append((match[1], match[2]))
    return fields


def _values(fields: Fields, name: str) -> list[str]:
    return [value for field, value in fields if field.lower() == name]


def _tokens(fields: Fields, name: str) -> list[str]:
    return [t.strip().lower() for value in _values(fields, name) for t in value.split(",") if t.strip()]


def _length(values: list[str]) -> int:
    if len(values) != 1 or not re.fullmatch(r"[0-9]{1,15}", values[0]):
        raise Malformed("a Content-Length that is not one plain number")
    return int(values[0])


def _request_framing(fields: Fields, version: str) -> int:
    """The length of a request's body, or CHUNKED."""
    te, cl = _values(fields, "transfer-encoding"), _values(fields, "content-length")
    if te and cl:
        raise Malformed("both Content-Length and Transfer-Encoding (a request smuggling attempt)")
    if te:
        if version != "HTTP/1.1" or len(te) != 1 or te[0].lower() != "chunked":
            raise Malformed("a Transfer-Encoding other than one 'chunked' on HTTP/1.1")
        return CHUNKED
    return _length(cl) if cl else 0


def _response_framing(status: int, fields: Fields, method: str) -> int:
    if method == "HEAD" or status < 200 or status in (204, 304):
        return 0
    te = _tokens(fields, "transfer-encoding")
    if te:
        return CHUNKED if te[-1] == "chunked" else TO_EOF
    cl = list(dict.fromkeys(_values(fields, "content-length")))  # repeats of one value are allowed
    return _length(cl) if cl else TO_EOF


def _forward_head(request: Request) -> bytes:
    """The head sent upstream: the path, the URL's host, the code's end-to-end
    fields, framing as parsed, and Connection: close (one request per upstream connection)."""
    drop = _HOP | _FRAMING | set(_tokens(request.fields, "connection"))
    lines = [f"{request.method} {request.path} {request.version}", f"Host: {request.authority}"]
    lines += [f"{n}: {v}" for n, v in request.fields if n.lower() not in drop and not n.lower().startswith("proxy-")]
    if request.framing == CHUNKED:
        lines.append("Transfer-Encoding: chunked")
    elif _values(request.fields, "content-length"):
        lines.append(f"Content-Length: {request.framing}")
    return ("\r\n".join([*lines, "Connection: close", "", ""])).encode("latin-1")


def _answer_head(status_line: str, fields: Fields, framing: int, keep: bool) -> bytes:
    drop = {"connection", "proxy-connection", "keep-alive"} | (set(_tokens(fields, "connection")) - _FRAMING)
    if framing == CHUNKED:
        drop.add("content-length")
    lines = [status_line, *(f"{n}: {v}" for n, v in fields if n.lower() not in drop)]
    if not keep:
        lines.append("Connection: close")
    return ("\r\n".join([*lines, "", ""])).encode("latin-1")


async def _send(dst: asyncio.StreamWriter, data: bytes, flow: Flow, counter: str) -> None:
    dst.write(data)
    setattr(flow, counter, getattr(flow, counter) + len(data))
    await dst.drain()


async def _copy_exactly(src: asyncio.StreamReader, dst: asyncio.StreamWriter, n: int, flow: Flow, counter: str) -> None:
    while n:
        data = await src.read(min(n, 65536))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        await _send(dst, data, flow, counter)


async def _copy_body(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, framing: int, flow: Flow, counter: str
) -> None:
    """Copy one body; a chunked one is parsed and written anew (chunk extensions
    and trailers dropped). Malformed on a bad chunk; IncompleteReadError when ``src`` ends early."""
    if framing == TO_EOF:
        while data := await src.read(65536):
            await _send(dst, data, flow, counter)
        return
    if framing != CHUNKED:
        await _copy_exactly(src, dst, framing, flow, counter)
        return
    try:
        while size := await _chunk_size(src):
            await _send(dst, b"%x\r\n" % size, flow, counter)
            await _copy_exactly(src, dst, size, flow, counter)
            if await src.readexactly(2) != b"\r\n":
                raise Malformed("a malformed chunked body")
            await _send(dst, b"\r\n", flow, counter)
        trailers = 0
        while (line := await src.readuntil(b"\r\n")) != b"\r\n":
            trailers += len(line)
            if trailers > HEAD_LIMIT or not _FIELD.fullmatch(line[:-2].decode("latin-1")):
                raise Malformed("a malformed chunked body")
    except asyncio.LimitOverrunError:
        raise Malformed("a malformed chunked body") from None
    await _send(dst, b"0\r\n\r\n", flow, counter)


async def _chunk_size(src: asyncio.StreamReader) -> int:
    match = _CHUNK_SIZE.fullmatch(await src.readuntil(b"\r\n"))
    if match is None:
        raise Malformed("a malformed chunked body")
    return int(match[1], 16)


class Proxy:
    def __init__(self, cfg: EgressConfig) -> None:
        self.cfg = cfg
        self.policy = cfg.egress
        self.runs: dict[str, Run] = {}
        self.targets = {_target(t) for t in cfg.egress.allow_targets}
        self.codec = egress_codec()
        self.dir = os.path.join(cfg.rundir, "egress")
        self.links: set[asyncio.Task[None]] = set()
        self.outliving: asyncio.Task[None] | None = None  # see _outlive_broker

    # --- decisions -----------------------------------------------------------------------

    async def decide(self, run: Run, host: str, port: int) -> tuple[str | None, str]:
        """(address to connect to, or None; the reason). ``host`` is already checked by ``_host``."""
        if any(matches(p, host) for p in self.policy.deny):
            return None, "denied by the operator"
        literal = _literal(host)
        if literal is not None:
            if host not in run.allow:  # exactly that address; a pattern never covers one
                return None, "an IP address; grants are by name (or by that exact address)"
            why = None if (literal, port) in self.targets else non_public(literal)
            if why is not None:
                return None, f"a non-public address: {why}"
            return str(literal), "granted by address"
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
        for address in addresses:
            ip = ipaddress.ip_address(address)
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
        start = _REQUEST_LINE.fullmatch(lines[0])
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
        host = _host(raw_host)
        if host is None or not 0 < port < 65536:
            raise Refused(400, "the host must be a plain DNS name or an IP address, with a valid port")
        # The host is one the record may name from here on.
        try:
            fields = _fields(lines[1:])
            framing = 0 if connect else _request_framing(fields, version)
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
        await _send(upstream[1], _forward_head(request), flow, "bytes_out")
        body = asyncio.create_task(_copy_body(client[0], upstream[1], request.framing, flow, "bytes_out"))
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
                start = _STATUS_LINE.fullmatch(lines[0])
                if start is None:
                    raise Malformed("not an HTTP/1.1 status line")
                status, fields = int(start[1]), _fields(lines[1:])
                framing = _response_framing(status, fields, request.method)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, Malformed):
                raise Refused(502, f"{flow.host}:{flow.port} gave no valid HTTP/1.1 answer") from None
            if status == 101:
                raise Refused(502, f"{flow.host}:{flow.port} switched protocols; a tunnel needs CONNECT")
            keep = request.keep and framing != TO_EOF
            await _send(dst, _answer_head(lines[0], fields, framing, keep or status < 200), flow, "bytes_in")
            if status >= 200:
                await _copy_body(src, dst, framing, flow, "bytes_in")
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
                try:
                    message = self.codec.decode_datagram(data)
                except Exception as exc:  # noqa: BLE001 - a bad datagram is dropped, not fatal
                    _log(f"dropped a bad datagram: {exc}")
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
        from supervisor.broker import drop_privileges

        os.makedirs(os.path.join(cfg.rundir, "egress"), mode=0o700, exist_ok=True)
        os.chown(os.path.join(cfg.rundir, "egress"), cfg.drop_to, cfg.drop_to)
        drop_privileges(cfg.drop_to)
    asyncio.run(Proxy(cfg).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
