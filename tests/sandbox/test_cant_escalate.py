"""Layer: seccomp (allow + deny filters) and the privilege drop.

Every system call on the deny list (``worker.seccomp.NEVER``) answers EPERM,
whatever its arguments; the arguments are chosen so that, without the
filter, an unprivileged process would mostly get something else (success,
ENOENT, EFAULT, EBADF, ENOSYS), so the EPERM is seccomp's. Calls off the
allowlist answer ENOSYS; ``clone`` with namespace flags is refused; the
process has no capability, no way to get one, no_new_privs set, and setuid
binaries do not help. x86_64 system call numbers.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show
from worker.seccomp import NEVER

pytestmark = pytest.mark.sandbox

AT_FDCWD = -100
# name -> (number, arguments); strings are passed as char*, None as NULL.
# The comment is what an unprivileged process would get without seccomp.
DENIED = {
    "ptrace TRACEME": (101, (0, 0, 0, 0)),  # success
    "ptrace ATTACH monitor": (101, (16, 1, 0, 0)),
    "ptrace ATTACH own child": (101, (16, "CHILD", 0, 0)),  # success (own child)
    "process_vm_readv": (310, ("SELF", None, 0, None, 0, 0)),  # 0
    "process_vm_writev": (311, ("SELF", None, 0, None, 0, 0)),  # 0
    "kcmp": (312, ("SELF", "SELF", 0, 0, 0)),  # 0
    "pidfd_getfd": (438, ("PIDFD", 0, 0)),  # a descriptor
    "mount": (165, ("none", "/tmp", "tmpfs", 0, None)),
    "umount2": (166, ("/nonexistent-cellblock", 0)),  # ENOENT
    "pivot_root": (155, ("/tmp", "/tmp")),
    "chroot": (161, ("/nonexistent-cellblock",)),  # ENOENT
    "unshare CLONE_NEWUSER": (272, (0x10000000,)),  # success
    "unshare CLONE_NEWNS": (272, (0x00020000,)),
    "setns": (308, (-1, 0)),  # EBADF
    "fsopen": (430, ("tmpfs", 0)),
    "fsconfig": (431, (-1, 0, None, None, 0)),  # EBADF
    "fsmount": (432, (-1, 0, 0)),  # EBADF
    "fspick": (433, (AT_FDCWD, "/tmp", 0)),
    "move_mount": (429, (-1, "", -1, "", 0)),
    "open_tree": (428, (AT_FDCWD, "/tmp", 0)),  # a descriptor
    "mount_setattr": (442, (AT_FDCWD, "/tmp", 0, None, 0)),
    "open_by_handle_at": (304, (AT_FDCWD, None, 0)),
    "name_to_handle_at": (303, (AT_FDCWD, "/", None, None, 0)),  # EFAULT
    "bpf": (321, (0, None, 0)),
    "perf_event_open": (298, (None, 0, -1, -1, 0)),  # EFAULT
    "userfaultfd": (323, (1,)),  # a descriptor (UFFD_USER_MODE_ONLY)
    "fanotify_init": (300, (0, 0)),
    "lookup_dcookie": (212, (0, None, 0)),  # ENOSYS on current kernels
    "keyctl": (250, (0, -2, 1)),  # the process keyring's id
    "add_key": (248, ("user", "cellblock", "secret", 6, -2)),  # a key id
    "request_key": (249, ("user", "cellblock-none", None, 0)),  # ENOKEY
    "kexec_load": (246, (0, 0, None, 0)),
    "kexec_file_load": (320, (-1, -1, 0, None, 0)),
    "init_module": (175, (None, 0, "")),
    "finit_module": (313, (-1, "", 0)),
    "delete_module": (176, ("cellblock_none", 0x800)),
    "io_uring_setup": (425, (1, None)),  # EFAULT
    "io_uring_enter": (426, (-1, 0, 0, 0, None, 0)),  # EBADF
    "io_uring_register": (427, (-1, 0, None, 0)),  # EBADF
    "reboot": (169, (0, 0, 0, None)),  # (bad magic: EINVAL even for root)
    "swapon": (167, ("/nonexistent-cellblock", 0)),
    "swapoff": (168, ("/nonexistent-cellblock",)),
    "acct": (163, (None,)),
    "quotactl": (179, (0, None, 0, None)),
    "syslog": (103, (10, None, 0)),
    "vhangup": (153, ()),
    "iopl": (172, (0,)),  # 0 (level 0 needs no privilege), or ENOSYS without IOPL support
    "ioperm": (173, (0, 0, 0)),  # 0 (turning access off), or ENOSYS without IOPL support
    "settimeofday": (164, (None, None)),
    "clock_settime": (227, (0, None)),  # EFAULT
    "clock_adjtime": (305, (0, None)),  # EFAULT
    "adjtimex": (159, (None,)),  # EFAULT
    "sethostname": (170, ("evil", 4)),
    "setdomainname": (171, ("evil", 4)),
    "mbind": (237, (0, 0, 0, None, 0, 0)),  # 0
    "set_mempolicy": (238, (0, None, 0)),  # 0
    "migrate_pages": (256, (0, 0, None, None)),
    "move_pages": (279, (0, 0, None, None, None, 0)),  # 0
    "uselib": (134, (None,)),
    "ustat": (136, (0, None)),
    "sysfs": (139, (3,)),  # the number of filesystem types
    "nfsservctl": (180, (0, None, None)),  # ENOSYS: long gone
}

PROBE = """
    import ctypes, errno, json, os, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    pidfd = os.pidfd_open(child)
    special = {"SELF": os.getpid(), "CHILD": child, "PIDFD": pidfd}
    def arg(value):
        if value is None:
            return ctypes.c_void_p(None)
        if isinstance(value, str):
            return ctypes.c_char_p(value.encode()) if value not in special else ctypes.c_long(special[value])
        return ctypes.c_long(value)
    def call(number, args):
        ctypes.set_errno(0)
        result = libc.syscall(ctypes.c_long(number), *[arg(a) for a in args])
        return "RETURNED %d" % result if result != -1 else errno.errorcode.get(ctypes.get_errno(), "?")
    outcome = {"getpid control": call(39, ()) == "RETURNED %d" % os.getpid()}
    for name, (number, args) in CALLS.items():
        outcome[name] = call(number, args)
    os.kill(child, 9)
    print(json.dumps(outcome))
"""


def _probe(client, calls: dict[str, tuple[int, tuple[object, ...]]]) -> dict[str, object]:
    result = client.execute(textwrap.dedent(PROBE).replace("CALLS", repr(calls)))
    assert result.status == m.Status.OK, show(result)
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome.pop("getpid control") is True, show(result)  # raw syscalls really work
    return outcome


@pytest.fixture(scope="module")
def denied(client) -> dict[str, object]:
    return _probe(client, DENIED)


def test_every_never_call_is_probed():
    probed = {name.split()[0] for name in DENIED}
    assert probed >= NEVER, sorted(NEVER - probed)


@pytest.mark.parametrize("name", sorted(DENIED))
def test_deny_list_answers_eperm(denied, name):
    assert denied[name] == "EPERM", f"{name}: {denied[name]}"


def test_off_the_allowlist_answers_enosys(client):
    outcome = _probe(
        client,
        {
            "clone3": (435, (None, 0)),  # glibc needs ENOSYS to fall back to clone
            "personality PER_LINUX32": (135, (0x0008,)),
            "personality ADDR_NO_RANDOMIZE": (135, (0x0040000,)),
            "personality READ_IMPLIES_EXEC": (135, (0x0400000,)),
            "personality query": (135, (0xFFFFFFFF,)),  # control: allowed, returns 0
            "landlock_create_ruleset": (444, (None, 0, 0)),
            "memfd_secret": (447, (0,)),
        },
    )
    assert outcome.pop("personality query") == "RETURNED 0"
    assert outcome.pop("clone3") == "ENOSYS"
    for name, answer in outcome.items():
        assert answer in ("ENOSYS", "EPERM"), f"{name}: {answer}"


def test_clone_into_new_namespaces_is_refused(run):
    result = run(
        """
        import ctypes, errno, json, os
        libc = ctypes.PyDLL(None, use_errno=True)  # keep the GIL across a fork-like call
        libc.syscall.restype = ctypes.c_long
        flags = {"NEWNS": 0x00020000, "NEWCGROUP": 0x02000000, "NEWUTS": 0x04000000,
                 "NEWIPC": 0x08000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000,
                 "NEWNET": 0x40000000, "NEWUSER|NEWNS": 0x10020000}
        outcome = {}
        for name, flag in {**flags, "plain fork (control)": 0}.items():
            ctypes.set_errno(0)
            pid = libc.syscall(56, ctypes.c_ulong(flag | 17), None, None, None, None)
            if pid == 0:
                os._exit(0)  # a child that should not exist: leave at once
            if pid > 0:
                os.waitpid(pid, 0)
                outcome[name] = "CREATED"
            else:
                outcome[name] = errno.errorcode[ctypes.get_errno()]
        print(json.dumps(outcome))
        """
    )
    assert result.status == m.Status.OK, show(result)
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome.pop("plain fork (control)") == "CREATED", show(result)
    assert outcome == dict.fromkeys(outcome, "EPERM") and len(outcome) == 8, show(result)


def test_no_capabilities_and_no_new_privs(run):
    result = run(
        """
        import json, subprocess
        def fields(text):
            return {k: v.strip() for k, v in (l.split(":", 1) for l in text.splitlines())}
        mine = fields(open("/proc/self/status").read())
        child = fields(subprocess.run(["/usr/bin/cat", "/proc/self/status"],
                                      capture_output=True, text=True).stdout)
        keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                "Seccomp_filters", "Uid", "Gid", "Groups")
        print(json.dumps({"self": {k: mine.get(k) for k in keys},
                          "exec": {k: child.get(k) for k in keys}}))
        """
    )
    assert result.status == m.Status.OK, show(result)
    seen = json.loads(result.stdout.splitlines()[-1])
    for who in ("self", "exec"):  # also after execve: nothing comes back
        status = seen[who]
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[key], 16) == 0, f"{who} {key}={status[key]}"
        assert status["NoNewPrivs"] == "1", status
        assert status["Seccomp"] == "2" and int(status["Seccomp_filters"]) >= 2, status
        uid = status["Uid"].split()
        assert len(set(uid)) == 1 and uid[0] != "0", status
        assert status["Groups"] in ("", None) or status["Groups"].split() == [status["Gid"].split()[0]]


def test_cannot_become_root_or_regain_capabilities(run):
    result = run(
        """
        import ctypes, errno, json, os, resource
        libc = ctypes.CDLL(None, use_errno=True)
        outcome = {}
        def attempt(name, action):
            try:
                action()
                outcome[name] = "ALLOWED"
            except OSError as exc:
                outcome[name] = errno.errorcode[exc.errno]
            except ValueError as exc:
                outcome[name] = "ValueError"
        attempt("setuid 0", lambda: os.setuid(0))
        attempt("setresuid 0", lambda: os.setresuid(0, 0, 0))
        attempt("setgid 0", lambda: os.setgid(0))
        attempt("setgroups 0", lambda: os.setgroups([0]))
        attempt("raise NOFILE hard", lambda: resource.setrlimit(
            resource.RLIMIT_NOFILE, (1 << 20, 1 << 20)))
        attempt("raise NPROC hard", lambda: resource.setrlimit(
            resource.RLIMIT_NPROC, (1 << 20, 1 << 20)))
        attempt("raise FSIZE hard", lambda: resource.setrlimit(
            resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
        attempt("nice -20", lambda: os.setpriority(os.PRIO_PROCESS, 0, -20))
        attempt("SCHED_FIFO", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
        # capset: every capability effective and permitted.
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        header = Header(0x20080522, 0)
        data = (Data * 2)(Data(0xFFFFFFFF, 0xFFFFFFFF, 0), Data(0xFFFFFFFF, 0xFFFFFFFF, 0))
        ctypes.set_errno(0)
        ret = libc.capset(ctypes.byref(header), data)
        outcome["capset all"] = "ALLOWED" if ret == 0 else errno.errorcode[ctypes.get_errno()]
        # no_new_privs cannot be cleared; securebits are locked.
        ctypes.set_errno(0)
        ret = libc.prctl(38, 0, 0, 0, 0)
        outcome["clear no_new_privs"] = "ALLOWED" if ret == 0 else errno.errorcode[ctypes.get_errno()]
        ctypes.set_errno(0)
        ret = libc.prctl(28, 0, 0, 0, 0)
        outcome["clear securebits"] = "ALLOWED" if ret == 0 else errno.errorcode[ctypes.get_errno()]
        outcome["still"] = [os.getuid(), os.geteuid(), os.getgid()]
        print(json.dumps(outcome))
        """
    )
    assert result.status == m.Status.OK, show(result)
    outcome = json.loads(result.stdout.splitlines()[-1])
    uid = outcome.pop("still")
    assert len(set(uid)) == 1 and uid[0] != 0, uid
    assert outcome.pop("clear no_new_privs") == "EINVAL", outcome
    for name in ("raise NOFILE hard", "raise NPROC hard", "raise FSIZE hard"):
        assert outcome.pop(name) in ("ValueError", "EPERM"), name
    assert outcome.pop("nice -20") == "EACCES", outcome
    # uid/gid 0: EPERM, or EINVAL where 0 is not even mapped (unprivileged service).
    for name in ("setuid 0", "setresuid 0", "setgid 0"):
        assert outcome.pop(name) in ("EPERM", "EINVAL"), name
    assert outcome == dict.fromkeys(outcome, "EPERM") and len(outcome) == 4, outcome


def test_setuid_binaries_give_nothing(run):
    """/usr is nosuid and no_new_privs is set: su runs, but as the sandbox uid."""
    result = run(
        """
        import json, os, subprocess, time
        proc = subprocess.Popen(["/usr/bin/su", "root", "-c", "id"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Until the child is su itself (not Python between fork and exec), for
        # at most 5 s (the run has 10). su then waits for a password or has exited: a zombie
        # keeps its name and ids, and nothing reaps it before proc.kill().
        deadline = time.monotonic() + 5
        while True:
            status = {k: v.strip() for k, v in (l.split(":", 1)
                      for l in open(f"/proc/{proc.pid}/status").read().splitlines())}
            if status["Name"] == "su" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        proc.kill()
        out, err = proc.communicate()
        print(json.dumps({"setuid bit": bool(os.stat("/usr/bin/su").st_mode & 0o4000),
                          "me": os.getuid(), "Name": status["Name"], "Uid": status["Uid"],
                          "CapEff": status["CapEff"],
                          "out": out.decode()}))
        """
    )
    assert result.status == m.Status.OK, show(result)
    seen = json.loads(result.stdout.splitlines()[-1])
    if not seen["setuid bit"]:
        pytest.skip("/usr/bin/su is not setuid on this host")
    assert seen["Name"] == "su", f"su never started: the ids read are another process's\n{seen}"
    assert seen["Uid"].split() == [str(seen["me"])] * 4, seen
    assert int(seen["CapEff"], 16) == 0, seen
    assert "uid=0" not in seen["out"], seen


def test_tiocsti_is_refused_even_with_high_bits(run):
    result = run(
        """
        import ctypes, errno, json
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        outcome = {}
        for name, cmd in (("TIOCSTI", 0x5412), ("TIOCSTI high bits", 0xDEADBEEF00005412),
                          ("TCGETS control", 0x5401)):
            ctypes.set_errno(0)
            ret = libc.syscall(16, 0, ctypes.c_ulong(cmd), ctypes.c_char_p(b"x"))
            outcome[name] = "RETURNED" if ret != -1 else errno.errorcode[ctypes.get_errno()]
        print(json.dumps(outcome))
        """
    )
    assert result.status == m.Status.OK, show(result)
    outcome = json.loads(result.stdout.splitlines()[-1])
    # stdin is a pipe: without the filter TIOCSTI would say ENOTTY, as TCGETS does.
    assert outcome == {"TIOCSTI": "EPERM", "TIOCSTI high bits": "EPERM", "TCGETS control": "ENOTTY"}
