"""The same walls for Swift: fork bombs, memory, network, files, system calls, leftovers.

Swift reaches all of libc through Glibc (and anything else through dlsym),
and its workers keep execve, so the seccomp allowlist, the pids and memory
limits and the mount namespace are the boundary: each test attacks one of
them with real Swift through the service. Swift's root holds the toolchain;
a test checks that no other runtime's root does.
"""

from __future__ import annotations

import os
import secrets
import socket

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show
from tests.sandbox.test_cant_outlive_run import _gone_within, _host_pids_with
from worker.runtimes.swift import MODULE_CACHE, find_frontend

FRONTEND = find_frontend()
pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(FRONTEND is None, reason="no Swift toolchain on this host (PATH, /opt/swift)"),
]
SYSCALL = """
import Glibc
typealias Sys = @convention(c) (Int, Int, Int, Int, Int, Int, Int) -> Int
let raw = unsafeBitCast(dlsym(nil, "syscall"), to: Sys.self)
func call(_ name: String, _ number: Int, _ a: Int = 0, _ b: Int = 0) {
    errno = 0
    let rc = raw(number, a, b, 0, 0, 0, 0)
    print(name, rc >= 0 ? "WORKED" : "refused", errno)
}
"""


def swift(run, code: str, **kwargs: object) -> m.ExecuteResult:
    return run(code, language="swift", **kwargs)


def test_cant_fork_bomb_from_swift(run):
    code = """
import Glibc
var made = 0, refused = 0
for _ in 0..<300 {
    let pid = fork()
    if pid == 0 { sleep(30); exit(0) }
    if pid < 0 { refused += 1 } else { made += 1 }
}
print(made, refused)
"""
    result = swift(run, code)
    assert result.status is m.Status.OK, show(result)  # not a timeout: the sleepers die with the run
    made, refused = map(int, result.stdout.split())
    assert made < 64 and refused == 300 - made, show(result)


def test_cant_exhaust_memory_from_swift(run):
    code = "var keep = [[UInt8]]()\nwhile true { keep.append([UInt8](repeating: 1, count: 1 << 20)) }\n"
    result = swift(run, code, limits=m.Limits(memory_bytes=128 << 20))
    assert result.status is m.Status.MEMORY_LIMIT, show(result)


@pytest.fixture
def host_listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        yield server


def test_cant_reach_the_network_from_swift(run, host_listener):
    port = host_listener.getsockname()[1]
    code = f"""
import Glibc
func reach(_ host: String, _ port: UInt16) {{
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    inet_pton(AF_INET, host, &addr.sin_addr)
    let size = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafePointer(to: &addr) {{
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {{ connect(fd, $0, size) }}
    }}
    print(host, rc == 0 ? "CONNECTED" : "refused", errno)
}}
reach("127.0.0.1", {port})
reach("1.1.1.1", 443)
"""
    result = swift(run, code)
    assert result.status is m.Status.OK, show(result)
    assert result.stdout == "127.0.0.1 refused 111\n1.1.1.1 refused 101\n", show(result)  # ECONNREFUSED, ENETUNREACH
    with pytest.raises(OSError):
        host_listener.accept()


def test_cant_read_or_write_host_files_from_swift(run):
    code = """
import Glibc
for path in ["/etc/shadow", "/root", "/home", "/proc/1/environ", "/var/lib"] {
    print(path, open(path, O_RDONLY) >= 0 ? "OPEN" : "closed")
}
for path in ["/etc/x", "/usr/x", "/opt/x", "MODULE_CACHE/x"] {
    print(path, open(path, O_WRONLY | O_CREAT, 0o644) >= 0 ? "WROTE" : "refused")
}
""".replace("MODULE_CACHE", MODULE_CACHE)
    result = swift(run, code)
    assert result.status is m.Status.OK, show(result)
    assert "OPEN" not in result.stdout and "WROTE" not in result.stdout, show(result)
    assert result.stdout.count("closed") == 5 and result.stdout.count("refused") == 4, show(result)


def test_cant_make_forbidden_system_calls_from_swift(run):
    code = SYSCALL + """
call("unshare", 272, 0x1000_0000)
call("ptrace", 101, 16, 1)
call("mount", 165)
call("bpf", 321)
call("io_uring_setup", 425, 1)
call("keyctl", 250)
call("setns", 308)
call("perf_event_open", 298)
call("clone_newns", 56, 0x20000)
print("setuid", setuid(0) == 0 ? "WORKED" : "refused")
print("netlink", socket(AF_NETLINK, Int32(SOCK_RAW.rawValue), 0) >= 0 ? "WORKED" : "refused")
"""
    result = swift(run, code)
    assert result.status is m.Status.OK, show(result)
    assert "WORKED" not in result.stdout and result.stdout.count("refused") == 11, show(result)


def test_cant_leave_processes_behind_from_swift(run):
    """A detached child that ignores SIGTERM and sleeps a minute: seen on the host during
    the run, gone within five seconds of the result, and the run ends with its program."""
    token = f"cellblock-escapee-{secrets.token_hex(6)}"
    code = f"""
import Glibc
let pid = fork()
if pid == 0 {{
    signal(SIGTERM, SIG_IGN)
    setsid()
    let argv: [UnsafeMutablePointer<CChar>?] = [strdup("{token}"), strdup("60"), nil]
    execv("/usr/bin/sleep", argv)
    exit(1)
}}
usleep(300_000)
print("CHILD", pid)
fflush(stdout)  // a pipe: without it the line would leave only at exit, as the run ends
usleep(1_500_000)  // the run lasts while the host looks for the child
"""
    seen: list[int] = []
    result = swift(run, code, on_chunk=lambda chunk: seen.extend(_host_pids_with(token)))
    assert result.status is m.Status.OK and result.stdout.startswith("CHILD "), show(result)
    assert seen, f"the host never saw {token} during the run\n{show(result)}"
    assert not _gone_within(token, 5.0), show(result)


def test_other_runtimes_roots_do_not_hold_the_toolchain(run):
    assert FRONTEND is not None
    prefix = os.path.dirname(os.path.dirname(FRONTEND))
    probe = f"import os; print([p for p in ({prefix!r}, {MODULE_CACHE!r}) if os.path.exists(p)])"
    result = run(probe)
    assert result.status is m.Status.OK and result.stdout == "[]\n", show(result)
    node = run(f"console.log(require('fs').existsSync({prefix!r}))", language="javascript")
    assert node.stdout == "false\n", show(node)
    own = swift(run, f'import Glibc\nprint(access("{FRONTEND}", X_OK) == 0, access("{MODULE_CACHE}", W_OK) == 0)')
    assert own.stdout == "true false\n", show(own)
