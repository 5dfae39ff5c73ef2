# category: escape
# name: chroot and fchdir breakout
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
os.mkdir("/work/jail")
if libc.chroot(b"/work/jail") == 0:
    print("ESCAPED: chroot worked")
else:
    print("BLOCKED: chroot", os.strerror(ctypes.get_errno()))
