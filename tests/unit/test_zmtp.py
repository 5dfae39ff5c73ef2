"""The monitor's ZMTP DEALER against a real libzmq ROUTER."""

from __future__ import annotations

import pathlib
import select

import zmq

from worker.zmtp import Dealer, Parser, frame_bytes


def test_interop_with_libzmq_router(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "r.sock")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvtimeo = 2000
    router.bind(f"ipc://{path}")
    try:
        dealer = Dealer.connect(path, b"worker-7")
        dealer.send([b"CB/1", b"x" * 300, b""])
        assert router.recv_multipart() == [b"worker-7", b"CB/1", b"x" * 300, b""]
        big = b"y" * 70_000
        router.send_multipart([b"worker-7", b"CB/1", big])
        got: list[list[bytes]] = []
        while not got:
            assert select.select([dealer], [], [], 2)[0]
            messages = dealer.recv_available()
            assert messages is not None
            got += messages
        assert got == [[b"CB/1", big]]
        dealer.close()
    finally:
        router.close()
        ctx.term()


def test_parser_handles_split_frames() -> None:
    scratch = Parser()
    wire = frame_bytes([b"a", b"b" * 1000]) + frame_bytes([b"c"])
    for i in range(0, len(wire), 7):
        scratch.feed(wire[i : i + 7])
    assert scratch.take() == [[b"a", b"b" * 1000], [b"c"]]
