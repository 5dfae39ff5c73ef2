"""The payload drops the modules that made its sandbox from sys.modules, by the names its
zygote listed once, and by a scan when something was imported since (in a child
interpreter: dropping them here would take them from the test process)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from worker import payload
payload.note_the_worker("worker.runtimes.python")
listed = payload._Worker.names
if sys.argv[1] == "import-after":
    import worker.mounts  # a module of the service, loaded after the zygote listed the names
payload.forget_the_worker("worker.runtimes.python")
left = sorted(n for n in sys.modules if n.split(".")[0] in payload.WORKER_PACKAGES)
print(json.dumps({"listed": list(listed), "left": left}))
"""


def child(mode: str) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def test_the_listed_names_are_dropped_and_only_the_runtimes_own_stay() -> None:
    seen = child("as-listed")
    assert "protocol.messages" in seen["listed"] and "worker.syscalls" in seen["listed"]
    own = {"worker", "worker.payload", "worker.runtimes", "worker.runtimes.base", "worker.runtimes.python"}
    assert set(seen["left"]) <= own


def test_a_module_imported_after_the_list_is_dropped_too() -> None:
    seen = child("import-after")
    assert "worker.mounts" not in seen["listed"]
    assert "worker.mounts" not in seen["left"] and "protocol.messages" not in seen["left"]
