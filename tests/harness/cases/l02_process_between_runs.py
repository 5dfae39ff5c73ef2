# category: leaks
# name: a daemon waiting for the next run
# safe-status: ok
# kind: pair
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind("\0cellblock-leak")
        s.listen(1)
        time.sleep(60)
    os._exit(0)
time.sleep(0.1)
print("BLOCKED: daemon started")
# ---- second run ----
import os
import socket

pids = [p for p in os.listdir("/proc") if p.isdigit()]
try:
    socket.socket(socket.AF_UNIX).connect("\0cellblock-leak")
    print("ESCAPED: reached the previous run's daemon")
except OSError as exc:
    print("BLOCKED: no daemon:", exc.strerror, "pids", pids)
