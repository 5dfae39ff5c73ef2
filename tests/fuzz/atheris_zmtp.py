"""Coverage-guided fuzzing of the broker's ZMTP parser with atheris (libFuzzer), for ``make fuzz``.

Each input is split into chunks (its first byte says where) and sent, chunk
by chunk, on a real unix connection to a real ``protocol.zmtp.Router``; the
router reads it as the broker's loop would. The same property as
tests/fuzz/test_fuzz_zmtp.py: whole messages within the caps, or the
connection dropped and counted; never another exception. libFuzzer adds a
per-input time limit (a hang) and an RSS limit (memory).

    .venv/bin/python tests/fuzz/atheris_zmtp.py [--seconds 120] [--corpus build/fuzz-corpus/zmtp]

Exits 0 (saying so) where atheris is not installed. A crash is written to
build/fuzz-artifacts/ and the exit status is libFuzzer's (non-zero).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import select
import socket
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_FRAME = 4096
MAX_PARTS = 4


def seeds(corpus: pathlib.Path) -> None:
    """A few valid streams to start from (libFuzzer mutates them)."""
    from protocol.zmtp import _GREETING, frame_bytes

    body = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"
    ready = bytes([0x04, len(body)]) + body
    corpus.mkdir(parents=True, exist_ok=True)
    streams = {
        "hello": _GREETING + ready + frame_bytes([b"CB/1", b"\x81\xa4type\xa6status"]),
        "multi": _GREETING + ready + frame_bytes([b"a", b"b" * 300, b""]) + frame_bytes([b"x"]),
        "ping": _GREETING + ready + b"\x04\x0a\x04PING\x00\x01ab" + frame_bytes([b"y"]),
        "over": _GREETING + ready + frame_bytes([b"z" * (MAX_FRAME + 1)]),
    }
    for name, data in streams.items():
        (corpus / f"seed-{name}").write_bytes(b"\x10" + data)


class Target:
    def __init__(self, router_cls: type, path: str) -> None:
        self.events: dict[int, int] = {}
        self.router = router_cls(
            path, max_frame=MAX_FRAME, max_parts=MAX_PARTS, watch=self.events.__setitem__, max_held=64 << 10
        )
        self.path = path

    def one(self, data: bytes) -> None:
        step = max(1, data[0] * 8) if data else 1
        stream = data[1:]
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(self.path)
        before = set(self.router.by_fd)
        self.router.accept()
        (fd,) = set(self.router.by_fd) - before
        try:
            for at in range(0, max(len(stream), 1), step):
                if fd not in self.router.by_fd:
                    break
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    client.sendall(stream[at : at + step])
                self.take(client, fd)
        finally:
            client.close()
            peer = self.router.by_fd.get(fd)
            if peer is not None:
                self.router.close(peer)

    def take(self, client: socket.socket, fd: int) -> None:
        for _ in range(1000):
            for _, parts in self.router.receive(fd):
                assert 1 <= len(parts) <= MAX_PARTS and sum(map(len, parts)) <= MAX_FRAME
            while select.select([client], [], [], 0)[0]:
                with contextlib.suppress(ConnectionResetError):
                    if not client.recv(1 << 16):
                        break
            if fd not in self.router.backlog:
                break
        peer = self.router.by_fd.get(fd)
        if peer is None:
            assert self.events.get(fd) == 0
        else:
            assert peer.held <= MAX_FRAME and len(peer.inbox) <= max(64, 9 + MAX_FRAME)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--corpus", default=str(ROOT / "build" / "fuzz-corpus" / "zmtp"))
    args, rest = parser.parse_known_args()
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print("atheris_zmtp: SKIPPED: atheris is not installed (pip install atheris; setup tries it)")
        return 0
    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports():
        from protocol.zmtp import Router
    corpus = pathlib.Path(args.corpus)
    seeds(corpus)
    artifacts = ROOT / "build" / "fuzz-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        target = Target(Router, os.path.join(tmp, "router.sock"))
        argv = [
            sys.argv[0],
            str(corpus),
            f"-max_total_time={args.seconds}",
            "-timeout=10",  # one input for longer than this is a hang
            "-rss_limit_mb=2048",
            "-max_len=65536",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            *rest,
        ]
        atheris.Setup(argv, target.one)
        atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
