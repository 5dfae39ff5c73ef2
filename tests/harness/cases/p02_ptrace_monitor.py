# category: privilege
# name: ptrace the monitor (pid 1)
# safe-status: ok
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
if libc.ptrace(PTRACE_ATTACH, 1, None, None) == 0:
    print("ESCAPED: attached to pid 1")
else:
    print("BLOCKED: ptrace errno", ctypes.get_errno())
