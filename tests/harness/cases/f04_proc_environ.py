# category: filesystem
# name: other processes' environ and memory through /proc
# safe-status: ok
import os

for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    for name in ("environ", "mem", "cmdline"):
        try:
            data = open(f"/proc/{pid}/{name}", "rb").read(4096)
            if name == "environ" and data:
                print("ESCAPED:", pid, name, data[:40])
            if name == "cmdline" and (b"/work/main" in data or b"supervisor" in data):
                print("ESCAPED: host command line visible:", data[:60])
        except OSError as exc:
            print("BLOCKED:", pid, name, exc.strerror)
