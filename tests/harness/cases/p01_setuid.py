# category: privilege
# name: become root
# safe-status: ok
import os

for name, call in (
    ("setuid", lambda: os.setuid(0)),
    ("setgid", lambda: os.setgid(0)),
    ("setresuid", lambda: os.setresuid(0, 0, 0)),
):
    try:
        call()
        print("ESCAPED:", name, "worked; uid", os.getuid())
    except OSError as exc:
        print("BLOCKED:", name, exc.strerror)
status = open("/proc/self/status").read()
for line in status.splitlines():
    if line.startswith("Cap") and int(line.split()[1], 16):
        print("ESCAPED: capability set not empty:", line)
