"""Output capture keeps the head and the tail and counts what it drops."""

from __future__ import annotations

import collections

from supervisor.results import assemble
from worker.monitor import Capture


def test_small_output_is_kept_whole() -> None:
    cap = Capture(10)
    assert cap.feed(b"abc") == b"abc"
    head, tail = cap.parts()
    assert head + tail == b"abc" and cap.total == 3


def test_head_and_tail_of_a_flood() -> None:
    cap = Capture(10)
    streamed = b""
    for i in range(1000):
        streamed += cap.feed(b"%04d" % i)
    head, tail = cap.parts()
    assert head == b"00000"  # first half of the cap
    assert tail == (b"0998" + b"0999")[-5:]
    assert streamed == head  # only the head is streamed
    assert cap.total == 4000


def test_assemble_inserts_marker() -> None:
    counts: collections.Counter[str] = collections.Counter()
    text, cut, dropped = assemble("stdout", b"head", b"tail", 100, None, counts)
    assert cut and dropped == 92
    assert text.startswith("head") and text.endswith("tail") and "92 bytes of stdout dropped" in text


def test_assemble_decodes_invalid_utf8() -> None:
    counts: collections.Counter[str] = collections.Counter()
    text, cut, _ = assemble("stderr", b"\xff\xfeok", b"", 4, None, counts)
    assert not cut and text.endswith("ok") and "\ufffd" in text
