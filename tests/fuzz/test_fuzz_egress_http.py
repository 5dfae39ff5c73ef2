"""Property-based fuzzing of the egress proxy's request parsing (supervisor/egress/http.py, proxy.py).

The proxy reads what sandboxed code sends, for every run at once, on one
event loop. For any bytes on a run's socket, the real ``Proxy.handle`` must
answer with at most one refusal from its own set (a run without grants can
reach nothing) and end the connection; never raise, never stall. The parts
it is made of: header lines parse to clean fields or ``Malformed``; a
request's framing is a length, chunked, or ``Malformed``; what the proxy
forwards is itself well-formed HTTP/1.1 with one Host and no hop-by-hop
field; a body copied through it comes out canonical.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from typing import TypeVar

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from supervisor.config import EgressSection
from supervisor.egress import EgressConfig, Proxy
from supervisor.egress.http import (
    CHUNKED,
    HEAD_LIMIT,
    REQUEST_LINE,
    TO_EOF,
    Malformed,
    Request,
    copy_body,
    forward_head,
    parse_fields,
    request_framing,
    response_framing,
)
from supervisor.egress.record import Flow, Run

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HOP = {"connection", "proxy-connection", "keep-alive", "te", "trailer", "upgrade", "transfer-encoding"}

T = TypeVar("T")
latin1 = st.characters(min_codepoint=0, max_codepoint=255)


def mostly(common: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``common`` four times in five: most heads then get as far as the grant check."""
    return st.integers(0, 4).flatmap(lambda i: rare if i == 0 else common)


names = mostly(
    st.sampled_from(["Host", "X-A", "Accept", "Content-Length", "Transfer-Encoding", "Connection"]),
    st.one_of(st.sampled_from(
        ["Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Proxy-Authorization", "TE",
         "Upgrade", "Trailer", "X-A", "content-length", "transfer-encoding", "Proxy-Connection"]
    ),
    st.from_regex(TOKEN, fullmatch=True),
    st.text(latin1, max_size=12)),
)
field_values = mostly(
    st.sampled_from(["chunked", "close", "keep-alive", "0", "12", "1, 2", "gzip, chunked", "x-a", " 5 ", "-1",
                     "99999999999999999", "Chunked", "chunked, chunked", "te"]),
    st.text(latin1, max_size=40),
)
lines = st.tuples(names, mostly(st.just(": "), st.sampled_from([":", " :", ":\t", "::"])), field_values).map("".join)
methods = mostly(st.sampled_from(["GET", "POST", "CONNECT", "HEAD", "PUT", "get"]), st.text(latin1, max_size=8))
targets = mostly(
    st.sampled_from(["http://example.com/", "example.com:443", "http://api.example.com:8080/x"]),
    st.one_of(st.sampled_from(
        ["http://example.com/", "http://example.com:8080/a?b=c", "example.com:443", "http://127.0.0.1/",
         "http://[::1]:80/", "http://[fe80::1%25eth0]/", "https://example.com/", "http://user:pw@example.com/",
         "http://example.com:99999/", "http://exa mple.com/", "http://xn--e1afmkfd.xn--p1ai/", "[::1]:443",
         "http://example.com:+80/", "http://[/", "10.0.0.1:22", "http://EXAMPLE.com./"]
    ),
    st.text(latin1, max_size=40)),
)
versions = mostly(st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "HTTP/2", "http/1.1", "HTTP/1.1 "]))


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    start = f"{draw(methods)} {draw(targets)} {draw(versions)}"
    body = "\r\n".join([start, *draw(st.lists(lines, max_size=4))])
    return (body + "\r\n\r\n").encode("latin-1")


@given(st.lists(st.one_of(lines, st.text(latin1, max_size=60)), max_size=8))
def test_header_lines_parse_to_clean_fields_or_malformed(raw: list[str]) -> None:
    try:
        fields = parse_fields(raw)
    except Malformed:
        return
    for name, value in fields:
        assert TOKEN.fullmatch(name)
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value) and value == value.strip(" \t")


@given(st.lists(st.tuples(names, field_values), max_size=6), versions, st.integers(100, 599), methods)
def test_framing_is_a_length_chunked_or_malformed(
    fields: list[tuple[str, str]], version: str, status: int, method: str
) -> None:
    try:
        framing = request_framing(fields, version)
    except Malformed:
        pass
    else:
        assert framing == CHUNKED or 0 <= framing < 10**15
    try:
        answer = response_framing(status, fields, method)
    except Malformed:
        pass
    else:
        assert answer in (CHUNKED, TO_EOF) or 0 <= answer < 10**15


@given(heads())
def test_what_the_proxy_forwards_is_well_formed_http(head: bytes) -> None:
    text = head[:-4].decode("latin-1").split("\r\n")
    start = REQUEST_LINE.fullmatch(text[0])
    try:
        fields = parse_fields(text[1:])
        assert start is not None
        framing = request_framing(fields, start[3])
    except (Malformed, AssertionError):
        return
    forwarded = forward_head(Request(start[1], "/p", start[3], "example.com", fields, framing))
    assert forwarded.endswith(b"\r\n\r\n") and forwarded.count(b"\r\n\r\n") == 1
    out = forwarded[:-4].decode("latin-1").split("\r\n")
    assert REQUEST_LINE.fullmatch(out[0])
    again = parse_fields(out[1:])
    names_out = [n.lower() for n, _ in again]
    assert names_out.count("host") == 1
    assert not (set(names_out) & (HOP - {"transfer-encoding"}) - {"connection"})
    assert names_out.count("connection") == 1  # its own "close", nothing the code sent
    assert names_out.count("transfer-encoding") + names_out.count("content-length") <= 1
    assert request_framing(again, start[3]) == framing


class Sink:
    """The writing side of copy_body: what it wrote, in order."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


async def _copy(data: bytes, framing: int) -> bytes:
    reader = asyncio.StreamReader(limit=HEAD_LIMIT)
    reader.feed_data(data)
    reader.feed_eof()
    sink = Sink()
    flow = Flow("example.com", 80, True, "granted")
    await copy_body(reader, sink, framing, flow, "bytes_out")  # type: ignore[arg-type]
    assert flow.bytes_out == len(sink.data)
    return bytes(sink.data)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    out = b""
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5)):
        ext = draw(st.sampled_from([b"", b";a=b", b" ;x", b"\t;"]))
        end = draw(mostly(st.just(b"\r\n"), st.sampled_from([b"XX", b"\r", b"\n\r", b"", b"\r\n\r\n"])))
        out += b"%x%s\r\n%s%s" % (len(chunk), ext, chunk, end)
    out += b"0\r\n" + draw(st.sampled_from([b"", b"X-T: 1\r\n", b"bad trailer\r\n"])) + b"\r\n"
    for _ in range(draw(st.integers(0, 3))):  # then a few bytes changed
        if out:
            at = draw(st.integers(0, len(out) - 1))
            out = out[:at] + draw(st.binary(max_size=3)) + out[at + 1 :]
    return out


_REF_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_REF_TRAILER = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*")


def reference_chunked(data: bytes) -> bytes | None:
    """RFC 9112 section 7.1 read strictly and independently: the payload, or None."""
    payload, at = b"", 0
    while True:
        end = data.find(b"\r\n", at)
        size = _REF_SIZE.fullmatch(data[at:end]) if end >= 0 else None
        if size is None:
            return None
        n, at = int(size[1], 16), end + 2
        if n == 0:
            break
        if data[at + n : at + n + 2] != b"\r\n":
            return None
        payload, at = payload + data[at : at + n], at + n + 2
    while (end := data.find(b"\r\n", at)) > at:  # trailer fields, then the empty line
        if not _REF_TRAILER.fullmatch(data[at:end]):
            return None
        at = end + 2
    return payload if end == at else None


@given(st.one_of(chunked_bodies(), st.binary(max_size=200)), st.sampled_from([CHUNKED, 0, 5, 64, TO_EOF]))
def test_a_body_copied_through_the_proxy_comes_out_canonical(data: bytes, framing: int) -> None:
    try:
        out = asyncio.run(_copy(data, framing))
    except (Malformed, asyncio.IncompleteReadError):
        return
    if framing == CHUNKED:
        assert asyncio.run(_copy(out, CHUNKED)) == out  # re-framed: reading it again changes nothing
        # What it took is chunked by a strict reader too, and carries the same payload.
        assert reference_chunked(data) is not None, data
        assert reference_chunked(out) == reference_chunked(data)
    elif framing == TO_EOF:
        assert out == data
    else:
        assert out == data[:framing]


async def _handle(stream: bytes) -> bytes:
    proxy = Proxy(EgressConfig(rundir="/nonexistent", egress=EgressSection(), broker_uid=0))
    run = Run("fuzz", [], "/nonexistent/fuzz.sock")  # no grants: nothing may be reached
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader, writer = await asyncio.open_unix_connection(sock=theirs, limit=HEAD_LIMIT)
        ours.sendall(stream)
        ours.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proxy.handle(run, reader, writer), 30)
        writer.close()  # as the proxy's on_connect does after handle()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        ours.settimeout(5)
        answer = b""
        while chunk := ours.recv(65536):
            answer += chunk
    assert all(not flow.allowed for flow in run.flows.values())
    return answer


@given(st.one_of(heads(), st.lists(heads(), min_size=2, max_size=3).map(b"".join), st.binary(max_size=600)))
def test_any_bytes_on_a_run_socket_get_at_most_one_refusal(stream: bytes) -> None:
    answer = asyncio.run(_handle(stream))
    event(answer[:12].decode("latin-1") or "closed without a word")
    if answer:
        assert re.fullmatch(rb"HTTP/1\.1 (400|403|431) [^\r\n]+\r\n(?:.|\n)*", answer), answer[:200]
        assert answer.count(b"HTTP/1.1 ") == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blank", [" ", "\t"])
def test_found_a_header_of_blanks_ending_in_a_control_byte_does_not_stall_the_proxy(blank: str) -> None:
    """Found while writing this file: ``Name:`` and 16 KiB of blanks ending in a control
    byte backtracked in cubic time (hours) in the one event loop every run's proxy shares."""
    line = "X-A:" + blank * (HEAD_LIMIT - 100) + "\x01"
    with pytest.raises(Malformed):
        parse_fields([line])
    head = f"GET http://example.com/ HTTP/1.1\r\n{line}\r\n\r\n".encode("latin-1")
    assert asyncio.run(_handle(head)).startswith(b"HTTP/1.1 400 ")
