# category: seccomp
# name: x32 system call ABI
# safe-status: killed
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
print("before", flush=True)
libc.syscall(39 | 0x40000000)  # getpid through the x32 ABI
print("ESCAPED: x32 call returned")
