"""Three cellblock nodes on one machine, each its own test host where the kernel allows.

Each node is a real ``cellblock serve`` with its own runtime and state
directories and a TCP listener with CURVE. As root, each runs in a network
namespace this module makes (``ip netns``), joined to the host by a veth pair
on a /30 of a private subnet of its own, so client traffic crosses a real
network stack and a link can be cut (``ip link set ... down``). Where
namespaces cannot be made (the unprivileged test run), the nodes listen on
127.0.0.1 ports instead, and ``Cluster.mode`` says so (the tests print it,
and those that need a link to cut skip with that reason).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
from dataclasses import dataclass, field

from protocol.client import Client
from protocol.curve import new_pair
from supervisor.tools.embedded import Embedded
from tests.conftest import write_config

PORT = 7878
EXECUTED = ("ok", "error", "timeout", "memory_limit", "output_limit", "killed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Node:
    index: int
    address: str  # where clients reach it
    port: int
    directory: pathlib.Path
    netns: str = ""  # its namespace, when it has one
    host_link: str = ""  # the veth end on the host (cut it to cut the node off)
    embedded: Embedded | None = None
    config: str = ""

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{self.port}"

    @property
    def socket(self) -> str:
        return os.path.join(self.embedded.rundir, "client.sock") if self.embedded else ""

    def local(self) -> Client:
        """The node's own local socket (an operator on the node)."""
        return Client(self.socket)

    def executed(self) -> list[str]:
        """The code hashes of every run this node executed, from its history database."""
        db = sqlite3.connect(f"file:{self.directory / 'state' / 'cellblock.sqlite'}?mode=ro", uri=True)
        try:
            marks = ",".join("?" * len(EXECUTED))
            rows = db.execute(f"SELECT code_sha256 FROM runs WHERE status IN ({marks})", EXECUTED).fetchall()
        finally:
            db.close()
        return [row[0] for row in rows]

    def kill(self) -> None:
        """SIGKILL every process of the node at once (its process group)."""
        assert self.embedded is not None and self.embedded.proc is not None
        os.killpg(self.embedded.proc.pid, signal.SIGKILL)
        self.embedded.proc.wait(timeout=10)


@dataclass
class Cluster:
    nodes: list[Node]
    keys: pathlib.Path
    mode: str  # "network namespaces (veth)" or "127.0.0.1 ports: <why>"
    namespaces: list[str] = field(default_factory=list)

    @property
    def server_key(self) -> str:
        return str(self.keys / "server.key")

    def client_key(self, name: str = "tester") -> str:
        return str(self.keys / f"{name}.key_secret")

    @property
    def endpoints(self) -> list[str]:
        return [node.endpoint for node in self.nodes]

    def authorize(self, *lines: str) -> None:
        (self.keys / "authorized_keys").write_text("".join(f"{line}\n" for line in lines))

    def public(self, name: str) -> str:
        return (self.keys / f"{name}.key").read_text().split('public-key = "')[1][:40]

    def stop(self) -> None:
        for node in self.nodes:
            if node.embedded is not None:
                node.embedded.stop()
        for node in self.nodes:
            if node.host_link:
                subprocess.run(["ip", "link", "del", node.host_link], capture_output=True, timeout=10)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _namespaces(count: int) -> tuple[list[tuple[str, str, str]], str]:
    """(namespace, host link, node address) per node, or [] and why not."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        return [], "127.0.0.1 ports: not root, or no iproute2/nsenter, so no network namespaces"
    tag = os.getpid() % 100_000
    subnet = 16 + os.getpid() % 200  # 10.<subnet>.<node>.0/30, a private subnet of this test run
    made: list[tuple[str, str, str]] = []
    try:
        for i in range(count):
            ns, host, peer = f"cbn{tag}-{i}", f"cbh{tag}{i}", f"cbp{tag}{i}"
            _ip("netns", "add", ns)
            made.append((ns, host, f"10.{subnet}.{i}.2"))
            _ip("link", "add", host, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("addr", "add", f"10.{subnet}.{i}.1/30", "dev", host)
            _ip("link", "set", host, "up")
            _ip("-n", ns, "addr", "add", f"10.{subnet}.{i}.2/30", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.SubprocessError, OSError) as exc:
        for ns, host, _ in made:
            subprocess.run(["ip", "link", "del", host], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        return [], f"127.0.0.1 ports: network namespaces could not be made ({exc})"
    return made, "network namespaces, one veth pair each"


def start_cluster(base: pathlib.Path, count: int = 3, uid_bases: list[int] | None = None, pool: int = 3) -> Cluster:
    keys = base / "keys"
    keys.mkdir()
    os.chmod(base, 0o755)
    os.chmod(keys, 0o755)
    for name in ("server", "tester", "stranger"):
        new_pair(str(keys / name))
    made, mode = _namespaces(count)
    cluster = Cluster([], keys, mode, [ns for ns, _, _ in made])
    cluster.authorize(f"{cluster.public('tester')} tester")
    for i in range(count):
        ns, host, address = made[i] if made else ("", "", "127.0.0.1")
        directory = base / f"node{i}"
        directory.mkdir()
        os.chmod(directory, 0o711)
        node = Node(i, address, PORT if made else _free_port(), directory, ns, host)
        service = (
            f'listen = ["{node.endpoint}"]\nserver_key = "{keys}/server.key_secret"\n'
            f'authorized_keys = "{keys}/authorized_keys"\nheartbeat_s = 0.5\n'
            f'pool = {{python = {pool}, "python:data" = 1, javascript = 1, bash = 1, swift = 1}}\n'
        )
        if uid_bases:
            service += f"worker_uid_base = {uid_bases[i]}\n"
        node.config = write_config(directory, service=service)
        cluster.nodes.append(node)
    _start_all(cluster, pool)
    return cluster


def start_node(node: Node, pool: int = 3) -> None:
    prefix = ["nsenter", f"--net=/run/netns/{node.netns}"] if node.netns else None
    node.embedded = Embedded(config=node.config, pool=pool, prefix=prefix)
    node.embedded.start()


def _start_all(cluster: Cluster, pool: int) -> None:
    """All nodes at once: each start waits for its pools to warm."""
    errors: list[BaseException] = []

    def one(node: Node) -> None:
        try:
            start_node(node, pool)
        except BaseException as exc:  # noqa: BLE001 - reported below, after every start has ended
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(node,)) for node in cluster.nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        cluster.stop()
        raise errors[0]
