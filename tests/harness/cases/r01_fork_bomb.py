# category: resources
# name: fork bomb
# safe-status: ok, error, killed, timeout
# timeout: 5
import os

n = 0
try:
    while True:
        if os.fork() == 0:
            import time

            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as exc:
    print(f"BLOCKED: fork refused after {n}: {exc.strerror}")
if n > 1000:
    print(f"ESCAPED: {n} processes")
