"""Bad input on the client socket: an error reply (or a counted drop), and the broker keeps serving."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from protocol import messages as m
from protocol.client import Client
from protocol.wire import MAX_CLIENT_FRAME, VERSION, client_codec

pytestmark = pytest.mark.integration
codec = client_codec()
# How long a test waits on the same socket for a reply that must not come. A
# second reply would be sent in the same turn of the broker's loop as the
# first; this leaves a busy machine's scheduler plenty of room.
QUIET_MS = 500


@pytest.fixture
def raw(service: object) -> Iterator[zmq.Socket[bytes]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 3000
    sock.connect(f"ipc://{service.socket}")  # type: ignore[attr-defined]
    yield sock
    sock.close()
    ctx.term()


def reply_to(sock: zmq.Socket[bytes], frames: list[bytes]) -> m.ClientReply:
    sock.send_multipart(frames)
    return codec.decode(sock.recv_multipart())


def assert_no_more_replies(sock: zmq.Socket[bytes], wait_ms: int = QUIET_MS) -> None:
    if sock.poll(wait_ms):
        frames = sock.recv_multipart()
        try:
            extra: object = codec.decode(frames)
        except Exception:  # noqa: BLE001 - an undecodable extra reply is still an extra reply
            extra = frames
        pytest.fail(f"a request got more than one reply; the extra one: {extra!r}")


def assert_still_serving(client: Client) -> None:
    assert client.execute("print('alive')").stdout == "alive\n"


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([os.urandom(64)], "bad_frame"),
        ([VERSION, b"\xc1" + os.urandom(64)], "bad_frame"),  # 0xc1 is never valid msgpack
        ([b"CB/9", msgspec.msgpack.encode({"type": "status", "id": "x"})], "bad_version"),
        ([b"", b""], "bad_version"),
        ([VERSION, b"", b"extra"], "bad_frame"),
        ([VERSION, msgspec.msgpack.encode({"type": "execute", "id": "x", "code": 5})], "bad_message"),
        (
            [
                VERSION,
                msgspec.msgpack.encode({"type": "execute", "id": "x", "code": "1", "limits": {"timeout_ms": -1}}),
            ],
            "bad_message",
        ),
        ([VERSION, msgspec.msgpack.encode({"type": "nonsense", "id": "x"})], "bad_message"),
        ([VERSION, msgspec.msgpack.encode([1, 2, 3])], "bad_message"),
        ([VERSION, msgspec.msgpack.encode(m.Ready(worker="w", runtime="python", pid=1))], "unexpected_message"),
        (
            [VERSION, msgspec.msgpack.encode(m.OutputChunk(id="x", stream="stdout", seq=0, data="hi"))],
            "unexpected_message",
        ),
        ([VERSION, msgspec.msgpack.encode(m.WorkerResult(id="x", status=m.Status.OK))], "unexpected_message"),
    ],
)
def test_bad_frames_get_an_error_reply(raw: zmq.Socket[bytes], client: Client, frames: list[bytes], code: str) -> None:
    reply = reply_to(raw, frames)
    assert isinstance(reply, m.ErrorReply)
    assert reply.error.code == code
    assert "Traceback" not in reply.error.message and "/work/main" not in reply.error.message
    assert_no_more_replies(raw)
    assert_still_serving(client)


def test_wrong_type_names_the_field(raw: zmq.Socket[bytes]) -> None:
    body = msgspec.msgpack.encode({"type": "execute", "id": "x", "code": "1", "stream": "yes"})
    reply = reply_to(raw, [VERSION, body])
    assert isinstance(reply, m.ErrorReply) and reply.error.field == "stream"
    assert_no_more_replies(raw)


def test_code_over_the_cap_is_too_large(raw: zmq.Socket[bytes], client: Client) -> None:
    request = m.ExecuteRequest(id="big", code="#" * (2 * 1024 * 1024))
    reply = reply_to(raw, codec.encode(request))
    assert isinstance(reply, m.ExecuteResult) and reply.status is m.Status.REJECTED
    assert reply.error is not None and reply.error.code == "too_large" and reply.error.field == "code"
    assert_no_more_replies(raw)
    assert_still_serving(client)


def test_frame_over_the_hard_cap_drops_the_connection(service: object, client: Client) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(f"ipc://{service.socket}")  # type: ignore[attr-defined]
    try:
        sock.send_multipart([VERSION, b"\x00" * (MAX_CLIENT_FRAME + 1)])
        assert monitor.poll(5000), "the service must drop a connection that sends an over-cap frame"
        assert not sock.poll(200)  # and no reply is possible
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
        ctx.term()
    assert_still_serving(client)
    counters = service.status().counters  # type: ignore[attr-defined]
    assert counters.get("client_disconnects", 0) >= 1


def test_duplicate_request_id_while_running(raw: zmq.Socket[bytes]) -> None:
    slow = m.ExecuteRequest(id="same", code="import time; time.sleep(0.5)")
    raw.send_multipart(codec.encode(slow))
    time.sleep(0.1)
    raw.send_multipart(codec.encode(slow))
    replies = [codec.decode(raw.recv_multipart()) for _ in range(2)]
    statuses = sorted(r.status.value for r in replies if isinstance(r, m.ExecuteResult))
    assert statuses == ["ok", "rejected"]
    assert_no_more_replies(raw)


def test_garbage_flood_then_normal_service(raw: zmq.Socket[bytes], client: Client) -> None:
    for _ in range(500):
        raw.send_multipart([os.urandom(32)])
    replies = 0
    while raw.poll(2000):  # until the socket stays quiet: one more would be one too many
        raw.recv_multipart()
        replies += 1
    assert replies == 500
    assert_still_serving(client)


def test_fuzzed_frames_always_get_exactly_one_reply(raw: zmq.Socket[bytes], client: Client) -> None:
    import random

    rng = random.Random(1234)
    valid = bytearray(msgspec.msgpack.encode({"type": "execute", "id": "x", "code": "1", "limits": {"cpu_ms": 5}}))
    for i in range(600):
        kind = rng.random()
        if kind < 0.3:
            frames = [rng.randbytes(rng.randint(0, 100))]
        elif kind < 0.6:
            frames = [VERSION, rng.randbytes(rng.randint(0, 200))]  # includes invalid UTF-8 strings
        elif kind < 0.8:
            frames = [VERSION, *(rng.randbytes(5) for _ in range(rng.randint(0, 4)))]
        else:
            body = bytearray(valid)
            for _ in range(3):
                body[rng.randrange(len(body))] = rng.randrange(256)
            frames = [VERSION, bytes(body)]
        raw.send_multipart(frames)
        reply = codec.decode(raw.recv_multipart())
        assert isinstance(reply, m.ErrorReply | m.ExecuteResult)
        # A status request after each frame: its reply must be the very next
        # one. A second reply to the frame, sent at once or late, comes before
        # it (here, or in place of the next frame's reply, whose own then does).
        raw.send_multipart(codec.encode(m.StatusRequest(id=f"after-{i}")))
        after = codec.decode(raw.recv_multipart())
        assert isinstance(after, m.StatusReply) and after.id == f"after-{i}", f"frame {i} {frames!r}: {after!r}"
    assert_no_more_replies(raw, 1000)
    assert_still_serving(client)
