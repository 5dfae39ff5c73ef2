"""Framing, the version check, and one typed codec per socket.

ZeroMQ links (client.sock and workers.sock) carry two frames per message;
the broker's ROUTER sees the peer's routing id in front::

    +-----------------+   +---------+   +-------------------------------+
    | routing id      |   | VERSION |   | msgpack body (tagged Struct)  |
    | (ROUTER only)   |   | b"CB/1" |   | {"type": "execute", ...}      |
    +-----------------+   +---------+   +-------------------------------+

The launcher link is a unix SOCK_SEQPACKET socket; a datagram is VERSION
followed by the body, with no separator.

The version is checked before a single byte of the body is decoded. Nothing
outside ``protocol/`` encodes or decodes messages by hand: each socket owns
one codec, built once (decoders are typed, so a decoded message is already
validated).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo, error_info

VERSION = b"CB/1"

# The hard cap on any one client frame: ZMQ_MAXMSGSIZE on the client socket.
# A frame above it makes libzmq drop the connection (no reply is possible);
# frames below it but above the policy's code cap get a too_large reply.
MAX_CLIENT_FRAME = 16 * 1024 * 1024
MAX_WORKER_FRAME = 64 * 1024 * 1024
MAX_LAUNCHER_DATAGRAM = 64 * 1024

T = TypeVar("T")


class Codec(Generic[T]):
    """Encodes anything of the protocol; decodes only what this socket takes."""

    def __init__(self, incoming: Any, max_body: int) -> None:
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(incoming)
        self._encoder = msgspec.msgpack.Encoder()
        self.max_body = max_body

    def encode(self, message: msgspec.Struct) -> list[bytes]:
        return [VERSION, self._encoder.encode(message)]

    def encode_datagram(self, message: msgspec.Struct) -> bytes:
        return VERSION + self._encoder.encode(message)

    def decode(self, frames: list[bytes]) -> T:
        if len(frames) != 2:
            raise CellblockError(ErrorCode.BAD_FRAME, f"expected 2 frames (version, body), got {len(frames)}")
        version, body = frames
        if version != VERSION:
            raise CellblockError(
                ErrorCode.BAD_VERSION,
                f"unsupported protocol version {version[:16]!r}; this service speaks {VERSION!r}",
            )
        return self.decode_body(body)

    def decode_datagram(self, datagram: bytes) -> T:
        if not datagram.startswith(VERSION):
            raise CellblockError(ErrorCode.BAD_VERSION, "datagram without our version prefix")
        return self.decode_body(datagram[len(VERSION) :])

    def decode_body(self, body: bytes) -> T:
        if len(body) > self.max_body:
            raise CellblockError(ErrorCode.TOO_LARGE, f"frame of {len(body)} bytes is over the {self.max_body} cap")
        return self._decoder.decode(body)


def broker_client_codec() -> Codec[m.ClientRequest]:
    return Codec(m.ClientRequest, MAX_CLIENT_FRAME)


def client_codec() -> Codec[m.ClientReply]:
    return Codec(m.ClientReply, MAX_WORKER_FRAME)


def broker_worker_codec() -> Codec[m.WorkerToBroker]:
    return Codec(m.WorkerToBroker, MAX_WORKER_FRAME)


def worker_codec() -> Codec[m.BrokerToWorker]:
    return Codec(m.BrokerToWorker, MAX_CLIENT_FRAME)


def broker_launcher_codec() -> Codec[m.LauncherToBroker]:
    return Codec(m.LauncherToBroker, MAX_LAUNCHER_DATAGRAM)


def launcher_codec() -> Codec[m.BrokerToLauncher]:
    return Codec(m.BrokerToLauncher, MAX_LAUNCHER_DATAGRAM)


def launcher_zygote_codec() -> Codec[m.SpawnReply]:
    return Codec(m.SpawnReply, MAX_LAUNCHER_DATAGRAM)


def zygote_codec() -> Codec[m.Spawn]:
    return Codec(m.Spawn, MAX_LAUNCHER_DATAGRAM)


def broker_egress_codec() -> Codec[m.EgressToBroker]:
    return Codec(m.EgressToBroker, MAX_LAUNCHER_DATAGRAM)


def egress_codec() -> Codec[m.BrokerToEgress]:
    return Codec(m.BrokerToEgress, MAX_LAUNCHER_DATAGRAM)


_CLIENT_TAGS = {"execute", "status", "grant", "revoke", "grants", "history"}
_ALL_TAGS = {
    str(info.tag)
    for cls in (m.Request, m.Reply, m.Internal)
    for sub in cls.__subclasses__()
    for info in [msgspec.inspect.type_info(sub)]
    if isinstance(info, msgspec.inspect.StructType) and info.tag
}


def explain_bad_request(frames: list[bytes], exc: Exception) -> m.ErrorReply:
    """The reply to a client frame the typed decoder refused: what was wrong, under the
    request's own id whenever the body is a msgpack map that names one, so the client
    can match it to its call (a bad field is not a lost reply)."""
    info = error_info(exc)
    raw: object = None
    if len(frames) == 2 and frames[0] == VERSION and len(frames[1]) <= MAX_CLIENT_FRAME:
        try:
            raw = msgspec.msgpack.decode(frames[1])
        except Exception:  # noqa: BLE001 - not msgpack: the error says so already
            raw = None
    request_id = ""
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= 128:
            request_id = rid
        tag = raw.get("type")  # any msgpack value: a list or a map is not hashable
        if info.code == ErrorCode.BAD_MESSAGE and isinstance(tag, str) and tag in _ALL_TAGS - _CLIENT_TAGS:
            info = ErrorInfo(
                code=ErrorCode.UNEXPECTED_MESSAGE,
                message=f"message type {tag!r} is not accepted on the client socket",
                field="type",
            )
    return m.ErrorReply(id=request_id, error=info)


class _Head(msgspec.Struct):
    type: str = ""
    id: str = ""


_head = msgspec.msgpack.Decoder(_Head)


def peek(frames: list[bytes]) -> tuple[str, str]:
    """A message's tag and id, read without decoding the rest (the gateway relays frames
    it never decodes; it needs only these two): ("", "") when there are none."""
    if len(frames) != 2 or frames[0] != VERSION:
        return "", ""
    try:
        head = _head.decode(frames[1])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", ""
    return head.type, head.id[:128]


_json_encoder = msgspec.json.Encoder()


def to_json(message: msgspec.Struct) -> bytes:
    """JSON for humans and tools (``--json``); not a wire format."""
    return _json_encoder.encode(message)


def to_builtins(message: msgspec.Struct) -> Any:
    return msgspec.to_builtins(message)
