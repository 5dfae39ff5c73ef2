"""Broker policy: everything the trusted side decides about a request.

``Policy`` is the broker's one entry point. Each concern has its module:
``validation`` (sizes, limits, capability syntax), ``ratelimit`` (per-client
rate and concurrency), ``grants`` (which grant covers which need),
``findings`` (static analysis), ``redact`` (secrets in output), ``peers``
(who sent a request: the kernel's uid, and whether it may name its client)
and ``store`` (SQLite: history and grants). Admission (``admit``, one call, one
answer: Admitted, Refused or Wait): the language, sizes, capabilities
against grants, limits, rate, concurrency; the static analysis runs after
the job has gone out.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo
from protocol.profile import Profile
from supervisor import results
from supervisor.config import Config
from supervisor.policy import findings as findings_mod
from supervisor.policy import grants, peers, principal, validation
from supervisor.policy.detect import detect, unfence
from supervisor.policy.ratelimit import Limiter
from supervisor.policy.redact import Redactor, ResultRedactor, StreamRedactor
from supervisor.policy.store import Store

K = m.CapabilityKind


# What a request runs on (the kind of worker: "python", "python:data"), and a
# note when its default environment was not there.
Resolved = tuple[str, m.Finding | None]


@dataclass
class Admitted:
    """The run may start: everything the intake needs to make its job."""

    client_key: str
    request: m.ExecuteRequest  # with the language detected, when it asked for "auto"
    runtime: str
    limits: m.JobLimits
    findings: list[m.Finding] = field(default_factory=list)
    capabilities: list[m.Capability] = field(default_factory=list)
    binds: list[m.HostBind] = field(default_factory=list)  # granted host paths to bind
    net: list[str] = field(default_factory=list)  # granted domain patterns for the egress proxy

    @property
    def reserve(self) -> bool:
        """Does the run need a worker of its own (binds, egress)?"""
        return bool(self.binds or self.net)


@dataclass
class Refused:
    """The run may not start: its one reply (id and run id filled in by the intake)."""

    client_key: str
    result: m.ExecuteResult


@dataclass
class Wait:
    """The client is at its concurrency limit: the request waits its turn."""

    client_key: str


Admission = Admitted | Refused | Wait


@dataclass
class Streams:
    """Per streamed request: an incremental decoder and a redactor per stream."""

    decoders: dict[str, codecs.IncrementalDecoder] = field(default_factory=dict)
    redactors: dict[str, StreamRedactor] = field(default_factory=dict)

    def result_redactor(self, redactor: Redactor | None) -> Redactor | ResultRedactor | None:
        """For the run's final result: also hides the parts of secrets these streams showed split."""
        fragments = [f for r in self.redactors.values() for f in r.fragments]
        if redactor is None or not fragments:
            return redactor
        return ResultRedactor(redactor, fragments)


def _refusal(status: m.Status, error: ErrorInfo, **extra: object) -> m.ExecuteResult:
    return m.ExecuteResult(id="", status=status, error=error, **extra)  # type: ignore[arg-type]


def _permission_required(key: str, request: m.ExecuteRequest, lacking: list[m.Capability]) -> m.ExecuteResult:
    names = ", ".join(grants.describe(c) for c in lacking)
    scope = f" --conversation {request.conversation_id}" if request.conversation_id else ""
    return _refusal(
        m.Status.PERMISSION_REQUIRED,
        ErrorInfo(
            code=ErrorCode.PERMISSION_REQUIRED,
            message=f"this run needs {names}, which client {key!r} does not hold; "
            f"grant it with: cellblock grant {key} {grants.describe(lacking[0])}{scope}",
            field="capabilities" if request.capabilities else "limits",
        ),
        required=lacking,
    )


def _language(request: m.ExecuteRequest) -> tuple[m.ExecuteRequest, m.Finding | None]:
    """The request with a pasted code fence taken off (whatever language it asks for), its
    language detected when it asked for "auto" (or none; the fence's tag first), and the
    finding saying how."""
    code, tag = unfence(request.code)
    if code != request.code:
        request = msgspec.structs.replace(request, code=code)
    if request.language.lower() not in ("", "auto"):
        return request, None
    guess = detect(code, tag)
    if guess.language is None:
        choices = f" ({' or '.join(guess.alternatives)})" if guess.alternatives else ""
        message = f"cannot tell which language this is: {guess.reason}{choices}; set language"
        raise CellblockError(ErrorCode.INVALID_REQUEST, message, "language")
    finding = m.Finding(
        rule="language_detected",
        line=0,
        severity="info",
        message=f"ran as {guess.language} ({guess.confidence}: {guess.reason})",
    )
    return msgspec.structs.replace(request, language=guess.language), finding


def _own(request: m.Request, remote: str) -> m.Request:
    """An admin request of a remote client, narrowed to what it may see of its own."""
    if isinstance(request, m.GrantRequest | m.RevokeRequest):
        raise CellblockError(
            ErrorCode.PERMISSION_REQUIRED,
            f"a remote client ({remote}) cannot grant or revoke; an operator does, on the node: "
            f"cellblock grant {remote} ...",
        )
    if isinstance(request, m.GrantsRequest | m.HistoryRequest):
        return msgspec.structs.replace(request, client_id=remote)
    return request


def _record(name: str, data: bytes) -> m.FileRecord:
    return m.FileRecord(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _rate_limited(message: str, retry_after_s: float) -> m.ExecuteResult:
    error = ErrorInfo(code=ErrorCode.RATE_LIMITED, message=message)
    return _refusal(m.Status.RATE_LIMITED, error, retry_after_s=retry_after_s)


class Policy:
    def __init__(
        self,
        config: Config,
        profile: Profile,
        state_dir: str,
        clock: Callable[[], float] = time.time,
        service_uid: int | None = None,
        relay_uid: int | None = None,
    ) -> None:
        """``service_uid``: the uid that started the service, trusted by default (the
        broker's real uid before it drops, which is when the broker makes its policy).
        ``relay_uid``: the gateway's (the broker's uid after the drop, in root mode); a
        connection's routing id names a CURVE identity only from it or a trusted uid."""
        self.config = config
        self.trusted = peers.trusted_uids(config, os.getuid() if service_uid is None else service_uid)
        self.relays = self.trusted | ({relay_uid} if relay_uid is not None else set())
        self.profile = profile
        self.clock = clock
        self.store = Store(state_dir, clock, config.history.retention_days, config.history.max_rows)
        self.limiter = Limiter(config.policy, time.monotonic)
        self.redactor = Redactor() if config.redaction.enabled else None

    def close(self) -> None:
        self.store.close()

    # --- admission --------------------------------------------------------------------------

    def client_key(
        self, connection: str, request: m.ExecuteRequest | m.SessionOpen | m.SessionClose | m.SessionList
    ) -> str:
        """A remote client (relayed by the gateway) is its CURVE key's identity, whatever
        client_id it names (``principal``); a local one is its uid, plus the client id it
        names when that uid is trusted (``peers``)."""
        remote = self.remote(connection)
        if remote is not None:
            return remote
        return peers.key_for(peers.uid_of(connection), self.trusted, connection, request.client_id)

    def remote(self, connection: str) -> str | None:
        """The CURVE identity behind a connection the gateway made for a remote client."""
        return principal.remote(connection, self.relays)

    def admit(
        self, connection: str, request: m.ExecuteRequest, resolve: Callable[[m.ExecuteRequest], Resolved]
    ) -> Admission:
        """Decide, in one call: the language (detected for "auto"), the runtime (``resolve``),
        sizes, capabilities against grants, limits, rate and concurrency. Never raises for
        a request that is wrong: that is a Refused with the reason."""
        key = self.client_key(connection, request)
        try:
            request, detected = _language(request)
            runtime, missing = resolve(request)
            notes = [f for f in (detected, missing) if f is not None]
            return self._admit(key, request, runtime, notes)
        except CellblockError as exc:
            error = ErrorInfo(code=exc.code, message=exc.message, field=exc.field)
            return Refused(key, results.from_error("", "", request.language, error))

    def _admit(self, key: str, request: m.ExecuteRequest, runtime: str, notes: list[m.Finding]) -> Admission:
        validation.check_sizes(self.profile, request)
        asked = []
        for i, cap in enumerate(request.capabilities):
            validation.check_capability(cap, i)
            self._check_usable(cap, runtime, i)
            asked.append(validation.normalized(cap))
        limits, above_default = validation.resolve_limits(self.profile, request.limits)
        needs = list(dict.fromkeys([*asked, *above_default]))
        held: list[m.Capability] = []
        if needs:
            held = grants.usable(self.store.grants(key), request.conversation_id)
            lacking = [need for need in needs if grants.covering(held, need) is None]
            if lacking:
                return Refused(key, _permission_required(key, request, lacking))
        rate, concurrency = self.limiter.limits(key)
        retry = self.limiter.retry_after(key)
        if retry is not None:
            why = (
                f"client {key!r} started {rate} runs in the last minute; retry in {retry:.1f} s "
                f"(the service's [policy] rate_per_minute, or [policy.clients.<id>] for one client, raises it)"
            )
            return Refused(key, _rate_limited(why, round(retry, 3)))
        if self.limiter.busy(key):
            if self.config.policy.over_concurrency == "wait":
                return Wait(key)
            why = (
                f"client {key!r} already has {concurrency} runs going; retry when one ends "
                f"(the service's [policy] concurrency raises it)"
            )
            return Refused(key, _rate_limited(why, 1.0))
        try:
            binds = grants.plan_binds(held, needs)
        except ValueError as exc:
            raise CellblockError(ErrorCode.INVALID_REQUEST, str(exc), "capabilities") from None
        net = [c.target for c in needs if c.kind is K.NET]
        self.limiter.start(key)
        return Admitted(key, request, runtime, limits, notes, needs, binds, net)

    def session_limits(self, key: str, request: m.SessionOpen) -> m.JobLimits:
        """A session's limits (memory for the whole session, the rest each cell's
        default); above the profile's defaults only with a grant, as for a run."""
        limits, above_default = validation.resolve_limits(self.profile, request.limits)
        if above_default:
            held = grants.usable(self.store.grants(key), request.conversation_id)
            lacking = [need for need in above_default if grants.covering(held, need) is None]
            if lacking:
                names = ", ".join(grants.describe(c) for c in lacking)
                raise CellblockError(
                    ErrorCode.PERMISSION_REQUIRED,
                    f"this session needs {names}, which client {key!r} does not hold; "
                    f"grant it with: cellblock grant {key} {grants.describe(lacking[0])}",
                    "limits",
                )
        return limits

    def analyse(self, runtime: str, code: str) -> list[m.Finding]:
        """Static findings about the code: reported with the result, never a reason to refuse."""
        return findings_mod.analyse(runtime.split(":")[0], code)

    def _check_usable(self, cap: m.Capability, runtime: str, index: int) -> None:
        """Refuse a capability this service or profile can never honour, whatever is granted."""
        field = f"capabilities[{index}]"
        if cap.kind is K.NET:
            if not self.config.egress.enabled:
                raise CellblockError(
                    ErrorCode.INVALID_REQUEST,
                    "network egress is off in this service (egress.enabled = false); no run can reach the network",
                    field,
                )
            policy = self.profile.runtimes.get(runtime.split(":")[0])
            if policy is not None and "inet" not in policy.socket_families:
                raise CellblockError(
                    ErrorCode.INVALID_REQUEST,
                    f"profile {self.profile.name!r} lets {runtime} open no network sockets; a net capability "
                    "needs a profile whose runtime allows inet",
                    field,
                )
        if cap.kind in (K.FS_READ, K.FS_WRITE) and not self.config.policy.grant_roots:
            raise CellblockError(
                ErrorCode.INVALID_REQUEST,
                "host paths cannot be bound: the service config sets no policy.grant_roots",
                field,
            )

    def released(self, client_key: str) -> None:
        """An admitted run is over (with or without a result)."""
        self.limiter.finish(client_key)

    # --- after the run ------------------------------------------------------------------------

    def finished(
        self,
        client_key: str,
        request: m.ExecuteRequest,
        result: m.ExecuteResult,
        capabilities: list[m.Capability],
        received_wall: float,
        connection: str = "",
    ) -> None:
        """Record the run's metadata (never code, never output), and the uid that asked."""
        if not self.config.history.enabled:
            return
        code = request.code.encode("utf-8", "surrogatepass")
        self.store.record(
            m.HistoryEntry(
                run_id=result.run_id,
                started=received_wall,
                finished=self.clock(),
                client_id=client_key,
                conversation_id=request.conversation_id,
                language=request.language,
                code_bytes=len(code),
                code_sha256=hashlib.sha256(code).hexdigest(),
                status=result.status,
                exit_code=result.exit_code,
                wall_ms=result.wall_ms,
                cpu_ms=result.cpu_ms,
                memory_peak_bytes=result.memory_peak_bytes,
                stdout_truncated=result.stdout_truncated,
                stderr_truncated=result.stderr_truncated,
                redactions=result.redactions,
                findings=sorted({f.rule for f in result.findings}),
                capabilities=capabilities,
                network=result.network,
                files_in=[_record(name, data) for name, data in request.files.items()],
                files_out=[
                    m.FileRecord(name=a.name, size=a.size, sha256=a.sha256, scanned=a.scanned) for a in result.artifacts
                ],
                session=request.session,
                uid=peers.uid_of(connection),
            )
        )

    # --- streaming -----------------------------------------------------------------------------

    def stream_text(self, streams: Streams, name: str, data: bytes, final: bool = False) -> str:
        decoder = streams.decoders.setdefault(name, codecs.getincrementaldecoder("utf-8")("replace"))
        text = decoder.decode(data, final=final)
        if self.redactor is None:
            return text
        redactor = streams.redactors.get(name)
        if redactor is None:  # the run's stream redactors see each other (a secret split across them)
            redactor = streams.redactors[name] = self.redactor.stream(streams.redactors)
        out = redactor.feed(text)
        return out + redactor.flush() if final else out

    # --- admin requests -----------------------------------------------------------------------

    def admin(self, request: m.Request, connection: str) -> m.Reply:
        """Grants and history. A remote client (a CURVE key) or an untrusted uid reads only
        its own and cannot grant or revoke: granting is the operator's, on the node."""
        remote = self.remote(connection)
        uid = peers.uid_of(connection)
        if remote is not None:
            request = _own(request, remote)
        elif uid not in self.trusted:
            request = self._own_only(request, uid)
        match request:
            case m.GrantRequest():
                cap = request.capability
                validation.check_capability(cap, 0)
                cap = validation.normalized(cap)
                if cap.kind in (K.FS_READ, K.FS_WRITE):
                    cap = validation.check_grant_path(cap, self.config.policy.grant_roots, "capability.target")
                self.store.add_grant(request.client_id, request.conversation_id, cap, request.expires_in_s)
                return m.GrantsReply(id=request.id, grants=self.store.grants(request.client_id))
            case m.RevokeRequest():
                if not self.store.revoke(request.grant_id):
                    raise CellblockError(ErrorCode.NOT_FOUND, f"no grant with id {request.grant_id}", "grant_id")
                return m.GrantsReply(id=request.id, grants=self.store.grants())
            case m.GrantsRequest():
                return m.GrantsReply(id=request.id, grants=self.store.grants(request.client_id))
            case m.HistoryRequest():
                return m.HistoryReply(id=request.id, entries=self.store.history(request))
        raise CellblockError(ErrorCode.UNEXPECTED_MESSAGE, f"{type(request).__name__} is not an admin request")

    @staticmethod
    def _own_only(request: m.Request, uid: int | None) -> m.Request:
        """An untrusted uid's admin request, narrowed to its own key (or refused)."""
        match request:
            case m.GrantRequest() | m.RevokeRequest():
                raise CellblockError(
                    ErrorCode.PERMISSION_REQUIRED,
                    f"uid {uid} may not grant or revoke: only root, the service's own user and "
                    "[policy] trusted_uids may (cellblock grant, as one of them)",
                )
            case m.GrantsRequest() | m.HistoryRequest():
                return msgspec.structs.replace(request, client_id=peers.key_for(uid, frozenset(), "", ""))
        return request
