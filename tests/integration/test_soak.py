"""The fault soak, short (scripts/soak.py; README has the full run's figures).

A real service of its own under a steady mixed load (Python, JavaScript,
bash, timeouts, memory bombs, output floods, streamed runs, runs through the
egress proxy, bad fields and bad frames), while a worker, the launcher, the
egress proxy and the broker are each SIGKILLed at a random moment: every
request gets exactly one final reply (or, when the broker dies with it on
the connection, the client is told by the connection closing), every part
comes back, and nothing is left on the host once the service stops.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_short_soak_with_faults_loses_nothing_and_leaves_nothing(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", "30", "--fault-every", "4"]
    cmd += ["--clients", "3", "--pool", "2", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, check=False)
    assert out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    why = f"{done.stderr[-2000:]}\n{json.dumps(result, indent=1)[:4000]}"
    assert result["requests_sent"] >= 50, why
    assert result["no_reply"] == 0, why  # a request on a live connection that never got its reply
    assert result["duplicates"] == 0 and result["unknown_ids"] == 0, why
    assert {f["kind"] for f in result["faults"]} == {"worker", "launcher", "egress", "broker"}, why
    assert all(f["recovery_s"] is not None for f in result["faults"]), why
    assert result["leftovers"] == {"processes": [], "mounts": [], "cgroups": [], "files": []}, why
    frames = result["bad_frames"]
    assert frames["answered"] + frames["lost"] == frames["sent"], why
    statuses = result["replies_by_status"]
    assert statuses.get("ok", 0) > 0 and statuses.get("timeout", 0) > 0, why
    assert statuses.get("error_reply:bad_message", 0) > 0, why
    memory = result["broker_memory"]
    assert memory["end_mib"] <= memory["start_mib"] + 64, why  # bounded: no growth with the load
    assert done.returncode == 0, why
