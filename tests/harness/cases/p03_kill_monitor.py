# category: privilege
# name: kill the monitor and host processes
# safe-status: ok
import os
import signal

for pid in (1, -1):
    try:
        os.kill(pid, signal.SIGKILL if pid == 1 else 0)
    except OSError as exc:
        print("BLOCKED:", pid, exc.strerror)
for pid in range(2, 40000, 997):
    try:
        os.kill(pid, 0)
        if not os.path.exists(f"/proc/{pid}"):
            print("ESCAPED: signalled an invisible pid", pid)
    except OSError:
        pass
print("BLOCKED: still alive after kill(1, SIGKILL)")
