"""The TCP + CURVE rows of scripts/bench.py: one node, reached over its gateway, beside the
same node's local socket, measured interleaved in one run (so the ratio holds on a noisy host).

``keys(directory)`` makes a server and a client key pair and the authorized_keys file
for the embedded service's config (``listen_config``); ``tcp_rows`` measures.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import statistics
import time
from collections.abc import Callable

import psutil

from protocol import messages as m
from protocol.client import Client
from protocol.curve import new_pair
from protocol.nodes import Nodes


def keys(directory: pathlib.Path) -> tuple[str, str, str]:
    """(server_key_secret, client_key_secret, authorized_keys) paths, made now."""
    _, server_secret, _ = new_pair(str(directory / "server"))
    _, client_secret, public = new_pair(str(directory / "bench-client"))
    authorized = directory / "authorized_keys"
    authorized.write_text(f"{public.decode()} bench\n")
    return server_secret, client_secret, str(authorized)


def listen_config(endpoint: str, server_secret: str, authorized: str) -> str:
    return f'listen = ["{endpoint}"]\nserver_key = "{server_secret}"\nauthorized_keys = "{authorized}"\n'


def _timed(run: Callable[[], m.ExecuteResult]) -> float:
    t = time.perf_counter()
    result = run()
    if result.status is not m.Status.OK:
        raise RuntimeError(f"bench run failed: {result.status} {result.error}")
    return (time.perf_counter() - t) * 1000


def _rate(make: Callable[[], Client | Nodes], clients: int, seconds: float) -> tuple[float, int]:
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def loop(i: int) -> None:
        with make() as client:
            while time.monotonic() < stop:
                if client.execute("print(1)", environment="none").status is m.Status.OK:
                    counts[i] += 1

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    return sum(counts) / (time.monotonic() - start), sum(counts)


def _cpu_ms(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return (times.user + times.system) * 1000


def tcp_rows(
    socket: str,
    endpoint: str,
    server_key: str,
    client_key: str,
    runs: int,
    seconds: float,
    wait_warm: Callable[[], None],
    gateway_pid: int | None = None,
) -> dict[str, object]:
    """print(1) over the local socket and over TCP + CURVE, in bursts that take turns."""
    ipc: list[float] = []
    tcp: list[float] = []
    with Client(socket) as local, Nodes([endpoint], server_key, client_key) as remote:
        remote.execute("print(1)", environment="none")  # the handshake, once
        while len(tcp) < runs:
            wait_warm()
            for _ in range(8):
                ipc.append(_timed(lambda: local.execute("print(1)", environment="none", client_id="bench")))
                tcp.append(_timed(lambda: remote.execute("print(1)", environment="none")))
    rates = {}
    gateway_cpu_ms = 0.0
    client_cpu_ms: dict[str, float] = {}
    for label, make in (
        ("ipc", lambda: Client(socket)),
        ("tcp", lambda: Nodes([endpoint], server_key, client_key)),
        ("ipc_again", lambda: Client(socket)),
    ):
        wait_warm()
        before, mine = _cpu_ms(gateway_pid), _cpu_ms(os.getpid())
        rates[label], count = _rate(make, 8, seconds)  # type: ignore[arg-type]
        client_cpu_ms[label] = (_cpu_ms(os.getpid()) - mine) / max(1, count)
        if label == "tcp" and count:
            gateway_cpu_ms = (_cpu_ms(gateway_pid) - before) / count
    ipc_rate = (rates["ipc"] + rates["ipc_again"]) / 2
    return {
        "gateway_cpu_ms_per_run": gateway_cpu_ms,
        "client_cpu_ms_per_run_tcp": client_cpu_ms["tcp"],  # this process, all its threads (libzmq's too)
        "client_cpu_ms_per_run_ipc": client_cpu_ms["ipc"],
        "latency_ms_ipc_p50": statistics.median(ipc),
        "latency_ms_tcp_curve_p50": statistics.median(tcp),
        "tcp_over_ipc_latency": statistics.median(tcp) / statistics.median(ipc),
        "extra_ms_per_run_p50": statistics.median(tcp) - statistics.median(ipc),
        "throughput_8_ipc": ipc_rate,
        "throughput_8_tcp_curve": rates["tcp"],
        "tcp_over_ipc_throughput": rates["tcp"] / ipc_rate,
    }
