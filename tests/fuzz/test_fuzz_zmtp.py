"""Property-based fuzzing of the ZMTP framing (protocol/zmtp.py).

The broker's ``Router`` reads every byte a client sends. For any bytes, in
any chunks, it must hand over only whole messages within its caps, or drop
that one connection and count it; never raise, and never hold more than
one frame's worth of a peer's unfinished input. A valid stream must come
out exactly as it went in, however it is cut. The client side (``Parser``,
``Dealer``) must not care how its input is cut either, and its handshake
ends in a connection or a ``ZmtpError``.

Every test drives the real code on real unix sockets.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from zmtp_harness import MAX_FRAME, MAX_PARTS, Harness

from protocol.zmtp import _GREETING, Dealer, Parser, ZmtpError, frame_bytes


def _command(body: bytes) -> bytes:
    if len(body) > 255:
        return bytes([0x06]) + struct.pack(">Q", len(body)) + body
    return bytes([0x04, len(body)]) + body


def _ready(socket_type: bytes, identity: bytes | None) -> bytes:
    props = bytes([11]) + b"Socket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    if identity is not None:
        props += bytes([8]) + b"Identity" + struct.pack(">I", len(identity)) + identity
    return _command(b"\x05READY" + props)


frames_st = st.lists(st.binary(max_size=300), min_size=1, max_size=MAX_PARTS)
messages_st = st.lists(frames_st, max_size=12)
identity_st = st.one_of(st.none(), st.binary(min_size=1, max_size=16).filter(lambda b: b[0] != 0))


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(os.path.join(tmp, "router.sock"))
        yield h
        h.router.close_all()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at ``points`` (positions taken modulo its length)."""
    at = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(at)] or [b""]


@given(messages_st, identity_st, st.lists(st.integers(0, 1 << 16), max_size=20), st.booleans())
def test_a_valid_stream_comes_out_as_it_went_in_however_it_is_cut(
    harness: Harness, messages: list[list[bytes]], identity: bytes | None, points: list[int], ping: bool
) -> None:
    stream = _GREETING + _ready(b"DEALER", identity)
    if ping:
        stream += _command(b"\x04PING\x00\x0actx")
    stream += b"".join(frame_bytes(parts) for parts in messages)
    with harness.connection() as (client, fd):
        got = harness.feed(client, fd, cut(stream, points))
        assert fd in harness.router.by_fd, "a valid stream was dropped"
        assert [parts for _, parts in got] == messages
        if identity is not None:
            assert all(who == identity for who, _ in got)


at_caps = st.tuples(st.integers(MAX_FRAME - 3, MAX_FRAME + 3), st.integers(1, MAX_PARTS + 1)).map(
    lambda size_count: [b"x" * (size_count[0] // size_count[1])] * size_count[1]
)


@given(st.lists(st.one_of(frames_st, at_caps), min_size=1, max_size=6), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_messages_at_the_caps_pass_until_the_first_over_them_drops_the_peer(
    harness: Harness, messages: list[list[bytes]], points: list[int]
) -> None:
    within = [len(p) <= MAX_PARTS and sum(map(len, p)) <= MAX_FRAME for p in messages]
    expected = messages[: within.index(False)] if False in within else messages
    dropped = harness.router.dropped
    stream = _GREETING + _ready(b"DEALER", None) + b"".join(frame_bytes(parts) for parts in messages)
    with harness.connection() as (client, fd):
        got = harness.feed(client, fd, cut(stream, points))
        assert [parts for _, parts in got] == expected
        assert (fd in harness.router.by_fd) == all(within)
        assert harness.router.dropped == dropped + (not all(within))


@st.composite
def mutated_streams(draw: st.DrawFn, greeting: bool = True) -> bytes:
    """A valid stream (with its greeting and READY, or the frames after them), then a few
    bytes changed, inserted, removed or cut off."""
    stream = bytearray()
    if greeting:
        stream += _GREETING + _ready(draw(st.sampled_from([b"DEALER", b"REQ", b"ROUTER", b""])), None)
    for parts in draw(messages_st):
        stream += frame_bytes(parts)
        if draw(st.integers(0, 3)) == 0:  # one at the caps: a frame or message just under or over, or a part too many
            size = draw(st.integers(MAX_FRAME - 3, MAX_FRAME + 3))
            count = draw(st.integers(1, MAX_PARTS + 1))
            stream += frame_bytes([b"x" * (size // count)] * count)
    for _ in range(draw(st.integers(0, 6))):
        where = draw(st.integers(0, max(len(stream) - 1, 0)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "size"]))
        if op == "flip" and stream:
            stream[where] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            stream[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del stream[where : where + draw(st.integers(1, 16))]
        elif op == "truncate":
            del stream[where:]
        else:  # a long-frame header claiming a size anywhere up to 2**64 - 1
            stream[where:where] = bytes([draw(st.sampled_from([0, 1, 2, 3, 4, 6]))]) + struct.pack(
                ">Q", draw(st.integers(0, (1 << 64) - 1))
            )
    return bytes(stream)


@given(st.one_of(mutated_streams(), st.binary(max_size=4096)), st.lists(st.integers(0, 1 << 16), max_size=20))
def test_any_bytes_give_messages_within_the_caps_or_a_counted_drop(
    harness: Harness, stream: bytes, points: list[int]
) -> None:
    dropped = harness.router.dropped
    with harness.connection() as (client, fd):
        harness.feed(client, fd, cut(stream, points))
        event("dropped" if fd not in harness.router.by_fd else "open")
        if fd not in harness.router.by_fd:
            assert harness.router.dropped == dropped + 1


@given(
    st.one_of(mutated_streams(greeting=False), st.binary(max_size=2048)), st.lists(st.integers(0, 4096), max_size=12)
)
def test_the_client_parser_does_not_care_how_its_input_is_cut(stream: bytes, points: list[int]) -> None:
    whole = Parser()
    whole.feed(stream)
    expected = whole.take()
    pieces = Parser()
    got: list[list[bytes]] = []
    for chunk in cut(stream, points):
        pieces.feed(chunk)
        got += pieces.take()
    assert got == expected


# What a ROUTER answers a DEALER (its greeting and READY, then a message), cut off anywhere.
router_answers = st.tuples(st.integers(0, 200), st.booleans()).map(
    lambda cut_ping: (
        _GREETING + _ready(b"ROUTER", None) + (_command(b"\x04PING\x00\x01c") if cut_ping[1] else b"")
        + frame_bytes([b"CB/1", b"body"])
    )[: 64 + cut_ping[0]]
)


@given(st.one_of(st.binary(max_size=512), mutated_streams(), router_answers))
def test_the_dealer_handshake_ends_in_a_connection_or_a_zmtp_error(answer: bytes) -> None:
    """Whatever the far end answers (then closes), the handshake is a Dealer or a ZmtpError."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(answer)
        theirs.shutdown(socket.SHUT_WR)
        try:
            dealer = Dealer.over(ours, b"fuzz", timeout=5.0)
        except ZmtpError:
            return
        # A real handshake: the rest of what it sent are messages, or EOF.
        for _ in range(100):
            if dealer.recv_available() is None:
                break
