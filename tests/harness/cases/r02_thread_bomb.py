# category: resources
# name: thread bomb
# safe-status: ok, error, killed
import threading
import time

n = 0
try:
    while n < 100000:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        n += 1
except RuntimeError as exc:
    print(f"BLOCKED: thread refused after {n}: {exc}", flush=True)
if n >= 10000:
    print(f"ESCAPED: {n} threads", flush=True)
import os

os._exit(0)
