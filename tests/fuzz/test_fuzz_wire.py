"""Property-based fuzzing of the message decoders (protocol/wire.py).

Every socket's codec, for any frames (or datagram): a message of that
socket's union, or a typed error (``CellblockError``, or msgspec's
``ValidationError``/``DecodeError``, which ``error_info`` maps to a code
other than internal_error); memory in proportion to the input, whatever a
msgpack header claims. A decoded message re-encodes to itself. For the
client socket, ``explain_bad_request`` answers every refusal with an error
from the closed set, under the request's own id when it names one, and
with no traceback or host path in its message.
"""

from __future__ import annotations

import pathlib
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import msgspec.inspect as mi
from fuzzing import assert_bounded, assert_typed, measured, valid
from hypothesis import event, given
from hypothesis import strategies as st

from protocol import messages as m
from protocol import wire
from protocol.errors import CellblockError, ErrorCode, error_info

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
TYPED = (CellblockError, msgspec.ValidationError, msgspec.DecodeError)
CODECS: dict[str, tuple[Callable[[], wire.Codec[Any]], Any]] = {
    "broker_client": (wire.broker_client_codec, m.ClientRequest),
    "client": (wire.client_codec, m.ClientReply),
    "broker_worker": (wire.broker_worker_codec, m.WorkerToBroker),
    "worker": (wire.worker_codec, m.BrokerToWorker),
    "broker_launcher": (wire.broker_launcher_codec, m.LauncherToBroker),
    "launcher": (wire.launcher_codec, m.BrokerToLauncher),
    "launcher_zygote": (wire.launcher_zygote_codec, m.SpawnReply),
    "zygote": (wire.zygote_codec, m.Spawn),
    "broker_egress": (wire.broker_egress_codec, m.EgressToBroker),
    "egress": (wire.egress_codec, m.BrokerToEgress),
}
BUILT = {name: make() for name, (make, _) in CODECS.items()}


def _structs() -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []
    todo: list[type[msgspec.Struct]] = [msgspec.Struct]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("protocol") and sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


STRUCTS = _structs()
TAGS = sorted({str(s.__struct_config__.tag) for s in STRUCTS if isinstance(s.__struct_config__.tag, str)})
FIELDS = sorted({f for s in STRUCTS for f in s.__struct_fields__})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(TAGS + [e.value for e in m.Status] + [e.value for e in m.CapabilityKind]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=24,
)


UNIONS = {name: valid(mi.type_info(union), values) for name, (_, union) in CODECS.items()}


@st.composite
def well_formed(draw: st.DrawFn, name: str) -> bytes:
    """A message the socket ``name`` takes (or, now and then, another's); at times one field
    replaced by any value."""
    if draw(st.integers(0, 4)) == 0:
        name = draw(st.sampled_from(sorted(UNIONS)))
    body = draw(UNIONS[name])
    if body and draw(st.integers(0, 3)) == 0:
        body[draw(st.sampled_from(sorted(body)))] = draw(values)
    return msgspec.msgpack.encode(body)


@st.composite
def message_like(draw: st.DrawFn) -> bytes:
    """msgpack maps shaped like messages: a known tag (mostly), known field names, any values."""
    body = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=10))
    tag = draw(st.one_of(st.sampled_from(TAGS), scalars))
    if draw(st.booleans()):
        body["type"] = tag
    return msgspec.msgpack.encode(body)


@st.composite
def bodies(draw: st.DrawFn, name: str) -> bytes:
    """A body: shaped like a message, any msgpack, raw bytes, or a message-like body cut or spliced."""
    kind = draw(st.sampled_from(["valid", "valid", "valid", "message", "value", "raw", "spliced"]))
    if kind == "valid":
        return draw(well_formed(name))
    if kind == "message":
        return draw(message_like())
    if kind == "value":
        return msgspec.msgpack.encode(draw(values))
    if kind == "raw":
        return draw(st.binary(max_size=256))
    body = draw(st.one_of(message_like(), well_formed(name)))
    at = draw(st.integers(0, len(body)))
    # Containers and strings that claim far more than follows them (array32, map32, str32, bin32).
    claim = draw(st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6"])) + draw(st.binary(min_size=4, max_size=4))
    return body[:at] + draw(st.sampled_from([b"", claim, b"\xc1"])) + body[at + draw(st.integers(0, 3)) :]


def frames_for(name: str) -> st.SearchStrategy[list[bytes]]:
    return st.one_of(
        st.tuples(st.just(wire.VERSION), bodies(name)).map(list),
        st.lists(st.one_of(st.just(wire.VERSION), st.binary(max_size=16), bodies(name)), max_size=4),
    )


codec_and_frames = st.sampled_from(sorted(CODECS)).flatmap(lambda name: st.tuples(st.just(name), frames_for(name)))


def _check_decoded(name: str, value: Any) -> None:
    union = CODECS[name][1]
    members = typing.get_args(union) or (union,)
    assert isinstance(value, members), f"{name} decoded a {type(value).__name__}"
    codec = BUILT[name]
    assert codec.decode(codec.encode(value)) == value  # what was accepted re-encodes to itself


@given(codec_and_frames)
def test_every_codec_gives_a_message_or_a_typed_error(case: tuple[str, list[bytes]]) -> None:
    name, frames = case
    codec = BUILT[name]
    result = measured(lambda: codec.decode(frames))
    assert_typed(result, *TYPED)
    assert_bounded(result, sum(len(f) for f in frames))
    if result.error is not None:
        event(error_info(result.error).code.value)
        assert error_info(result.error).code is not ErrorCode.INTERNAL_ERROR
    else:
        event(f"decoded {type(result.value).__name__}")
        _check_decoded(name, result.value)


datagrams = st.sampled_from(sorted(CODECS)).flatmap(
    lambda name: st.tuples(
        st.just(name), st.one_of(bodies(name).map(lambda b: wire.VERSION + b), st.binary(max_size=300))
    )
)


@given(datagrams)
def test_every_datagram_codec_gives_a_message_or_a_typed_error(case: tuple[str, bytes]) -> None:
    name, datagram = case
    codec = BUILT[name]
    result = measured(lambda: codec.decode_datagram(datagram))
    assert_typed(result, *TYPED)
    assert_bounded(result, len(datagram))
    if result.error is None:
        _check_decoded(name, result.value)


@given(frames_for("broker_client"))
def test_a_refused_client_frame_gets_a_clear_error_under_its_own_id(frames: list[bytes]) -> None:
    codec = BUILT["broker_client"]
    try:
        codec.decode(frames)
    except TYPED as exc:
        reply = wire.explain_bad_request(frames, exc)
    else:
        return
    assert isinstance(reply, m.ErrorReply)
    assert reply.error.code in set(ErrorCode) and reply.error.code is not ErrorCode.INTERNAL_ERROR
    assert len(reply.id) <= 128
    assert "Traceback" not in reply.error.message and ROOT not in reply.error.message
    if len(frames) == 2 and frames[0] == wire.VERSION:
        try:
            raw = msgspec.msgpack.decode(frames[1])
        except msgspec.DecodeError:
            raw = None
        rid = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(rid, str) and 0 < len(rid) <= 128:
            assert reply.id == rid
    # The reply itself goes out on the wire and a client can read it.
    assert BUILT["client"].decode(BUILT["broker_client"].encode(reply)) == reply


def test_found_a_type_that_is_a_list_or_a_map_is_explained_under_the_request_id() -> None:
    """Found by the property above: ``"type": []`` made explain_bad_request raise
    TypeError (unhashable), and the client got a generic bad_frame without its id."""
    for tag in ([], {}, [1], {"a": 1}):
        frames = [wire.VERSION, msgspec.msgpack.encode({"id": "req-7", "type": tag})]
        try:
            BUILT["broker_client"].decode(frames)
        except TYPED as exc:
            reply = wire.explain_bad_request(frames, exc)
        assert reply.id == "req-7" and reply.error.code is ErrorCode.BAD_MESSAGE
