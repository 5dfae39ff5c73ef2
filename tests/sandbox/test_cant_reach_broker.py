"""Layer: the service's own sockets, seen from inside the sandbox.

The broker's client, worker and launcher sockets live in the host's runtime
directory, which the sandbox's mount namespace does not contain. Abstract
unix sockets belong to a network namespace, so host ones cannot be reached.
The monitor's broker connection cannot be borrowed through /proc or
pidfd_getfd, and the sandbox's socket table names no host path.
"""

from __future__ import annotations

import os
import re
import secrets
import socket

import pytest

from protocol import messages as m
from tests.sandbox.outcome import last_json, show

pytestmark = pytest.mark.sandbox


def test_broker_sockets_do_not_exist_in_the_sandbox(run, service):
    paths = [os.path.join(service.rundir, name) for name in ("client.sock", "workers.sock", "launcher.sock")]
    for path in paths:  # control: they are real, listening sockets on the host
        assert os.path.exists(path), path
    result = run(
        f"""
        import errno, json, os, socket
        outcome = {{}}
        for path in {paths!r}:
            for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
                with socket.socket(socket.AF_UNIX, kind) as sock:
                    try:
                        sock.connect(path)
                        outcome[f"{{path}} {{kind}}"] = "CONNECTED"
                    except OSError as exc:
                        outcome[f"{{path}} {{kind}}"] = errno.errorcode[exc.errno]
            outcome[path + " exists"] = os.path.lexists(path)
        print(json.dumps(outcome))
        """
    )
    outcome = last_json(result)
    for path in paths:
        assert outcome.pop(path + " exists") is False, show(result)
    assert set(outcome.values()) == {"ENOENT"}, show(result)
    assert len(outcome) == 6


def _host_abstract_names() -> list[str]:
    names = []
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as src:
        for line in src.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith("@"):
                names.append(fields[7][1:])
    return sorted(set(names))[:50]


def test_abstract_sockets_of_the_host_do_not_answer(run):
    name = f"cellblock-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen(4)
        listener.setblocking(False)
        # Control: the host can connect to it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect("\0" + name)
        listener.accept()[0].close()
        names = [name, *(n for n in _host_abstract_names() if n != name)]
        result = run(
            f"""
            import errno, json, socket
            outcome = {{}}
            for name in {names!r}:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
                    with socket.socket(socket.AF_UNIX, kind) as sock:
                        try:
                            sock.connect("\\0" + name)
                            outcome[f"{{name}} {{kind}}"] = "CONNECTED"
                        except OSError as exc:
                            outcome[f"{{name}} {{kind}}"] = errno.errorcode[exc.errno]
            print(json.dumps(outcome))
            """
        )
        outcome = last_json(result)
        assert len(outcome) == 3 * len(names), show(result)
        assert set(outcome.values()) == {"ECONNREFUSED"}, show(result)
        with pytest.raises(BlockingIOError):
            listener.accept()[0].close()
            raise AssertionError("the sandbox reached the host's abstract socket")


def test_monitor_connection_cannot_be_borrowed(run):
    result = run(
        """
        import ctypes, errno, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        outcome = {}
        pidfd = os.pidfd_open(1)
        outcome["pidfd_open"] = "ok"
        answers = set()
        for fd in range(0, 32):
            ctypes.set_errno(0)
            got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
            answers.add("STOLEN" if got >= 0 else errno.errorcode[ctypes.get_errno()])
        outcome["pidfd_getfd"] = sorted(answers)
        try:
            outcome["fd listing"] = os.listdir("/proc/1/fd")
        except OSError as exc:
            outcome["fd listing"] = errno.errorcode[exc.errno]
        print(json.dumps(outcome))
        """
    )
    outcome = last_json(result)
    assert outcome == {"pidfd_open": "ok", "pidfd_getfd": ["EPERM"], "fd listing": "ENOENT"}, show(result)


def test_socket_table_names_no_host_path(run, service):
    """/proc/net/unix lists the unix sockets of the sandbox's network
    namespace: none of them may name the host's runtime directory."""
    result = run("print(open('/proc/net/unix').read())")
    assert result.status == m.Status.OK, show(result)
    assert result.stdout.startswith("Num "), show(result)  # the table was read
    named = [line for line in result.stdout.splitlines() if re.search(r"\s/\S+$", line)]
    leaks = [line for line in named if service.rundir in line or service.embedded.tmp in line]
    assert not leaks, "the sandbox's socket table names the host runtime directory:\n" + "\n".join(leaks)
