# category: seccomp
# name: io_uring
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 8, params)
if fd >= 0:
    print("ESCAPED: io_uring_setup gave fd", fd)
else:
    print("BLOCKED: io_uring_setup", os.strerror(ctypes.get_errno()))
