# category: seccomp
# name: kernel keyrings
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(248, b"user", b"cellblock", b"secret", 6, -3) >= 0:  # add_key to the user keyring
    print("ESCAPED: add_key")
else:
    print("BLOCKED: add_key", os.strerror(ctypes.get_errno()))
if libc.syscall(250, 0, -3, 0, 0, 0) >= 0:  # keyctl(GET_KEYRING_ID)
    print("ESCAPED: keyctl")
else:
    print("BLOCKED: keyctl", os.strerror(ctypes.get_errno()))
