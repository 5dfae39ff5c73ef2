# category: escape
# name: new namespaces (user, mount, net)
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
for name, flag in (("user", 0x10000000), ("mount", 0x20000), ("net", 0x40000000), ("pid", 0x20000000)):
    if libc.unshare(flag) == 0:
        print("ESCAPED: unshare", name)
    else:
        print("BLOCKED: unshare", name, os.strerror(ctypes.get_errno()))
