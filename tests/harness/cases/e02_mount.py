# category: escape
# name: mount, remount and pivot_root
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
attempts = (
    ("tmpfs on /usr", lambda: libc.mount(b"tmpfs", b"/usr", b"tmpfs", 0, None)),
    ("remount / rw", lambda: libc.mount(None, b"/", None, 32, None)),
    ("proc", lambda: libc.mount(b"proc", b"/tmp", b"proc", 0, None)),
    ("pivot_root", lambda: libc.syscall(155, b"/tmp", b"/tmp")),
    ("umount /proc", lambda: libc.umount2(b"/proc", 2)),
)
for name, call in attempts:
    if call() == 0:
        print("ESCAPED:", name)
    else:
        print("BLOCKED:", name, os.strerror(ctypes.get_errno()))
