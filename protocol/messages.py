"""Every message cellblock puts on a wire, as tagged, frozen msgspec Structs.

Five links carry them, each with its own union (see ``protocol.wire``):

* client <-> broker  (ZeroMQ DEALER -> ROUTER, ``client.sock``)
* worker <-> broker  (ZMTP DEALER -> ROUTER, ``workers.sock``)
* broker <-> launcher (unix SOCK_SEQPACKET, ``launcher.sock``)
* launcher <-> zygote (unix SOCK_SEQPACKET, a socket pair made at the zygote's start)
* broker <-> egress proxy (unix SOCK_SEQPACKET, ``egress.ctl``)

Evolution rules (see also ``protocol.wire.VERSION``):

1. A new field gets a default, so an older peer's message still decodes.
2. A field never changes its type or meaning; rename = new field + default.
3. Requests (what clients send) reject unknown fields, so a typo such as
   ``timout_ms`` is an error naming the field, not a silently ignored wish.
   Replies ignore unknown fields, so a newer broker can add result fields
   without breaking older clients.
4. Removing a field or tag, or changing framing, bumps ``VERSION``.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

from protocol.errors import ErrorCode, ErrorInfo

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Small = Annotated[str, msgspec.Meta(max_length=256)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class Status(enum.StrEnum):
    OK = "ok"
    ERROR = "error"  # the code ran and exited non-zero
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    KILLED = "killed"
    REJECTED = "rejected"
    RATE_LIMITED = "rate_limited"
    PERMISSION_REQUIRED = "permission_required"
    OVERLOADED = "overloaded"
    INTERNAL_ERROR = "internal_error"


class CapabilityKind(enum.StrEnum):
    FS_READ = "fs_read"  # target: an absolute host path
    FS_WRITE = "fs_write"  # target: an absolute host path
    NET = "net"  # target: a domain pattern, "example.com" or "*.example.com"
    LIMITS = "limits"  # target: a limit name, e.g. "memory_bytes"


class Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    """Base of what clients send."""


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of what the broker sends to clients."""


class Internal(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    """Base of broker <-> worker and broker <-> launcher messages."""


# --- values shared by several messages ---------------------------------------


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a request asks for; ``None`` means the profile's default."""

    timeout_ms: Positive | None = None
    cpu_ms: Positive | None = None
    memory_bytes: Positive | None = None
    output_bytes: Positive | None = None


class Capability(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: CapabilityKind
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]

    @classmethod
    def parse(cls, text: str) -> Capability:
        """``KIND:TARGET`` as people write it (``net:example.com``); ValueError saying what is wrong."""
        kind, _, target = text.partition(":")
        if not target:
            raise ValueError(f"{text!r}: a capability is KIND:TARGET, e.g. net:example.com or limits:memory_bytes")
        try:
            return cls(CapabilityKind(kind), target)
        except ValueError:
            kinds = ", ".join(k.value for k in CapabilityKind)
            raise ValueError(f"{text!r}: a capability is KIND:TARGET with KIND one of {kinds}") from None


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    rule: str
    line: int
    severity: Literal["info", "warning", "danger"]
    message: str
    implies: Capability | None = None


class NetDecision(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    allowed: bool
    reason: str
    bytes_out: int = 0
    bytes_in: int = 0
    count: int = 1  # how many requests or connections got this same decision (bytes are their sum)


FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    """A file the run created or changed in /work/out, with its bytes unless over a cap."""

    name: str  # its path under /work/out
    size: int
    media_type: str
    data: bytes = b""
    dropped: bool = False  # over the profile's caps: named with its size, bytes left out
    sha256: str = ""  # of the bytes as the run wrote them (before redaction); "" when dropped
    redactions: dict[str, int] = {}  # text artifacts go through the same redaction as output
    scanned: bool = False  # it did (UTF-8 text); a binary one is passed through as it is


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    session: str
    language: str  # the runtime ("python")
    environment: str = ""  # its package environment, if any
    client_id: str
    conversation_id: str = ""
    state: str = "idle"  # opening, idle, running, ended
    age_s: float = 0.0
    idle_s: float = 0.0
    cells: int = 0
    memory_bytes: int = 0  # what its sandbox held after its last cell (its memory cgroup), when known
    memory_limit_bytes: int = 0  # for the whole session
    timeout_ms: int = 0  # each cell's default deadline
    idle_timeout_s: float = 0.0  # it ends after this long without a cell
    max_lifetime_s: float = 0.0  # and after this long in all
    ended: str = ""  # why it ended, once it has


# --- client -> broker ---------------------------------------------------------


class ExecuteRequest(Request, tag="execute", kw_only=True, frozen=True):
    id: Id
    code: str
    language: Small = "python"
    stdin: str = ""
    limits: Limits = Limits()
    capabilities: list[Capability] = []
    client_id: Small = ""
    conversation_id: Small = ""
    stream: bool = False
    profile: Small = ""
    # A package environment by name; "" is the profile's default for the
    # runtime, "none" is none (the runtime's own library only).
    environment: Small = ""
    # Run as the next cell of this session (see SessionOpen), in the session's
    # language: a cell's own language is "" (or "auto"), or the session's.
    session: Small = ""
    files: dict[FileName, bytes] = {}  # written into /work before the code runs


class SessionOpen(Request, tag="session_open", kw_only=True, frozen=True):
    """Open a session: one sandbox that keeps its interpreter and its /work between
    cells, for this client (and conversation) alone, until closed, idle or too old."""

    id: Id
    language: Small = "python"
    environment: Small = ""
    limits: Limits = Limits()  # for the whole session: memory covers every cell; timeout is each cell's
    client_id: Small = ""
    conversation_id: Small = ""


class SessionClose(Request, tag="session_close", kw_only=True, frozen=True):
    id: Id
    session: Id
    client_id: Small = ""


class SessionList(Request, tag="session_list", kw_only=True, frozen=True):
    id: Id
    client_id: Small = ""


class StatusRequest(Request, tag="status", kw_only=True, frozen=True):
    id: Id


class GrantRequest(Request, tag="grant", kw_only=True, frozen=True):
    id: Id
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    capability: Capability
    conversation_id: Small = ""
    expires_in_s: Positive | None = None


class RevokeRequest(Request, tag="revoke", kw_only=True, frozen=True):
    id: Id
    grant_id: Positive


class GrantsRequest(Request, tag="grants", kw_only=True, frozen=True):
    id: Id
    client_id: Small = ""


class HistoryRequest(Request, tag="history", kw_only=True, frozen=True):
    id: Id
    client_id: Small = ""
    conversation_id: Small = ""
    status: Status | None = None
    language: Small = ""
    since: float | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50
    # A page cursor (newest first): only runs older than this start time, or
    # as old with a smaller run id. ``before`` alone is an "until" filter; the
    # last entry of a page gives the next page's (started, run_id).
    before: float | None = None
    before_run_id: Small = ""


# --- broker -> client ---------------------------------------------------------


class OutputChunk(Reply, tag="chunk", kw_only=True, frozen=True):
    id: str
    stream: Literal["stdout", "stderr"]
    seq: int
    data: str


class ExecuteResult(Reply, tag="result", kw_only=True, frozen=True):
    id: str
    status: Status
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stdout_dropped: int = 0
    stderr_truncated: bool = False
    stderr_dropped: int = 0
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    memory_peak_bytes: int = 0
    worker: str = ""
    language: str = ""
    runtime: str = ""
    error: ErrorInfo | None = None
    retry_after_s: float | None = None
    required: list[Capability] = []
    findings: list[Finding] = []
    redactions: dict[str, int] = {}
    network: list[NetDecision] = []
    syscall: int | None = None
    run_id: str = ""
    artifacts: list[Artifact] = []
    session: str = ""  # the session the cell ran in
    artifacts_omitted: int = 0  # files in /work/out past the count cap: not even named
    artifacts_unscanned: int = 0  # binary artifacts, passed through without secret redaction
    session_ended: bool = False  # the session ended with this cell (it did not stop in time, or exited)


class SessionReply(Reply, tag="session_reply", kw_only=True, frozen=True):
    id: str
    session: SessionInfo


class SessionsReply(Reply, tag="sessions_reply", kw_only=True, frozen=True):
    id: str
    sessions: list[SessionInfo]


class LayerStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    active: bool
    detail: str = ""


class RuntimeStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # "python", or "python:data" for the python runtime in the data environment
    version: str = ""
    offered: bool = False
    environment: str = ""
    packages: list[str] = []
    reason: str = ""
    warm: int = 0
    busy: int = 0
    starting: int = 0
    target: int = 0
    restarts: int = 0
    setup_failures: int = 0


class GatewayPeer(msgspec.Struct, frozen=True, kw_only=True):
    client_id: str  # "curve:<name>": the identity of an authorized key
    relays: int  # its connections the gateway relays to the broker


class GatewayStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The TCP listener (``supervisor/gateway.py``); written by the gateway, read by the broker."""

    listen: list[str]
    running: bool = True  # False: configured, but the gateway has not reported for a while
    pid: int = 0
    updated: float = 0.0  # wall time of the report
    server_key: str = ""  # this node's public key (Z85): what clients pass as --server-key
    authorized_keys: int = 0  # keys in the file as last loaded
    keys_loaded: float = 0.0  # wall time of that load
    keys_error: str = ""  # the last reload failed (the keys before it stay in force): why
    connections: int = 0  # CURVE connections past their handshake, now
    peers: list[GatewayPeer] = []  # who they are (omitted in a reply to a remote client)
    refused_unknown_key: int = 0  # handshakes refused: the key is not in authorized_keys
    refused_handshake: int = 0  # handshakes that failed: not CURVE, the wrong server key, garbage
    refused_full: int = 0  # handshakes refused: max_remote_peers connections already
    counters: dict[str, int] = {}


class StatusReply(Reply, tag="status_reply", kw_only=True, frozen=True):
    id: str
    version: str
    uptime_s: float
    mode: str
    profile: str
    runtimes: list[RuntimeStatus]
    layers: list[LayerStatus]
    queue: int
    queue_limit: int
    in_flight: int
    counters: dict[str, int]
    launcher_generation: int = 0
    limits: dict[str, int] = {}  # the profile's defaults: timeout_ms, cpu_ms, memory_bytes, output_bytes
    default_environments: dict[str, str] = {}  # runtime -> the package environment a request gets by default
    max_limits: dict[str, int] = {}  # the most a run may get (above the defaults with a grant)
    sessions: list[SessionInfo] = []
    session_idle_timeout_s: float = 0.0  # a session ends after this long without a cell
    session_max_lifetime_s: float = 0.0  # and after this long in all
    gateway: GatewayStatus | None = None  # the TCP listener, when [service] listen names one


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    grant_id: int
    client_id: str
    conversation_id: str
    capability: Capability
    created: float
    expires: float | None = None


class GrantsReply(Reply, tag="grants_reply", kw_only=True, frozen=True):
    id: str
    grants: list[Grant]


class FileRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size: int
    sha256: str = ""  # of what the broker saw (an artifact's, before redaction)
    scanned: bool = True  # an artifact went through secret redaction (a binary one does not)


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    started: float
    finished: float
    client_id: str
    conversation_id: str
    language: str
    code_bytes: int
    code_sha256: str
    status: Status
    exit_code: int | None
    wall_ms: float
    cpu_ms: float
    memory_peak_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    redactions: dict[str, int]
    findings: list[str]
    capabilities: list[Capability]
    network: list[NetDecision] = []
    files_in: list[FileRecord] = []  # names, sizes and hashes: never bytes
    files_out: list[FileRecord] = []
    session: str = ""
    uid: int | None = None  # the uid the kernel gave for the client's connection


class HistoryReply(Reply, tag="history_reply", kw_only=True, frozen=True):
    id: str
    entries: list[HistoryEntry]


class ErrorReply(Reply, tag="error", kw_only=True, frozen=True):
    """For requests that are not executions, and frames that could not be read."""

    id: str = ""
    error: ErrorInfo


# --- worker <-> broker ---------------------------------------------------------


class JobLimits(msgspec.Struct, frozen=True, kw_only=True):
    """A run's limits as the worker enforces them: one shape, in bytes and ms,
    made once by the broker's policy from the request and the profile."""

    timeout_ms: int
    cpu_ms: int
    memory_bytes: int
    output_bytes: int


class Ready(Internal, tag="ready", kw_only=True, frozen=True):
    worker: str
    runtime: str
    pid: int
    reserved_for: str = ""  # the run this worker was made for (host binds, egress)


class Job(Internal, tag="job", kw_only=True, frozen=True):
    id: str
    code: str
    stdin: str = ""
    limits: JobLimits
    stream: bool = False
    files: dict[str, bytes] = {}  # into /work before the code runs (names checked by the broker)
    session: bool = False  # a session's cell: the worker keeps its interpreter for the next
    artifact_bytes: int = 0  # the most of /work/out that comes back (one file; 0: names only)
    artifacts_bytes: int = 0  # in all
    artifact_count: int = 64  # files named; more are counted, not named
    language: str = ""  # as the client named it (a runtime may care: "mjs" means an ES module)


class WorkerChunk(Internal, tag="worker_chunk", kw_only=True, frozen=True):
    id: str
    stream: Literal["stdout", "stderr"]
    data: bytes


class WorkerResult(Internal, tag="worker_result", kw_only=True, frozen=True):
    id: str
    status: Status
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    stdout_head: bytes = b""
    stdout_tail: bytes = b""
    stdout_total: int = 0
    stderr_head: bytes = b""
    stderr_tail: bytes = b""
    stderr_total: int = 0
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    memory_peak_bytes: int = 0
    syscall: int | None = None
    artifacts: list[Artifact] = []
    artifacts_omitted: int = 0  # files in /work/out past the count cap: not even named
    alive: bool = False  # a session's worker, waiting for its next cell
    memory_bytes: int = 0  # what the sandbox holds after the run (its memory cgroup), when known


# --- broker <-> launcher ---------------------------------------------------------


class ExitKind(enum.StrEnum):
    DONE = "done"  # ran its job (or was told to stop) and exited cleanly
    SETUP_FAILED = "setup_failed"  # a sandbox step failed; see detail
    RUNTIME_MISSING = "runtime_missing"
    CRASHED = "crashed"  # died by a signal nobody sent on purpose
    KILLED = "killed"  # killed by the launcher (deadline, shutdown, broker request)


class RuntimeInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the kind of worker: a runtime ("python"), or a runtime in an environment ("python:data")
    version: str
    languages: list[str]
    available: bool
    reason: str = ""
    self_test: str = ""  # a tiny program the broker runs before offering the runtime
    self_test_expect: str = ""  # its exact stdout
    environment: str = ""  # the package environment its workers see, if any
    packages: list[str] = []  # what it holds: "numpy 2.1.3", ...
    modules: list[str] = []  # the top-level modules it provides, for hints
    sessions: bool = False  # its sandbox can keep its interpreter between cells


class LauncherHello(Internal, tag="launcher_hello", kw_only=True, frozen=True):
    generation: int
    mode: str
    profile: str
    runtimes: list[RuntimeInfo]
    layers: list[LayerStatus]


class Spawned(Internal, tag="spawned", kw_only=True, frozen=True):
    worker: str
    runtime: str
    pid: int
    reserved_for: str = ""


class Exited(Internal, tag="exited", kw_only=True, frozen=True):
    worker: str
    runtime: str
    kind: ExitKind
    code: int | None = None
    signal: int | None = None
    detail: str = ""


class Health(Internal, tag="health", kw_only=True, frozen=True):
    runtime: str
    healthy: bool
    reason: str = ""
    restarts: int = 0
    setup_failures: int = 0


class Taken(Internal, tag="taken", kw_only=True, frozen=True):
    """Broker -> launcher: this worker got a job; make a replacement."""

    worker: str


class HostBind(msgspec.Struct, frozen=True, kw_only=True):
    """A granted host path, bound into the sandbox at /mnt/host/<path>."""

    host: str  # the path the run asked for
    within: str  # the grant that covers it: what ``host`` resolves to must lie inside
    writable: bool = False


class Reserve(Internal, tag="reserve", kw_only=True, frozen=True):
    """Broker -> launcher: make a worker for this one run (its grants need binds)."""

    run: str
    runtime: str
    binds: list[HostBind] = []
    egress: str = ""  # host path of the run's egress proxy socket, bound at /mnt/egress.sock


class ReserveFailed(Internal, tag="reserve_failed", kw_only=True, frozen=True):
    """Launcher -> broker: no worker could be made for this run."""

    run: str
    code: ErrorCode
    reason: str


class Kill(Internal, tag="kill", kw_only=True, frozen=True):
    """Broker -> launcher: the broker gave up on this worker (deadline passed)."""

    worker: str
    reason: str


# --- launcher <-> zygote -----------------------------------------------------------


class Spawn(Internal, tag="spawn", kw_only=True, frozen=True):
    """Launcher -> zygote: make one worker of the zygote's kind."""

    worker_id: str
    runtime: str
    uid: int  # inside the worker's user namespace, if any
    gid: int
    cgroup_dirs: dict[str, str]
    binds: list[HostBind] = []  # a run's own worker: its granted host paths
    egress: str = ""  # and the host path of its egress proxy socket


class SpawnReply(Internal, tag="spawn_reply", kw_only=True, frozen=True):
    """Zygote -> launcher: the worker's pid (its parent is the launcher), or why there is none."""

    worker_id: str
    pid: int = 0
    error: str = ""
    retry: bool = False  # not the sandbox's fault (the broker's worker socket did not answer)


ClientRequest = (
    ExecuteRequest
    | StatusRequest
    | GrantRequest
    | RevokeRequest
    | GrantsRequest
    | HistoryRequest
    | SessionOpen
    | SessionClose
    | SessionList
)
ClientReply = (
    OutputChunk | ExecuteResult | StatusReply | GrantsReply | HistoryReply | ErrorReply | SessionReply | SessionsReply
)
WorkerToBroker = Ready | WorkerChunk | WorkerResult
BrokerToWorker = Job
LauncherToBroker = LauncherHello | Spawned | Exited | Health | ReserveFailed
BrokerToLauncher = Taken | Kill | Reserve


# --- broker <-> egress proxy -------------------------------------------------------


class EgressOpen(Internal, tag="egress_open", kw_only=True, frozen=True):
    run: str
    allow: list[str]  # domain patterns granted to the run


class EgressOpened(Internal, tag="egress_opened", kw_only=True, frozen=True):
    run: str
    path: str  # unix socket the run's forwarder connects to


class EgressClose(Internal, tag="egress_close", kw_only=True, frozen=True):
    run: str


class EgressReport(Internal, tag="egress_report", kw_only=True, frozen=True):
    run: str
    decisions: list[NetDecision]


BrokerToEgress = EgressOpen | EgressClose
EgressToBroker = EgressOpened | EgressReport
