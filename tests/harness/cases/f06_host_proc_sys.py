# category: filesystem
# name: host kernel interfaces (/sys, sysrq, kcore)
# safe-status: ok
import os

for path in ("/sys/kernel", "/proc/sysrq-trigger", "/proc/kcore", "/dev/mem", "/dev/sda", "/dev/vda"):
    try:
        if os.path.isdir(path):
            print("ESCAPED:", path, os.listdir(path)[:3])
        else:
            open(path, "rb").read(1)
            print("ESCAPED: read", path)
    except OSError as exc:
        print("BLOCKED:", path, exc.strerror)
