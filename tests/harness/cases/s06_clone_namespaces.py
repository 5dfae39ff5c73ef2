# category: seccomp
# name: clone with namespace flags and clone3
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
pid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUSER | SIGCHLD)
if pid == 0:
    os._exit(0)
if pid > 0:
    print("ESCAPED: clone(CLONE_NEWUSER) made pid", pid)
else:
    print("BLOCKED: clone", os.strerror(ctypes.get_errno()))
args = ctypes.create_string_buffer(88)
if libc.syscall(435, args, 88) >= 0:
    print("ESCAPED: clone3")
else:
    print("BLOCKED: clone3", os.strerror(ctypes.get_errno()))
