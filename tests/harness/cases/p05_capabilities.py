# category: privilege
# name: regain capabilities through exec and ambient sets
# safe-status: ok
import ctypes
import subprocess

libc = ctypes.CDLL(None, use_errno=True)
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, 21, 0, 0) == 0:
    print("ESCAPED: raised CAP_SYS_ADMIN into the ambient set")
else:
    print("BLOCKED: ambient raise errno", ctypes.get_errno())
out = subprocess.run(["/bin/sh", "-c", "grep Cap /proc/self/status"], capture_output=True, text=True).stdout
for line in out.splitlines():
    if int(line.split()[1], 16):
        print("ESCAPED: capabilities after exec:", line)
