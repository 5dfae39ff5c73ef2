"""Layer: what a run finds of cellblock in its own process. Workers are cloned from a
zygote exec'd fresh (never from the launcher), the payload's fork unwinds to the
zygote's bottom frame before it runs anything, and the modules that made the sandbox
leave sys.modules before the code starts: the code finds its runtime's own modules and
frames, no socket object, and no descriptor but its own pipes."""

from __future__ import annotations

import pytest

from protocol import messages as m
from tests.sandbox.outcome import last_json, show

pytestmark = pytest.mark.sandbox

PYTHON = """
import gc, inspect, json, os, socket, sys
print(json.dumps({
    "modules": sorted(n for n in sys.modules if n.split(".")[0] in
                      ("supervisor", "protocol", "worker", "msgspec", "zmq", "prctl", "_prctl")),
    "frames": [(f.filename, f.function) for f in inspect.stack()[1:]],
    "sockets": [repr(o) for o in gc.get_objects() if isinstance(o, socket.socket)],
    "launcher": [repr(o)[:60] for o in gc.get_objects() if type(o).__module__.startswith(("supervisor", "zmq"))],
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "files": sorted({getattr(m, "__file__", "") or "" for m in list(sys.modules.values())} - {""}),
}))
"""
RUNTIME_OWN = {"worker", "worker.payload", "worker.runtimes", "worker.runtimes.base", "worker.runtimes.python"}


def test_cant_find_the_service_in_a_python_run(run, service):
    found = last_json(run(PYTHON))
    assert set(found["modules"]) <= RUNTIME_OWN, found["modules"]
    above = {filename for filename, _ in found["frames"]}
    assert above <= {"<string>", "cellblock/worker/payload.py", "cellblock/worker/runtimes/python.py"}, found["frames"]
    assert found["sockets"] == [] and found["launcher"] == [], found
    assert found["fds"] == [0, 1, 2, 3, 4, 5], found["fds"]  # the five pipes, and listdir's own
    # Nor a host path of the service's: the checkout, the runtime directory.
    for path in found["files"]:
        assert not path.startswith((service.rundir, str(service.embedded.tmp))), path


@pytest.mark.parametrize(
    ("language", "code"),
    [
        (
            "javascript",
            "const fs = require('fs');\n"
            "for (const f of fs.readdirSync('/proc/self/fd')) {\n"
            "  try { console.log(f, fs.readlinkSync('/proc/self/fd/' + f)); } catch (e) {}\n}\n"
            "console.log('modules', Object.keys(require.cache).length);",
        ),
        ("bash", "for f in /proc/self/fd/*; do echo ${f##*/} $(readlink $f); done; echo modules 0"),
    ],
)
def test_cant_find_the_service_from_other_runtimes(run, language, code):
    """No descriptor of the service (the broker's socket, the launcher's): only pipes
    and the runtime's own event loop; and no cellblock module in node's cache."""
    result = run(code, language=language)
    assert result.status is m.Status.OK, show(result)
    lines = result.stdout.splitlines()
    assert lines[-1] == "modules 0", result.stdout
    targets = [line.split(" ", 1)[1] for line in lines[:-1] if " " in line]
    assert targets and not [t for t in targets if t.startswith("socket:")], result.stdout
    assert {t.split(":")[0] for t in targets} <= {"pipe", "anon_inode", "/dev/null", "/proc/self/fd"}, result.stdout
