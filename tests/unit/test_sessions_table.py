"""The broker's session table with a fake clock: idle and lifetime expiry, what an owner
is told after the end, and that nobody else learns whether a session exists."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import pytest

from protocol import messages as m
from protocol.errors import CellblockError, ErrorCode, ErrorInfo
from protocol.profile import Profile
from protocol.zmtp import _UID
from supervisor.config import Config, SessionsSection
from supervisor.dispatch import Dispatcher, Effects, Ticket
from supervisor.policy import Policy
from supervisor.sessions import Sessions

# A connection as the client router names it: the peer's uid (here root's, a trusted
# uid, whose requests are keyed by the client id they name), then its own id.
CONN = _UID.pack(0) + b"c"


class Kinds:
    """The catalogue's answers: python keeps state, swift does not."""

    def resolve_request(self, request: m.ExecuteRequest) -> tuple[str, None]:
        return request.language, None

    def resolve(self, language: str) -> str:
        return language

    def keeps_state(self, kind: str) -> bool:
        return kind != "swift"


@dataclass
class World:
    now: float = 1000.0
    replies: list[m.Reply] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def table(world: World, tmp_path: pathlib.Path) -> Sessions:
    def finish(ticket: Ticket, raw: m.WorkerResult | None, error: ErrorInfo | None) -> None:
        ticket.owner.finish(ticket, raw, error)

    effects = Effects(
        send_job=lambda worker, job: True,
        taken=lambda worker: None,
        kill=lambda worker, reason: world.killed.append(worker),
        finish=finish,
        reserve=lambda reservation: None,
    )
    dispatcher = Dispatcher(effects=effects, clock=lambda: world.now)
    config = Config(sessions=SessionsSection(idle_timeout_s=60, max_lifetime_s=300, per_client=2, total=3))
    policy = Policy(config, Profile(), str(tmp_path), clock=lambda: world.now)
    sessions = Sessions(
        config,
        dispatcher,
        policy,
        Kinds(),
        lambda client, reply: world.replies.append(reply),
        lambda: world.now,  # type: ignore[arg-type]
    )
    dispatcher.effects.held_lost = sessions.held_lost
    return sessions


def open_one(table: Sessions, world: World, client: str = "alice", worker: str = "w1") -> str:
    table.dispatcher.spawned(worker, "python", 1)
    table.dispatcher.ready(worker, "python", 1)
    table.open(CONN, m.SessionOpen(id="open", client_id=client))
    (ticket,) = [t for t in table.dispatcher.running.values() if t.worker == worker]
    table.dispatcher.result(worker, m.WorkerResult(id=ticket.run_id, status=m.Status.OK, alive=True))
    reply = world.replies[-1]
    assert isinstance(reply, m.SessionReply), reply
    return reply.session.session


def cell_request(session: str, client: str = "alice") -> m.ExecuteRequest:
    return m.ExecuteRequest(id="c", code="1", language="", session=session, client_id=client)


def test_an_idle_session_ends_and_its_owner_is_told_why(table: Sessions, world: World) -> None:
    session = open_one(table, world)
    world.now += 59
    assert table.tick() == pytest.approx(world.now + 1)
    world.now += 1
    table.tick()
    assert world.killed == ["w1"] and table.by_id == {}
    with pytest.raises(CellblockError) as ended:
        table.for_cell(CONN, cell_request(session))
    assert ended.value.code is ErrorCode.SESSION_NOT_FOUND and "idle for 60 s" in ended.value.message


def test_an_old_session_ends_after_its_running_cell(table: Sessions, world: World) -> None:
    session = open_one(table, world)
    live = table.for_cell(CONN, cell_request(session))
    table.cell_started(live)
    world.now += 301
    table.tick()
    assert world.killed == [], "the running cell is not cut off"
    assert table.cell_done(session, m.WorkerResult(id="x", status=m.Status.OK, alive=True)) is True
    assert world.killed == ["w1"]


def test_nobody_else_learns_whether_a_session_exists(table: Sessions, world: World) -> None:
    session = open_one(table, world)
    with pytest.raises(CellblockError) as theirs:
        table.for_cell(CONN, cell_request(session, client="mallory"))
    with pytest.raises(CellblockError) as nothing:
        table.for_cell(CONN, cell_request("s-" + "0" * 20, client="mallory"))
    assert theirs.value.code is nothing.value.code is ErrorCode.SESSION_NOT_FOUND
    assert theirs.value.message.replace(session, "ID") == nothing.value.message.replace("s-" + "0" * 20, "ID")
    table.end(table.by_id[session], "closed by its client")
    with pytest.raises(CellblockError) as after:
        table.for_cell(CONN, cell_request(session, client="mallory"))
    assert "closed by its client" not in after.value.message, "an ended session's reason is its owner's alone"


def test_a_session_whose_worker_dies_between_cells_is_gone(table: Sessions, world: World) -> None:
    session = open_one(table, world)
    table.dispatcher.exited("w1", "killed by SIGKILL")
    with pytest.raises(CellblockError) as gone:
        table.for_cell(CONN, cell_request(session))
    assert "its sandbox ended (killed by SIGKILL)" in gone.value.message


def test_sessions_are_capped_per_client_and_in_all(table: Sessions, world: World) -> None:
    open_one(table, world, "alice", "w1")
    open_one(table, world, "alice", "w2")
    with pytest.raises(CellblockError) as mine:
        table.open(CONN, m.SessionOpen(id="o", client_id="alice"))
    assert mine.value.code is ErrorCode.RATE_LIMITED and "per_client" in mine.value.message
    open_one(table, world, "bob", "w3")
    with pytest.raises(CellblockError) as everyone:
        table.open(CONN, m.SessionOpen(id="o", client_id="carol"))
    assert everyone.value.code is ErrorCode.OVERLOADED and "[sessions] total" in everyone.value.message


def test_a_runtime_that_cannot_keep_state_is_refused(table: Sessions) -> None:
    with pytest.raises(CellblockError) as refused:
        table.open(CONN, m.SessionOpen(id="o", language="swift", client_id="alice"))
    assert refused.value.code is ErrorCode.INVALID_REQUEST and "cannot keep state" in refused.value.message
