"""HTTP/1.1 as the egress proxy reads and writes it.

Strict where two parsers could disagree (RFC 9112 section 11.2): a head with a
bare CR or LF, a folded line, or a space before a colon is refused, and so is
a request body framed twice or framed in a way HTTP/1.1 does not define. What
the proxy forwards it frames itself, so the upstream reads what the proxy read.
"""

from __future__ import annotations

import asyncio
import re

import msgspec

from supervisor.egress.record import Flow

HEAD_LIMIT = 16 * 1024  # a request head from the sandbox
CHUNKED, TO_EOF = -1, -2  # body framings besides a length
_NAME_CHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TEXT = r"[^\x00-\x08\x0a-\x1f\x7f]"  # a header value's characters: no controls but HTAB
REQUEST_LINE = re.compile(rf"({_NAME_CHARS}) ([^\x00-\x20\x7f]+) (HTTP/1\.[01])")
STATUS_LINE = re.compile(rf"HTTP/1\.[01] ([0-9]{{3}})(?: {_TEXT}*)?")
# One unambiguous class for the value, its blanks stripped after: "[ \t]*(X*?)[ \t]*"
# backtracked in cubic time on a line of blanks ending in a control byte (one
# 16 KiB head would hold the proxy, every run's, for hours; found while
# writing tests/fuzz/test_fuzz_egress_http.py, which keeps it out).
_FIELD = re.compile(rf"({_NAME_CHARS}):({_TEXT}*)")
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
        return self.version == "HTTP/1.1" and "close" not in tokens(self.fields, "connection")


def parse_fields(lines: list[str]) -> Fields:
    fields = []
    for line in lines:
        match = _FIELD.fullmatch(line)
        if match is None:
            raise Malformed("a malformed header line (a bare CR or LF, a folded line, or a space before the colon)")
        fields.append((match[1], match[2].strip(" \t")))
    return fields


def values(fields: Fields, name: str) -> list[str]:
    return [value for field, value in fields if field.lower() == name]


def tokens(fields: Fields, name: str) -> list[str]:
    return [t.strip().lower() for value in values(fields, name) for t in value.split(",") if t.strip()]


def _length(values: list[str]) -> int:
    if len(values) != 1 or not re.fullmatch(r"[0-9]{1,15}", values[0]):
        raise Malformed("a Content-Length that is not one plain number")
    return int(values[0])


def request_framing(fields: Fields, version: str) -> int:
    """The length of a request's body, or CHUNKED."""
    te, cl = values(fields, "transfer-encoding"), values(fields, "content-length")
    if te and cl:
        raise Malformed("both Content-Length and Transfer-Encoding (a request smuggling attempt)")
    if te:
        if version != "HTTP/1.1" or len(te) != 1 or te[0].lower() != "chunked":
            raise Malformed("a Transfer-Encoding other than one 'chunked' on HTTP/1.1")
        return CHUNKED
    return _length(cl) if cl else 0


def response_framing(status: int, fields: Fields, method: str) -> int:
    if method == "HEAD" or status < 200 or status in (204, 304):
        return 0
    te = tokens(fields, "transfer-encoding")
    if te:
        return CHUNKED if te[-1] == "chunked" else TO_EOF
    cl = list(dict.fromkeys(values(fields, "content-length")))  # repeats of one value are allowed
    return _length(cl) if cl else TO_EOF


def forward_head(request: Request) -> bytes:
    """The head sent upstream: the path, the URL's host, the code's end-to-end
    fields, framing as parsed, and Connection: close (one request per upstream connection)."""
    drop = _HOP | _FRAMING | set(tokens(request.fields, "connection"))
    lines = [f"{request.method} {request.path} {request.version}", f"Host: {request.authority}"]
    lines += [f"{n}: {v}" for n, v in request.fields if n.lower() not in drop and not n.lower().startswith("proxy-")]
    if request.framing == CHUNKED:
        lines.append("Transfer-Encoding: chunked")
    elif values(request.fields, "content-length"):
        lines.append(f"Content-Length: {request.framing}")
    return ("\r\n".join([*lines, "Connection: close", "", ""])).encode("latin-1")


def answer_head(status_line: str, fields: Fields, framing: int, keep: bool) -> bytes:
    drop = {"connection", "proxy-connection", "keep-alive"} | (set(tokens(fields, "connection")) - _FRAMING)
    if framing == CHUNKED:
        drop.add("content-length")
    lines = [status_line, *(f"{n}: {v}" for n, v in fields if n.lower() not in drop)]
    if not keep:
        lines.append("Connection: close")
    return ("\r\n".join([*lines, "", ""])).encode("latin-1")


async def send(dst: asyncio.StreamWriter, data: bytes, flow: Flow, counter: str) -> None:
    dst.write(data)
    setattr(flow, counter, getattr(flow, counter) + len(data))
    await dst.drain()


async def _copy_exactly(src: asyncio.StreamReader, dst: asyncio.StreamWriter, n: int, flow: Flow, counter: str) -> None:
    while n:
        data = await src.read(min(n, 65536))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        await send(dst, data, flow, counter)


async def copy_body(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, framing: int, flow: Flow, counter: str
) -> None:
    """Copy one body; a chunked one is parsed and written anew (chunk extensions
    and trailers dropped). Malformed on a bad chunk; IncompleteReadError when ``src`` ends early."""
    if framing == TO_EOF:
        while data := await src.read(65536):
            await send(dst, data, flow, counter)
        return
    if framing != CHUNKED:
        await _copy_exactly(src, dst, framing, flow, counter)
        return
    try:
        while size := await _chunk_size(src):
            await send(dst, b"%x\r\n" % size, flow, counter)
            await _copy_exactly(src, dst, size, flow, counter)
            if await src.readexactly(2) != b"\r\n":
                raise Malformed("a malformed chunked body")
            await send(dst, b"\r\n", flow, counter)
        trailers = 0
        while (line := await src.readuntil(b"\r\n")) != b"\r\n":
            trailers += len(line)
            if trailers > HEAD_LIMIT or not _FIELD.fullmatch(line[:-2].decode("latin-1")):
                raise Malformed("a malformed chunked body")
    except asyncio.LimitOverrunError:
        raise Malformed("a malformed chunked body") from None
    await send(dst, b"0\r\n\r\n", flow, counter)


async def _chunk_size(src: asyncio.StreamReader) -> int:
    match = _CHUNK_SIZE.fullmatch(await src.readuntil(b"\r\n"))
    if match is None:
        raise Malformed("a malformed chunked body")
    return int(match[1], 16)
