"""Sessions, files in and artifacts out, through the real service: a session keeps its
interpreter and /work between cells for its owner alone; a cell's deadline interrupts the
cell and keeps the session; a cell that does not stop ends it; files go in under checked
names and what a run leaves in /work/out comes back, redacted when it is text."""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from collections.abc import Callable, Iterator

import pytest

from protocol import messages as m
from protocol.client import Client, ServiceError
from protocol.errors import ErrorCode
from tests.conftest import Service

pytestmark = pytest.mark.integration

CSV = b"city,temp\nOslo,3\nRome,17\nCairo,29\n"


@pytest.fixture(scope="module")
def svc(service_factory: Callable[..., Service]) -> Service:
    service = service_factory(pool=2, extra="[sessions]\nidle_timeout_s = 2\nper_client = 3\ntotal = 6\n")
    service.wait_warm("python")
    return service


@pytest.fixture
def client(svc: Service) -> Iterator[Client]:
    with svc.client() as c:
        yield c


def opened(client: Client, language: str = "python", **options: object) -> str:
    info = client.session_open(language, client_id="alice", **options)  # type: ignore[arg-type]
    assert info.state == "idle" and info.session.startswith("s-"), info
    return info.session


def cell(client: Client, session: str, code: str, **options: object) -> m.ExecuteResult:
    return client.execute(code, session=session, client_id="alice", **options)  # type: ignore[arg-type]


def has_data(svc: Service) -> bool:
    view = {rt.name: rt for rt in svc.status().runtimes}.get("python:data")
    return view is not None and view.offered


def test_a_python_session_keeps_its_variables_its_files_and_shows_the_last_value(svc: Service, client: Client) -> None:
    session = opened(client, environment="data" if has_data(svc) else "none")
    if has_data(svc):
        first = cell(client, session, "import pandas as pd\ndf = pd.DataFrame({'x': [1, 2, 3]})\nlen(df)")
    else:
        first = cell(client, session, "rows = [1, 2, 3]\nlen(rows)")
    assert first.status is m.Status.OK and first.stdout == "3\n", first
    second = cell(client, session, "open('/work/note.txt', 'w').write('kept')\n")
    assert second.status is m.Status.OK and second.stdout == "4\n", second
    frame = "df['x'].sum()" if has_data(svc) else "sum(rows)"
    third = cell(client, session, f"print(open('/work/note.txt').read(), {frame})")
    assert third.status is m.Status.OK and third.stdout == "kept 6\n", third
    assert third.session == session and not third.session_ended
    info = next(s for s in client.sessions(client_id="alice") if s.session == session)
    assert info.cells == 3 and info.memory_limit_bytes > 0
    client.session_close(session, client_id="alice")


def test_two_plus_two_shows_four(client: Client) -> None:
    session = opened(client)
    assert cell(client, session, "2+2").stdout == "4\n"
    assert cell(client, session, "x = 2+2").stdout == ""  # a statement shows nothing
    assert cell(client, session, "None").stdout == ""
    client.session_close(session, client_id="alice")


def test_a_node_session_and_a_bash_session_keep_a_variable(svc: Service, client: Client) -> None:
    svc.wait_warm("javascript")
    svc.wait_warm("bash")
    node = opened(client, "javascript")
    first = cell(client, node, "let count = 41; globalThis.seen = 'yes';")
    assert first.status is m.Status.OK, (first.stderr, first.reason)
    result = cell(client, node, "count += 1; console.log(count, seen);")
    assert result.status is m.Status.OK and result.stdout == "42 yes\n", result
    assert cell(client, node, "count * 2").stdout == "84\n"  # the value shown, as node's REPL shows it
    shell = opened(client, "bash")
    assert cell(client, shell, "greeting=hello; cd /tmp; touch here").status is m.Status.OK
    result = cell(client, shell, 'echo "$greeting from $PWD"; ls here')
    assert result.status is m.Status.OK and result.stdout == "hello from /tmp\nhere\n", result
    for session in (node, shell):
        client.session_close(session, client_id="alice")


@pytest.mark.parametrize(
    ("language", "stuck", "after"),
    [
        ("python", "import time\nwhile True: time.sleep(0.05)", "print(kept)"),
        ("python", "while True: pass", "print(kept)"),
        ("javascript", "await new Promise(() => {})", "console.log(kept)"),
        ("javascript", "for (;;) {}", "console.log(kept)"),
        ("bash", "sleep 30", "echo $kept"),
        ("bash", "while :; do :; done", "echo $kept"),
    ],
)
def test_a_cell_past_its_deadline_is_interrupted_and_the_session_goes_on(
    svc: Service, client: Client, language: str, stuck: str, after: str
) -> None:
    svc.wait_warm(language)
    session = opened(client, language)
    setup = {"python": "kept = 'still here'", "javascript": "var kept = 'still here'", "bash": "kept='still here'"}
    assert cell(client, session, setup[language]).status is m.Status.OK
    result = cell(client, session, stuck, limits=m.Limits(timeout_ms=500))
    assert result.status is m.Status.TIMEOUT, result
    assert not result.session_ended and "session goes on" in result.reason, result
    assert 500 <= result.wall_ms < 500 + 2000, result.wall_ms
    if language == "python":
        assert "KeyboardInterrupt" in result.stderr, result.stderr
    later = cell(client, session, after)
    assert later.status is m.Status.OK and later.stdout == "still here\n", later
    client.session_close(session, client_id="alice")


def test_a_cell_that_ignores_the_interrupt_ends_its_session(client: Client) -> None:
    session = opened(client)
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.05)"
    result = cell(client, session, code, limits=m.Limits(timeout_ms=300))
    assert result.status is m.Status.TIMEOUT and result.session_ended, result
    assert "session ended" in result.reason
    with pytest.raises(ServiceError) as refused:
        client.session_close(session, client_id="alice")
    assert refused.value.error.code is ErrorCode.SESSION_NOT_FOUND
    assert "it ended" in refused.value.error.message
    after = cell(client, session, "print(1)")
    assert after.error is not None and after.error.code is ErrorCode.SESSION_NOT_FOUND, after


def test_a_cell_over_its_cpu_time_is_interrupted_too(client: Client) -> None:
    session = opened(client)
    result = cell(client, session, "while True: pass", limits=m.Limits(timeout_ms=9_000, cpu_ms=300))
    assert result.status is m.Status.TIMEOUT and "cpu time limit" in result.reason, result
    assert result.wall_ms < 10_000 and not result.session_ended
    assert cell(client, session, "1").stdout == "1\n"
    client.session_close(session, client_id="alice")


def test_an_idle_session_ends_and_its_owner_is_told_why(client: Client) -> None:
    session = opened(client)  # idle_timeout_s = 2 in this service
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(s.session == session for s in client.sessions(client_id="alice")):
        time.sleep(0.2)
    result = cell(client, session, "print(1)")
    assert result.error is not None and result.error.code is ErrorCode.SESSION_NOT_FOUND
    assert "idle for 2 s" in result.error.message, result.error.message


def test_another_client_cannot_use_or_see_a_session(client: Client) -> None:
    session = opened(client)
    theirs = client.execute("print('in')", session=session, client_id="mallory")
    assert theirs.error is not None and theirs.error.code is ErrorCode.SESSION_NOT_FOUND
    nowhere = client.execute("print('in')", session="s-" + "0" * 20, client_id="mallory")
    assert nowhere.error is not None and nowhere.error.message.replace("0" * 20, session[2:]) == (
        theirs.error.message
    ), "the refusal must not say whether the session exists"
    assert client.sessions(client_id="mallory") == []
    with pytest.raises(ServiceError) as refused:
        client.session_close(session, client_id="mallory")
    assert refused.value.error.code is ErrorCode.SESSION_NOT_FOUND
    assert cell(client, session, "print('mine')").stdout == "mine\n"
    client.session_close(session, client_id="alice")


def test_a_session_of_one_conversation_is_not_another_conversations(client: Client) -> None:
    session = opened(client, conversation_id="chat-1")
    other = client.execute("1", session=session, client_id="alice", conversation_id="chat-2")
    assert other.error is not None and other.error.code is ErrorCode.SESSION_NOT_FOUND
    same = client.execute("1", session=session, client_id="alice", conversation_id="chat-1")
    assert same.stdout == "1\n"
    client.session_close(session, client_id="alice")


def test_sessions_are_counted_per_client_and_in_all(client: Client) -> None:
    mine = [opened(client) for _ in range(3)]  # per_client = 3
    with pytest.raises(ServiceError) as refused:
        opened(client)
    assert refused.value.error.code is ErrorCode.RATE_LIMITED and "per_client" in refused.value.error.message
    for session in mine:
        client.session_close(session, client_id="alice")
    assert client.sessions(client_id="alice") == []


def test_a_runtime_that_cannot_keep_state_is_refused_a_session(svc: Service, client: Client) -> None:
    if "swift" not in {rt.name for rt in svc.status().runtimes if rt.offered}:
        pytest.skip("no Swift toolchain offered here")
    with pytest.raises(ServiceError) as refused:
        client.session_open("swift", client_id="alice")
    assert refused.value.error.code is ErrorCode.INVALID_REQUEST and "cannot keep state" in refused.value.error.message


def test_status_lists_live_sessions_with_age_idle_and_memory(svc: Service, client: Client) -> None:
    session = opened(client)
    cell(client, session, "x = bytearray(8 << 20)")
    live = {s.session: s for s in svc.status().sessions}
    assert session in live
    info = live[session]
    assert info.client_id == "alice" and info.cells == 1 and info.age_s >= 0 and info.idle_s >= 0
    assert info.idle_timeout_s == 2 and info.max_lifetime_s == 3600
    layers = {layer.name: layer for layer in svc.status().layers}
    if layers.get("cgroups") and layers["cgroups"].active:
        assert info.memory_bytes >= 8 << 20, info
    client.session_close(session, client_id="alice")
    assert session not in {s.session for s in svc.status().sessions}


# --- files in ---------------------------------------------------------------------------------


def test_a_csv_handed_in_is_read_by_the_run(client: Client) -> None:
    code = (
        "import csv\nrows = list(csv.DictReader(open('data/cities.csv')))\n"
        "print(max(rows, key=lambda r: int(r['temp']))['city'])"
    )
    result = client.execute(code, files={"data/cities.csv": CSV})
    assert result.status is m.Status.OK and result.stdout == "Cairo\n", result


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "/etc/passwd", "a/../../b", "./x", "x//y", "", "con.txt", "a\\b", "nul", "bad\x00name"],
)
def test_a_file_name_that_could_leave_work_is_refused(client: Client, name: str) -> None:
    result = client.execute("print(1)", files={name: b"x"})
    assert result.status is m.Status.REJECTED and result.error is not None, result
    assert result.error.code in (ErrorCode.INVALID_REQUEST, ErrorCode.BAD_MESSAGE), result.error


def test_too_many_or_too_large_files_are_refused(client: Client) -> None:
    many = client.execute("print(1)", files={f"f{i}": b"" for i in range(65)})
    assert many.error is not None and many.error.code is ErrorCode.TOO_LARGE and "64" in many.error.message
    big = client.execute("print(1)", files={"big.bin": b"x" * (8 * 1024 * 1024 + 1)})
    assert big.error is not None and big.error.code is ErrorCode.TOO_LARGE


def test_files_in_a_session_stay_until_it_ends(client: Client) -> None:
    session = opened(client)
    assert cell(client, session, "1", files={"in.csv": CSV}).status is m.Status.OK
    result = cell(client, session, "print(len(open('in.csv').read().splitlines()))")
    assert result.stdout == "4\n", result
    client.session_close(session, client_id="alice")


def test_a_file_over_a_symlink_the_session_made_is_not_written_through_it(client: Client) -> None:
    session = opened(client)
    made = cell(client, session, "import os\nos.symlink('/tmp', '/work/link')\nos.symlink('/tmp/x', '/work/f')")
    assert made.status is m.Status.OK, made
    through_dir = cell(client, session, "1", files={"link/planted": b"x"})
    assert through_dir.status is m.Status.ERROR and "could not be written" in through_dir.reason, through_dir
    over_link = cell(client, session, "1", files={"f": b"x"})
    assert over_link.status is m.Status.ERROR, over_link
    check = cell(client, session, "import os\nprint(os.path.exists('/tmp/planted'), os.path.exists('/tmp/x'))")
    assert check.stdout == "False False\n", check  # nothing written through, nothing half-written
    client.session_close(session, client_id="alice")


# --- files and images out ---------------------------------------------------------------------


def png_is_valid(data: bytes) -> bool:
    """The signature, then every chunk's CRC, up to IEND."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        if zlib.crc32(kind + body) != crc:
            return False
        if kind == b"IEND":
            return True
        at += 12 + length
    return False


def test_files_left_in_work_out_come_back(client: Client) -> None:
    code = (
        "import os\nos.makedirs('/work/out/sub')\nopen('/work/out/a.txt','w').write('alpha')\n"
        "open('/work/out/sub/b.bin','wb').write(bytes(range(256)))"
    )
    result = client.execute(code)
    assert result.status is m.Status.OK, result
    files = {a.name: a for a in result.artifacts}
    assert set(files) == {"a.txt", "sub/b.bin"}
    assert files["a.txt"].data == b"alpha" and files["a.txt"].media_type == "text/plain"
    assert (
        files["sub/b.bin"].data == bytes(range(256))
        and files["sub/b.bin"].sha256 == hashlib.sha256(bytes(range(256))).hexdigest()
    )
    assert result.artifacts_unscanned == 1


def test_an_artifact_over_the_cap_is_named_with_its_size_without_bytes(client: Client) -> None:
    result = client.execute(
        "open('/work/out/big.bin','wb').write(b'x' * (9 << 20))", limits=m.Limits(memory_bytes=256 << 20)
    )
    assert result.status is m.Status.OK, result
    (big,) = result.artifacts
    assert big.dropped and big.size == 9 << 20 and big.data == b""


def test_a_secret_in_a_text_artifact_is_redacted(client: Client) -> None:
    key = "AKIA" + "IOSFODNN7EXAMPLE"
    result = client.execute(f"open('/work/out/config.txt','w').write('aws_access_key_id = {key}\\n')")
    (artifact,) = result.artifacts
    assert key.encode() not in artifact.data and artifact.redactions, artifact
    assert artifact.scanned


def test_a_session_returns_only_what_each_cell_changed(client: Client) -> None:
    session = opened(client)
    first = cell(client, session, "open('/work/out/one.txt','w').write('1')")
    assert [a.name for a in first.artifacts] == ["one.txt"]
    second = cell(client, session, "open('/work/out/two.txt','w').write('2')")
    assert [a.name for a in second.artifacts] == ["two.txt"]
    third = cell(client, session, "open('/work/out/one.txt','w').write('11')")
    assert [(a.name, a.data) for a in third.artifacts] == [("one.txt", b"11")]
    client.session_close(session, client_id="alice")


def test_a_plot_comes_back_as_a_valid_png(svc: Service, client: Client) -> None:
    if not has_data(svc):
        pytest.skip("the data environment (matplotlib) is not built here; `cellblock env build data`")
    code = (
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\n"
        "plt.show()\nprint('shown')"
    )
    result = client.execute(code, environment="data")
    assert result.status is m.Status.OK and result.stdout == "shown\n", result
    assert "non-interactive" not in result.stderr, result.stderr
    (png,) = result.artifacts
    assert png.name == "figure-1.png" and png.media_type == "image/png" and png_is_valid(png.data), png.name
    left_open = client.execute("import matplotlib.pyplot as plt\nplt.plot([3, 2, 1])", environment="data")
    assert [a.name for a in left_open.artifacts] == ["figure-1.png"] and png_is_valid(left_open.artifacts[0].data)


def test_history_records_file_names_sizes_and_hashes_never_bytes(svc: Service, client: Client) -> None:
    secret_bytes = b"uploaded-content-not-for-history"
    result = client.execute(
        "open('/work/out/r.txt','w').write('result')", files={"in.txt": secret_bytes}, client_id="historian"
    )
    entry = next(e for e in client.history(client_id="historian").entries if e.run_id == result.run_id)
    assert [(f.name, f.size, f.sha256) for f in entry.files_in] == [
        ("in.txt", len(secret_bytes), hashlib.sha256(secret_bytes).hexdigest())
    ]
    assert [(f.name, f.size) for f in entry.files_out] == [("r.txt", 6)]
    for path in (svc.directory / "state").glob("cellblock.sqlite*"):
        assert secret_bytes not in path.read_bytes(), path
