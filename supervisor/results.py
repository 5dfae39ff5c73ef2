"""Turning a worker's raw result into what a client gets.

Output arrives as bytes: the head and the tail the monitor kept, and the
total. The client gets text: each part decoded (invalid UTF-8 replaced),
secrets redacted by the broker (never trusted to the worker), and between
head and tail a marker saying how many bytes were dropped.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Protocol

import msgspec

from protocol import messages as m
from protocol.errors import ErrorInfo
from protocol.files import is_text


class Redactor(Protocol):
    def redact(self, text: str) -> tuple[str, dict[str, int]]: ...


def marker(stream: str, dropped: int) -> str:
    return f"\n[... cellblock: {dropped} bytes of {stream} dropped ...]\n"


def assemble(
    stream: str, head: bytes, tail: bytes, total: int, redactor: Redactor | None, counts: collections.Counter[str]
) -> tuple[str, bool, int]:
    """(text, truncated, bytes dropped) for one stream."""
    dropped = max(0, total - len(head) - len(tail))
    if dropped == 0:
        parts = [(head + tail).decode("utf-8", "replace")]
    else:
        parts = [head.decode("utf-8", "replace"), tail.decode("utf-8", "replace")]
    if redactor is not None:
        redacted = []
        for part in parts:
            text, found = redactor.redact(part)
            counts.update(found)
            redacted.append(text)
        parts = redacted
    if dropped == 0:
        return parts[0], False, 0
    return parts[0] + marker(stream, dropped) + parts[1], True, dropped


def artifacts(
    found: list[m.Artifact], redactor: Redactor | None, counts: collections.Counter[str]
) -> tuple[list[m.Artifact], int]:
    """The run's files as the client gets them, each with the hash of what the run wrote;
    text ones redacted as output is. Also: how many passed unscanned (binary)."""
    out = []
    unscanned = 0
    for artifact in found:
        if artifact.dropped:
            out.append(artifact)
            continue
        digest = hashlib.sha256(artifact.data).hexdigest()
        data: bytes = artifact.data
        redactions: dict[str, int] = {}
        text = None
        if is_text(artifact.media_type):
            try:
                text = artifact.data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is not None and redactor is not None:
            redacted, redactions = redactor.redact(text)
            counts.update(redactions)
            data = redacted.encode("utf-8") if redactions else data
        elif text is None:
            unscanned += 1
        scanned = text is not None and redactor is not None
        out.append(msgspec.structs.replace(artifact, data=data, sha256=digest, redactions=redactions, scanned=scanned))
    return out, unscanned


def from_worker(
    request_id: str,
    run_id: str,
    language: str,
    runtime: str,
    worker: str,
    raw: m.WorkerResult,
    redactor: Redactor | None,
) -> m.ExecuteResult:
    counts: collections.Counter[str] = collections.Counter()
    stdout, out_cut, out_dropped = assemble(
        "stdout", raw.stdout_head, raw.stdout_tail, raw.stdout_total, redactor, counts
    )
    stderr, err_cut, err_dropped = assemble(
        "stderr", raw.stderr_head, raw.stderr_tail, raw.stderr_total, redactor, counts
    )
    files, unscanned = artifacts(raw.artifacts, redactor, counts)
    return m.ExecuteResult(
        id=request_id,
        run_id=run_id,
        status=raw.status,
        exit_code=raw.exit_code,
        signal=raw.signal,
        reason=raw.reason,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=out_cut,
        stdout_dropped=out_dropped,
        stderr_truncated=err_cut,
        stderr_dropped=err_dropped,
        wall_ms=raw.wall_ms,
        cpu_ms=raw.cpu_ms,
        memory_peak_bytes=raw.memory_peak_bytes,
        worker=worker,
        language=language,
        runtime=runtime,
        redactions=dict(counts),
        syscall=raw.syscall,
        artifacts=files,
        artifacts_omitted=raw.artifacts_omitted,
        artifacts_unscanned=unscanned,
    )


STATUS_FOR_ERROR = {
    "rate_limited": m.Status.RATE_LIMITED,
    "overloaded": m.Status.OVERLOADED,
    "permission_required": m.Status.PERMISSION_REQUIRED,
    "worker_lost": m.Status.INTERNAL_ERROR,
    "internal_error": m.Status.INTERNAL_ERROR,
    "shutting_down": m.Status.OVERLOADED,
    "connection_lost": m.Status.INTERNAL_ERROR,
}


def from_error(request_id: str, run_id: str, language: str, error: ErrorInfo, **extra: object) -> m.ExecuteResult:
    status = STATUS_FOR_ERROR.get(error.code.value, m.Status.REJECTED)
    return m.ExecuteResult(id=request_id, run_id=run_id, status=status, language=language, error=error, **extra)  # type: ignore[arg-type]
