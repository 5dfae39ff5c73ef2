"""Many nodes: TCP with CURVE, a client that spreads runs and survives a node's loss.

Three real services (``tests/integration/cluster.py``: a network namespace
and a veth pair each, as root; 127.0.0.1 ports otherwise, said in the output).
Tests run in file order: the last two take nodes away (SIGKILL of node 2,
then node 1's link cut).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import zmq

from protocol import messages as m
from protocol.curve import load_public
from protocol.errors import ErrorCode
from protocol.nodes import AsyncNodes, Nodes
from protocol.wire import client_codec
from tests.integration.cluster import Cluster, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = pathlib.Path(__file__).resolve().parents[2]
NONE = {"environment": "none"}  # the bare interpreter: every node has it warm


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    base = pathlib.Path(tempfile.mkdtemp(prefix="cellblock-nodes-"))
    # Root mode: worker uids of their own (conftest's reasoning), one range per node.
    first = 1_500_000 + (os.getpid() % 1024) * 4096
    made = start_cluster(base, 3, [first + i * 1024 for i in range(3)])
    print(f"\n[nodes] {made.mode}: {', '.join(made.endpoints)}")
    yield made
    made.stop()
    shutil.rmtree(base, ignore_errors=True)


def wait_for(what: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return what()


def gateway(cluster: Cluster, i: int) -> m.GatewayStatus:
    with cluster.nodes[i].local() as local:
        status = local.status()
    assert status.gateway is not None
    return status.gateway


def code_for(i: int, tag: str, pause: float = 0.0) -> str:
    sleep = f"import time; time.sleep({pause})\n" if pause else ""
    return f"{sleep}print('{tag}', {i} * 3)"


def run_many(
    nodes: AsyncNodes,
    count: int,
    tag: str,
    during: Callable[[int], None] | None = None,
    width: int = 6,
    then: str = "",
    pause: float = 0.0,
) -> dict[str, m.ExecuteResult]:
    """``count`` runs, ``width`` at a time; ``during(done)`` after each reply; ``then`` one more
    run once they are all done. Returns code -> result."""

    async def go() -> dict[str, m.ExecuteResult]:
        results: dict[str, m.ExecuteResult] = {}
        gate = asyncio.Semaphore(width)

        async def one(i: int) -> None:
            async with gate:
                code = code_for(i, tag, pause)
                result = await nodes.execute(code, **NONE)
                assert code not in results, "a second reply for one call"
                results[code] = result
                if during is not None:
                    during(len(results))

        await asyncio.gather(*(one(i) for i in range(count)))
        if then:  # after the load, on the same loop (the client's sockets belong to it)
            results[then] = await nodes.execute(then, **NONE)
        return results

    return asyncio.run(go())


def fresh_nodes(cluster: Cluster, endpoints: list[str] | None = None, key: str = "tester", **kw: object) -> AsyncNodes:
    return AsyncNodes(endpoints or cluster.endpoints, cluster.server_key, cluster.client_key(key), **kw)  # type: ignore[arg-type]


def cellblock(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.tools.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_one_client_spreads_runs_over_three_nodes(cluster: Cluster) -> None:
    nodes = fresh_nodes(cluster)
    try:
        results = run_many(nodes, 300, "spread")
    finally:
        nodes.close()
    assert len(results) == 300
    wrong = [(c, r.status, r.stdout, r.error) for c, r in results.items() if r.status is not m.Status.OK]
    assert not wrong, wrong[:3]
    for code, result in results.items():
        i = int(code.split(",")[1].split("*")[0])
        assert result.stdout == f"spread {i * 3}\n"
    served = {n.endpoint: n.served for n in nodes.nodes}
    print(f"[nodes] 300 runs served: {served}")
    assert sum(served.values()) == 300
    for endpoint, count in served.items():
        assert count >= 60, f"{endpoint} served {count} of 300 runs: {served}"


def test_the_key_is_the_client_not_the_id_it_names(cluster: Cluster) -> None:
    with Nodes(cluster.endpoints[:1], cluster.server_key, cluster.client_key()) as nodes:
        result = nodes.execute("print('who')", client_id="somebody-else", **NONE)
        assert result.status is m.Status.OK
        history = nodes.history(limit=5)
        assert history.entries and {e.client_id for e in history.entries} == {"curve:tester"}
        with pytest.raises(Exception) as refused:
            nodes.grant("curve:tester", m.Capability.parse("net:example.com"))
        assert refused.value.error.code == ErrorCode.PERMISSION_REQUIRED  # type: ignore[attr-defined]
    with cluster.nodes[0].local() as local:
        rows = local.history(client_id="somebody-else").entries
    assert rows == [], "a remote client named its own client id and the node believed it"


def test_an_unknown_key_is_refused_at_the_handshake_and_counted(cluster: Cluster) -> None:
    before = gateway(cluster, 0).refused_unknown_key
    with cluster.nodes[0].local() as local:
        runs_before = local.status().counters.get("dispatch_dispatched", 0)
    nodes = fresh_nodes(cluster, cluster.endpoints[:1], key="stranger", connect_timeout=3.0)
    try:
        result = asyncio.run(nodes.execute("print('let me in')", **NONE))
    finally:
        nodes.close()
    assert result.error is not None and result.error.code == ErrorCode.CONNECTION_LOST
    assert "refused this client's key" in result.error.message, result.error.message
    assert wait_for(lambda: gateway(cluster, 0).refused_unknown_key > before)
    with cluster.nodes[0].local() as local:
        status = local.status()
    assert status.counters.get("dispatch_dispatched", 0) == runs_before
    assert status.gateway is not None and not any(p.client_id == "curve:stranger" for p in status.gateway.peers)


def test_a_client_without_curve_or_with_another_server_key_is_refused(cluster: Cluster) -> None:
    before = gateway(cluster, 0).refused_handshake
    ctx = zmq.Context()
    codec = client_codec()
    try:
        plain = ctx.socket(zmq.DEALER)
        wrong = ctx.socket(zmq.DEALER)
        wrong.curve_serverkey = load_public(cluster.client_key("stranger").replace(".key_secret", ".key"))
        wrong.curve_publickey, wrong.curve_secretkey = zmq.curve_keypair()
        for sock in (plain, wrong):
            sock.linger = 0
            sock.connect(cluster.endpoints[0])
            sock.send_multipart(codec.encode(m.ExecuteRequest(id=uuid.uuid4().hex, code="print(1)")))
        poller = zmq.Poller()
        poller.register(plain, zmq.POLLIN)
        poller.register(wrong, zmq.POLLIN)
        assert poller.poll(2000) == [], "a client without the node's CURVE handshake got an answer"
    finally:
        ctx.destroy(linger=0)
    assert wait_for(lambda: gateway(cluster, 0).refused_handshake >= before + 2)


def test_plain_tcp_is_refused_at_config_load(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "plain.toml"
    config.write_text('[service]\nlisten = ["tcp://127.0.0.1:7999"]\n')
    proc = cellblock("serve", "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    assert "service.server_key" in proc.stderr and "plain TCP is refused" in proc.stderr, proc.stderr


def test_a_session_stays_on_its_node(cluster: Cluster) -> None:
    with Nodes(cluster.endpoints, cluster.server_key, cluster.client_key()) as nodes:
        info = nodes.session_open("python", environment="none")
        sid, _, hostport = info.session.rpartition("@")
        home = next(n for n in cluster.nodes if n.endpoint == f"tcp://{hostport}")
        outputs = [
            nodes.execute("n = globals().get('n', 0) + 1\nprint(n)", session=info.session).stdout for _ in range(6)
        ]
        for _ in range(3):  # runs in between go everywhere; the session stays
            nodes.execute("print(0)", **NONE)
        outputs.append(nodes.execute("print(n)", session=info.session).stdout)
        assert outputs == [f"{i}\n" for i in range(1, 7)] + ["6\n"]
        listed = nodes.sessions()
        assert [s.session for s in listed] == [info.session]
        for node in cluster.nodes:
            with node.local() as local:
                held = [s.session for s in local.status().sessions]
            assert (sid in held) == (node is home), (node.endpoint, held)
        forged = nodes.execute("print(n)", session=f"{sid}@192.0.2.1:7878")
        assert forged.error is not None and forged.error.code == ErrorCode.SESSION_NOT_FOUND
        nodes.session_close(info.session)


class Relay:
    """A TCP relay between the client and a node that keeps every byte it passes."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.captured = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_the_wire_never_carries_code_or_output_in_clear(cluster: Cluster) -> None:
    relay = Relay(cluster.endpoints[0])
    secret_in = f"CODE-MARK-{uuid.uuid4().hex}"
    secret_out = f"OUTPUT-MARK-{uuid.uuid4().hex}"
    try:
        with Nodes([relay.endpoint], cluster.server_key, cluster.client_key()) as nodes:
            result = nodes.execute(f"x = '{secret_in}'\nprint('{secret_out[:7]}' + '{secret_out[7:]}')", **NONE)
    finally:
        relay.close()
    assert result.status is m.Status.OK and result.stdout == f"{secret_out}\n", result
    wire = bytes(relay.captured)
    assert len(wire) > 200, "the relay saw nothing: the test did not go through it"
    for needle in (secret_in, secret_out, "print(", "CB/1", "execute"):
        assert needle.encode() not in wire, f"{needle!r} crossed the network in clear"


def test_authorized_keys_are_read_again_when_the_file_changes(cluster: Cluster) -> None:
    stranger = cluster.public("stranger")
    cluster.authorize(f"{cluster.public('tester')} tester", f"{stranger} newcomer")
    try:
        assert wait_for(lambda: gateway(cluster, 1).authorized_keys == 2)
        with Nodes(cluster.endpoints[1:2], cluster.server_key, cluster.client_key("stranger")) as nodes:
            result = nodes.execute("print('now in')", **NONE)
            assert result.status is m.Status.OK, result.error
            assert {e.client_id for e in nodes.history(limit=3).entries} == {"curve:newcomer"}
            cluster.authorize(f"{cluster.public('tester')} tester")  # removed again: its open connection too
            assert wait_for(lambda: gateway(cluster, 1).authorized_keys == 1)
            again = nodes.execute("print('still?')", **NONE)
            assert again.error is not None and again.error.code == ErrorCode.PERMISSION_REQUIRED, again
    finally:
        cluster.authorize(f"{cluster.public('tester')} tester")


def test_status_shows_the_listener_peers_and_refusals(cluster: Cluster) -> None:
    with Nodes(cluster.endpoints[2:], cluster.server_key, cluster.client_key()) as nodes:
        nodes.execute("print(1)", **NONE)
        assert wait_for(lambda: any(p.client_id == "curve:tester" for p in gateway(cluster, 2).peers))
        out = cellblock("status", "--socket", cluster.nodes[2].socket)
    assert out.returncode == 0, out.stderr
    assert f"tcp listener: {cluster.endpoints[2]} (CURVE)" in out.stdout, out.stdout
    assert "curve:tester" in out.stdout and "refused handshakes:" in out.stdout, out.stdout


def cli(cluster: Cluster, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI against the cluster's nodes over TCP."""
    remote = ["--server-key", cluster.server_key, "--client-key", cluster.client_key()]
    for endpoint in cluster.endpoints:
        remote += ["--endpoint", endpoint]
    return cellblock(*args, *remote, stdin=stdin)


def test_the_cli_runs_on_the_nodes_and_a_session_id_outlives_the_process(cluster: Cluster) -> None:
    ran = cli(cluster, "run", "--env", "none", "-", stdin="print(6 * 7)")
    assert ran.returncode == 0 and ran.stdout == "42\n", ran.stderr
    opened = cli(cluster, "session", "open", "--env", "none")
    assert opened.returncode == 0, opened.stderr
    session = opened.stdout.splitlines()[0]
    assert session.startswith("s-") and "@" in session
    first = cli(cluster, "run", "--session", session, "-", stdin="kept = 'from the first process'")
    assert first.returncode == 0, first.stderr
    second = cli(cluster, "run", "--session", session, "-", stdin="print(kept)")  # another process, same sandbox
    assert second.returncode == 0 and second.stdout == "from the first process\n", second.stderr
    assert cli(cluster, "session", "close", session).returncode == 0
    status = cli(cluster, "status", "--check", "ready")
    assert status.returncode == 0 and status.stdout.count("ready: ok") == 3, (status.stdout, status.stderr)


def test_mcp_over_the_nodes(cluster: Cluster) -> None:
    mcp = pytest.importorskip("mcp")
    from mcp.client.stdio import StdioServerParameters

    args = ["-m", "supervisor.tools.cli", "mcp", "--server-key", cluster.server_key, "--client-key"]
    args += [cluster.client_key(), *(x for e in cluster.endpoints for x in ("--endpoint", e))]
    params = StdioServerParameters(command=sys.executable, args=args, env={"PYTHONPATH": str(ROOT)}, cwd=str(ROOT))

    async def go() -> tuple[object, object]:
        async with mcp.Client(params) as client:
            once = await client.call_tool("execute_code", {"code": "print(2 + 2)", "environment": "none"})
            await client.call_tool("execute_code", {"code": "x = 41", "keep_state": True, "environment": "none"})
            kept = await client.call_tool(
                "execute_code", {"code": "print(x + 1)", "keep_state": True, "environment": "none"}
            )
            return once, kept

    once, kept = asyncio.run(go())
    assert once.structured_content["stdout"] == "4\n", once  # type: ignore[attr-defined]
    assert kept.structured_content["stdout"] == "42\n", kept  # type: ignore[attr-defined]


def test_sigkill_of_a_node_mid_load_every_run_gets_one_reply_and_none_runs_twice(cluster: Cluster) -> None:
    victim = cluster.nodes[2]
    killed = threading.Event()

    def during(done: int) -> None:
        if done == 40 and not killed.is_set():
            killed.set()
            victim.kill()

    tag = f"kill{uuid.uuid4().hex[:6]}"
    nodes = fresh_nodes(cluster, timeout_s=1.5)
    try:
        results = run_many(nodes, 150, tag, during, width=9, pause=0.2)  # ~3 runs always under way on each
    finally:
        nodes.close()
    assert killed.is_set() and len(results) == 150
    lost = {c: r for c, r in results.items() if r.status is not m.Status.OK}
    for result in lost.values():
        assert result.error is not None and result.error.code == ErrorCode.CONNECTION_LOST, result
        assert victim.endpoint in result.error.message and "not sent to another node" in result.error.message
    assert 1 <= len(lost) <= 9, f"{len(lost)} runs lost: those in flight on the victim, and no more"
    print(f"[nodes] node {victim.endpoint} killed after 40 replies: {len(lost)} runs in flight there reported lost")
    executed: dict[str, int] = {}
    for node in cluster.nodes:
        for digest in node.executed():
            executed[digest] = executed.get(digest, 0) + 1
    ours = {hashlib.sha256(code.encode()).hexdigest(): code for code in results}
    twice = [ours[d] for d, n in executed.items() if d in ours and n > 1]
    assert not twice, f"runs executed on two nodes: {twice}"
    survivors = {d for node in cluster.nodes[:2] for d in node.executed()}
    answered = [c for c, r in results.items() if r.status is m.Status.OK]
    missing = [c for c in answered if hashlib.sha256(c.encode()).hexdigest() not in executed]
    # A run answered by the victim may lack its history row (written after the reply): at most those in flight.
    assert len(missing) <= 9, missing
    assert len(survivors) >= len(answered) - 40 - 9


def test_a_cut_link_times_out_moves_new_runs_and_reports_the_lost(cluster: Cluster) -> None:
    victim, other = cluster.nodes[1], cluster.nodes[0]
    if not victim.host_link:
        pytest.skip(f"no link to cut: {cluster.mode}")
    cut = threading.Event()

    def during(done: int) -> None:
        if done == 20 and not cut.is_set():
            cut.set()
            subprocess.run(["ip", "link", "set", victim.host_link, "down"], check=True, timeout=10)

    nodes = fresh_nodes(cluster, [other.endpoint, victim.endpoint], timeout_s=1.5)
    try:
        results = run_many(nodes, 80, f"cut{uuid.uuid4().hex[:6]}", during, width=6, then="print('after')", pause=0.2)
        after = results.pop("print('after')")
    finally:
        nodes.close()
        subprocess.run(["ip", "link", "set", victim.host_link, "up"], timeout=10)
    assert cut.is_set() and len(results) == 80
    lost = [r for r in results.values() if r.status is not m.Status.OK]
    for result in lost:
        assert result.error is not None and result.error.code == ErrorCode.CONNECTION_LOST
        assert victim.endpoint in result.error.message, result.error.message
    assert after.status is m.Status.OK
    assert lost, "no run was in flight on the cut node"
    # The cut node is alive: it finished what it had, and none of it ran again on the other.
    ours = {hashlib.sha256(code.encode()).hexdigest() for code in results}
    assert not ours & set(victim.executed()) & set(other.executed()), "a run executed on both nodes"
    served = {n.endpoint: n.served for n in nodes.nodes}
    assert served[other.endpoint] > 60 - 20, served
    print(f"[nodes] link of {victim.endpoint} cut after 20 replies: {len(lost)} lost, served {served}")
