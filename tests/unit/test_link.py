"""The broker-launcher link never blocks its sender (no deadlock when both send)."""

from __future__ import annotations

import socket

import pytest

from supervisor import link


def test_a_slow_peer_does_not_block_the_sender_and_nothing_is_lost() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        out = link.Outbox(a)
        for i in range(1000):  # more than the socket's buffer holds
            out.send(b"%d" % i)
        assert out.pending
        got = []
        while len(got) < 1000:
            got.append(b.recv(64))
            out.flush()
        assert got == [b"%d" % i for i in range(1000)] and not out.pending


def test_a_peer_that_never_reads_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link, "LIMIT", 50)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, pytest.raises(OSError, match="has not read"):
        out = link.Outbox(a)
        for _ in range(5000):
            out.send(b"x")
