"""Layer: a package environment is read-only, nosuid and nodev in every sandbox that sees
it. A run tries to change it every way it could matter to the next run: a module, its
bytecode, a package's metadata, a new file, a setuid bit, a remount. A control shows
the run really sees the environment (it imports numpy from it)."""

from __future__ import annotations

import pytest

from protocol import messages as m
from tests.sandbox.outcome import last_json, show
from worker.environments import SANDBOX_ROOT

pytestmark = pytest.mark.sandbox

ATTACK = f"""
import errno, glob, json, os, stat, ctypes
import numpy
root = "{SANDBOX_ROOT}/data/site"
found = {{"control": numpy.__file__.startswith(root)}}
init = os.path.join(root, "numpy", "__init__.py")
pyc = glob.glob(os.path.join(root, "numpy", "__pycache__", "__init__*.pyc"))[0]
meta = glob.glob(os.path.join(root, "numpy-*.dist-info", "METADATA"))[0]
def attempt(name, action):
    try:
        action()
        found[name] = "WORKED"
    except OSError as exc:
        found[name] = errno.errorcode[exc.errno]
attempt("module", lambda: open(init, "a").write("# planted"))
attempt("bytecode", lambda: open(pyc, "r+b").write(b"x"))
attempt("metadata", lambda: open(meta, "a").write("planted"))
attempt("new_file", lambda: open(os.path.join(root, "planted.py"), "w").write("x = 1"))
attempt("new_pth", lambda: open(os.path.join(root, "planted.pth"), "w").write("import os"))
attempt("rename", lambda: os.rename(init, init + ".bak"))
attempt("unlink", lambda: os.unlink(meta))
attempt("chmod_setuid", lambda: os.chmod(init, 0o4755))
attempt("utime", lambda: os.utime(init, (0, 0)))
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.mount(None, root.encode(), None, 32 | 4096, None)  # MS_REMOUNT | MS_BIND, writable
found["remount"] = "WORKED" if rc == 0 else errno.errorcode[ctypes.get_errno()]
mnt = [line for line in open("/proc/self/mountinfo") if " /opt/cellblock/envs/data " in line]
found["options"] = mnt[0].split()[5] if mnt else "unmounted"
print(json.dumps(found))
"""


def test_cant_write_into_the_environment(run, service):
    offered = {rt.name for rt in service.status().runtimes if rt.offered}
    if "python:data" not in offered:
        pytest.skip("the data environment is not built on this host (cellblock env build)")
    found = last_json(run(ATTACK, environment="data"))
    assert found.pop("control") is True, found
    options = found.pop("options")
    assert {"ro", "nosuid", "nodev"} <= set(options.split(",")), options
    worked = {k: v for k, v in found.items() if v == "WORKED"}
    assert worked == {}, found
    assert found["remount"] in ("EPERM", "ENOSYS"), found
    # Refused by the read-only mount, or first by the files' own modes (root's, 0644): both hold.
    for name in ("module", "bytecode", "metadata", "new_file", "new_pth", "rename", "unlink", "utime"):
        assert found[name] in ("EROFS", "EACCES", "EPERM"), found
    assert found["chmod_setuid"] in ("EPERM", "EROFS"), found


def test_cant_leave_a_setuid_file_anywhere_it_may_write(run):
    code = """
import errno, os
for path in ("/work/sticky", "/tmp/sticky"):
    open(path, "w").close()
    try:
        os.chmod(path, 0o4755)
        print(path, "WORKED")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
"""
    result = run(code)
    assert result.status is m.Status.OK, show(result)
    assert result.stdout == "/work/sticky EPERM\n/tmp/sticky EPERM\n", show(result)
