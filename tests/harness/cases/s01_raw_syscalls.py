# category: seccomp
# name: dangerous syscalls by number
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
calls = {
    "ptrace": 101,
    "process_vm_readv": 310,
    "kexec_load": 246,
    "init_module": 175,
    "finit_module": 313,
    "reboot": 169,
    "swapon": 167,
    "acct": 163,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "open_by_handle_at": 304,
    "settimeofday": 164,
}
for name, nr in calls.items():
    if libc.syscall(nr, 0, 0, 0, 0, 0) == 0:
        print("ESCAPED:", name, "returned 0")
    else:
        err = ctypes.get_errno()
        print("BLOCKED:", name, os.strerror(err))
