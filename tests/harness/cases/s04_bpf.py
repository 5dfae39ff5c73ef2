# category: seccomp
# name: bpf
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
attr = ctypes.create_string_buffer(128)
for cmd in (0, 5):  # BPF_MAP_CREATE, BPF_PROG_LOAD
    if libc.syscall(321, cmd, attr, 128) >= 0:
        print("ESCAPED: bpf", cmd)
    else:
        print("BLOCKED: bpf", cmd, os.strerror(ctypes.get_errno()))
