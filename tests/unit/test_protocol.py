"""The wire: versions, framing, typed decoding, error mapping."""

from __future__ import annotations

import msgspec
import pytest

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, error_info
from protocol.wire import VERSION, Codec, broker_client_codec, client_codec


def test_roundtrip_execute_request() -> None:
    request = m.ExecuteRequest(id="r1", code="print(1)", limits=m.Limits(timeout_ms=500), stream=True)
    frames = client_codec().encode(request)
    assert frames[0] == VERSION
    assert broker_client_codec().decode(frames) == request


def test_wrong_version_is_refused_before_decoding() -> None:
    with pytest.raises(CellblockError) as exc:
        broker_client_codec().decode([b"CB/9", b"\xc1 not even msgpack"])
    assert exc.value.code is ErrorCode.BAD_VERSION


def test_frame_count_is_checked() -> None:
    for frames in ([], [VERSION], [VERSION, b"", b""]):
        with pytest.raises(CellblockError) as exc:
            broker_client_codec().decode(frames)
        assert exc.value.code is ErrorCode.BAD_FRAME


def test_random_bytes_are_a_bad_frame() -> None:
    with pytest.raises(msgspec.DecodeError) as exc:
        broker_client_codec().decode([VERSION, b"\xc1\xc1\xc1"])
    assert error_info(exc.value).code is ErrorCode.BAD_FRAME


def test_wrong_types_name_the_field() -> None:
    body = msgspec.msgpack.encode({"type": "execute", "id": "x", "code": "1", "limits": {"timeout_ms": "soon"}})
    with pytest.raises(msgspec.ValidationError) as exc:
        broker_client_codec().decode([VERSION, body])
    info = error_info(exc.value)
    assert info.code is ErrorCode.BAD_MESSAGE
    assert info.field == "limits.timeout_ms"


def test_unknown_request_field_is_an_error_not_ignored() -> None:
    body = msgspec.msgpack.encode({"type": "execute", "id": "x", "code": "1", "timout_ms": 5})
    with pytest.raises(msgspec.ValidationError) as exc:
        broker_client_codec().decode([VERSION, body])
    assert "timout_ms" in str(exc.value)


def test_replies_tolerate_new_fields() -> None:
    # Evolution rule 3: a newer broker may add result fields.
    body = msgspec.msgpack.encode({"type": "result", "id": "x", "status": "ok", "from_the_future": 1})
    result = client_codec().decode([VERSION, body])
    assert isinstance(result, m.ExecuteResult) and result.status is m.Status.OK


def test_worker_messages_are_not_client_requests() -> None:
    body = msgspec.msgpack.encode(m.Ready(worker="w", runtime="python", pid=1))
    with pytest.raises(msgspec.ValidationError):
        broker_client_codec().decode([VERSION, body])


def test_size_cap() -> None:
    codec: Codec[m.ClientRequest] = Codec(m.ClientRequest, max_body=10)
    with pytest.raises(CellblockError) as exc:
        codec.decode([VERSION, b"x" * 11])
    assert exc.value.code is ErrorCode.TOO_LARGE


def test_limits_must_be_positive() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"timeout_ms": 0}, m.Limits)


def test_error_info_never_leaks_internals() -> None:
    info = error_info(RuntimeError("/home/alice/secret path and a traceback"))
    assert info.code is ErrorCode.INTERNAL_ERROR
    assert "/home" not in info.message
