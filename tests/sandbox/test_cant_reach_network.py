"""Layer: the network namespace (loopback only) and seccomp's socket families.

Real host sockets listen on the host's 127.0.0.1 while the sandbox tries
them: the sandbox's 127.0.0.1 is its own loopback, so nothing reaches the
host. Routes to anywhere else do not exist, names do not resolve, the
sandbox's own loopback works, and it is not reachable from the host.
Packet and netlink sockets are refused by seccomp.
"""

from __future__ import annotations

import contextlib
import socket

import pytest

from protocol import messages as m
from tests.sandbox.outcome import last_json, show

pytestmark = pytest.mark.sandbox


@contextlib.contextmanager
def _host_listeners():
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        tcp.setblocking(False)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        yield tcp, udp
    finally:
        tcp.close()
        udp.close()


def _nothing_arrived(tcp: socket.socket, udp: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, peer = tcp.accept()
        conn.close()
        raise AssertionError(f"the host TCP server accepted a connection from {peer}")
    with pytest.raises(BlockingIOError):
        data, peer = udp.recvfrom(4096)
        raise AssertionError(f"the host UDP socket received {data!r} from {peer}")


def test_host_loopback_servers_are_unreachable(run):
    with _host_listeners() as (tcp, udp):
        tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
        # Control: the host's own servers do answer on the host.
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=2):
            pass
        conn, _ = tcp.accept()
        conn.close()
        result = run(
            f"""
            import errno, json, socket
            outcome = {{}}
            try:
                socket.create_connection(("127.0.0.1", {tcp_port}), timeout=3).close()
                outcome["tcp"] = "CONNECTED"
            except OSError as exc:
                outcome["tcp"] = errno.errorcode.get(exc.errno, repr(exc))
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.connect(("127.0.0.1", {udp_port}))
            udp.send(b"hello host")
            udp.settimeout(0.5)
            try:
                udp.recv(64)
                outcome["udp"] = "ANSWERED"
            except OSError as exc:
                outcome["udp"] = errno.errorcode.get(exc.errno, type(exc).__name__)
            print(json.dumps(outcome))
            """
        )
        outcome = last_json(result)
        assert outcome == {"tcp": "ECONNREFUSED", "udp": "ECONNREFUSED"}, show(result)
        _nothing_arrived(tcp, udp)


def test_no_route_to_the_outside(run):
    result = run(
        """
        import errno, json, socket
        outcome = {}
        for host, port in (("1.1.1.1", 53), ("10.0.0.1", 80), ("8.8.8.8", 443)):
            try:
                socket.create_connection((host, port), timeout=3).close()
                outcome[f"tcp {host}"] = "CONNECTED"
            except OSError as exc:
                outcome[f"tcp {host}"] = errno.errorcode.get(exc.errno, repr(exc))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.sendto(b"x", (host, port))
                    outcome[f"udp {host}"] = "SENT"
                except OSError as exc:
                    outcome[f"udp {host}"] = errno.errorcode.get(exc.errno, repr(exc))
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp6:
            try:
                tcp6.settimeout(3)
                tcp6.connect(("2606:4700:4700::1111", 53))
                outcome["tcp6"] = "CONNECTED"
            except OSError as exc:
                outcome["tcp6"] = errno.errorcode.get(exc.errno, repr(exc))
        print(json.dumps(outcome))
        """
    )
    outcome = last_json(result)
    assert outcome == {
        **{f"{proto} {host}": "ENETUNREACH" for host in ("1.1.1.1", "10.0.0.1", "8.8.8.8") for proto in ("tcp", "udp")},
        "tcp6": "ENETUNREACH",
    }, show(result)


def test_only_loopback_exists(run):
    result = run(
        """
        import json
        lines = open("/proc/net/dev").read().splitlines()[2:]
        routes = open("/proc/net/route").read().splitlines()[1:]
        print(json.dumps({"interfaces": sorted(l.split(":")[0].strip() for l in lines),
                          "routes": routes}))
        """
    )
    outcome = last_json(result)
    assert outcome == {"interfaces": ["lo"], "routes": []}, show(result)


def test_names_do_not_resolve(run):
    result = run(
        """
        import json, os, socket
        outcome = {"resolv.conf": os.path.exists("/etc/resolv.conf")}
        for name in ("example.com", "pypi.org", "metadata.google.internal"):
            try:
                outcome[name] = str(socket.getaddrinfo(name, 80))
            except socket.gaierror as exc:
                outcome[name] = "gaierror"
        outcome["localhost"] = socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4][0]
        print(json.dumps(outcome))
        """
    )
    outcome = last_json(result)
    assert outcome == {
        "resolv.conf": False,
        "example.com": "gaierror",
        "pypi.org": "gaierror",
        "metadata.google.internal": "gaierror",
        "localhost": "127.0.0.1",
    }, show(result)


def test_own_loopback_works_and_is_invisible_from_the_host(run):
    # A port free on the host right now; the sandbox listens on the same number.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host_attempts: list[str] = []

    def from_the_host(chunk: m.OutputChunk) -> None:
        if "LISTENING" not in chunk.data or host_attempts:
            return
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            host_attempts.append("CONNECTED")
        except ConnectionRefusedError:
            host_attempts.append("ECONNREFUSED")

    result = run(
        f"""
        import socket, threading
        server = socket.socket()
        server.bind(("127.0.0.1", {port}))
        server.listen(4)
        def echo():
            conn, _ = server.accept()
            conn.sendall(b"pong:" + conn.recv(64))
            conn.close()
        threading.Thread(target=echo, daemon=True).start()
        with socket.create_connection(("127.0.0.1", {port}), timeout=3) as client:
            client.sendall(b"ping")
            print("REPLY", client.recv(64).decode(), flush=True)
        server.settimeout(2)
        print("LISTENING", flush=True)
        try:
            server.accept()
            print("A-HOST-CONNECTION-ARRIVED", flush=True)
        except OSError:
            print("NO-HOST-CONNECTION", flush=True)
        """,
        on_chunk=from_the_host,
    )
    assert result.status == m.Status.OK, show(result)
    assert "REPLY pong:ping" in result.stdout, show(result)
    assert host_attempts == ["ECONNREFUSED"], show(result)
    assert "NO-HOST-CONNECTION" in result.stdout, show(result)


def test_packet_and_netlink_sockets_are_refused_by_seccomp(run):
    result = run(
        """
        import errno, json, socket
        outcome = {}
        attempts = {
            "packet raw": (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
            "packet dgram": (socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300),
            "netlink route": (socket.AF_NETLINK, socket.SOCK_RAW, 0),  # unprivileged elsewhere
            "netlink audit": (socket.AF_NETLINK, socket.SOCK_RAW, 9),
            "vsock": (40, socket.SOCK_STREAM, 0),
            "alg": (38, socket.SOCK_SEQPACKET, 0),
            "inet raw icmp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
            "inet6 raw": (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
        }
        for name, args in attempts.items():
            try:
                socket.socket(*args).close()
                outcome[name] = "CREATED"
            except OSError as exc:
                outcome[name] = errno.errorcode[exc.errno]
        try:
            socket.socketpair(socket.AF_NETLINK, socket.SOCK_RAW)
            outcome["socketpair netlink"] = "CREATED"
        except OSError as exc:
            outcome["socketpair netlink"] = errno.errorcode[exc.errno]
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()  # control: allowed
        outcome["control"] = "ok"
        print(json.dumps(outcome))
        """
    )
    outcome = last_json(result)
    assert outcome.pop("control") == "ok", show(result)
    # Families off the allowlist: seccomp's answer (ENOSYS, or EPERM from a deny rule).
    for name in ("packet raw", "packet dgram", "netlink route", "netlink audit", "vsock", "alg", "socketpair netlink"):
        assert outcome[name] in ("ENOSYS", "EPERM"), f"{name}: {outcome[name]}\n{show(result)}"
    # inet raw sockets pass seccomp but need CAP_NET_RAW, which the sandbox lacks.
    assert outcome["inet raw icmp"] == "EPERM", show(result)
    assert outcome["inet6 raw"] == "EPERM", show(result)
