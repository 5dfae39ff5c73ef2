"""Layer: one-shot workers (a fresh sandbox per run).

Run 1 leaves everything it can: files in /work and /tmp, a detached
background process, an environment variable, interpreter globals, a System
V shared memory segment and a listening socket. Run 2 finds none of it,
and runs in different namespaces.
"""

from __future__ import annotations

import json
import secrets

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox

NAMESPACES = ("net", "mnt", "pid", "ipc", "uts", "cgroup")


def test_second_run_sees_nothing_of_the_first(run):
    token = secrets.token_hex(8)
    key = 0x5EC0000 + secrets.randbelow(0xFFFF)
    first = run(
        f"""
        import builtins, ctypes, json, os, socket, sys, time
        token = "{token}"
        for path in ("/work/secret.txt", "/tmp/secret.txt", "/dev/shm/secret.txt"):
            with open(path, "w") as out:
                out.write(token)
        os.environ["CELLBLOCK_SECRET"] = token
        builtins.cellblock_secret = token
        sys.cellblock_secret = token
        libc = ctypes.CDLL(None, use_errno=True)
        shmid = libc.shmget({key}, 4096, 0o1600)  # IPC_CREAT | 0600
        listener = socket.socket()
        listener.bind(("127.0.0.1", 47123))
        listener.listen(1)
        first = os.fork()
        if first == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/usr/bin/sleep", ["sleep-" + token, "60"])
            os._exit(0)
        os.waitpid(first, 0)
        time.sleep(0.1)
        def cmdline(pid):
            try:
                return open(f"/proc/{{pid}}/cmdline").read()
            except OSError:  # pid 1, the monitor: hidden
                return ""
        print(json.dumps({{"shm": shmid, "work": sorted(os.listdir("/work")),
                          "ns": {{n: os.readlink(f"/proc/self/ns/{{n}}") for n in {NAMESPACES!r}}},
                          "background": [p for p in os.listdir("/proc") if p.isdigit() and token in cmdline(p)]}}))
        """
    )
    assert first.status == m.Status.OK, show(first)
    left = json.loads(first.stdout.splitlines()[-1])
    # Run 1 really left all of it behind while it ran.
    assert left["shm"] >= 0 and left["work"] == ["out", "secret.txt"] and len(left["background"]) == 1, left

    second = run(
        f"""
        import builtins, ctypes, errno, json, os, socket, sys
        token = "{token}"
        libc = ctypes.CDLL(None, use_errno=True)
        ctypes.set_errno(0)
        shm = libc.shmget({key}, 0, 0)
        found = {{
            "work": {{name: sorted(os.listdir("/work/" + name)) for name in os.listdir("/work")}},
            "tmp": os.listdir("/tmp"),
            "env": "CELLBLOCK_SECRET" in os.environ,
            "builtins": hasattr(builtins, "cellblock_secret"),
            "sys": hasattr(sys, "cellblock_secret"),
            "shm": "FOUND" if shm >= 0 else errno.errorcode[ctypes.get_errno()],
            "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
            "token in /proc": [p for p in os.listdir("/proc") if p.isdigit() and p != "1"
                               and token in open(f"/proc/{{p}}/cmdline").read()],
            "ns": {{n: os.readlink(f"/proc/self/ns/{{n}}") for n in {NAMESPACES!r}}},
        }}
        try:
            socket.create_connection(("127.0.0.1", 47123), timeout=1).close()
            found["listener"] = "CONNECTED"
        except OSError as exc:
            found["listener"] = errno.errorcode[exc.errno]
        print(json.dumps(found))
        """
    )
    assert second.status == m.Status.OK, show(second)
    found = json.loads(second.stdout.splitlines()[-1])
    assert found["work"] == {"out": []} and found["tmp"] == [], found  # only the empty folder for artifacts
    assert not found["env"] and not found["builtins"] and not found["sys"], found
    assert found["shm"] == "ENOENT", found
    assert found["processes"] == ["1", "2"], found
    assert found["token in /proc"] == [], found
    assert found["listener"] == "ECONNREFUSED", found
    for name in NAMESPACES:
        if name == "cgroup":
            continue  # not always a fresh one per run
        assert found["ns"][name] != left["ns"][name], f"{name} namespace shared: {found['ns'][name]}"


def test_runs_do_not_share_random_state(run):
    # Every payload is a fork of the same warm interpreter: its random module
    # must be seeded afresh in each, never carried over from the launcher.
    code = "import random, sys\nprint(random.getrandbits(64), 'random' in sys.modules)"
    draws = [run(code) for _ in range(3)]
    for result in draws:
        assert result.status is m.Status.OK, show(result)
    assert len({result.stdout for result in draws}) == 3, [r.stdout for r in draws]
