#!/usr/bin/env python3
"""Runs per second through one client: spread over three nodes, and sent to one of them,
taking turns in the same run (the nodes of tests/integration/cluster.py: as root, each in
a network namespace of its own; on one machine they share its cores).

    python scripts/bench_nodes.py [--seconds 6] [--width 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import messages as m  # noqa: E402
from protocol.nodes import AsyncNodes  # noqa: E402
from tests.integration.cluster import Cluster, start_cluster  # noqa: E402


def rate(cluster: Cluster, endpoints: list[str], seconds: float, width: int) -> dict[str, float]:
    async def go() -> dict[str, float]:
        nodes = AsyncNodes(endpoints, cluster.server_key, cluster.client_key())
        done = failed = 0
        stop = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done, failed
            while time.monotonic() < stop:
                result = await nodes.execute("print(1)", environment="none")
                if result.status is m.Status.OK:
                    done += 1
                else:
                    failed += 1

        try:
            await nodes.execute("print(1)", environment="none")  # every handshake first
            start = time.monotonic()
            await asyncio.gather(*(loop() for _ in range(width)))
            elapsed = time.monotonic() - start
        finally:
            nodes.close()
        return {"runs_per_s": done / elapsed, "failed": failed}

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool", type=int, default=16, help="warm python workers per node")
    parser.add_argument("--json", default="bench-results/nodes.json")
    args = parser.parse_args()
    base = pathlib.Path(tempfile.mkdtemp(prefix="cellblock-bench-nodes-"))
    cluster = start_cluster(base, 3, pool=args.pool)
    report: dict[str, object] = {"mode": cluster.mode, "width": args.width, "pool": args.pool, "rounds": []}
    try:
        for _ in range(args.rounds):
            row = {
                "one_node": rate(cluster, cluster.endpoints[:1], args.seconds, args.width),
                "three_nodes": rate(cluster, cluster.endpoints, args.seconds, args.width),
            }
            report["rounds"].append(row)  # type: ignore[attr-defined]
            print(
                f"one node {row['one_node']['runs_per_s']:.0f} runs/s, "
                f"three nodes {row['three_nodes']['runs_per_s']:.0f} runs/s ({cluster.mode})",
                flush=True,
            )
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
