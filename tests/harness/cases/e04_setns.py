# category: escape
# name: join another namespace through /proc
# safe-status: ok
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
for ns in ("mnt", "net", "pid", "user"):
    try:
        fd = os.open(f"/proc/1/ns/{ns}", os.O_RDONLY)
    except OSError as exc:
        print("BLOCKED: open", ns, exc.strerror)
        continue
    if libc.setns(fd, 0) == 0:
        print("ESCAPED: setns", ns)
    else:
        print("BLOCKED: setns", ns, os.strerror(ctypes.get_errno()))
