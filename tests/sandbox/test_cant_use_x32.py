"""Layer: seccomp's architecture checks.

A filter keyed on x86_64 syscall numbers could be sidestepped through
another ABI: x32 (the same numbers with bit 30 set) or i386 (``int 0x80``,
its own numbering). Both kill the process with SIGSYS; the result says
``killed`` / ``seccomp``.
"""

from __future__ import annotations

import pytest

from protocol import messages as m
from tests.sandbox.outcome import show

pytestmark = pytest.mark.sandbox

SIGSYS = 31


def test_x32_syscall_kills_the_payload(run):
    result = run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print("NATIVE-GETPID-OK", libc.syscall(39) == os.getpid(), flush=True)
        libc.syscall(39 | 0x40000000)  # getpid, x32 ABI
        print("SURVIVED", flush=True)
        """
    )
    assert "NATIVE-GETPID-OK True" in result.stdout, show(result)
    assert "SURVIVED" not in result.stdout, show(result)
    assert result.status == m.Status.KILLED, show(result)
    assert result.reason == "seccomp", show(result)
    assert result.signal == SIGSYS, show(result)


def test_x32_syscall_kills_a_child_too(run):
    """In a child, so the payload can read the wait status itself."""
    result = run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for number in (39, 60, 231):  # getpid, exit, exit_group
            pid = os.fork()
            if pid == 0:
                libc.syscall(number | 0x40000000, 0)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            print(number, "signal" if os.WIFSIGNALED(status) else "exit",
                  os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
        """
    )
    assert result.status == m.Status.OK, show(result)
    assert result.stdout.splitlines() == [f"{n} signal {SIGSYS}" for n in (39, 60, 231)], show(result)


def test_i386_int80_kills_the_process(run):
    result = run(
        """
        import ctypes, mmap, os
        # mov eax, 20 (getpid on i386); int 0x80; ret
        code = b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3"
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        function = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        pid = os.fork()
        if pid == 0:
            print("I386-GETPID", function(), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("CHILD", "signal" if os.WIFSIGNALED(status) else "exit",
              os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
        """
    )
    assert result.status == m.Status.OK, show(result)
    if "CHILD signal 11" in result.stdout:
        pytest.skip("this kernel has no i386 emulation (int 0x80 faults)")
    assert "I386-GETPID" not in result.stdout, show(result)
    assert f"CHILD signal {SIGSYS}" in result.stdout, show(result)
