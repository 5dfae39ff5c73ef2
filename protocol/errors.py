"""Errors as data, from a closed set.

Every failure a client can see is an :class:`ErrorCode` plus a message that
says what was wrong with the request (and, where it applies, which field).
:func:`error_info` is the one place that maps an exception to a code; it never
puts a traceback or a host path into the message.
"""

from __future__ import annotations

import enum

import msgspec


class ErrorCode(enum.StrEnum):
    BAD_FRAME = "bad_frame"  # not a cellblock frame (wrong frame count, bytes not msgpack)
    BAD_VERSION = "bad_version"  # version frame missing or not ours
    BAD_MESSAGE = "bad_message"  # well-formed msgpack, wrong shape or types
    TOO_LARGE = "too_large"  # frame or field over its size cap
    UNEXPECTED_MESSAGE = "unexpected_message"  # a valid message that this socket does not take
    INVALID_REQUEST = "invalid_request"  # a value outside what the policy allows
    UNKNOWN_LANGUAGE = "unknown_language"
    RUNTIME_UNAVAILABLE = "runtime_unavailable"  # known language, not offered on this host now
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    PERMISSION_REQUIRED = "permission_required"
    NOT_FOUND = "not_found"
    SESSION_NOT_FOUND = "session_not_found"  # no such session for this client (never says whose it is)
    SESSION_BUSY = "session_busy"  # the session is running another cell
    SHUTTING_DOWN = "shutting_down"
    CONNECTION_LOST = "connection_lost"  # the client lost the service before the reply
    WORKER_LOST = "worker_lost"  # the sandbox running the job died without a result
    INTERNAL_ERROR = "internal_error"


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: ErrorCode
    message: str
    field: str = ""


class CellblockError(Exception):
    """An error that is meant to reach a client as :class:`ErrorInfo`."""

    def __init__(self, code: ErrorCode, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, field=self.field)


def _field_from_validation(message: str) -> str:
    # msgspec says "... - at `$.limits.timeout_ms`"; the path is the useful part.
    marker = "at `$."
    start = message.rfind(marker)
    if start < 0:
        return ""
    return message[start + len(marker) :].rstrip("`")


def error_info(exc: BaseException) -> ErrorInfo:
    """Map any exception to what a client may see. The one mapping place."""
    if isinstance(exc, CellblockError):
        return exc.info()
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        return ErrorInfo(code=ErrorCode.BAD_MESSAGE, message=text, field=_field_from_validation(text))
    if isinstance(exc, msgspec.DecodeError | UnicodeDecodeError):
        return ErrorInfo(code=ErrorCode.BAD_FRAME, message="frame is not valid msgpack (or not valid UTF-8)")
    return ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message="internal error; see the service log")
