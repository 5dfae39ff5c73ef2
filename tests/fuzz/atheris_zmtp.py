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
import os
import pathlib
import sys
import tempfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]


def seeds(corpus: pathlib.Path) -> None:
    """A few valid streams to start from (libFuzzer mutates them)."""
    from zmtp_harness import MAX_FRAME

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


def one(harness: Any, data: bytes) -> None:
    """The first byte says how the rest is cut (chunks of 8 x that many bytes)."""
    step = max(1, data[0] * 8) if data else 1
    stream = data[1:]
    with harness.connection() as (client, fd):
        harness.feed(client, fd, [stream[at : at + step] for at in range(0, max(len(stream), 1), step)])


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
        import protocol.zmtp  # noqa: F401 - instrumented before the harness imports it
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    from zmtp_harness import Harness
    corpus = pathlib.Path(args.corpus)
    seeds(corpus)
    artifacts = ROOT / "build" / "fuzz-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(os.path.join(tmp, "router.sock"))
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
        atheris.Setup(argv, lambda data: one(harness, data))
        atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
