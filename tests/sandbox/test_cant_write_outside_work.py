"""Layer: the read-only template root and the noexec, nodev scratch mounts.

Everything but /work and /tmp is read-only (or not the sandbox's to write):
/, /usr, /etc, /dev, /proc/sys. /work and /tmp are writable, but nothing
written there can be executed or mapped executable, not even through the
dynamic loader, and no device node can be made there.
"""

from __future__ import annotations

import pytest

from tests.sandbox.outcome import last_json, show

pytestmark = pytest.mark.sandbox

REFUSED = {"EROFS", "EACCES", "EPERM"}


ATTEMPTS = """
    import errno, json, os, shutil
    outcome = {}
    def attempt(name, action):
        try:
            action()
            outcome[name] = "ALLOWED"
        except OSError as exc:
            outcome[name] = errno.errorcode[exc.errno]
    def create(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    def append(path):
        with open(path, "ab") as out:
            out.write(b"owned\\n")
"""


def test_system_paths_are_not_writable(run):
    result = run(
        ATTEMPTS
        + """
    attempt("create /", lambda: create("/evil"))
    attempt("mkdir /", lambda: os.mkdir("/evil"))
    attempt("symlink /", lambda: os.symlink("/work", "/evil"))
    attempt("create /usr", lambda: create("/usr/evil"))
    attempt("create /usr/bin", lambda: create("/usr/bin/evil"))
    attempt("append /usr/bin/python3", lambda: append("/usr/bin/python3"))
    attempt("chmod /usr/bin/true", lambda: os.chmod("/usr/bin/true", 0o4777))
    attempt("utime /usr/bin/true", lambda: os.utime("/usr/bin/true", (0, 0)))
    attempt("unlink /usr/bin/true", lambda: os.unlink("/usr/bin/true"))
    attempt("append /etc/passwd", lambda: append("/etc/passwd"))
    attempt("append /etc/hosts", lambda: append("/etc/hosts"))
    attempt("rename /etc/hosts", lambda: os.rename("/etc/hosts", "/etc/hosts.old"))
    attempt("create /etc", lambda: create("/etc/evil"))
    attempt("create /dev", lambda: create("/dev/evil"))
    attempt("unlink /dev/null", lambda: os.unlink("/dev/null"))
    attempt("symlink /dev", lambda: os.symlink("/work/x", "/dev/evil"))
    attempt("write /proc/sys hostname", lambda: append("/proc/sys/kernel/hostname"))
    attempt("write /proc/sys core_pattern", lambda: append("/proc/sys/kernel/core_pattern"))
    attempt("write /proc/sys drop_caches", lambda: append("/proc/sys/vm/drop_caches"))
    attempt("write /proc/sys ip_forward", lambda: append("/proc/sys/net/ipv4/ip_forward"))
    if os.path.exists("/proc/sysrq-trigger"):
        attempt("write /proc/sysrq-trigger", lambda: append("/proc/sysrq-trigger"))
    attempt("create /proc", lambda: create("/proc/evil"))  # procfs: ENOENT
    attempt("write /dev/null", lambda: append("/dev/null"))  # control: allowed
    print(json.dumps(outcome))
    """
    )
    outcome = last_json(result)
    assert outcome.pop("write /dev/null") == "ALLOWED", show(result)
    assert outcome.pop("create /proc") in REFUSED | {"ENOENT"}, show(result)
    allowed = {name: err for name, err in outcome.items() if err not in REFUSED}
    assert not allowed, f"not refused: {allowed}\n{show(result)}"
    assert len(outcome) >= 20, outcome


def test_scratch_is_writable_but_not_executable(run):
    result = run(
        ATTEMPTS
        + """
    import mmap, subprocess
    for scratch in ("/work", "/tmp"):
        target = scratch + "/true"
        shutil.copy("/usr/bin/true", target)
        os.chmod(target, 0o755)
        with open(scratch + "/note", "w") as out:
            out.write("kept")
        outcome[scratch + " write"] = open(scratch + "/note").read()
        attempt(scratch + " exec", lambda: subprocess.run([target], check=True))
        attempt(scratch + " script", lambda: (
            open(scratch + "/run.sh", "w").write("#!/bin/sh\\necho ran\\n"),
            os.chmod(scratch + "/run.sh", 0o755),
            subprocess.run([scratch + "/run.sh"], check=True)))
        loader = subprocess.run(["/lib64/ld-linux-x86-64.so.2", target], capture_output=True)
        outcome[scratch + " loader"] = f"{loader.returncode} {loader.stderr.decode()}"
        fd = os.open(target, os.O_RDONLY)
        attempt(scratch + " mmap exec",
                lambda: mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC).close())
        os.close(fd)
    attempt("control exec /usr/bin/true", lambda: subprocess.run(["/usr/bin/true"], check=True))
    print(json.dumps(outcome))
    """
    )
    outcome = last_json(result)
    assert outcome.pop("control exec /usr/bin/true") == "ALLOWED", show(result)
    for scratch in ("/work", "/tmp"):
        assert outcome[f"{scratch} write"] == "kept", show(result)
        assert outcome[f"{scratch} exec"] == "EACCES", show(result)
        assert outcome[f"{scratch} script"] == "EACCES", show(result)
        code, _, message = outcome[f"{scratch} loader"].partition(" ")
        assert code != "0" and "failed to map segment" in message, show(result)
        assert outcome[f"{scratch} mmap exec"] == "EPERM", show(result)


def test_no_device_nodes_in_scratch(run):
    result = run(
        ATTEMPTS
        + """
    import stat
    attempt("mknod char", lambda: os.mknod("/work/mem", stat.S_IFCHR | 0o666, os.makedev(1, 1)))
    attempt("mknod block", lambda: os.mknod("/tmp/vda", stat.S_IFBLK | 0o666, os.makedev(254, 0)))
    print(json.dumps(outcome))
    """
    )
    outcome = last_json(result)
    # mknod is off the seccomp allowlist (ENOSYS); without it, no CAP_MKNOD (EPERM).
    assert set(outcome) == {"mknod char", "mknod block"}, show(result)
    assert set(outcome.values()) <= {"ENOSYS", "EPERM"}, show(result)
