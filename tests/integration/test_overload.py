"""``overloaded`` end to end: a burst of slow runs past what the sandboxes and
the queue can hold is refused at once, each with its one reply, and the
service goes on serving."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import pytest
import zmq

from protocol import messages as m
from protocol.wire import client_codec
from tests.conftest import Service

pytestmark = pytest.mark.integration
codec = client_codec()

SLOTS = 4  # the fewest sandboxes a service may have: at most 4 runs at once
QUEUE_LIMIT = 1
BURST = 8
SLOW = "import time\ntime.sleep(3)\nprint('done')\n"


@pytest.fixture(scope="module")
def small(service_factory: Callable[..., Service], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Python alone, so no other runtime's warm workers hold sandboxes.
    directory = tmp_path_factory.mktemp("profile")
    directory.chmod(0o755)
    profile = directory / "python-only.toml"
    profile.write_text('description = "python only"\n[runtimes.python]\npool = 1\n')
    svc = service_factory(profile=str(profile), service=f"slots = {SLOTS}\nqueue_limit = {QUEUE_LIMIT}\n")
    svc.wait_warm()
    yield svc
    svc.stop()


def test_a_burst_past_the_sandboxes_and_the_queue_is_overloaded(small: Service) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"ipc://{small.socket}")
    try:
        for i in range(BURST):  # all sent before the first 3 s run can end
            sock.send_multipart(codec.encode(m.ExecuteRequest(id=f"burst-{i}", code=SLOW, client_id="burst")))
        replies: list[m.ExecuteResult] = []
        while len(replies) < BURST and sock.poll(30_000):
            reply = codec.decode(sock.recv_multipart())
            assert isinstance(reply, m.ExecuteResult), reply
            replies.append(reply)
        assert not sock.poll(500), "a request got a second reply"
    finally:
        sock.close()
        ctx.term()
    assert sorted(r.id for r in replies) == sorted(f"burst-{i}" for i in range(BURST))  # one reply each
    by_status = collections.Counter(r.status for r in replies)
    # At most SLOTS run and QUEUE_LIMIT waits at any time; the rest is refused.
    assert by_status[m.Status.OVERLOADED] >= BURST - SLOTS - QUEUE_LIMIT, by_status
    assert by_status[m.Status.OK] >= 2, by_status  # the first, and the one that waited its turn
    assert set(by_status) == {m.Status.OK, m.Status.OVERLOADED}, by_status
    for refused in (r for r in replies if r.status is m.Status.OVERLOADED):
        assert refused.error is not None and refused.error.code == "overloaded", refused
        assert f"{QUEUE_LIMIT} requests are queued" in refused.error.message, refused.error
        assert refused.retry_after_s == 1.0 and refused.stdout == ""
    for ran in (r for r in replies if r.status is m.Status.OK):
        assert ran.stdout == "done\n"
    status = small.status()
    assert status.queue_limit == QUEUE_LIMIT and status.queue == 0
    assert status.counters.get("dispatch_overloaded", 0) == by_status[m.Status.OVERLOADED]
    with small.client() as client:  # and it serves again once the burst is over
        assert client.execute("print('after')", client_id="burst").stdout == "after\n"
