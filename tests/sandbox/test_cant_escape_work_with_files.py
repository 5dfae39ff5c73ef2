"""Layer: files in and out of /work (the monitor's side, worker/files.py).

The code owns /work. In a session it can plant links, FIFOs and folders
where the next request's files will land, and swap what is in /work/out
under the monitor. Here it tries all of that: a handed-in file never lands
outside /work or through a link, and reading /work/out back never follows
a link, blocks on a FIFO, or returns anything but the regular files the
run wrote there. Names that leave /work are refused before anything runs,
even sent as raw frames that skip the client library.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from protocol import messages as m
from protocol.client import Client
from protocol.errors import ErrorCode
from protocol.wire import client_codec
from tests.conftest import Service

pytestmark = pytest.mark.sandbox


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with service.client() as c:
        yield c


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/work/../etc/passwd", "/tmp/x", "a/../../x", "..", "."])
def test_cant_name_a_file_outside_work_even_in_a_raw_frame(service: Service, name: str) -> None:
    codec = client_codec()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 30_000
    try:
        sock.connect(f"ipc://{service.socket}")
        request = m.ExecuteRequest(id="raw", code="print('ran')", files={name: b"planted"})
        sock.send_multipart(codec.encode(request))
        reply = codec.decode(sock.recv_multipart())
    finally:
        sock.close()
        ctx.term()
    assert isinstance(reply, m.ExecuteResult) and reply.status is m.Status.REJECTED, reply
    assert reply.error is not None and reply.error.code is ErrorCode.INVALID_REQUEST
    assert reply.stdout == ""  # nothing ran


PLANT = """
import os
os.symlink("/etc", "/work/etc-link")
os.symlink("/tmp", "/work/tmp-link")
os.symlink("/tmp/target", "/work/plain-link")
os.mkfifo("/work/fifo")
os.mkdir("/work/folder")
open("/tmp/target", "w").write("untouched")
"""


def test_cant_make_a_handed_in_file_land_through_a_planted_link(client: Client) -> None:
    session = client.session_open("python", environment="none", client_id="planter").session
    try:
        assert client.execute(PLANT, session=session, client_id="planter").status is m.Status.OK
        for name in ("etc-link/planted", "tmp-link/planted", "plain-link", "fifo", "folder"):
            result = client.execute("print('ran')", session=session, client_id="planter", files={name: b"x"})
            assert result.status is m.Status.ERROR and "could not be written" in result.reason, (name, result)
            assert result.stdout == "" and not result.session_ended, "the code does not run; the session goes on"
        check = (
            "import os\nprint(os.path.exists('/etc/planted'), os.path.exists('/tmp/planted'), "
            "open('/tmp/target').read(), sorted(os.listdir('/work')))"
        )
        after = client.execute(check, session=session, client_id="planter")
        assert (
            after.stdout == "False False untouched ['etc-link', 'fifo', 'folder', 'out', 'plain-link', 'tmp-link']\n"
        ), after.stdout
    finally:
        client.session_close(session, client_id="planter")


OUT_TRAPS = """
import os, threading, time
os.symlink("/etc/passwd", "/work/out/passwd")          # a link to a file the code can read anyway
os.symlink("/proc/1/environ", "/work/out/monitor-env") # a link to the monitor's own environment
os.mkfifo("/work/out/pipe")                            # would block a reader that opened it plainly
os.symlink("/etc", "/work/out/etc")                    # a link to a folder: never walked
for depth in range(12):                                # deeper than the walk goes
    os.makedirs("/work/out/" + "/".join(["d"] * (depth + 1)), exist_ok=True)
open("/work/out/" + "/".join(["d"] * 12) + "/deep.txt", "w").write("too deep")
open("/work/out/real.txt", "w").write("real")
"""


def test_cant_make_work_out_return_anything_but_the_runs_regular_files(client: Client) -> None:
    result = client.execute(OUT_TRAPS)
    assert result.status is m.Status.OK, result.stderr
    assert [(a.name, a.data) for a in result.artifacts] == [("real.txt", b"real")], result.artifacts


SWAP = """
import os
os.rename("/work/out", "/work/real-out")
os.symlink("/etc", "/work/out")
"""


def test_cant_swap_work_out_for_a_link(client: Client) -> None:
    result = client.execute(SWAP)
    assert result.status is m.Status.OK, result.stderr
    assert result.artifacts == []
