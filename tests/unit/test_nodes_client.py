"""protocol.nodes against fake nodes: CURVE ROUTERs on 127.0.0.1 that answer as a node
would (or do not), so what the client does with each answer is seen exactly: which node
got a request, under which id, how many times."""

from __future__ import annotations

import asyncio
import pathlib
import threading
from collections.abc import Callable, Iterator

import pytest
import zmq

from protocol import messages as m
from protocol.curve import new_pair
from protocol.errors import ErrorCode, ErrorInfo
from protocol.nodes import AsyncNodes
from protocol.wire import broker_client_codec, client_codec

Answer = Callable[[m.ClientRequest], m.ClientReply | None]  # None: say nothing


class FakeNode:
    """A CURVE ROUTER in a thread; ``answer`` decides each reply; ``seen`` keeps every request id."""

    def __init__(self, ctx: zmq.Context, public: bytes, secret: bytes, answer: Answer) -> None:  # type: ignore[type-arg]
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.curve_server = True
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.answer = answer
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        incoming, outgoing = broker_client_codec(), client_codec()
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            routing, *frames = self.sock.recv_multipart()
            request = incoming.decode(frames)
            self.seen.append(request.id)
            reply = self.answer(request)
            if reply is not None:
                self.sock.send_multipart([routing, *outgoing.encode(reply)])
        self.sock.close(linger=0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def ok(request: m.ClientRequest) -> m.ClientReply:
    return m.ExecuteResult(id=request.id, status=m.Status.OK, exit_code=0, stdout="done\n")


def overloaded(request: m.ClientRequest) -> m.ClientReply:
    error = ErrorInfo(code=ErrorCode.OVERLOADED, message="queue full")
    return m.ExecuteResult(id=request.id, status=m.Status.OVERLOADED, error=error)


def silent(request: m.ClientRequest) -> None:
    return None


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> Iterator[tuple[str, str, bytes, bytes]]:
    server_public, server_secret = zmq.curve_keypair()
    (tmp_path / "server.key").write_text(f'curve\n    public-key = "{server_public.decode()}"\n')
    _, client_secret, _ = new_pair(str(tmp_path / "client"))
    yield str(tmp_path / "server.key"), client_secret, server_public, server_secret


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    context = zmq.Context()
    yield context
    context.term()


def first_then(node: FakeNode, other: FakeNode, keys: tuple[str, str, bytes, bytes], **kw: object) -> m.ExecuteResult:
    """One run through a client of both nodes that sends its first run to ``node``."""

    async def go() -> m.ExecuteResult:
        nodes = AsyncNodes([node.endpoint, other.endpoint], keys[0], keys[1], timeout_s=1.0, **kw)  # type: ignore[arg-type]
        try:
            await nodes._pick(set())  # both up before the run, so the choice below is the first node's
            while not all(n.up for n in nodes.nodes):
                await asyncio.sleep(0.02)
            nodes._turn = -1  # the next pick starts at the first endpoint
            return await nodes.execute("print(1)", environment="none")
        finally:
            nodes.close()

    return asyncio.run(go())


def test_overloaded_moves_the_same_request_to_the_next_node(ctx: zmq.Context, keys: tuple) -> None:  # type: ignore[type-arg]
    full = FakeNode(ctx, keys[2], keys[3], overloaded)
    free = FakeNode(ctx, keys[2], keys[3], ok)
    try:
        result = first_then(full, free, keys)
    finally:
        full.close()
        free.close()
    assert result.status is m.Status.OK and result.stdout == "done\n"
    assert len(full.seen) == 1 and free.seen == full.seen, (full.seen, free.seen)
    assert result.id == full.seen[0]


def test_a_node_that_goes_silent_loses_the_run_and_it_is_not_sent_again(ctx: zmq.Context, keys: tuple) -> None:  # type: ignore[type-arg]
    mute = FakeNode(ctx, keys[2], keys[3], silent)
    other = FakeNode(ctx, keys[2], keys[3], ok)

    def go_silent() -> None:  # once it has the request: its connection ends (as a node that died)
        while not mute.seen:
            threading.Event().wait(0.02)
        mute.close()

    threading.Thread(target=go_silent, daemon=True).start()
    try:
        result = first_then(mute, other, keys)
    finally:
        other.close()
    assert result.error is not None and result.error.code == ErrorCode.CONNECTION_LOST
    assert mute.endpoint in result.error.message and "not sent to another node" in result.error.message
    assert len(mute.seen) == 1 and other.seen == []


def test_with_retries_the_same_request_goes_to_another_node(ctx: zmq.Context, keys: tuple) -> None:  # type: ignore[type-arg]
    mute = FakeNode(ctx, keys[2], keys[3], silent)
    other = FakeNode(ctx, keys[2], keys[3], ok)

    def go_silent() -> None:
        while not mute.seen:
            threading.Event().wait(0.02)
        mute.close()

    threading.Thread(target=go_silent, daemon=True).start()
    try:
        result = first_then(mute, other, keys, retries=True)
    finally:
        other.close()
    assert result.status is m.Status.OK
    assert other.seen == mute.seen and len(other.seen) == 1
